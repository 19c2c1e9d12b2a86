"""``ReplayClient``: a ``SignalClient`` that answers with recorded signals.

Replays the audit trail of an earlier run (``strategies.audit.decisions_frame``) or any table
with the same columns, keyed by symbol and bar time. Use it to re-run a backtest with the very
signals a served model gave (different costs or risk limits, no model server), or to pin
signals for golden-number tests. A window with no recorded signal is an error, never a zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.errors import DataError
from core.utc import to_utc
from serving.client import SignalClient
from serving.signal import PositionState, Signal


def _key(symbol: str | None, timestamp: str | pd.Timestamp | None) -> tuple[str, int]:
    if symbol is None or timestamp is None:
        raise DataError("ReplayClient needs symbols and timestamps with every window")
    ts = to_utc(timestamp)
    assert ts is not None
    return symbol, int(ts.value)


class ReplayClient(SignalClient):
    """Recorded signals by (symbol, bar time); see the module docstring."""

    def __init__(self, signals: dict[tuple[str, int], Signal], model: str = "replay") -> None:
        self.signals = signals
        self.model = model

    @classmethod
    def from_frame(
        cls, table: pd.DataFrame, *, model: str = "replay", version: int = 0
    ) -> ReplayClient:
        """Rows with ``symbol, timestamp`` and the heads as in ``decisions_frame`` (``ret_{h}``,
        ``p_down, p_flat, p_up``, ``a_sell, a_hold, a_buy``, ``size, volatility, risk,
        confidence``); rows without heads (NaN ``p_up``) are skipped."""
        horizons = tuple(sorted(int(c[4:]) for c in table.columns if c.startswith("ret_")))
        out: dict[tuple[str, int], Signal] = {}
        for row in table.itertuples(index=False):
            r = row._asdict()
            if pd.isna(r.get("p_up")):
                continue
            sig = Signal(
                model=str(r.get("model", model) if pd.notna(r.get("model", model)) else model),
                version=int(
                    r.get("version", version) if pd.notna(r.get("version", version)) else version
                ),
                returns=tuple(float(r[f"ret_{h}"]) for h in horizons),
                horizons=horizons,
                direction=(float(r["p_down"]), float(r["p_flat"]), float(r["p_up"])),
                action=(float(r["a_sell"]), float(r["a_hold"]), float(r["a_buy"])),
                size=float(r["size"]),
                volatility=float(r["volatility"]),
                risk=float(r["risk"]),
                confidence=float(r["confidence"]),
                symbol=str(r["symbol"]),
            )
            out[_key(sig.symbol, r["timestamp"])] = sig
        return cls(out, model)

    def predict(
        self,
        windows: np.ndarray,
        positions: np.ndarray | Sequence[PositionState] | None = None,
        *,
        symbols: Sequence[str | None] | None = None,
        timestamps: Sequence[str | None] | None = None,
    ) -> list[Signal]:
        n = len(windows)
        syms = list(symbols or [None] * n)
        stamps = list(timestamps or [None] * n)
        out = []
        for sym, ts in zip(syms, stamps, strict=True):
            key = _key(sym, ts)
            if key not in self.signals:
                raise DataError(f"no recorded signal for {sym} at {ts}")
            out.append(self.signals[key])
        return out
