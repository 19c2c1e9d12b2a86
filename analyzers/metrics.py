"""Performance metrics as pure functions over a return series.

With daily simple returns r_t and N periods a year:

* CAGR = (prod(1 + r_t)) ** (N / T) - 1
* Sharpe = mean(r) / std(r, ddof=1) * sqrt(N)           (risk-free rate 0)
* Sortino = mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(N)
* max drawdown = min_t (E_t / max_{s<=t} E_s - 1) with E the equity curve
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Performance:
    """Headline statistics of one run."""

    total_return: float
    cagr: float
    sharpe: float
    sortino: float
    max_drawdown: float
    trades: int
    #: Closed trades, positions open at the end, the share of bars holding any position
    #: (None where the run did not measure them: a stitched walk-forward, old runs).
    round_trips: int | None = None
    open_positions: int | None = None
    exposure: float | None = None

    def as_row(self) -> dict[str, float | int]:
        row: dict[str, float | int] = {
            "total_return": self.total_return,
            "cagr": self.cagr,
            "sharpe": self.sharpe,
            "sortino": self.sortino,
            "max_drawdown": self.max_drawdown,
            "trades": self.trades,
        }
        for key in ("round_trips", "open_positions", "exposure"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        return row

    @property
    def activity(self) -> str | None:
        """What the strategy did, when its trades would mislead: "never traded" (no position
        on any bar) or "exposure 99.5 %, 0 round trips: buy and hold" (no trade closed and a
        position on at least 95 % of the bars); None otherwise or when not measured."""
        if self.exposure is None or self.round_trips is None:
            return None
        if self.exposure == 0:
            return "never traded"
        if self.round_trips == 0 and self.exposure >= 0.95:
            return f"exposure {self.exposure:.1%}, 0 round trips: buy and hold"
        return None


def max_drawdown(returns: pd.Series) -> float:
    """Largest peak-to-trough loss of the compounded equity, as a negative fraction."""
    equity = (1.0 + returns.fillna(0.0)).cumprod()
    if equity.empty:
        return 0.0
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity.to_numpy()]))[1:]
    return float((equity.to_numpy() / peak - 1.0).min())


def performance(returns: pd.Series, *, trades: int = 0, periods_per_year: int = 252) -> Performance:
    """Compute :class:`Performance` from simple per-period returns."""
    r = returns.fillna(0.0).to_numpy(dtype=np.float64)
    n = len(r)
    if n == 0:
        return Performance(0.0, 0.0, 0.0, 0.0, 0.0, trades)
    growth = float(np.prod(1.0 + r))
    cagr = growth ** (periods_per_year / n) - 1.0 if growth > 0 else -1.0
    sd = float(np.std(r, ddof=1)) if n > 1 else 0.0
    sharpe = float(np.mean(r) / sd * np.sqrt(periods_per_year)) if sd > 0 else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
    sortino = float(np.mean(r) / downside * np.sqrt(periods_per_year)) if downside > 0 else 0.0
    return Performance(growth - 1.0, cagr, sharpe, sortino, max_drawdown(returns), trades)
