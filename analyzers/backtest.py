"""Run a strategy over frames in a Cerebro with realistic costs and collect its statistics."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import backtrader as bt
import pandas as pd

from analyzers.metrics import Performance, performance
from core.config import DataConfig
from core.errors import ConfigError
from feeds.btfeeds import StoreData
from feeds.membership import Membership

#: The baselines a model's backtest runs beside, at the same costs (``--baseline`` names).
BASELINES = ("buyhold", "sma")


@dataclass(frozen=True, kw_only=True)
class CostConfig(DataConfig):
    """Trading costs: commission and slippage as fractions of traded value.

    Defaults: 0.1 % commission and 10 bps slippage; market orders fill at the next bar's open.
    """

    cash: float = 100_000.0
    commission: float = 0.001
    slippage: float = 0.001

    def __post_init__(self) -> None:
        if self.cash <= 0:
            raise ConfigError(f"cash must be > 0, got {self.cash}")
        if not 0 <= self.commission < 0.1:
            raise ConfigError(f"commission must be in [0, 0.1), got {self.commission}")
        if not 0 <= self.slippage < 0.1:
            raise ConfigError(f"slippage must be in [0, 0.1), got {self.slippage}")


@dataclass(frozen=True)
class BacktestResult:
    """The run's returns, final value and headline statistics; ``metrics`` and ``notes`` are
    what the run adds to its record and its printed summary (the entry rule ``auto`` chose)."""

    name: str
    returns: pd.Series
    final_value: float
    stats: Performance
    strategy: Any = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def run_backtest(
    name: str,
    frames: Mapping[str, pd.DataFrame],
    strategy: type[bt.Strategy],
    *,
    costs: CostConfig | None = None,
    strategy_kwargs: Mapping[str, Any] | None = None,
    analyzers: Mapping[str, tuple[type, Mapping[str, Any]]] | None = None,
    membership: Membership | None = None,
    **cerebro_kwargs: Any,
) -> BacktestResult:
    """Backtest ``strategy`` over ``frames`` (one feed each) and return its statistics.

    ``analyzers`` adds ``{name: (AnalyzerClass, kwargs)}``; the finished strategy (with its
    analyzers) is in the result's ``strategy``. ``membership`` (point in time) restricts the
    broker to the members of each bar (``analyzers.membership_broker``). ``cerebro_kwargs`` go
    to ``bt.Cerebro`` (``runonce``, ``preload``, ...).
    """
    costs = costs or CostConfig()
    if not frames:
        raise ConfigError("run_backtest needs at least one frame")
    cerebro = bt.Cerebro(stdstats=False, **cerebro_kwargs)
    if membership is not None:
        from analyzers.membership_broker import MembershipBroker

        cerebro.broker = MembershipBroker(membership=membership)  # type: ignore[call-arg]
    cerebro.broker.setcash(costs.cash)
    cerebro.broker.setcommission(commission=costs.commission)
    cerebro.broker.set_slippage_perc(costs.slippage, slip_open=True, slip_match=True)
    for sym, frame in frames.items():
        cerebro.adddata(StoreData(dataname=frame, name=sym))
    cerebro.addstrategy(strategy, **dict(strategy_kwargs or {}))
    cerebro.addanalyzer(bt.analyzers.TimeReturn, _name="timereturn")
    cerebro.addanalyzer(bt.analyzers.TradeAnalyzer, _name="trades")
    cerebro.addanalyzer(Exposure, _name="held")
    for aname, (cls, kwargs) in (analyzers or {}).items():
        cerebro.addanalyzer(cls, _name=aname, **dict(kwargs))
    strat = cerebro.run()[0]
    rets = pd.Series(strat.analyzers.timereturn.get_analysis(), dtype="float64")
    rets.index = pd.DatetimeIndex(rets.index).tz_localize("UTC")  # backtrader's clock is UTC
    trades = strat.analyzers.trades.get_analysis()
    closed = int(trades.get("total", {}).get("closed", 0)) if trades else 0
    held = strat.analyzers.held.get_analysis()
    stats = dataclasses.replace(
        performance(rets, trades=closed + held["open_positions"]), round_trips=closed,
        open_positions=held["open_positions"], exposure=held["exposure"],
    )  # fmt: skip
    return BacktestResult(name, rets, float(cerebro.broker.getvalue()), stats, strat)


class Exposure(bt.Analyzer):  # type: ignore[misc]
    """The share of bars on which any position is held (``exposure``) and the number of
    positions still open at the end (``open_positions``): a strategy that buys once and
    holds closes no trade, and must not look like one that never traded."""

    def start(self) -> None:
        self.bars = 0
        self.held = 0

    def next(self) -> None:
        self.bars += 1
        if any(self.strategy.getposition(d).size for d in self.strategy.datas):
            self.held += 1

    def get_analysis(self) -> dict[str, Any]:
        open_now = sum(1 for d in self.strategy.datas if self.strategy.getposition(d).size)
        return {"exposure": self.held / self.bars if self.bars else 0.0,
                "open_positions": open_now}  # fmt: skip


def activity_lines(results: Sequence[BacktestResult]) -> list[str]:
    """A line under a results table for each run whose trade count would mislead
    (:attr:`analyzers.metrics.Performance.activity`); trades count open positions too."""
    return [f"{r.name}: {r.stats.activity}" for r in results if r.stats.activity]
