"""The backtest's broker restricted to a point-in-time universe (``feeds.membership``).

``run_backtest(..., membership=...)`` sets it up in place of backtrader's ``BackBroker`` (with
the same cash, commission and slippage), so every strategy, the ML one and the baselines alike,
trades a symbol only while it was a member:

* an order that would open or add to a position in a non-member is rejected (the strategy is
  notified as for any rejection); an order that only reduces a position is accepted;
* a position still held on the first bar its symbol is no longer a member is closed by a
  market order, filled at the next bar's open like a strategy's own order, and the strategy
  that held it is notified of it as if it had placed it; further orders for that symbol are
  rejected until it is closed.

``is_member(data)`` answers for the data's current bar; ``MLSignalStrategy`` asks it before
requesting a signal, so non-members get no decision at all.
"""

from __future__ import annotations

from typing import Any

import backtrader as bt
import pandas as pd

from feeds.membership import Membership


class MembershipBroker(bt.brokers.BackBroker):  # type: ignore[misc]
    """``BackBroker`` trading members only; ``membership`` is a ``Membership``."""

    params = (("membership", None),)

    def __init__(self) -> None:
        super().__init__()
        if not isinstance(self.p.membership, Membership):
            raise TypeError("MembershipBroker needs membership=<feeds.membership.Membership>")
        self._owner: dict[Any, Any] = {}
        self._closing: dict[Any, Any] = {}
        self.forced_closes: list[tuple[str, pd.Timestamp]] = []  # (symbol, UTC bar) of each close

    def is_member(self, data: Any) -> bool:
        """Is ``data``'s symbol a member at its current bar?"""
        return bool(self.p.membership.is_member(data._name, data.datetime.datetime(0)))

    def _allowed(self, data: Any, size: float) -> bool:
        """Members trade freely; a non-member's order may only reduce its position."""
        closing = self._closing.get(data)
        if closing is not None and closing.alive():
            return False
        if self.is_member(data):
            return True
        held = self.getposition(data).size
        return held * size < 0 and abs(size) <= abs(held)

    def _refused(self, cls: type, owner: Any, data: Any, size: float, **kw: Any) -> Any:
        order = cls(owner=owner, data=data, size=size, price=kw.get("price"),
                    pricelimit=kw.get("plimit"), exectype=kw.get("exectype"),
                    valid=kw.get("valid"), tradeid=kw.get("tradeid", 0))  # fmt: skip
        self._ocoize(order, None)
        order.reject(self)
        self.notify(order)
        return order

    def buy(self, owner: Any, data: Any, size: float, **kwargs: Any) -> Any:
        self._owner[data] = owner
        if not self._allowed(data, abs(size)):
            return self._refused(bt.BuyOrder, owner, data, size, **kwargs)
        return super().buy(owner, data, size, **kwargs)

    def sell(self, owner: Any, data: Any, size: float, **kwargs: Any) -> Any:
        self._owner[data] = owner
        if not self._allowed(data, -abs(size)):
            return self._refused(bt.SellOrder, owner, data, size, **kwargs)
        return super().sell(owner, data, size, **kwargs)

    def next(self) -> None:
        """Close what is held in symbols that left, then run the usual broker step."""
        for data, pos in list(self.positions.items()):
            if not pos.size or not len(data) or self.is_member(data):
                continue
            closing = self._closing.get(data)
            owner = self._owner.get(data)
            if (closing is not None and closing.alive()) or owner is None:
                continue
            cls = bt.SellOrder if pos.size > 0 else bt.BuyOrder
            order = cls(owner=owner, data=data, size=abs(pos.size), price=None,
                        pricelimit=None, exectype=bt.Order.Market, valid=None)  # fmt: skip
            self._ocoize(order, None)
            self._closing[data] = order
            self.forced_closes.append(
                (data._name, pd.Timestamp(data.datetime.datetime(0), tz="UTC"))
            )
            super().submit(order)
        super().next()
