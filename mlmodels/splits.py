"""Leak-proof splits over sample times: chronological 70/15/15 and walk-forward.

Samples are identified by their decision time ``t`` (the last bar of their window); a sample's
label reads its own symbol's bars up to ``lookahead`` bars after ``t``. Splits cut the *calendar*
(the union of all sample times, shared by all symbols), so no symbol's future sits in another
symbol's training set. Purging drops training samples whose label ends at or after the start of
the next evaluation period; the embargo also drops training samples that start within
``embargo`` bars after an evaluation period (for rolling schemes where training follows a test
period).

Both counts are bars of the sample's *own* symbol: 24 bars of a stock span 34 days, 24 bars of a
24/7 crypto pair 24 days. On the union calendar of both, 24 positions are 24 days, and the
stock's labels ran up to ten days into the next period (6 to 8 leaking labels per cut). The end
of each label is therefore read from the symbol's own sample times: pass ``symbols`` (one id per
sample), or keep each symbol's samples contiguous and in time order, as ``build_dataset`` lays
them out (a new symbol starts where time goes back). A label that ends after the symbol's last
sample (a series that stops before the evaluation period) counts as reaching it and is purged.
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
    """:func:`_purged` for samples that all share one calendar (reach = position +- bars)."""
    reach = (times_pos + lookahead, times_pos - embargo)
    return _purged(train, times_pos, reach, eval_start_pos, eval_end_pos)


def _purged(
    train: np.ndarray,
    pos: np.ndarray,
    reach: tuple[np.ndarray, np.ndarray],
    eval_start_pos: int,
    eval_end_pos: int,
) -> np.ndarray:
    """Keep train samples whose label ends before the eval period, or that start after it and
    its embargo; ``reach`` is :func:`_reach`'s (label end, embargo start) per sample."""
    label_end, back = reach
    before = label_end[train] < eval_start_pos
    after = (pos[train] > eval_end_pos) & (back[train] > eval_end_pos)
    return train[before | after]


def _series(times_ns: np.ndarray, symbols: np.ndarray | None) -> list[np.ndarray]:
    """Sample positions of each symbol's series, in time order."""
    if symbols is not None:
        sym = np.asarray(symbols)
        if len(sym) != len(times_ns):
            raise DataError(f"{len(sym)} symbols for {len(times_ns)} sample times; give one each")
        order = np.lexsort((times_ns, sym))
        starts = np.flatnonzero(sym[order][1:] != sym[order][:-1]) + 1
        return np.split(order, starts)
    starts = np.flatnonzero(np.diff(times_ns) <= 0) + 1
    return np.split(np.arange(len(times_ns)), starts)


def _reach(
    times: pd.DatetimeIndex | np.ndarray,
    pos: np.ndarray,
    symbols: np.ndarray | None,
    lookahead: int,
    embargo: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, as calendar positions: the bar its label ends on, ``lookahead`` bars later in
    its own series (past the series' end: beyond every position), and the bar ``embargo`` bars
    before it in its own series (before the series' start: -1)."""
    label_end = np.full(len(pos), np.iinfo(np.int64).max)
    back = np.full(len(pos), -1, dtype=np.int64)
    for g in _series(pd.DatetimeIndex(times).asi8, symbols):
        p, k = pos[g], len(g)
        if lookahead < k:
            label_end[g[: k - lookahead]] = p[lookahead:]
        if embargo < k:
            back[g[embargo:]] = p[: k - embargo]
    return label_end, back


def chronological_split(
    times: pd.DatetimeIndex | np.ndarray,
    *,
    lookahead: int,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    embargo: int = 0,
    min_samples: int = 10,
    symbols: np.ndarray | None = None,
) -> Split:
    """Split samples by calendar into train / validation / test (70/15/15 by default), purged
    per symbol calendar (``symbols``: one id per sample; see the module docstring)."""
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ConfigError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    cal, pos = _calendar(times)
    reach = _reach(times, pos, symbols, lookahead, embargo)
    n = len(cal)
    a = int(round(n * fractions[0]))
    b = int(round(n * (fractions[0] + fractions[1])))
    idx = np.arange(len(pos))
    train, val, test = idx[pos < a], idx[(pos >= a) & (pos < b)], idx[pos >= b]
    train = _purged(train, pos, reach, a, n)
    val = _purged(val, pos, reach, b, n) if len(val) else val
    for name, part in (("train", train), ("validation", val), ("test", test)):
        if len(part) < min_samples and (name != "validation" or fractions[1] > 0):
            raise DataError(
                f"too few samples for the {name} split: {len(part)} (< {min_samples}); "
                f"{n} bars of samples in all; use more history or a shorter window"
            )
    return Split(train, val, test, cal[b], cal[-1])


def _calendar(times: pd.DatetimeIndex | np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """The sorted distinct times (the union calendar, in the input's unit and zone) and each
    sample's position on it."""
    t = pd.DatetimeIndex(times)
    cal = t.unique().sort_values()
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

    def split(
        self, times: pd.DatetimeIndex | np.ndarray, symbols: np.ndarray | None = None
    ) -> Iterator[Split]:
        """Yield folds over samples with decision ``times`` (and ``symbols``, one id each; see
        the module docstring), the last fold ending at the data's end."""
        cal, pos = _calendar(times)
        reach = _reach(times, pos, symbols, self.lookahead, self.embargo)
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
            window = _purged(window, pos, reach, a, b - 1)
            v0 = lo + int((a - lo) * (1 - self.val_fraction))
            train = _purged(window[pos[window] < v0], pos, reach, v0, a - 1)
            val = window[pos[window] >= v0] if self.val_fraction > 0 else window[:0]
            if self.val_fraction == 0:
                train = window
            yield Split(train, val, idx[(pos >= a) & (pos < b)], cal[a], cal[b - 1])
