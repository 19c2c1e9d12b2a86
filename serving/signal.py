"""The one thing strategies see: a ``Signal`` per window (symbol and bar), and the position state.

A ``Signal`` carries every head of the model's output contract (``mlmodels.nets.heads``) in
plain floats, with probabilities instead of logits, plus the model name and version that
produced it. Both signal clients (REST to TorchServe and in-process) return these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

DIRECTIONS = ("down", "flat", "up")
ACTIONS = ("sell", "hold", "buy")


@dataclass(frozen=True, kw_only=True)
class PositionState:
    """What the position head knows about the portfolio for one symbol.

    Attributes:
        position: signed position as a fraction of the maximum (-1 short .. 0 flat .. 1 long).
        unrealised: unrealised log P&L of the open position (0 when flat).
        bars_held: bars since the position was opened (0 when flat).
    """

    position: float = 0.0
    unrealised: float = 0.0
    bars_held: float = 0.0

    def as_tuple(self) -> tuple[float, float, float]:
        return (float(self.position), float(self.unrealised), float(self.bars_held))


FLAT = PositionState()


@dataclass(frozen=True, kw_only=True)
class Signal:
    """One model prediction for one window.

    Attributes:
        model, version: the registry name and version that produced it.
        returns: predicted log return at each horizon in ``horizons`` (bars).
        direction: probabilities of down / flat / up over the labelled horizon (sum to 1).
        action: probabilities of sell / hold / buy (sum to 1).
        size: suggested position size in [0, 1].
        volatility: predicted realised volatility (per bar, > 0).
        risk: predicted maximum adverse excursion (> 0).
        confidence: in [0, 1].
        symbol, timestamp: what the window was for, when the caller said so (echoed back).
    """

    model: str
    version: int
    returns: tuple[float, ...]
    horizons: tuple[int, ...]
    direction: tuple[float, float, float]
    action: tuple[float, float, float]
    size: float
    volatility: float
    risk: float
    confidence: float
    symbol: str | None = None
    timestamp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def p_up(self) -> float:
        return self.direction[2]

    @property
    def p_down(self) -> float:
        return self.direction[0]

    @property
    def best_action(self) -> str:
        """``sell``, ``hold`` or ``buy``: the most probable action."""
        return ACTIONS[max(range(3), key=lambda k: self.action[k])]

    def expected_return(self, horizon: int) -> float:
        """The predicted log return at ``horizon`` bars (one of ``horizons``)."""
        try:
            return self.returns[self.horizons.index(horizon)]
        except ValueError:
            raise ValueError(
                f"horizon {horizon} is not predicted; this model predicts {list(self.horizons)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the REST response body uses the same field names)."""
        d = {f.name: getattr(self, f.name) for f in _FIELDS if f.name != "extra"}
        for key in ("returns", "horizons", "direction", "action"):
            d[key] = list(
                d[key]
            )  # flat tuples of numbers: no deep copy needed (asdict is 10x slower)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Signal:
        """The inverse of ``to_dict`` (unknown keys are ignored)."""
        return cls(
            model=str(d["model"]),
            version=int(d["version"]),
            returns=tuple(float(v) for v in d["returns"]),
            horizons=tuple(int(v) for v in d["horizons"]),
            direction=_triple(d["direction"]),
            action=_triple(d["action"]),
            size=float(d["size"]),
            volatility=float(d["volatility"]),
            risk=float(d["risk"]),
            confidence=float(d["confidence"]),
            symbol=d.get("symbol"),
            timestamp=d.get("timestamp"),
        )

    def is_finite(self) -> bool:
        values = [*self.returns, *self.direction, *self.action]
        values += [self.size, self.volatility, self.risk, self.confidence]
        return all(math.isfinite(v) for v in values)


_FIELDS = fields(Signal)


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
