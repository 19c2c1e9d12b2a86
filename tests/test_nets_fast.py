"""The fast forward paths give the numbers of the code before them (recorded in
``tests/fixtures/nets/reference.pt`` by ``tests/nets_reference.py``), and load the same weights.

float32 outputs must match to 1e-5, float64 ones to 1e-9 (the same arithmetic, reordered);
gradients (summarised per parameter) to 1e-7 relative in float64.
"""

from __future__ import annotations

import io

import pytest
import torch

from mlmodels.nets.mlstm import MLSTMLayer
from mlmodels.nets.model import ARCHITECTURES, build_model
from mlmodels.nets.slstm import SLSTMLayer
from tests.nets_reference import (
    BATCHES,
    GRAD_ARCHS,
    REFERENCE,
    REFERENCE_ARCHS,
    grad_summary,
    inputs,
    model_for,
)

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as the serving handler and backtests run the model: the many small ops
    of a recurrent loop stall on a busy machine when two OpenMP threads must meet at each."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=True)


def _cases() -> list:
    cases = []
    for arch in REFERENCE_ARCHS:
        for dtype in (torch.float32, torch.float64):
            marks = [pytest.mark.slow] if arch == "seed-full" else []
            cases.append(pytest.param(arch, dtype, marks=marks, id=f"{arch}-{str(dtype)[6:]}"))
    return cases


@pytest.mark.parametrize(("arch", "dtype"), _cases())
def test_outputs_equal_the_recorded_reference(reference: dict, arch: str, dtype) -> None:
    model = model_for(arch, dtype)
    for batch in BATCHES:
        want = reference["outputs"][f"{arch}|{dtype}|{batch}"]
        with torch.no_grad():
            got = model(*inputs(batch, dtype))
        assert set(got) == set(want)
        tol = TOLERANCE[dtype]
        for key, value in got.items():
            torch.testing.assert_close(
                value.double(), want[key], atol=tol, rtol=tol, msg=f"{arch} b{batch} {key}"
            )


@pytest.mark.parametrize("arch", GRAD_ARCHS)
def test_gradients_equal_the_recorded_reference(reference: dict, arch: str) -> None:
    got = grad_summary(model_for(arch, torch.float64))
    want = reference["grads"][arch]
    assert set(got) == set(want)
    for name, value in got.items():
        torch.testing.assert_close(value, want[name], atol=1e-9, rtol=1e-7, msg=name)


@pytest.mark.parametrize("arch", GRAD_ARCHS)
def test_stack_sequence_equals_the_recorded_reference(reference: dict, arch: str) -> None:
    model = model_for(arch, torch.float64)
    x, _ = inputs(2, torch.float64)
    with torch.no_grad():
        seq, _ = model.xlstm(x)  # type: ignore[operator]
    torch.testing.assert_close(seq.float(), reference["sequences"][arch], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["tiny", "efficient-hybrid"])
def test_inference_mode_and_grad_mode_agree(arch: str) -> None:
    """The derived weights cached under inference equal the ones recomputed with autograd."""
    model = model_for(arch)
    x, pos = inputs(3)
    with torch.inference_mode():
        fast = model(x, pos)
    slow = model(x, pos)
    for key in fast:
        torch.testing.assert_close(fast[key], slow[key].detach(), atol=1e-6, rtol=1e-6)


def test_state_dict_layout_is_unchanged_and_old_weights_load(reference: dict) -> None:
    """Parameter names are the old ones (those recorded with the reference gradients): a saved
    model loads as it was."""
    model = model_for("efficient-hybrid")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_model(ARCHITECTURES["efficient-hybrid"].with_data(51, 60)).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # strict
    assert set(fresh.state_dict()) == set(reference["grads"]["efficient-hybrid"])
    x, pos = inputs(2)
    with torch.no_grad():
        a, b = model(x, pos), fresh(x, pos)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    # derived weights (caches, ALiBi slopes, positions) never enter the state dict
    assert set(fresh.state_dict()) == {n for n, _ in fresh.named_parameters()}


def test_derived_weight_caches_follow_parameter_updates() -> None:
    torch.manual_seed(0)
    slstm = SLSTMLayer(8, 8, num_heads=2).eval()
    mlstm = MLSTMLayer(16, num_heads=2).eval()
    x8, x16 = torch.randn(2, 5, 8), torch.randn(2, 5, 16)
    with torch.no_grad():
        before = slstm(x8)[0], mlstm(x16)
        slstm.w_zo.weight.data.mul_(0.5)  # .data writes bump no version counter
        mlstm.v_proj.weight.data.mul_(0.5)
        after = slstm(x8)[0], mlstm(x16)
    fresh = slstm(x8)[0].detach(), mlstm(x16).detach()
    for old, new, want in zip(before, after, fresh, strict=True):
        assert not torch.allclose(old, new)
        torch.testing.assert_close(new, want)


@pytest.mark.parametrize("use_jit", [True, False])
def test_slstm_loop_layouts_agree(use_jit: bool) -> None:
    """Batch-innermost loop with per-head weights (16 x 20 rows) == the other loop with
    reordered outputs (one sequence of 20 rows), forward and backward."""
    torch.manual_seed(1)
    layer = SLSTMLayer(6, 16, num_heads=4, use_jit=use_jit).double()
    x = torch.randn(16, 20, 6, dtype=torch.float64, requires_grad=True)
    batched, state = layer(x)
    batched.square().sum().backward()
    grad = x.grad
    assert grad is not None
    for row in (0, 9):
        xr = x[row : row + 1].detach().requires_grad_()
        alone, alone_state = layer(xr)
        alone.square().sum().backward()
        torch.testing.assert_close(alone, batched[row : row + 1], atol=1e-12, rtol=0)
        torch.testing.assert_close(xr.grad, grad[row : row + 1], atol=1e-12, rtol=0)
        for got, want in zip(alone_state, state, strict=True):
            torch.testing.assert_close(got, want[row : row + 1], atol=1e-12, rtol=0)
