"""Reference outputs of the networks, recorded from the code before the fast paths.

``tests/fixtures/nets/reference.pt`` holds, for every preset in ``ARCHITECTURES`` (51 features,
window 60), the heads' outputs at batch 1 and 64 in float32 and float64, and for ``tiny`` and
``efficient-hybrid`` the gradients of a fixed scalar of the outputs, summarised per parameter
(its norm and its dot product with a seeded random tensor), and their xLSTM stacks' outputs at
every step (batch 2). The weights are not stored: every
parameter is filled from a seeded generator by its name and shape (``fill_weights``), which does
not depend on the order in which the modules create their parameters, only on the state-dict
names and shapes, which must not change.

Re-record (only when the numbers are meant to change): ``.venv/bin/python -m tests.nets_reference``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from mlmodels.nets.model import ARCHITECTURES, build_model

REFERENCE = Path(__file__).parent / "fixtures" / "nets" / "reference.pt"
N_FEATURES, WINDOW = 51, 60
BATCHES = (1, 64)
REFERENCE_ARCHS = ("seed-full", "efficient-hybrid", "simplex-lstm", "task-ensemble", "tiny")
GRAD_ARCHS = ("tiny", "efficient-hybrid")
GRAD_BATCH = 4


def fill_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter from a generator seeded by ``seed``, in sorted name order.

    Matrices ``~ N(0, 1 / fan_in)`` (``fan_in`` = the last dimension), norm weights and the
    mLSTM skip ``~ 1 + N(0, 0.1)``, other vectors (biases) ``~ N(0, 0.5)``.
    """
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if p.dim() >= 2:
                value = noise / math.sqrt(p.shape[-1])
            elif name.endswith(".skip") or ("norm" in name and name.endswith("weight")):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.5 * noise
            p.copy_(value.to(p.dtype))
    return model


def inputs(batch: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Seeded windows ``(batch, 60, 51)`` and position states ``(batch, 3)``."""
    gen = torch.Generator().manual_seed(1000 + batch)
    x = torch.randn(batch, WINDOW, N_FEATURES, generator=gen, dtype=torch.float64)
    side = torch.randint(-1, 2, (batch, 1), generator=gen).double()
    pnl = 0.05 * torch.randn(batch, 1, generator=gen, dtype=torch.float64)
    held = torch.randint(0, 50, (batch, 1), generator=gen).double()
    return x.to(dtype), torch.cat([side, pnl * side.abs(), held * side.abs()], 1).to(dtype)


def model_for(arch: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The preset at 51 features and window 60, weights from ``fill_weights``, eval mode."""
    model = build_model(ARCHITECTURES[arch].with_data(N_FEATURES, WINDOW))
    return fill_weights(model).to(dtype).eval()


def grad_summary(model: nn.Module, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Per parameter: ``[norm, <grad, r>]`` of the gradient of a fixed weighted sum of the
    outputs at batch ``GRAD_BATCH`` (``r`` seeded per parameter name)."""
    x, pos = inputs(GRAD_BATCH, dtype)
    model.zero_grad()
    out = model(x, pos)
    gen = torch.Generator().manual_seed(7)
    loss = sum(
        (out[k] * torch.randn(out[k].shape, generator=gen, dtype=torch.float64).to(dtype)).sum()
        for k in sorted(out)
    )
    loss.backward()  # type: ignore[union-attr]
    summary = {}
    for name, p in sorted(model.named_parameters()):
        assert p.grad is not None, name
        r = torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name)), dtype=dtype)
        summary[name] = torch.stack([p.grad.norm(), (p.grad * r).sum()]).double()
    return summary


def record() -> dict[str, object]:
    """Compute every reference (slow: seed-full in float64 at batch 64)."""
    torch.set_num_threads(1)
    outputs: dict[str, dict[str, Tensor]] = {}
    for arch in REFERENCE_ARCHS:
        for dtype in (torch.float32, torch.float64):
            model = model_for(arch, dtype)
            for batch in BATCHES:
                with torch.no_grad():
                    out = model(*inputs(batch, dtype))
                outputs[f"{arch}|{dtype}|{batch}"] = {k: v.double() for k, v in out.items()}
    grads = {arch: grad_summary(model_for(arch, torch.float64)) for arch in GRAD_ARCHS}
    return {
        "outputs": outputs,
        "grads": grads,
        "sequences": {arch: stack_sequence(arch) for arch in GRAD_ARCHS},
        "torch": str(torch.__version__),
    }


def stack_sequence(arch: str) -> Tensor:
    """The xLSTM stack's output at every step, batch 2, computed in float64, kept as float32."""
    model = model_for(arch, torch.float64)
    x, _ = inputs(2, torch.float64)
    with torch.no_grad():
        seq, _ = model.xlstm(x)  # type: ignore[operator]
    return seq.float()


if __name__ == "__main__":
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record(), REFERENCE)
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size:,} bytes)")
