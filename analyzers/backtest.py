"""Run a strategy over frames in a Cerebro with realistic costs and collect its statistics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import backtrader as bt
import pandas as pd

from analyzers.metrics import Performance, performance
from core.config import DataConfig
from core.errors import ConfigError
from feeds.btfeeds import StoreData

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
    """The run's returns, final value and headline statistics."""

    name: str
    returns: pd.Series
    final_value: float
    stats: Performance
    strategy: Any = None


def run_backtest(
    name: str,
    frames: Mapping[str, pd.DataFrame],
    strategy: type[bt.Strategy],
    *,
    costs: CostConfig | None = None,
    strategy_kwargs: Mapping[str, Any] | None = None,
    analyzers: Mapping[str, tuple[type, Mapping[str, Any]]] | None = None,
    **cerebro_kwargs: Any,
) -> BacktestResult:
    """Backtest ``strategy`` over ``frames`` (one feed each) and return its statistics.

    ``analyzers`` adds ``{name: (AnalyzerClass, kwargs)}``; the finished strategy (with its
    analyzers) is in the result's ``strategy``. ``cerebro_kwargs`` go to ``bt.Cerebro``
    (``runonce``, ``preload``, ...).
    """
    costs = costs or CostConfig()
    if not frames:
        raise ConfigError("run_backtest needs at least one frame")
    cerebro = bt.Cerebro(stdstats=False, **cerebro_kwargs)
    cerebro.broker.setcash(costs.cash)
    cerebro.broker.setcommission(commission=costs.commission)
    cerebro.broker.set_slippage_perc(costs.slippage, slip_open=True, slip_match=True)
    for sym, frame in frames.items():
        cerebro.adddata(StoreData(dataname=frame, name=sym))
    cerebro.addstrategy(strategy, **dict(strategy_kwargs or {}))
    cerebro.addanalyzer(bt.analyzers.TimeReturn, _name="timereturn")
    cerebro.addanalyzer(bt.analyzers.TradeAnalyzer, _name="trades")
    for aname, (cls, kwargs) in (analyzers or {}).items():
        cerebro.addanalyzer(cls, _name=aname, **dict(kwargs))
    strat = cerebro.run()[0]
    rets = pd.Series(strat.analyzers.timereturn.get_analysis(), dtype="float64")
    rets.index = pd.DatetimeIndex(rets.index).tz_localize("UTC")  # backtrader's clock is UTC
    trades = strat.analyzers.trades.get_analysis()
    closed = int(trades.get("total", {}).get("closed", 0)) if trades else 0
    return BacktestResult(
        name, rets, float(cerebro.broker.getvalue()), performance(rets, trades=closed), strat
    )
