"""The ML strategy's entry and exit rules on one signal (``MLSignalConfig.entry_rule``).

``direction``: enter long when the model is confident, P(up) is at least ``entry_prob`` and
exceeds P(down) by ``min_edge``, with ``horizon_agreement`` horizons' predicted returns
agreeing; short is the mirror (``allow_short``); exit when the opposite direction has become
the more probable. ``return``: enter when the price head's expected return at the longest
horizon, net of a round trip's costs, is at least ``min_return``; exit when it turns against
the position. ``auto`` is resolved before a run (``strategies.entry_choice``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import ConfigError
from serving.signal import Signal

if TYPE_CHECKING:
    from strategies.ml_signal import MLSignalConfig

ENTRY_RULES = ("direction", "return", "auto")


def check_entry_fields(rule: str, min_return: float, round_trip_cost: float = 0.0) -> None:
    """The entry-rule fields' checks (shared with ``workflows.backtest.MLRunConfig``)."""
    if rule not in ENTRY_RULES:
        raise ConfigError(f"entry_rule must be one of {', '.join(ENTRY_RULES)}, got {rule!r}")
    if not 0 <= min_return < 1:
        raise ConfigError(f"min_return must be in [0, 1), got {min_return}")
    if not 0 <= round_trip_cost < 0.2:
        raise ConfigError(f"round_trip_cost must be in [0, 0.2), got {round_trip_cost}")


def _agreeing(sig: Signal, sign: float) -> int:
    """How many horizons' predicted returns have the sign of ``sign``."""
    return sum(1 for r in sig.returns if r * sign > 0)


def long_entry(sig: Signal, cfg: MLSignalConfig) -> bool:
    """Confident, P(up) high enough, up more probable by ``min_edge``, horizons agreeing."""
    edge = sig.p_up - sig.p_down
    return (
        sig.confidence >= cfg.min_confidence
        and sig.p_up >= cfg.entry_prob
        and edge >= cfg.min_edge
        and edge > 0
        and _agreeing(sig, 1.0) >= cfg.horizon_agreement
    )


def short_entry(sig: Signal, cfg: MLSignalConfig) -> bool:
    """The mirror of :func:`long_entry`, when ``allow_short``."""
    edge = sig.p_up - sig.p_down
    return (
        cfg.allow_short
        and sig.confidence >= cfg.min_confidence
        and sig.p_down >= cfg.entry_prob
        and -edge >= cfg.min_edge
        and edge < 0
        and _agreeing(sig, -1.0) >= cfg.horizon_agreement
    )


def exit_now(sig: Signal, current: float) -> bool:
    """An open position whose opposite direction is now the more probable."""
    return (current > 0 and sig.p_down > sig.p_up) or (current < 0 and sig.p_up > sig.p_down)


def expected_return(sig: Signal) -> float:
    """The price head's predicted log return at the longest horizon (0 without one)."""
    if not sig.returns:
        return 0.0
    k = max(range(len(sig.returns)), key=lambda i: sig.horizons[i] if i < len(sig.horizons) else i)
    return float(sig.returns[k])


def long_entry_return(sig: Signal, cfg: MLSignalConfig) -> bool:
    """Confident, the expected return net of a round trip >= ``min_return`` and > 0,
    horizons agreeing (the ``return`` rule)."""
    net = expected_return(sig) - cfg.round_trip_cost
    return (
        sig.confidence >= cfg.min_confidence
        and net >= cfg.min_return
        and net > 0
        and _agreeing(sig, 1.0) >= cfg.horizon_agreement
    )


def short_entry_return(sig: Signal, cfg: MLSignalConfig) -> bool:
    """The mirror of :func:`long_entry_return`, when ``allow_short``."""
    net = -expected_return(sig) - cfg.round_trip_cost
    return (
        cfg.allow_short
        and sig.confidence >= cfg.min_confidence
        and net >= cfg.min_return
        and net > 0
        and _agreeing(sig, -1.0) >= cfg.horizon_agreement
    )


def exit_now_return(sig: Signal, current: float) -> bool:
    """An open position whose expected return has turned against it."""
    r = expected_return(sig)
    return (current > 0 and r < 0) or (current < 0 and r > 0)


UNRESOLVED_AUTO = (
    "entry_rule='auto' is chosen on the model's validation split before the run: pass "
    "entry_rule=choose_entry_rule(...).chosen (strategies.entry_choice), or run btml backtest"
)


def desired_weight(sig: Signal, current: float, cfg: MLSignalConfig, size: float) -> float:
    """The entry/exit rules of the module docstring; ``size`` is the sizer's weight (>= 0)."""
    if cfg.entry_rule == "return":
        enter_long, enter_short, leave = long_entry_return, short_entry_return, exit_now_return
    elif cfg.entry_rule == "direction":
        enter_long, enter_short, leave = long_entry, short_entry, exit_now
    else:
        raise ConfigError(UNRESOLVED_AUTO)
    if enter_long(sig, cfg):
        return size
    if enter_short(sig, cfg):
        return -size
    if leave(sig, current):
        return 0.0
    return current if (current >= 0 or cfg.allow_short) else 0.0
