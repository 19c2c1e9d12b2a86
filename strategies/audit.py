"""The audit trail: one ``Decision`` per symbol and bar the ML strategy considered.

Every decision keeps the raw head outputs (the ``Signal``) and the model version that caused it,
so analyzers can measure signal quality and the live order journal can store why an order was
placed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from serving.signal import Signal


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
