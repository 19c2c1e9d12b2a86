"""The audit trail: one ``Decision`` per symbol and bar the ML strategy considered.

Every decision keeps the raw head outputs (the ``Signal``) and the model version that caused it,
so analyzers can measure signal quality and the live order journal can store why an order was
placed, and each risk rule's structured outcome (rule, limit, value, action), which
:func:`limits_held` reads to report whether every limit held.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from serving.signal import Signal
from strategies.risk_rules import RuleOutcome

if TYPE_CHECKING:
    from strategies.risk import RiskConfig

EPS = 1e-9
_OUTCOME = ("rule", "limit", "value", "action", "target", "bound")


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the strategy decided for one symbol at one bar.

    Attributes:
        timestamp: the bar's close time (UTC) the decision was made on.
        symbol: the data's name.
        price: the close at ``timestamp``.
        signal: the model's output, or ``None`` when no signal was available (serving failure).
        position: the position before the decision (units, signed).
        target: the target position as a signed fraction of equity after sizing and risk rules.
        reason: why the target is what it is (``signal``, ``no-signal``, ``daily-loss-stop``,
            ``drawdown-halt``, ``serving-failure``, ...).
        weight: the position before the decision as a signed fraction of equity.
        risk_state: the risk states in force (``daily-stop``, ``drawdown``), comma-separated.
        outcomes: what each risk rule did, in the order they ran
            (``strategies.risk_rules.RuleOutcome``).
    """

    timestamp: pd.Timestamp
    symbol: str
    price: float
    signal: Signal | None
    position: float
    target: float
    reason: str
    weight: float = 0.0
    risk_state: str = ""
    outcomes: tuple[RuleOutcome, ...] = ()


def decisions_frame(decisions: Iterable[Decision]) -> pd.DataFrame:
    """Flatten decisions into one row each: the decision fields and every head of its signal.

    Columns: ``timestamp, symbol, price, position, target, reason, model, version``, then
    ``ret_{h}`` per horizon, ``p_down, p_flat, p_up``, ``a_sell, a_hold, a_buy``, ``size``,
    ``volatility``, ``risk``, ``confidence`` (NaN when the decision had no signal).
    """
    rows = []
    for d in decisions:
        row: dict[str, object] = {
            "timestamp": d.timestamp,
            "symbol": d.symbol,
            "price": d.price,
            "position": d.position,
            "target": d.target,
            "reason": d.reason,
            "weight": d.weight,
            "risk_state": d.risk_state,
        }
        s = d.signal
        if s is not None:
            row.update(model=s.model, version=s.version)
            row.update({f"ret_{h}": r for h, r in zip(s.horizons, s.returns, strict=True)})
            row.update(p_down=s.direction[0], p_flat=s.direction[1], p_up=s.direction[2])
            row.update(a_sell=s.action[0], a_hold=s.action[1], a_buy=s.action[2])
            row.update(size=s.size, volatility=s.volatility, risk=s.risk, confidence=s.confidence)
        rows.append(row)
    return pd.DataFrame(rows)


def outcomes_frame(decisions: Iterable[Decision]) -> pd.DataFrame:
    """One row per decision and rule: ``timestamp, symbol, rule, limit, value, action,
    allowed`` (the rule's target), ``bound``, ``target`` (the decision's final one), ``weight``."""
    cols = ["timestamp", "symbol", "rule", "limit", "value", "action", "allowed", "bound",
            "target", "weight"]  # fmt: skip
    rows = [
        (d.timestamp, d.symbol, *(getattr(o, k) for k in _OUTCOME), d.target, d.weight)
        for d in decisions
        for o in d.outcomes
    ]
    return pd.DataFrame(rows, columns=cols)


def kept(outcome: RuleOutcome, target: float, weight: float, limit: float | None = None) -> bool:
    """Whether a decision's final ``target`` keeps what ``outcome`` required (``limit``
    replaces the recorded one for a ``cap``): ``cap`` ``|target| <= limit``; ``no-entry`` no
    further from zero than, nor across, ``weight``; ``flatten`` 0; ``scale`` (and any other
    action a user rule names) no riskier than the target the rule allowed."""
    action = outcome.action
    if action == "pass":
        return True
    if action == "cap":
        return abs(target) <= (outcome.limit if limit is None else limit) + EPS
    if action == "no-entry":
        return abs(target) <= abs(weight) + EPS and target * weight >= -EPS
    if action == "flatten":
        return abs(target) <= EPS
    return abs(target) <= abs(outcome.target) + EPS and target * outcome.target >= -EPS


def limits_held(audit: Iterable[Decision], risk: RiskConfig | None = None) -> dict[str, bool]:
    """Per rule name (as in the outcomes: ``position-limit``, ``daily-loss-stop``,
    ``drawdown-halt``, ...), whether every decision's final target kept what the rule
    required (see :func:`kept`).

    With ``risk``, the trail is judged against its thresholds (the position cap) instead of
    the recorded ones, and decisions recorded without outcomes (by hand, or by an older
    version) are read from their ``risk_state``: the cap on every decision, no new entry
    while ``daily-stop`` or (``halt``) ``drawdown`` was in force.
    """
    caps = {"position-limit": risk.max_position} if risk is not None else {}
    held: dict[str, bool] = {}
    for d in audit:
        outcomes = d.outcomes or (_from_risk_state(d, risk) if risk is not None else ())
        for o in outcomes:
            ok = kept(o, d.target, d.weight, caps.get(o.rule))
            held[o.rule] = held.get(o.rule, True) and ok
    return held


def _from_risk_state(d: Decision, risk: RiskConfig) -> tuple[RuleOutcome, ...]:
    """The outcomes a decision without any implies: its ``risk_state`` under ``risk``."""
    nan, states = math.nan, d.risk_state.split(",")
    out = [RuleOutcome(rule="position-limit", limit=risk.max_position, value=abs(d.target),
                       action="cap", target=d.target)]  # fmt: skip
    if "daily-stop" in states:
        out.append(RuleOutcome(rule="daily-loss-stop", limit=risk.daily_loss_stop, value=nan,
                               action="no-entry", target=d.target))  # fmt: skip
    if "drawdown" in states and risk.drawdown_action == "halt":
        out.append(RuleOutcome(rule="drawdown-halt", limit=risk.max_drawdown, value=nan,
                               action="no-entry", target=d.target))  # fmt: skip
    return tuple(out)
