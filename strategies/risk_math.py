"""The pure pieces the risk rules are made of: exposure helpers, the equity states, and what a
rule sees for one symbol (``RiskInputs``). ``strategies.risk`` re-exports all of it.

Weights are signed fractions of equity (0.1 = long 10 % of equity, -0.1 short). "No new entry"
means: the target may not be further from zero than the current weight, nor on the other side
of zero.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from strategies.risk import RiskConfig


def no_new_entry(target: float, current: float) -> float:
    """``target`` limited so that exposure is not increased nor flipped: reductions pass."""
    if target * current <= 0:  # flat now, a flip, or a close: nothing (or zero) is allowed
        return 0.0
    return math.copysign(min(abs(target), abs(current)), current)


@dataclass(frozen=True)
class DailyLossState:
    """The day, the equity it is measured from, the last equity seen, and whether the stop
    fired today.

    The day's loss is measured from the previous day's last equity (the previous close), the
    way a broker's daily P&L is, so on daily bars a one-bar loss counts; on the first day it is
    measured from the first equity seen.
    """

    day: dt.date | None = None
    start_equity: float = 0.0
    stopped: bool = False
    last_equity: float = 0.0

    def update(self, day: dt.date, equity: float, cfg: RiskConfig) -> DailyLossState:
        """A new day resets the stop and the start equity; then the stop fires once
        equity <= start * (1 - stop) and stays on for the rest of the day."""
        state = self
        if day != self.day:
            start = self.last_equity if self.day is not None and self.last_equity > 0 else equity
            state = DailyLossState(day, start, False)
        fired = state.stopped or equity <= state.start_equity * (1 - cfg.daily_loss_stop)
        return replace(state, stopped=fired, last_equity=equity)

    @property
    def loss(self) -> float:
        """The day's loss so far as a positive fraction of the start equity (0 when up)."""
        if self.start_equity <= 0 or self.last_equity <= 0:
            return 0.0
        return max(0.0, 1 - self.last_equity / self.start_equity)


@dataclass(frozen=True)
class DrawdownState:
    """The equity peak and the current drawdown from it (a negative fraction)."""

    peak: float = 0.0
    drawdown: float = 0.0

    def update(self, equity: float, cfg: RiskConfig) -> DrawdownState:
        peak = max(self.peak, equity)
        return DrawdownState(peak, equity / peak - 1 if peak > 0 else 0.0)

    def breached(self, cfg: RiskConfig) -> bool:
        return self.drawdown <= -cfg.max_drawdown


def correlation(a: np.ndarray, b: np.ndarray, min_bars: int) -> float:
    """Pearson correlation over the common tail of two return arrays (0 if too short/flat)."""
    n = min(len(a), len(b))
    if n < min_bars:
        return 0.0
    x, y = np.asarray(a[-n:], dtype=float), np.asarray(b[-n:], dtype=float)
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def max_abs_correlation(a: np.ndarray, others: list[np.ndarray], min_bars: int) -> float:
    """``max |correlation(a, b)|`` over ``others``, vectorised (one matrix product per common
    tail length instead of one ``corrcoef`` per pair); the same values as :func:`correlation`."""
    best = 0.0
    groups: dict[int, list[np.ndarray]] = {}
    for b in others:
        n = min(len(a), len(b))
        if n >= min_bars:
            groups.setdefault(n, []).append(np.asarray(b[-n:], dtype=float))
    for n, rows in groups.items():
        x = np.asarray(a[-n:], dtype=float)
        xs = x.std()
        if xs == 0:
            continue
        m = np.vstack(rows)
        ys = m.std(axis=1)
        cov = (m - m.mean(axis=1, keepdims=True)) @ (x - x.mean()) / n
        ok = ys > 0
        if ok.any():
            best = max(best, float(np.max(np.abs(cov[ok] / (ys[ok] * xs)))))
    return min(best, 1.0)


def gross_exposure_cap(
    targets: Mapping[str, float], current: Mapping[str, float], max_gross: float
) -> dict[str, float]:
    """Scale the increases of ``targets`` so that ``sum |target| <= max_gross``.

    Reductions are kept whole; increases (``|target| - |current|`` beyond zero, same side) are
    scaled by one common factor. Returns the capped targets.
    """
    base = {k: no_new_entry(t, current.get(k, 0.0)) for k, t in targets.items()}
    held = sum(abs(v) for k, v in current.items() if k not in targets)
    room = max_gross - held - sum(abs(v) for v in base.values())
    extra = {k: abs(t) - abs(base[k]) for k, t in targets.items()}
    want = sum(extra.values())
    f = 1.0 if want <= max(room, 0.0) else max(room, 0.0) / want
    return {
        k: math.copysign(abs(base[k]) + f * extra[k], t) if t else 0.0 for k, t in targets.items()
    }


@dataclass(frozen=True, kw_only=True)
class RiskInputs:
    """What the risk rules see for one symbol: the desired target before any rule, the
    weights of every held symbol, recent returns, the equity states and whether the model
    answered (the state argument of ``RiskRule.check``)."""

    symbol: str
    desired: float
    weights: Mapping[str, float]
    returns: np.ndarray
    held_returns: Mapping[str, np.ndarray]
    daily: DailyLossState
    drawdown: DrawdownState
    signal_ok: bool = True
    serving_policy: str = "hold"

    @property
    def current(self) -> float:
        """The symbol's weight before the decision."""
        return self.weights.get(self.symbol, 0.0)
