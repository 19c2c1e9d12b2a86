"""Run statistics beyond ``analyzers.metrics``: drawdown duration, Calmar, exposure, turnover,
trade statistics, and the backtrader analyzers that collect what they need.

With simple per-period returns ``r_t``, equity ``E_t = prod(1 + r)``:

* drawdown duration = the longest run of periods with ``E_t`` below its running peak; in
  days: calendar days from the first to the last bar of that run, both included (QuantStats'
  "Longest DD Days" when the first return is not a loss);
* Calmar = CAGR / |max drawdown|;
* exposure = mean over bars of gross exposure ``sum_i |q_i p_i| / V`` and the share of bars
  with any position (time in market);
* turnover = traded value / mean portfolio value, per year (``periods`` bars a year);
* trades: win rate = share of closed trades with net P&L > 0, profit factor = gross profit /
  gross loss, average trade = mean net P&L.

The deflated Sharpe ratio lives in :mod:`analyzers.overfitting` (importable from here too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from analyzers.metrics import max_drawdown, performance
from analyzers.overfitting import deflated_sharpe as deflated_sharpe  # its home before


def drawdown_duration(returns: pd.Series) -> int:
    """Longest number of periods the equity spent below its previous peak."""
    equity = np.concatenate([[1.0], (1.0 + returns.fillna(0.0).to_numpy()).cumprod()])
    below = equity < np.maximum.accumulate(equity) - 1e-15
    longest = run = 0
    for b in below:
        run = run + 1 if b else 0
        longest = max(longest, run)
    return longest


def drawdown_days(returns: pd.Series) -> int:
    """Longest drawdown in calendar days: from its first bar below the previous peak to its
    last bar before the peak is regained (or the last bar), both days included."""
    r = returns.fillna(0.0)
    equity = np.concatenate([[1.0], (1.0 + r.to_numpy()).cumprod()])
    below = (equity < np.maximum.accumulate(equity) - 1e-15)[1:]
    if not below.any():
        return 0
    days = pd.DatetimeIndex(r.index).normalize()
    spell = np.cumsum(~below)[below]  # bars of one drawdown share the count of bars above
    spans = pd.Series(days[below]).groupby(spell).agg(["first", "last"])
    return int(((spans["last"] - spans["first"]).dt.days + 1).max())


def calmar(returns: pd.Series, periods: int = 252) -> float:
    dd = max_drawdown(returns)
    return performance(returns, periods_per_year=periods).cagr / abs(dd) if dd < 0 else 0.0


@dataclass(frozen=True)
class TradeStats:
    """Closed trades' statistics (net of commission)."""

    trades: int
    win_rate: float
    profit_factor: float
    average: float
    best: float
    worst: float


def trade_stats(pnls: Sequence[float]) -> TradeStats:
    p = np.asarray(pnls, dtype=float)
    if p.size == 0:
        return TradeStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    gain, loss = p[p > 0].sum(), -p[p < 0].sum()
    pf = float(gain / loss) if loss > 0 else (math.inf if gain > 0 else 0.0)
    return TradeStats(
        int(p.size), float((p > 0).mean()), pf, float(p.mean()), float(p.max()), float(p.min())
    )


class ExposureTurnover(bt.Analyzer):  # type: ignore[misc]
    """Per bar: gross exposure; per fill: traded value. ``get_analysis()`` gives
    ``exposure`` (Series), ``avg_gross``, ``time_in_market``, ``turnover`` (a year)."""

    params = (("periods", 252),)

    def start(self) -> None:
        self.rows: list[tuple[Any, float, float]] = []
        self.traded = 0.0

    def notify_order(self, order: Any) -> None:
        if order.status == order.Completed:
            self.traded += abs(order.executed.size * order.executed.price)

    def next(self) -> None:
        value = float(self.strategy.broker.getvalue())
        gross = sum(
            abs(self.strategy.getposition(d).size * d.close[0]) for d in self.strategy.datas
        )
        self.rows.append(
            (self.strategy.datetime.datetime(0), gross / value if value else 0.0, value)
        )

    def get_analysis(self) -> dict[str, Any]:
        if not self.rows:
            return {
                "exposure": pd.Series(dtype=float),
                "avg_gross": 0.0,
                "time_in_market": 0.0,
                "turnover": 0.0,
            }
        t, g, v = zip(*self.rows, strict=True)
        exposure = pd.Series(g, index=pd.DatetimeIndex(t))
        years = len(v) / self.p.periods
        return {
            "exposure": exposure,
            "avg_gross": float(exposure.mean()),
            "time_in_market": float((exposure > 0).mean()),
            "turnover": float(self.traded / np.mean(v) / years) if years else 0.0,
        }


class ClosedTrades(bt.Analyzer):  # type: ignore[misc]
    """Net P&L of each closed trade; ``get_analysis()`` is ``TradeStats`` as a dict plus
    ``pnls``."""

    def start(self) -> None:
        self.pnls: list[float] = []

    def notify_trade(self, trade: Any) -> None:
        if trade.isclosed:
            self.pnls.append(float(trade.pnlcomm))

    def get_analysis(self) -> dict[str, Any]:
        return {**asdict(trade_stats(self.pnls)), "pnls": list(self.pnls)}


def run_statistics(returns: pd.Series, periods: int = 252) -> dict[str, float]:
    """Headline statistics of a return series, as QuantStats names them where it has them."""
    p = performance(returns, periods_per_year=periods)
    return {
        "total_return": p.total_return,
        "cagr": p.cagr,
        "sharpe": p.sharpe,
        "sortino": p.sortino,
        "max_drawdown": p.max_drawdown,
        "max_drawdown_duration": float(drawdown_duration(returns)),
        "max_drawdown_days": float(drawdown_days(returns)),
        "calmar": calmar(returns, periods),
    }
