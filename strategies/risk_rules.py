"""Risk rules as plug-ins: one protocol, small implementations, a registry by name.

A rule is an object with one method, ``check(target, state) -> (allowed, outcome)``: it takes
the proposed target weight (signed fraction of equity) and the state (``RiskInputs``: the
symbol, every held weight, recent returns, the daily-loss and drawdown states) and returns the
target it allows plus a :class:`RuleOutcome` (rule, limit, value, action). A rule never
increases risk: ``allowed`` is on the side of ``target`` (or 0) and no further from zero;
``apply_rules`` refuses a rule that breaks this with a ``ConfigError`` naming it.

The built-in rules, in their default order (each takes its thresholds from ``RiskConfig``'s
fields of the same names):

===================  =========================================================================
``position-limit``   ``|target| <= max_position`` (action ``cap`` on every decision)
``daily-loss-stop``  after the day's loss reached ``daily_loss_stop``: no new entry that day
                     (``flatten_on_daily_stop``: close)
``drawdown``         beyond ``max_drawdown`` below the equity peak: ``halt`` refuses new
                     entries (``flatten_on_halt`` closes), ``reduce`` scales by
                     ``drawdown_reduce``; its outcomes are named ``drawdown-halt`` /
                     ``drawdown-reduce``
``correlation``      a new or larger position correlated above ``max_correlation`` with a
                     held symbol is refused (``refuse``) or held at its size (``cap``)
``gross-exposure``   increases scaled so that ``sum |w| <= max_gross``
===================  =========================================================================

Add your own: a class (or any callable returning a rule) whose keyword arguments are its
parameters, registered with ``register_rule("my-rule", MyRule)`` and listed in
``RiskConfig(rules=(*DEFAULT_RULES, {"name": "my-rule", "params": {...}}))``. A parameter named
like a ``RiskConfig`` field is filled from it (``max_position``, say); the others come from the
spec's ``params``.

Actions (what the rule required of the target at this decision, whether or not it changed it):
``pass`` nothing; ``cap`` ``|target| <= limit``; ``no-entry`` no further from zero than, nor
across, the weight held before; ``flatten`` 0; ``scale`` no more than the ``target`` it
allowed. ``strategies.audit.limits_held`` checks the final targets against them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from core.errors import ConfigError, unknown_name
from strategies.plugins import PluginSpec
from strategies.risk_math import RiskInputs, gross_exposure_cap, max_abs_correlation, no_new_entry

ACTIONS = ("pass", "cap", "no-entry", "flatten", "scale")
DRAWDOWN_ACTIONS = ("halt", "reduce")
CORRELATION_ACTIONS = ("refuse", "cap")
NAN = float("nan")


class RuleOutcome(NamedTuple):
    """What one rule did at one decision (a named tuple: cheap on every decision).

    Attributes:
        rule: the rule's name (the decision's ``reason`` when it was the first to bind).
        limit: the threshold the rule compares with (NaN when it has none).
        value: what it measured against the limit: the target asked, the day's loss, the
            drawdown, the worst correlation, the gross exposure (NaN when not measured).
        action: what it required of the target (see the module docstring).
        target: the target it allowed.
        bound: whether it changed the target it was given.
    """

    rule: str
    limit: float
    value: float
    action: str
    target: float
    bound: bool = False


class RiskRule(Protocol):
    """``check(target, state) -> (allowed target, outcome)``; never increases risk."""

    def check(self, target: float, state: RiskInputs) -> tuple[float, RuleOutcome]: ...


@dataclass(frozen=True, kw_only=True)
class PositionLimit:
    """``|target| <= max_position``."""

    max_position: float = 0.25

    def check(self, target: float, state: RiskInputs) -> tuple[float, RuleOutcome]:
        cap = self.max_position
        allowed = max(-cap, min(cap, target))
        return allowed, RuleOutcome(
            rule="position-limit",
            limit=cap,
            value=abs(target),
            action="cap",
            target=allowed,
            bound=allowed != target,
        )


@dataclass(frozen=True, kw_only=True)
class DailyLossStop:
    """Once the day's loss reached ``daily_loss_stop`` (``state.daily.stopped``): no new entry,
    or close with ``flatten_on_daily_stop``."""

    daily_loss_stop: float = 0.03
    flatten_on_daily_stop: bool = False

    def check(self, target: float, state: RiskInputs) -> tuple[float, RuleOutcome]:
        action = "pass"
        if state.daily.stopped:
            action = "flatten" if self.flatten_on_daily_stop else "no-entry"
        allowed = _restrict(action, target, state.current)
        return allowed, RuleOutcome(
            rule="daily-loss-stop", limit=self.daily_loss_stop, value=state.daily.loss,
            action=action, target=allowed, bound=allowed != target,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DrawdownLimit:
    """Beyond ``max_drawdown`` below the peak: ``halt`` (no new entry; ``flatten_on_halt``
    closes) or ``reduce`` (targets times ``drawdown_reduce``)."""

    max_drawdown: float = 0.25
    drawdown_action: str = "halt"
    drawdown_reduce: float = 0.5
    flatten_on_halt: bool = False

    def __post_init__(self) -> None:
        if self.drawdown_action not in DRAWDOWN_ACTIONS:
            raise ConfigError(
                f"drawdown_action must be one of {DRAWDOWN_ACTIONS}, got {self.drawdown_action!r}"
            )

    def check(self, target: float, state: RiskInputs) -> tuple[float, RuleOutcome]:
        action = "pass"
        if state.drawdown.drawdown <= -self.max_drawdown:
            if self.drawdown_action == "reduce":
                action = "scale"
            else:
                action = "flatten" if self.flatten_on_halt else "no-entry"
        allowed = (
            target * self.drawdown_reduce
            if action == "scale"
            else _restrict(action, target, state.current)
        )
        return allowed, RuleOutcome(
            rule=f"drawdown-{self.drawdown_action}", limit=self.max_drawdown,
            value=-state.drawdown.drawdown, action=action, target=allowed,
            bound=allowed != target,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class CorrelationLimit:
    """A new or larger position whose returns correlate above ``max_correlation`` with a held
    symbol's: refused (``refuse``) or held at its current size (``cap``)."""

    max_correlation: float = 0.9
    correlation_action: str = "cap"
    min_correlation_bars: int = 20

    def __post_init__(self) -> None:
        if self.correlation_action not in CORRELATION_ACTIONS:
            raise ConfigError(
                f"correlation_action must be one of {CORRELATION_ACTIONS}, "
                f"got {self.correlation_action!r}"
            )

    def check(self, target: float, state: RiskInputs) -> tuple[float, RuleOutcome]:
        current = state.current
        worst, allowed, action = NAN, target, "pass"
        if abs(target) > abs(current) or target * current < 0:
            held = [
                r for s, r in state.held_returns.items()
                if s != state.symbol and state.weights.get(s)
            ]  # fmt: skip
            worst = max_abs_correlation(state.returns, held, self.min_correlation_bars)
            if worst > self.max_correlation:
                refuse = self.correlation_action == "refuse" and current == 0
                allowed, action = 0.0 if refuse else no_new_entry(target, current), "no-entry"
        return allowed, RuleOutcome(
            rule="correlation", limit=self.max_correlation, value=worst, action=action,
            target=allowed, bound=allowed != target,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class GrossExposure:
    """Increases scaled so that the sum of ``|weight|`` stays within ``max_gross``."""

    max_gross: float = 1.0

    def check(self, target: float, state: RiskInputs) -> tuple[float, RuleOutcome]:
        others = {k: v for k, v in state.weights.items() if k != state.symbol}
        current = {**others, state.symbol: state.current}
        allowed = gross_exposure_cap({state.symbol: target}, current, self.max_gross)[state.symbol]
        gross = sum(abs(v) for v in others.values()) + abs(allowed)
        return allowed, RuleOutcome(
            rule="gross-exposure", limit=self.max_gross, value=gross,
            action="scale" if allowed != target else "pass", target=allowed,
            bound=allowed != target,
        )  # fmt: skip


def _restrict(action: str, target: float, current: float) -> float:
    if action == "flatten":
        return 0.0
    if action == "no-entry":
        return no_new_entry(target, current)
    return target


RISK_RULES: dict[str, Callable[..., RiskRule]] = {
    "position-limit": PositionLimit,
    "daily-loss-stop": DailyLossStop,
    "drawdown": DrawdownLimit,
    "correlation": CorrelationLimit,
    "gross-exposure": GrossExposure,
}
DEFAULT_RULES: tuple[str, ...] = tuple(RISK_RULES)


def register_rule(name: str, factory: Callable[..., RiskRule]) -> None:
    """Add a rule to ``RISK_RULES`` (a name already taken is refused: pick another)."""
    if name in RISK_RULES and RISK_RULES[name] is not factory:
        raise ConfigError(f"risk rule {name!r} is already registered ({RISK_RULES[name]!r})")
    RISK_RULES[name] = factory


def build_rule(spec: PluginSpec, defaults: Mapping[str, Any]) -> RiskRule:
    """The rule ``spec`` names, its parameters from ``spec.params`` and, for names that are
    ``defaults`` keys (``RiskConfig``'s fields), from ``defaults``."""
    if spec.name not in RISK_RULES:
        raise unknown_name("risk rule", spec.name, RISK_RULES)
    factory = RISK_RULES[spec.name]
    sig = inspect.signature(factory).parameters
    free = any(p.kind is p.VAR_KEYWORD for p in sig.values())
    for key in spec.params:
        if key in defaults:
            raise ConfigError(
                f"risk rule {spec.name!r}: {key} is a RiskConfig field; set "
                f"RiskConfig({key}=...) rather than a rule parameter"
            )
        if key not in sig and not free:
            raise unknown_name(f"{spec.name!r} parameter", key, sig)
    kwargs = {k: v for k, v in defaults.items() if k in sig} | spec.params
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise ConfigError(f"risk rule {spec.name!r}: {err}") from err


def _check_contract(rule: RuleOutcome, target: float, allowed: float) -> None:
    riskier = abs(allowed) > abs(target) + 1e-12 or allowed * target < 0
    if not math.isfinite(allowed) or riskier:
        raise ConfigError(
            f"risk rule {rule.rule!r} turned the target {target!r} into {allowed!r}: a rule "
            "may only reduce risk (keep the side, never a larger |target|)"
        )


def apply_rules(
    rules: Sequence[RiskRule], inp: RiskInputs
) -> tuple[float, str, tuple[RuleOutcome, ...]]:
    """``rules`` in order on ``inp.desired``; returns ``(target, reason, outcomes)``.

    Without a signal the proposal is the current weight (``hold``: no new entry, the rules may
    still reduce it) or 0 (``flatten``), with a ``serving-failure`` outcome and reason. The
    reason is otherwise ``signal`` when no rule bound, else the first rule that changed the
    target.
    """
    outcomes: list[RuleOutcome] = []
    target, reason = inp.desired, "signal"
    if not inp.signal_ok:
        flatten = inp.serving_policy == "flatten"
        target, reason = (0.0 if flatten else inp.current), "serving-failure"
        outcomes.append(
            RuleOutcome(rule="serving-failure", limit=NAN, value=NAN, bound=True,
                        action="flatten" if flatten else "no-entry", target=target)
        )  # fmt: skip
    for rule in rules:
        allowed, out = rule.check(target, inp)
        _check_contract(out, target, allowed)
        bound = allowed != target
        if bound and reason == "signal":
            reason = out.rule
        outcomes.append(out._replace(bound=bound) if out.bound != bound else out)
        target = allowed
    return target, reason, tuple(outcomes)
