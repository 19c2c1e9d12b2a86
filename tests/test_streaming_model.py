"""Streaming presets: bar-by-bar ``step`` equals ``forward_sequence``, outputs never change when
bars are appended, state carries over from the first bar (no window restart) and is a plain
dict of batch-first tensors that can be saved, loaded, batched and split."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from mlmodels.nets.mlstm import MLSTMLayer
from mlmodels.nets.model import ARCHITECTURES, ModelConfig, build_model
from mlmodels.nets.streaming import (
    STREAM_CHUNK,
    concat_states,
    detach_state,
    select_state,
)
from mlmodels.nets.transformer import TransformerPath

STREAMS = ("tiny-stream", "hybrid-stream")
FEATURES, WINDOW = 7, 12
STEPS = STREAM_CHUNK + 16  # crosses a chunk boundary and several attention windows


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as the serving handler and backtests run the model: the many small ops
    of a recurrent loop stall on a busy machine when two OpenMP threads must meet at each."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(arch: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ARCHITECTURES[arch].with_data(FEATURES, WINDOW))
    return model.to(dtype).eval()


def _data(batch: int, steps: int, dtype: torch.dtype = torch.float32, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, FEATURES, generator=gen).to(dtype)
    pos = torch.rand(batch, steps, 3, generator=gen).to(dtype) * torch.tensor([1.0, 0.1, 30.0])
    return x, pos.to(dtype)


def _assert_outputs_close(a: dict, b: dict, tol: float) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=tol, rtol=tol, msg=key)


def _step_through(model, x, pos, state=None):
    state = model.init_state(x.shape[0]) if state is None else state
    outs = []
    for t in range(x.shape[1]):
        out, state = model.step(x[:, t], pos[:, t], state)
        outs.append(out)
    return {k: torch.stack([o[k] for o in outs], dim=1) for k in outs[0]}, state


@pytest.mark.parametrize("arch", STREAMS)
def test_stepping_bar_by_bar_equals_one_forward_over_the_sequence(arch: str) -> None:
    model = _model(arch)
    x, pos = _data(3, STEPS)
    with torch.no_grad():
        whole = model.forward_sequence(x, pos)
        stepped, _ = _step_through(model, x, pos)
    assert whole["price"].shape == (3, STEPS, 3) and whole["size"].shape == (3, STEPS)
    _assert_outputs_close(stepped, whole, 1e-5)


@pytest.mark.parametrize("arch", STREAMS)
def test_any_split_into_chunks_gives_the_same_outputs(arch: str) -> None:
    model = _model(arch, torch.float64)
    x, pos = _data(2, STEPS, torch.float64)
    with torch.no_grad():
        whole = model.forward_sequence(x, pos)
        state = model.init_state(2)
        parts = []
        for start, stop in ((0, 1), (1, 38), (38, STEPS)):
            out, state = model.forward_chunk(x[:, start:stop], pos[:, start:stop], state)
            parts.append(out)
    joined = {k: torch.cat([p[k] for p in parts], dim=1) for k in whole}
    _assert_outputs_close(joined, whole, 1e-10)


@settings(max_examples=6, deadline=None)
@given(cut=st.integers(min_value=0, max_value=STEPS - 2), seed=st.integers(0, 2**16))
def test_outputs_at_t_never_change_when_bars_are_appended(cut: int, seed: int) -> None:
    model = _model("tiny-stream")
    x, pos = _data(2, STEPS, seed=seed)
    with torch.no_grad():
        full = model.forward_sequence(x, pos)
        prefix = model.forward_sequence(x[:, : cut + 1], pos[:, : cut + 1])
    _assert_outputs_close(prefix, {k: v[:, : cut + 1] for k, v in full.items()}, 1e-5)


@pytest.mark.parametrize("arch", STREAMS)
def test_the_output_depends_on_every_bar_since_the_start(arch: str) -> None:
    """No restart: a change at bar 0 still moves the output far beyond one window (the
    Transformer path alone would have forgotten it after ``WINDOW`` bars per layer)."""
    model = _model(arch)
    x, pos = _data(1, STEPS)
    changed = x.clone()
    changed[:, 0] += 3.0
    with torch.no_grad():
        a = model.forward_sequence(x, pos)["price"][:, -1]
        b = model.forward_sequence(changed, pos)["price"][:, -1]
    assert STEPS > 4 * WINDOW
    assert (a - b).abs().max() > 1e-6


@pytest.mark.parametrize("arch", STREAMS)
def test_the_windowed_forward_is_the_stream_from_the_window_start(arch: str) -> None:
    model = _model(arch)
    x, pos = _data(2, WINDOW)
    with torch.no_grad():
        windowed = model(x, pos[:, -1])
        stream = model.forward_sequence(x, pos)
    _assert_outputs_close(windowed, {k: v[:, -1] for k, v in stream.items()}, 1e-5)


def test_state_is_batch_first_tensors_that_survive_save_and_load() -> None:
    model = _model("hybrid-stream")
    x, pos = _data(2, 30)
    with torch.no_grad():
        _, state = _step_through(model, x[:, :20], pos[:, :20])
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)
        assert all(isinstance(v, torch.Tensor) and v.shape[0] == 2 for v in loaded.values())
        assert any(k.startswith("xlstm.") for k in loaded)
        assert any(k.startswith("transformer.") for k in loaded)
        after_load, _ = _step_through(model, x[:, 20:], pos[:, 20:], loaded)
        straight, _ = _step_through(model, x, pos)
    _assert_outputs_close(after_load, {k: v[:, 20:] for k, v in straight.items()}, 1e-5)


def test_sessions_of_different_ages_batch_and_split() -> None:
    """Two streams stepped alone equal the same two stepped together from their own states,
    even when one has seen fewer bars than the attention window."""
    model = _model("tiny-stream")
    x, pos = _data(2, 40)
    with torch.no_grad():
        _, old = _step_through(model, x[:1, :30], pos[:1, :30])
        _, young = _step_through(model, x[1:, :3], pos[1:, :3])
        both = concat_states([old, young])
        xs = torch.stack([x[0, 30:37], x[1, 3:10]])
        ps = torch.stack([pos[0, 30:37], pos[1, 3:10]])
        together, after = _step_through(model, xs, ps, both)
        alone_old, _ = _step_through(model, xs[:1], ps[:1], old)
        alone_young, young_after = _step_through(model, xs[1:], ps[1:], young)
    _assert_outputs_close({k: v[:1] for k, v in together.items()}, alone_old, 1e-5)
    _assert_outputs_close({k: v[1:] for k, v in together.items()}, alone_young, 1e-5)
    for key, value in select_state(after, 1).items():
        torch.testing.assert_close(value, young_after[key], atol=1e-5, rtol=1e-5)


def test_truncated_bptt_trains_through_detached_chunks() -> None:
    model = _model("tiny-stream").train()
    x, pos = _data(2, 40)
    state = model.init_state(2)
    for start in (0, 20):
        out, state = model.forward_chunk(
            x[:, start : start + 20], pos[:, start : start + 20], state
        )
        model.zero_grad()
        (out["price"].square().mean() + out["size"].mean()).backward()
        state = detach_state(state)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


def test_windowed_presets_refuse_to_stream_and_say_which_do() -> None:
    model = build_model(ARCHITECTURES["tiny"].with_data(FEATURES, WINDOW))
    with pytest.raises(ConfigError, match="tiny-stream"):
        model.init_state(1)


def test_stream_presets_have_the_sizes_of_their_windowed_twins() -> None:
    for stream, base in (("tiny-stream", "tiny"), ("hybrid-stream", "efficient-hybrid")):
        a, b = ARCHITECTURES[stream], ARCHITECTURES[base]
        assert a.streaming and not b.streaming
        assert {**a.to_dict(), "arch": "", "streaming": False} == {**b.to_dict(), "arch": ""}
        count = [sum(p.numel() for p in build_model(c).parameters()) for c in (a, b)]
        assert count[0] == count[1]


def test_cards_without_the_streaming_field_load_as_windowed() -> None:
    data = ARCHITECTURES["tiny"].to_dict()
    del data["streaming"]
    assert ModelConfig.from_dict(data).streaming is False
    assert ModelConfig.from_dict(ARCHITECTURES["tiny-stream"].to_dict()).streaming is True
    with pytest.raises(ConfigError, match="streaming"):
        ModelConfig(arch="x", xlstm_hidden=8, xlstm_layers=1, rnn="lstm", streaming=True)


def test_streaming_transformer_with_a_bounded_cache_equals_band_attention() -> None:
    torch.manual_seed(2)
    path = TransformerPath(5, 16, 2, 4, dropout=0.0, positions="alibi", attention_window=6)
    path = path.double().eval()
    x = torch.randn(2, 23, 5, dtype=torch.float64)
    with torch.no_grad():
        band = path._alibi_window(x)
        state, parts = None, []
        for start in range(0, 23, 5):
            seq, state = path.forward_state(x[:, start : start + 5], state)
            parts.append(seq)
        path.keep_attention(True)
        explicit, _ = path.forward_state(x, None)
    torch.testing.assert_close(torch.cat(parts, dim=1), band, atol=1e-10, rtol=0)
    torch.testing.assert_close(explicit, band, atol=1e-10, rtol=0)
    assert state is not None and state["k0"].shape == (2, 4, 5, 4)
    weights = path.layers[-1].last_attention
    assert weights is not None and (weights[:, 10, :4] == 0).all()  # beyond the window


def test_mlstm_layer_state_carries_across_calls() -> None:
    torch.manual_seed(3)
    layer = MLSTMLayer(32, num_heads=4).double()
    torch.nn.init.normal_(layer.gates.weight, std=0.3)
    x, u = torch.randn(2, 21, 32, dtype=torch.float64), torch.randn(2, 21, 32, dtype=torch.float64)
    with torch.no_grad():
        whole = layer(x, x_conv=u)
        state, parts = layer.initial_state(2, x), []
        for start, stop in ((0, 1), (1, 2), (2, 13), (13, 21)):
            h, state = layer.forward_state(x[:, start:stop], u[:, start:stop], state)
            parts.append(h)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-10, rtol=0)
    assert torch.isfinite(state.m).all() and state.c.shape == (2, 4, 8, 8)
