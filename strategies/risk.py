"""Risk rules shared by backtests and live trading: pure functions over weights and equity.

Weights are signed fractions of equity (0.1 = long 10 % of equity, -0.1 short). Each rule maps
(desired target, current weight, state) to a new target and never increases risk:

* ``position_limit``: ``|target| <= max_position``.
* daily loss stop (``DailyLossState``): once equity falls ``daily_loss_stop`` below the day's
  first equity, no new entries for the rest of that day (``flatten_on_daily_stop`` closes too).
* drawdown limit (``DrawdownState``): beyond ``max_drawdown`` below the equity peak, ``halt``
  refuses new entries (``flatten_on_halt`` closes) or ``reduce`` scales targets by
  ``drawdown_reduce``.
* correlation check: a new or larger position whose return correlation with any held symbol
  exceeds ``max_correlation`` is refused (``refuse``) or held at its current size (``cap``).
* serving-failure policy: without a signal, ``hold`` keeps the current weight (the rules after
  it may still reduce it: exits stay allowed), ``flatten`` closes; never a new entry.
* ``gross_exposure_cap``: scales up-sizing so ``sum |w| <= max_gross``.

"No new entry" means: the target may not be further from zero than the current weight, nor on
the other side of zero. ``apply_risk`` runs them in that order and names the rule that bound.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from feeds.errors import ConfigError

DRAWDOWN_ACTIONS = ("halt", "reduce")
CORRELATION_ACTIONS = ("refuse", "cap")
SERVING_POLICIES = ("hold", "flatten", "abort")


@dataclass(frozen=True, kw_only=True)
class RiskConfig:
    """Thresholds of every rule (fractions: 0.2 = 20 %)."""

    max_position: float = 0.25
    max_gross: float = 1.0
    daily_loss_stop: float = 0.03
    flatten_on_daily_stop: bool = False
    max_drawdown: float = 0.25
    drawdown_action: str = "halt"
    drawdown_reduce: float = 0.5
    flatten_on_halt: bool = False
    max_correlation: float = 0.9
    correlation_action: str = "cap"
    min_correlation_bars: int = 20

    def __post_init__(self) -> None:
        for name in ("max_position", "daily_loss_stop", "max_drawdown", "drawdown_reduce"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {v}")
        if not 0 < self.max_gross <= 10:
            raise ConfigError(f"max_gross must be in (0, 10], got {self.max_gross}")
        if not 0 < self.max_correlation <= 1:
            raise ConfigError(f"max_correlation must be in (0, 1], got {self.max_correlation}")
        if self.drawdown_action not in DRAWDOWN_ACTIONS:
            raise ConfigError(
                f"drawdown_action must be one of {DRAWDOWN_ACTIONS}, got {self.drawdown_action!r}"
            )
        if self.correlation_action not in CORRELATION_ACTIONS:
            raise ConfigError(
                f"correlation_action must be one of {CORRELATION_ACTIONS}, "
                f"got {self.correlation_action!r}"
            )
        if self.min_correlation_bars < 2:
            raise ConfigError(f"min_correlation_bars must be >= 2, got {self.min_correlation_bars}")


def no_new_entry(target: float, current: float) -> float:
    """``target`` limited so that exposure is not increased nor flipped: reductions pass."""
    if target * current <= 0:  # flat now, a flip, or a close: nothing (or zero) is allowed
        return 0.0
    return math.copysign(min(abs(target), abs(current)), current)


def position_limit(target: float, cfg: RiskConfig) -> float:
    return max(-cfg.max_position, min(cfg.max_position, target))


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
    """What ``apply_risk`` needs for one symbol (weights of every held symbol included)."""

    symbol: str
    desired: float
    weights: Mapping[str, float]
    returns: np.ndarray
    held_returns: Mapping[str, np.ndarray]
    daily: DailyLossState
    drawdown: DrawdownState
    signal_ok: bool = True
    serving_policy: str = "hold"


def apply_risk(inp: RiskInputs, cfg: RiskConfig) -> tuple[float, str]:
    """Every rule in the module's order; returns ``(target, reason)``. The reason is
    ``signal`` when no rule bound, else the first rule that changed the target."""
    current = inp.weights.get(inp.symbol, 0.0)
    if not inp.signal_ok and inp.serving_policy == "flatten":
        return 0.0, "serving-failure"
    # without a signal ("hold"): no new entry, but the rules below may still reduce (exits)
    target, reason = (inp.desired, "signal") if inp.signal_ok else (current, "serving-failure")

    def bind(new: float, why: str) -> None:
        nonlocal target, reason
        if new != target:
            target, reason = new, (why if reason == "signal" else reason)

    bind(position_limit(target, cfg), "position-limit")
    if inp.daily.stopped:
        bind(0.0 if cfg.flatten_on_daily_stop else no_new_entry(target, current), "daily-loss-stop")
    if inp.drawdown.breached(cfg):
        if cfg.drawdown_action == "halt":
            bind(0.0 if cfg.flatten_on_halt else no_new_entry(target, current), "drawdown-halt")
        else:
            bind(target * cfg.drawdown_reduce, "drawdown-reduce")
    if abs(target) > abs(current) or target * current < 0:
        held = [r for s, r in inp.held_returns.items() if s != inp.symbol and inp.weights.get(s)]
        worst = max_abs_correlation(inp.returns, held, cfg.min_correlation_bars)
        if worst > cfg.max_correlation:
            bind(
                0.0
                if cfg.correlation_action == "refuse" and current == 0
                else no_new_entry(target, current),
                "correlation",
            )
    others = {k: v for k, v in inp.weights.items() if k != inp.symbol}
    capped = gross_exposure_cap(
        {inp.symbol: target}, {**others, inp.symbol: current}, cfg.max_gross
    )
    bind(capped[inp.symbol], "gross-exposure")
    return target, reason
