"""Risk rules shared by backtests and live trading: a configurable list of plug-in rules.

Weights are signed fractions of equity (0.1 = long 10 % of equity, -0.1 short). Each rule maps
(proposed target, state) to an allowed target and never increases risk (the rules themselves,
their protocol and registry are in ``strategies.risk_rules``; the pure pieces they are made of
in ``strategies.risk_math``, re-exported here):

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
the other side of zero. ``RiskConfig.rules`` lists the rules to run, in order (by default the
ones above; add your own by name); ``apply_risk`` runs them and names the rule that bound.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.config import DataConfig
from core.errors import ConfigError
from strategies.plugins import PluginSpec
from strategies.risk_math import (
    DailyLossState,
    DrawdownState,
    RiskInputs,
    correlation,
    gross_exposure_cap,
    max_abs_correlation,
    no_new_entry,
)
from strategies.risk_rules import (
    CORRELATION_ACTIONS,
    DEFAULT_RULES,
    DRAWDOWN_ACTIONS,
    RISK_RULES,
    RiskRule,
    RuleOutcome,
    apply_rules,
    build_rule,
    register_rule,
)

__all__ = [
    "CORRELATION_ACTIONS",
    "DEFAULT_RULES",
    "DRAWDOWN_ACTIONS",
    "RISK_RULES",
    "SERVING_POLICIES",
    "DailyLossState",
    "DrawdownState",
    "RiskConfig",
    "RiskInputs",
    "RiskRule",
    "RuleOutcome",
    "apply_risk",
    "apply_rules",
    "correlation",
    "gross_exposure_cap",
    "max_abs_correlation",
    "no_new_entry",
    "position_limit",
    "register_rule",
]

SERVING_POLICIES = ("hold", "flatten", "abort")


@dataclass(frozen=True, kw_only=True)
class RiskConfig(DataConfig):
    """Thresholds of every rule (fractions: 0.2 = 20 %) and the rules to run, in order.

    ``rules``: names (``"position-limit"``) or ``{"name": ..., "params": {...}}`` tables of
    ``strategies.risk_rules.RISK_RULES`` entries. A rule's parameters named like a field of
    this config come from the field; ``params`` gives the others (a user rule's own).
    """

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
    rules: tuple[PluginSpec | str, ...] = DEFAULT_RULES

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
        if isinstance(self.rules, str | PluginSpec):
            raise ConfigError(f"rules must be a list of rule names, got {self.rules!r}")
        specs = tuple(PluginSpec.of(r, kind="risk rule") for r in self.rules)
        object.__setattr__(self, "rules", specs)
        self.build_rules()  # unknown names and bad parameters fail here, not mid-run

    def build_rules(self) -> tuple[RiskRule, ...]:
        """The rule objects of ``rules``, in order."""
        defaults = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rules"
        }
        return tuple(build_rule(PluginSpec.of(r, kind="risk rule"), defaults) for r in self.rules)


def position_limit(target: float, cfg: RiskConfig) -> float:
    return max(-cfg.max_position, min(cfg.max_position, target))


def apply_risk(inp: RiskInputs, cfg: RiskConfig) -> tuple[float, str]:
    """Every rule of ``cfg.rules`` in order; returns ``(target, reason)``. The reason is
    ``signal`` when no rule bound, else the first rule that changed the target
    (``strategies.risk_rules.apply_rules`` also returns each rule's outcome)."""
    target, reason, _ = apply_rules(cfg.build_rules(), inp)
    return target, reason
