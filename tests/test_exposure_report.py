"""A strategy that never trades, or buys once and holds, is reported as what it is: trades
count open positions, and the summary says "never traded" / "buy and hold" (research issue)."""

from __future__ import annotations

import backtrader as bt
import pandas as pd
import pytest

from analyzers.backtest import CostConfig, activity_lines, run_backtest
from btml.backtest_cli import summary
from feeds.sample import load_sample
from strategies.baselines import BuyAndHold
from workflows.backtest import summary_metrics


@pytest.fixture(scope="module")
def sample() -> dict[str, pd.DataFrame]:
    return load_sample()


class _Idle(bt.Strategy):  # type: ignore[misc]
    """Never places an order."""


def _frames(sample: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {s: sample[s].loc["2006-01-01":"2007-12-31"] for s in ("AAPL", "MSFT")}


def test_buy_and_hold_counts_its_open_positions_and_says_so(
    sample: dict[str, pd.DataFrame],
) -> None:
    res = run_backtest("hold", _frames(sample), BuyAndHold, costs=CostConfig())
    s = res.stats
    # before: trades 0 (only closed trades counted), indistinguishable from a strategy's
    assert (s.trades, s.round_trips, s.open_positions) == (2, 0, 2)
    assert s.exposure is not None and s.exposure > 0.99
    assert s.activity == f"exposure {s.exposure:.1%}, 0 round trips: buy and hold"
    assert activity_lines([res]) == [f"hold: {s.activity}"]
    assert summary([res]).splitlines()[-1] == f"hold: {s.activity}"
    metrics = summary_metrics([res])
    assert metrics["trades"] == 2 and metrics["round_trips"] == 0
    assert metrics["exposure"] == s.exposure and metrics["activity"] == s.activity


def test_a_strategy_that_never_trades_says_never_traded(
    sample: dict[str, pd.DataFrame],
) -> None:
    res = run_backtest("idle", _frames(sample), _Idle, costs=CostConfig())
    assert (res.stats.trades, res.stats.exposure, res.stats.activity) == (0, 0.0, "never traded")
    assert summary_metrics([res])["activity"] == "never traded"
