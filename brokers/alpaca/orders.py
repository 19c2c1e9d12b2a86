"""Backtrader orders as Alpaca orders: the order types, the fields sent, and the sizing."""

from __future__ import annotations

import math
from typing import Any

import backtrader as bt
from backtrader.order import Order

from brokers.alpaca.rest import OrderRejected

EXEC_TYPES: dict[Any, str] = {  # backtrader exectype -> Alpaca order type
    None: "market",
    Order.Market: "market",
    Order.Limit: "limit",
    Order.Stop: "stop",
    Order.StopLimit: "stop_limit",
}


class AlpacaCommInfo(bt.CommInfoBase):  # type: ignore[misc]
    """Alpaca's costs (no commission on US equities; crypto fees are taken by Alpaca out of the
    coin received and reconciled as such, see ``brokers.alpaca.reconcile``) and sizes in
    fractions of a share (6 decimals) when ``fractional``."""

    params = (
        ("stocklike", True),
        ("commtype", bt.CommInfoBase.COMM_PERC),
        ("percabs", True),
        ("commission", 0.0),
        ("fractional", True),
    )

    def getsize(self, price: float, cash: float) -> float:
        raw = self.p.leverage * cash / price if price > 0 else 0.0
        return math.floor(raw * 1e6) / 1e6 if self.p.fractional else float(int(raw))


def order_fields(order: Any) -> dict[str, Any]:
    """The Alpaca order fields of a backtrader order (``OrderRejected`` when Alpaca has no
    such order, or for a size that is not positive)."""
    kind = EXEC_TYPES.get(order.exectype)
    if kind is None:
        raise OrderRejected(f"order type {order.getordername()} is not supported on Alpaca")
    size = abs(float(order.created.size))
    if not size > 0:
        raise OrderRejected(f"{order.data._name}: order size {order.created.size} is not > 0")
    crypto = "/" in order.data._name
    fields: dict[str, Any] = {
        "symbol": order.data._name,
        "side": "buy" if order.isbuy() else "sell",
        "qty": round(size, 9),
        "order_type": kind,
        "time_in_force": "gtc" if crypto else ("gtc" if order.valid else "day"),
    }
    if kind in ("limit", "stop_limit"):
        fields["limit_price"] = order.created.pricelimit or order.created.price
    if kind in ("stop", "stop_limit"):
        fields["stop_price"] = order.created.price
    if kind == "limit":
        fields["limit_price"] = order.created.price
    return fields
