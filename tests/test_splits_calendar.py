"""Purge and embargo per symbol calendar: a 24/7 crypto pair beside a stock.

A sample's label reads 24 bars of its *own* symbol: 24 days of the pair but about 34 days of
the stock. Purging by positions on the union calendar (every day) let the stock's last training
labels run about ten days, 6 to 8 stock bars, into the next period.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlmodels.splits import WalkForward, _purged, _reach, chronological_split

LOOKAHEAD = 24


def mixed_samples(days: int = 900) -> tuple[pd.DatetimeIndex, np.ndarray, list[pd.DatetimeIndex]]:
    """Decision times as ``build_dataset`` lays them out: the pair's then the stock's, each
    every bar but the last ``LOOKAHEAD`` (their labels would be incomplete)."""
    crypto = pd.date_range("2021-01-01", periods=days, freq="D", tz="UTC")
    stock = pd.bdate_range(crypto[0], crypto[-1])
    bars = [crypto, stock]
    times = bars[0][:-LOOKAHEAD].append(bars[1][:-LOOKAHEAD])
    symbols = np.repeat([0, 1], [len(b) - LOOKAHEAD for b in bars])
    return times, symbols, bars


def label_ends(times: pd.DatetimeIndex, symbols: np.ndarray, bars, idx) -> pd.DatetimeIndex:  # type: ignore[no-untyped-def]
    """The bar each sample's label ends on, ``LOOKAHEAD`` bars later on its own calendar."""
    out = []
    for i in idx:
        own = bars[symbols[i]]
        out.append(own[own.get_loc(times[i]) + LOOKAHEAD])
    return pd.DatetimeIndex(out)


@pytest.mark.parametrize("pass_symbols", [True, False])
def test_no_label_crosses_a_chronological_cut(pass_symbols: bool) -> None:
    times, symbols, bars = mixed_samples()
    s = chronological_split(times, lookahead=LOOKAHEAD, symbols=symbols if pass_symbols else None)
    val_start, test_start = times[s.val].min(), times[s.test].min()
    assert (label_ends(times, symbols, bars, s.train) < val_start).all()
    assert (label_ends(times, symbols, bars, s.val) < test_start).all()
    # the purge is no wider than needed: the stock keeps the sample whose label ends just before
    stock_train = s.train[symbols[s.train] == 1]
    assert (
        label_ends(times, symbols, bars, stock_train[-1:])[0]
        == bars[1][bars[1].searchsorted(val_start) - 1]
    )


def test_no_label_crosses_a_walk_forward_test() -> None:
    times, symbols, bars = mixed_samples(1100)
    wf = WalkForward(n_splits=3, test_size=120, lookahead=LOOKAHEAD, val_fraction=0.15)
    for fold in wf.split(times):  # symbols inferred from the layout
        test_start = times[fold.test].min()
        assert (label_ends(times, symbols, bars, fold.train) < test_start).all()
        assert (label_ends(times, symbols, bars, fold.val) < test_start).all()
        assert (label_ends(times, symbols, bars, fold.train) < times[fold.val].min()).all()


def test_embargo_counts_the_symbols_own_bars() -> None:
    """After an evaluation period, the embargo drops each symbol's next ``embargo`` bars."""
    times, symbols, bars = mixed_samples(200)
    cal = np.unique(times.asi8)
    pos = np.searchsorted(cal, times.asi8)
    reach = _reach(times, pos, symbols, LOOKAHEAD, embargo=5)
    friday = pd.Timestamp("2021-03-05", tz="UTC")
    end = int(pos[np.flatnonzero(times == friday)[0]])
    kept = _purged(np.arange(len(times)), pos, reach, end - 40, end)
    for sym, first in ((0, "2021-03-11"), (1, "2021-03-15")):  # five own bars after Friday
        own = bars[sym]
        assert own[own > friday][5] == pd.Timestamp(first, tz="UTC")
        assert times[kept[(symbols[kept] == sym) & (pos[kept] > end)]].min() == own[own > friday][5]
