"""Windowed multi-task datasets over many symbols, built on views rather than copies.

Each symbol's feature rows are stored once, back to back, in one float32 array ``(rows, F)``.
A sample is a decision time ``t`` of one symbol: its input is the ``window`` feature rows ending
at ``t`` (a view into that array), its targets are the labels at ``t`` (see
:mod:`mlmodels.labels`), and its position state is ``(position, unrealised log P&L, bars held)``
of a causal reference trader (long when the last 20-bar return is positive, short when
negative), so the position head sees realistic states in training; at serving time the strategy
passes its own.

100 symbols x 5000 bars x 60 features costs 120 MB here, where materialised 60-bar windows would
take 7 GB. Scaling statistics (mean and standard deviation per feature) are fit on the rows the
training samples cover, never on validation or test rows, and are saved for serving.

The feature rows come from ``compute`` (default :func:`mlmodels.features.compute_features`),
whose first complete row is ``warmup`` (default ``WARMUP``): the user's own features enter with
``compute=user.table, warmup=user.total_warmup`` (:mod:`mlmodels.user_features`), the same
functions the strategy's windows and the model card use.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.config import DataConfig
from core.errors import ConfigError, DataError
from mlmodels.labels import LABEL_COLUMNS, LabelConfig, make_labels
from mlmodels.selection import Selection

POSITION_STATE: tuple[str, ...] = ("position", "unrealised_pnl", "bars_held")
Compute = Callable[[pd.DataFrame, pd.DataFrame | None], pd.DataFrame]
_REF_LOOKBACK = 20


@dataclass(frozen=True, kw_only=True)
class DatasetConfig(DataConfig):
    """Window length, label definitions and the (optional) feature selection to apply."""

    window: int = 60
    labels: LabelConfig = field(default_factory=LabelConfig)
    selection: Selection | None = None
    skip_short: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.window <= 1000:
            raise ConfigError(f"window must be in [2, 1000], got {self.window}")


@dataclass(frozen=True)
class Scaler:
    """Per-feature standardisation fit on training rows: ``(x - mean) / std``, clipped to +-10."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.mean) / self.std, -10.0, 10.0).astype(np.float32)

    def to_dict(self) -> dict[str, list[float] | list[str]]:
        return {"names": list(self.names), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[object]]) -> Scaler:
        return cls(
            tuple(map(str, d["names"])),
            np.asarray(d["mean"], dtype=np.float64),
            np.asarray(d["std"], dtype=np.float64),
        )


def reference_position_state(close: np.ndarray) -> np.ndarray:
    """(T, 3) causal position state of the reference trend follower (see module docstring)."""
    n = len(close)
    pos = np.zeros(n)
    if n > _REF_LOOKBACK:
        pos[_REF_LOOKBACK:] = np.sign(close[_REF_LOOKBACK:] / close[:-_REF_LOOKBACK] - 1.0)
    held = np.zeros(n)
    entry = close.copy()
    for t in range(1, n):  # one pass; the state machine is inherently sequential
        if pos[t] == pos[t - 1] and pos[t] != 0:
            held[t] = held[t - 1] + 1
            entry[t] = entry[t - 1]
    pnl = pos * np.log(close / entry)
    return np.stack([pos, pnl, held], axis=1)


@dataclass
class WindowDataset:
    """Samples over many symbols; ``x(idx)`` gathers windows, the rest are per-sample arrays."""

    feature_names: tuple[str, ...]
    window: int
    rows: np.ndarray  # (R, F) float32, every symbol's feature rows back to back
    sample_row: np.ndarray  # (S,) row in ``rows`` of each sample's decision time
    sample_symbol: np.ndarray  # (S,) index into ``symbols``
    times: pd.DatetimeIndex  # (S,) decision times
    symbols: tuple[str, ...]
    targets: dict[str, np.ndarray]
    position: np.ndarray  # (S, 3) float32
    scaler: Scaler | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_row)

    def x(self, idx: np.ndarray | Sequence[int]) -> np.ndarray:
        """(B, window, F) float32 windows of samples ``idx`` (a copy of the batch only)."""
        view = np.lib.stride_tricks.sliding_window_view(self.rows, self.window, axis=0)
        # view[r] covers rows r .. r+window-1 as (F, window)
        starts = self.sample_row[np.asarray(idx)] - self.window + 1
        return np.ascontiguousarray(view[starts].transpose(0, 2, 1))

    def window_view(self, i: int) -> np.ndarray:
        """The (window, F) input of sample ``i``, as a view (no copy)."""
        r = int(self.sample_row[i])
        return self.rows[r - self.window + 1 : r + 1]

    def fit_scaler(self, train: np.ndarray) -> Scaler:
        """Fit scaling on the rows the ``train`` samples cover, apply it to all rows, return it."""
        if self.scaler is not None:
            raise DataError("the dataset is already scaled; build a new one to refit")
        mask = np.zeros(len(self.rows), dtype=bool)
        rows = self.sample_row[train]
        for s in np.unique(self.sample_symbol[train]):
            r = rows[self.sample_symbol[train] == s]
            mask[r.min() - self.window + 1 : r.max() + 1] = True
        fit = self.rows[mask].astype(np.float64)
        mean = fit.mean(axis=0)
        std = fit.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        self.scaler = Scaler(self.feature_names, mean, std)
        self.rows = self.scaler.transform(self.rows)
        return self.scaler

    def apply_scaler(self, scaler: Scaler) -> None:
        """Scale with statistics fit elsewhere (serving, or a later fold's test data)."""
        if scaler.names != self.feature_names:
            raise DataError(
                f"scaler features {len(scaler.names)} differ from the dataset's {len(self.feature_names)}"
            )
        self.scaler = scaler
        self.rows = scaler.transform(self.rows)


def _symbol_block(
    sym: str,
    frame: pd.DataFrame,
    index: pd.DataFrame | None,
    cfg: DatasetConfig,
    compute: Compute,
    warmup: int,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray, tuple[str, ...]]:
    need = warmup + cfg.window + cfg.labels.lookahead
    if len(frame) < need:
        raise DataError(
            f"{sym}: {len(frame)} bars, needs at least {need} (feature warm-up {warmup} + window "
            f"{cfg.window} + label lookahead {cfg.labels.lookahead})"
        )
    feats = compute(frame, index)
    if cfg.selection is not None:
        feats = cfg.selection.transform(feats)
    labels = make_labels(frame, cfg.labels)
    first = warmup + cfg.window - 1
    last = len(frame) - 1 - cfg.labels.lookahead
    t = np.arange(first, last + 1)
    pos_state = reference_position_state(frame["close"].to_numpy(dtype=np.float64))
    return feats.to_numpy(dtype=np.float32), t, labels.iloc[t], pos_state[t], tuple(feats.columns)


def build_dataset(
    frames: Mapping[str, pd.DataFrame],
    cfg: DatasetConfig | None = None,
    index: pd.DataFrame | None = None,
    *,
    compute: Compute | None = None,
    warmup: int | None = None,
) -> WindowDataset:
    """Build a dataset from canonical OHLCV ``frames`` (and an optional market index frame).

    ``compute(frame, index)`` gives a symbol's feature table (default ``compute_features``)
    and ``warmup`` its first complete row (default ``WARMUP``); give both or neither.
    """
    from mlmodels.features import WARMUP, compute_features

    if (compute is None) != (warmup is None):
        raise ConfigError("build_dataset: give compute= and warmup= together (or neither)")
    compute = compute or compute_features
    warmup = WARMUP if warmup is None else warmup
    if warmup < 0:
        raise ConfigError(f"build_dataset: warmup must be >= 0, got {warmup}")
    cfg = cfg or DatasetConfig()
    blocks, rows_off, skipped = [], 0, {}
    names: tuple[str, ...] | None = None
    for sym, frame in frames.items():
        try:
            feats, t, lab, pos, fnames = _symbol_block(sym, frame, index, cfg, compute, warmup)
        except DataError as err:
            if not cfg.skip_short or "needs at least" not in str(err):
                raise
            skipped[sym] = str(err)
            warnings.warn(str(err), stacklevel=2)
            continue
        names = names or fnames
        blocks.append((sym, feats, t + rows_off, frame.index[t], lab, pos))
        rows_off += len(feats)
    if not blocks:
        raise DataError(
            "no symbol has enough history for the dataset: " + "; ".join(skipped.values())
        )
    assert names is not None
    return WindowDataset(
        feature_names=tuple(names),
        window=cfg.window,
        rows=np.concatenate([b[1] for b in blocks]),
        sample_row=np.concatenate([b[2] for b in blocks]),
        sample_symbol=np.concatenate([np.full(len(b[2]), k) for k, b in enumerate(blocks)]),
        times=pd.DatetimeIndex(np.concatenate([b[3].asi8 for b in blocks])).tz_localize("UTC"),
        symbols=tuple(b[0] for b in blocks),
        targets={
            c: np.concatenate([b[4][c].to_numpy() for b in blocks]).astype(np.float32)
            for c in LABEL_COLUMNS
        },
        position=np.concatenate([b[5] for b in blocks]).astype(np.float32),
        skipped=skipped,
    )
