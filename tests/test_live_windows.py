"""``LiveFeatureWindows``: the live strategy's windows equal the backtest's on the same bars."""

from __future__ import annotations

from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from feeds.btfeeds import StoreData
from feeds.sources.synthetic import SyntheticConfig, generate_market
from mlmodels.features import WARMUP, feature_names
from strategies.windows import FeatureWindows, LiveFeatureWindows

NAMES = list(feature_names(with_index=False))


class _Compare(bt.Strategy):  # type: ignore[misc]
    params = (("live", None), ("pre", None))

    def __init__(self) -> None:
        self.diffs: list[float] = []
        self.both = 0
        self.none = 0

    def next(self) -> None:
        d = self.datas[0]
        ts = pd.Timestamp(d.datetime.datetime(0), tz="UTC").value
        a, b = self.p.live.window_for(d, ts), self.p.pre.window_for(d, ts)
        if a is None or b is None:
            assert (a is None) == (b is None) or len(d) < self.p.live.need
            self.none += 1
            return
        self.both += 1
        self.diffs.append(float(np.abs(a - b).max()))


def _run(frame: pd.DataFrame, live: LiveFeatureWindows, pre: FeatureWindows) -> Any:
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(StoreData(dataname=frame, name="SYN000"))
    cerebro.addstrategy(_Compare, live=live, pre=pre)
    return cerebro.run()[0]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    market = generate_market(SyntheticConfig(n_symbols=1, n_bars=600, seed=3))
    return next(iter(market.values()))


def test_live_windows_equal_the_backtest_windows_with_full_history(frame: pd.DataFrame) -> None:
    pre = FeatureWindows.build({"SYN000": frame}, NAMES, 10)
    live = LiveFeatureWindows(NAMES, 10, history=len(frame))
    strat = _run(frame, live, pre)
    assert strat.both > 300 and max(strat.diffs) < 1e-5


def test_a_short_history_needs_the_warmup_and_window(frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match=f"feature warm-up {WARMUP} \\+ window 10"):
        LiveFeatureWindows(NAMES, 10, history=50)
    pre = FeatureWindows.build({"SYN000": frame}, NAMES, 10)
    live = LiveFeatureWindows(NAMES, 10, history=WARMUP + 10)
    strat = _run(frame, live, pre)
    assert strat.both > 300  # a window at every bar once the history is there
