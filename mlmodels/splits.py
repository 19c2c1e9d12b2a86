"""Leak-proof splits over sample times: chronological 70/15/15 and walk-forward.

Samples are identified by their decision time ``t`` (the last bar of their window); a sample's
label reads bars up to ``t + lookahead``. Splits cut the *calendar* (shared by all symbols), so
no symbol's future sits in another symbol's training set. Purging drops training samples whose
label window reaches the next evaluation period; the embargo also drops training samples that
start within ``embargo`` bars after an evaluation period (for rolling schemes where training
follows a test period).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.config import DataConfig
from core.errors import ConfigError, DataError


@dataclass(frozen=True)
class Split:
    """Positions (into the sample arrays) of each part; ``val`` may be empty."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def _purge(
    train: np.ndarray,
    times_pos: np.ndarray,
    lookahead: int,
    eval_start_pos: int,
    eval_end_pos: int,
    embargo: int,
) -> np.ndarray:
    """Keep train samples whose label ends before the eval period and that are not embargoed."""
    t = times_pos[train]
    label_end = t + lookahead
    before = label_end < eval_start_pos
    after = t > eval_end_pos + embargo
    return train[before | after]


def chronological_split(
    times: pd.DatetimeIndex | np.ndarray,
    *,
    lookahead: int,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    embargo: int = 0,
    min_samples: int = 10,
) -> Split:
    """Split samples by calendar into train / validation / test (70/15/15 by default), purged."""
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ConfigError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    cal, pos = _calendar(times)
    n = len(cal)
    a = int(round(n * fractions[0]))
    b = int(round(n * (fractions[0] + fractions[1])))
    idx = np.arange(len(pos))
    train, val, test = idx[pos < a], idx[(pos >= a) & (pos < b)], idx[pos >= b]
    train = _purge(train, pos, lookahead, a, n, embargo)
    val = _purge(val, pos, lookahead, b, n, embargo) if len(val) else val
    for name, part in (("train", train), ("validation", val), ("test", test)):
        if len(part) < min_samples and (name != "validation" or fractions[1] > 0):
            raise DataError(
                f"too few samples for the {name} split: {len(part)} (< {min_samples}); "
                f"{n} bars of samples in all; use more history or a shorter window"
            )
    return Split(train, val, test, cal[b], cal[-1])


def _calendar(times: pd.DatetimeIndex | np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    t = pd.DatetimeIndex(times)
    cal = (
        pd.DatetimeIndex(np.unique(t.asi8)).tz_localize(t.tz)
        if t.tz
        else pd.DatetimeIndex(np.unique(t.asi8))
    )
    return cal, np.searchsorted(cal.asi8, t.asi8)


@dataclass(frozen=True, kw_only=True)
class WalkForward(DataConfig):
    """Walk-forward folds: an expanding or rolling training window, then a fixed-length test.

    ``test_size`` and ``train_size`` count calendar bars; ``val_fraction`` of each training
    window's end (purged too) is held out for early stopping and model selection.
    """

    n_splits: int = 5
    test_size: int = 252
    train: str = "expanding"
    train_size: int | None = None
    lookahead: int = 24
    embargo: int = 0
    val_fraction: float = 0.15
    min_train: int = 100

    def __post_init__(self) -> None:
        if self.n_splits < 1:
            raise ConfigError(f"n_splits must be >= 1, got {self.n_splits}")
        if self.test_size < 1:
            raise ConfigError(f"test_size must be >= 1, got {self.test_size}")
        if self.train not in ("expanding", "rolling"):
            raise ConfigError(f"train must be 'expanding' or 'rolling', got {self.train!r}")
        if self.train == "rolling" and not self.train_size:
            raise ConfigError("a rolling window needs train_size (bars)")
        if self.train_size is not None and self.train_size < 1:
            raise ConfigError(f"train_size must be >= 1 bar, got {self.train_size}")
        if not 0 <= self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")

    def split(self, times: pd.DatetimeIndex | np.ndarray) -> Iterator[Split]:
        """Yield folds over samples with decision ``times``, the last fold ending at the data's end."""
        cal, pos = _calendar(times)
        n = len(cal)
        first_test = n - self.n_splits * self.test_size
        if first_test < self.min_train + self.lookahead:
            raise DataError(
                f"too few bars for {self.n_splits} folds of {self.test_size}: {n} bars, need at least "
                f"{self.n_splits * self.test_size + self.min_train + self.lookahead}"
            )
        idx = np.arange(len(pos))
        for k in range(self.n_splits):
            a = first_test + k * self.test_size
            b = min(a + self.test_size, n)
            lo = (
                0
                if self.train == "expanding"
                else max(0, a - self.lookahead - (self.train_size or 0))
            )
            window = idx[(pos >= lo) & (pos < a)]
            window = _purge(window, pos, self.lookahead, a, b - 1, self.embargo)
            v0 = lo + int((a - lo) * (1 - self.val_fraction))
            train = _purge(window[pos[window] < v0], pos, self.lookahead, v0, a - 1, self.embargo)
            val = window[pos[window] >= v0] if self.val_fraction > 0 else window[:0]
            if self.val_fraction == 0:
                train = window
            yield Split(train, val, idx[(pos >= a) & (pos < b)], cal[a], cal[b - 1])
