"""Streaming presets on a dataset: predictions over whole streams, truncated BPTT pieces.

A windowed preset's prediction at bar ``t`` reads the ``window`` bars ending at ``t``. A
streaming preset's reads every bar of its stream up to ``t``: here a stream starts at the first
bar of a symbol's first window in the dataset (its first complete feature row), exactly as a
backtest over the same bars starts it, and runs without restarting. So :func:`stream_paths`
gives a sample the same prediction whichever other samples are asked for, and a test sample's
prediction carries the state built over the training and validation bars before it (inputs
only; no label is read).

Training (:func:`tbptt_pieces`) cuts every symbol's run of consecutive training samples into
pieces of ``piece`` bars at a random phase per epoch. A piece's stream starts ``window - 1``
bars before its first sample (the burn-in, run without gradients, as a backtest's stream
starts with the warm-up) and is then trained in chunks of ``tbptt`` bars, the state detached
between chunks (truncated backpropagation through time).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mlmodels.dataset import WindowDataset


def is_streaming(model: nn.Module) -> bool:
    """True for a streaming preset (``ModelConfig.streaming``)."""
    return bool(getattr(getattr(model, "cfg", None), "streaming", False))


def stream_starts(ds: WindowDataset) -> np.ndarray:
    """Per symbol of ``ds``, the row of ``ds.rows`` where its stream starts."""
    starts = np.full(len(ds.symbols), -1, dtype=np.int64)
    for k in range(len(ds.symbols)):
        rows = ds.sample_row[ds.sample_symbol == k]
        if len(rows):
            starts[k] = int(rows.min()) - ds.window + 1
    return starts


@torch.no_grad()
def stream_paths(
    model: nn.Module, ds: WindowDataset, idx: np.ndarray, streams: int = 32
) -> torch.Tensor:
    """``model.paths_sequence`` at the bars of samples ``idx``, ``(len(idx), D)``, each
    symbol's stream run from its start (module docstring) to its last sample asked for,
    ``streams`` symbols at a time (shorter streams padded at the end: causal, so unread)."""
    idx = np.asarray(idx)
    starts = stream_starts(ds)
    sym, rows = ds.sample_symbol[idx], ds.sample_row[idx]
    out: torch.Tensor | None = None
    wanted = np.unique(sym)
    for g in range(0, len(wanted), streams):
        group = wanted[g : g + streams]
        ends = np.array([rows[sym == k].max() for k in group])
        length = int((ends - starts[group]).max()) + 1
        x = np.zeros((len(group), length, ds.rows.shape[1]), dtype=np.float32)
        for b, k in enumerate(group):
            x[b, : ends[b] - starts[k] + 1] = ds.rows[starts[k] : ends[b] + 1]
        seq, _ = model.paths_sequence(torch.from_numpy(x), model.init_state(len(group)))  # type: ignore[operator]
        for b, k in enumerate(group):
            mine = np.flatnonzero(sym == k)
            if out is None:
                out = seq.new_empty((len(idx), seq.shape[-1]))
            out[torch.from_numpy(mine)] = seq[b, torch.from_numpy(rows[mine] - starts[k])]
    assert out is not None, "no sample asked for"
    return out


def sample_batches(
    model: nn.Module, ds: WindowDataset, idx: np.ndarray, batch_size: int = 1024
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """``(samples, outputs)`` over ``idx`` in batches: ``model(windows, positions)`` for a
    windowed preset, the heads over :func:`stream_paths` for a streaming one. Call it in
    inference mode (or ``no_grad``) unless gradients are wanted."""
    idx = np.asarray(idx)
    paths = stream_paths(model, ds, idx) if is_streaming(model) and len(idx) else None
    for b in range(0, len(idx), batch_size):
        part = idx[b : b + batch_size]
        pos = torch.from_numpy(ds.position[part])
        if paths is None:
            yield part, model(torch.from_numpy(ds.x(part)), pos)
        else:
            yield part, model.from_paths(paths[b : b + batch_size], pos)  # type: ignore[operator]


@dataclass(frozen=True)
class Piece:
    """Consecutive samples of one symbol trained as one stream."""

    samples: np.ndarray  # sample indices, consecutive rows
    first_row: int  # the row the stream starts at (burn-in included)


def tbptt_pieces(
    ds: WindowDataset, train: np.ndarray, piece: int, rng: np.random.Generator
) -> list[Piece]:
    """The training samples ``train`` cut into pieces of at most ``piece`` consecutive bars,
    at a random phase per run of consecutive rows (module docstring); in random order."""
    out: list[Piece] = []
    train = np.asarray(train)
    for k in np.unique(ds.sample_symbol[train]):
        mine = train[ds.sample_symbol[train] == k]
        mine = mine[np.argsort(ds.sample_row[mine], kind="stable")]
        breaks = np.flatnonzero(np.diff(ds.sample_row[mine]) != 1) + 1
        for run in np.split(mine, breaks):
            phase = int(rng.integers(0, min(piece, len(run))))
            for part in np.split(run, [c for c in range(phase, len(run), piece) if c > 0]):
                if len(part):
                    out.append(Piece(part, int(ds.sample_row[part[0]]) - ds.window + 1))
    return [out[i] for i in rng.permutation(len(out))]


def piece_batch(
    ds: WindowDataset, pieces: list[Piece]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Burn-in inputs ``(B, window - 1, F)``, inputs ``(B, T, F)`` and positions ``(B, T, 3)``
    of the pieces' decision bars (zero-padded to the longest), and their samples ``(B, T)``
    (``-1`` where padded)."""
    burn, steps = ds.window - 1, max(len(p.samples) for p in pieces)
    width = ds.rows.shape[1]
    warm = np.zeros((len(pieces), burn, width), dtype=np.float32)
    x = np.zeros((len(pieces), steps, width), dtype=np.float32)
    pos = np.zeros((len(pieces), steps, 3), dtype=np.float32)
    samples = np.full((len(pieces), steps), -1, dtype=np.int64)
    for b, p in enumerate(pieces):
        n = len(p.samples)
        warm[b] = ds.rows[p.first_row : p.first_row + burn]
        x[b, :n] = ds.rows[p.first_row + burn : p.first_row + burn + n]
        pos[b, :n] = ds.position[p.samples]
        samples[b, :n] = p.samples
    return torch.from_numpy(warm), torch.from_numpy(x), torch.from_numpy(pos), samples
