"""``AlpacaBroker``: a backtrader broker on Alpaca (alpaca-py), journaled, that loses no order.

Get it from the store (``store.getbroker()``) and give it to Cerebro; the strategy does not
change. Orders: market, limit, stop, stop-limit (``exectype``), brackets
(``buy_bracket``/``sell_bracket`` become one Alpaca bracket order), fractional quantities, stock
and crypto symbols. Notifications (Submitted, Accepted, Partial, Completed, Canceled, Rejected,
Expired) come from Alpaca's ``trade_updates`` stream and are delivered in ``next()``, on the
strategy's thread.

The write path of every order (see ``brokers.alpaca.journal``): the intent is journaled with a
deterministic ``client_order_id`` (strategy, symbol, bar time, leg) *before* it is sent; the
submit goes through ``TradingAPI.submit_idempotent`` (looked up, never duplicated, on a
timeout/5xx/reset); the answer and every later update are journaled idempotently. An order
whose fate stays unknown blocks new orders until a lookup settles it. After the stream
reconnects, orders and positions are re-read (``brokers.alpaca.reconcile``) before any new
order; a position mismatch halts trading (orders are rejected with the reason) until fixed.
A broker fault (no answer, or an answer outside the Trading API's schema) halts new orders
too, and reconciliation is tried again every ``unreachable_retry`` seconds; the strategy's
``next()`` never sees the exception.
The ``signal=`` keyword of ``buy``/``sell``/``order_target_*`` (the ML strategy passes the
signal's heads) is stored with the order.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from typing import Any

import backtrader as bt
from backtrader.order import BuyOrder, Order, SellOrder
from backtrader.position import Position

from brokers.alpaca.journal import Journal, OrderIntent, OrderRecord
from brokers.alpaca.orders import EXEC_TYPES, AlpacaCommInfo, order_fields
from brokers.alpaca.reconcile import PositionMismatch, reconcile, symbol_key
from brokers.alpaca.rest import (
    BROKER_FAULTS,
    BrokerUnavailable,
    OrderRejected,
    OrderSpec,
    TradingAPI,
)

log = logging.getLogger(__name__)


class AlpacaBroker(bt.BrokerBase):  # type: ignore[misc]
    """See the module docstring. Built by ``AlpacaStore.getbroker()``."""

    params = (("store", None), ("account_ttl", 2.0), ("stop_wait", 2.0), ("unreachable_retry", 5.0))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        store = self.p.store
        if store is None:
            raise ValueError("AlpacaBroker needs store=AlpacaStore(...); use store.getbroker()")
        self.store = store
        self.api: TradingAPI = store.api
        self.journal: Journal = store.journal
        self.cfg = store.config
        self.comminfo = {None: AlpacaCommInfo(fractional=self.cfg.fractional)}
        self.orders: dict[int, Any] = {}  # bt ref -> bt order
        self._by_coid: dict[str, int] = {}
        self._by_alpaca: dict[str, int] = {}
        self._pending_bracket: dict[int, list[Any]] = {}  # parent ref -> untransmitted orders
        self._legs_seen: dict[str, int] = {}  # (symbol|bar) -> orders placed for it
        self.positions: dict[str, Position] = collections.defaultdict(Position)
        self.notifs: collections.deque[Any] = collections.deque()
        self.updates: queue.Queue[dict[str, Any]] = queue.Queue()
        self.halted: str | None = None
        self._halt_error: Exception | None = None
        self._last_attempt = 0.0
        self._saved_baseline = dict(store.baseline)
        self._unknown: set[str] = set()
        self._resync = threading.Event()
        self._account: dict[str, Any] = {}
        self._account_at = 0.0
        self._last_check = 0.0
        self.startingcash = self.cash = 0.0
        self.startingvalue = self.value = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        self.store.start(broker=self)
        self.store.updates.on_reconnect.append(self._resync.set)
        self.resync()
        self.store.adopt_positions = False  # adopt once, at start; later differences halt
        if self._halt_error is not None:
            self.store.stop()
            raise self._halt_error
        try:
            acct = self._refresh_account(force=True)
        except BROKER_FAULTS:
            self.store.stop()
            raise
        self.startingcash = self.cash = float(acct.get("cash") or 0.0)
        self.startingvalue = self.value = float(acct.get("equity") or 0.0)

    def stop(self) -> None:
        """Apply the updates still in flight (up to ``stop_wait`` s for orders sent on the last
        bar), then close the streams. Orders still open stay at Alpaca and in the journal."""
        deadline = time.monotonic() + self.p.stop_wait
        while True:
            self._drain()
            alive = [o for o in self.orders.values() if o.status in (Order.Submitted,
                                                                      Order.Accepted)]  # fmt: skip
            market = [o for o in alive if o.exectype in (None, Order.Market)]
            if not market or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        super().stop()
        self.store.stop()

    def on_update(self, data: dict[str, Any]) -> None:
        """``trade_updates`` payload (stream thread): journal it now, act on it in ``next()``."""
        try:
            self.journal.apply_update(data)
        finally:
            self.updates.put(data)

    # -- account --------------------------------------------------------------------------------

    def getcash(self) -> float:
        self.cash = float(self._refresh_account().get("cash") or 0.0)
        return self.cash

    def getvalue(self, datas: Any = None) -> float:
        if datas:
            return float(sum(self.getposition(d).size * d.close[0] for d in datas))
        self.value = float(self._refresh_account().get("equity") or 0.0)
        return self.value

    def getposition(self, data: Any, clone: bool = True) -> Position:
        pos = self.positions[symbol_key(data._name)]
        return pos.clone() if clone else pos

    def _refresh_account(self, force: bool = False) -> dict[str, Any]:
        """The account, re-read after ``account_ttl`` s; the last one read while Alpaca does
        not answer (a strategy's ``getvalue()`` must not crash on a passing fault)."""
        unreachable = isinstance(self._halt_error, BROKER_FAULTS) and bool(self._account)
        if force or (time.monotonic() - self._account_at > self.p.account_ttl and not unreachable):
            try:
                self._account = self.api.account()
            except BROKER_FAULTS as err:
                if force or not self._account:
                    raise
                log.warning("account read failed, using the last one: %s", err)
            self._account_at = time.monotonic()
        return self._account

    # -- backtrader order API -------------------------------------------------------------------

    def buy(self, owner: Any, data: Any, size: float, price: float | None = None,
            plimit: float | None = None, exectype: Any = None, valid: Any = None,
            tradeid: int = 0, oco: Any = None, trailamount: Any = None,
            trailpercent: Any = None, parent: Any = None, transmit: bool = True,
            **kwargs: Any) -> Any:  # fmt: skip
        order = BuyOrder(owner=owner, data=data, size=size, price=price, pricelimit=plimit,
                         exectype=exectype, valid=valid, tradeid=tradeid, trailamount=trailamount,
                         trailpercent=trailpercent, parent=parent, transmit=transmit)  # fmt: skip
        return self._place(order, kwargs)

    def sell(self, owner: Any, data: Any, size: float, price: float | None = None,
             plimit: float | None = None, exectype: Any = None, valid: Any = None,
             tradeid: int = 0, oco: Any = None, trailamount: Any = None,
             trailpercent: Any = None, parent: Any = None, transmit: bool = True,
             **kwargs: Any) -> Any:  # fmt: skip
        order = SellOrder(owner=owner, data=data, size=size, price=price, pricelimit=plimit,
                          exectype=exectype, valid=valid, tradeid=tradeid, trailamount=trailamount,
                          trailpercent=trailpercent, parent=parent, transmit=transmit)  # fmt: skip
        return self._place(order, kwargs)

    def cancel(self, order: Any) -> None:
        known = self.orders.get(order.ref)
        if known is None or not known.alive():
            return
        alpaca_id = next((a for a, r in self._by_alpaca.items() if r == order.ref), None)
        if alpaca_id is None:  # not answered yet (unknown): the resync settles it first
            log.warning("order %d: no Alpaca id yet, cancel not sent", order.ref)
            return
        try:
            if not self.api.cancel(alpaca_id):
                log.info("%s: cancel refused, the order is already final", alpaca_id)
        except BROKER_FAULTS as err:  # the order stays live; the strategy may cancel again
            log.error("%s: cancel not delivered: %s", alpaca_id, err)

    def orderstatus(self, order: Any) -> int:
        return int(self.orders[order.ref].status)

    def notify(self, order: Any) -> None:
        self.notifs.append(order.clone())

    def get_notification(self) -> Any:
        return self.notifs.popleft() if self.notifs else None

    def next(self) -> None:
        self._drain()
        if self._resync.is_set():
            if time.monotonic() - self._last_attempt >= self._retry_every():
                self.resync()
        elif time.monotonic() - self._last_check > self.cfg.position_check_every:
            self.check_positions()
        # the boundary after this bar's updates: Cerebro hands the strategy what precedes it
        self.notifs.append(None)

    def _retry_every(self) -> float:
        """While Alpaca does not answer, reconcile at most every few seconds (each attempt can
        take the retries' timeouts), so the strategy's bars do not stall behind it."""
        return self.p.unreachable_retry if isinstance(self._halt_error, BROKER_FAULTS) else 0.0

    # -- placing --------------------------------------------------------------------------------

    def _place(self, order: Any, info: dict[str, Any]) -> Any:
        order.addinfo(**info)
        order.addcomminfo(self.getcommissioninfo(order.data))
        parent_ref = getattr(order.parent, "ref", order.ref)
        if not order.transmit:
            self._pending_bracket.setdefault(parent_ref, []).append(order)
            return order
        if parent_ref != order.ref:  # the last child of a bracket: send the whole bracket
            parent, stop = self._pending_bracket.pop(parent_ref)
            return self._send_bracket(parent, stop, order)
        try:
            fields = order_fields(order)
        except OrderRejected as err:
            self.orders[order.ref] = order
            order.submit(self)
            self.notify(order)
            self._reject(order, str(err))
            return order
        self._send(order, fields)
        return order

    def _send(self, order: Any, fields: dict[str, Any], children: tuple[Any, ...] = ()) -> None:
        self.orders[order.ref] = order
        for child in children:
            self.orders[child.ref] = child
        order.submit(self)
        self.notify(order)
        for child in children:
            child.submit(self)
            self.notify(child)
        reason = self._blocked()
        if reason:
            self._reject(order, reason, children)
            return
        rec = self._journal_intent(order, fields)
        self._by_coid[rec.client_order_id] = order.ref
        if rec.status != "pending_submit":  # a replay after restart: already at Alpaca
            self._adopt_sent(order, rec, replay=True)
            return
        spec = OrderSpec(client_order_id=rec.client_order_id, **fields)
        try:
            body, how = self.api.submit_idempotent(spec)
        except OrderRejected as err:
            self.journal.mark_rejected(rec.client_order_id, err.message or str(err))
            self._reject(order, str(err), children)
            return
        except BROKER_FAULTS as err:  # no answer, or one outside the schema: fate unknown
            self.journal.mark_unknown(rec.client_order_id, str(err))
            self._unknown.add(rec.client_order_id)
            log.error("%s", err)
            return
        log.info("%s %s (%s)", rec.client_order_id, body.get("status"), how)
        self._accepted(order, self.journal.mark_sent(rec.client_order_id, body), body, children)

    def _send_bracket(self, parent: Any, stop: Any, limit: Any) -> Any:
        try:
            fields = order_fields(parent)
            if limit.created.price is None or stop.created.price is None:
                raise OrderRejected("a bracket needs a take-profit and a stop-loss price")
        except OrderRejected as err:
            for o in (parent, stop, limit):
                self.orders[o.ref] = o
                o.submit(self)
                self.notify(o)
            self._reject(parent, str(err), (stop, limit))
            return limit
        fields |= {"order_class": "bracket", "take_profit": limit.created.price,
                   "stop_loss": stop.created.price}  # fmt: skip
        self._send(parent, fields, children=(stop, limit))
        return limit

    def _journal_intent(self, order: Any, fields: dict[str, Any]) -> OrderRecord:
        bar = order.data.datetime.datetime(0)
        key = f"{order.data._name}|{bar.isoformat()}"
        n = self._legs_seen.get(key, 0)
        self._legs_seen[key] = n + 1
        info = dict(order.info)
        intent = OrderIntent(
            strategy=self.cfg.strategy, symbol=fields["symbol"], bar_time=bar, side=fields["side"],
            leg=str(n), qty=fields["qty"], order_type=fields["order_type"],
            limit_price=fields.get("limit_price"), stop_price=fields.get("stop_price"),
            time_in_force=fields["time_in_force"], order_class=fields.get("order_class", "simple"),
            signal=info.get("signal"),
        )  # fmt: skip
        return self.journal.record_intent(intent)

    def _blocked(self) -> str | None:
        """Why no order may go out now (resync first when the stream reconnected or an order's
        fate is unknown), or ``None``. Unknown orders are tracked in memory: at start the
        resync settles every one the journal holds."""
        due = time.monotonic() - self._last_attempt >= self._retry_every()
        if (self._resync.is_set() or self._unknown) and due:
            self.resync()
        if self.halted:
            return f"trading halted: {self.halted}"
        if self._unknown:
            return (
                f"{len(self._unknown)} order(s) of unknown fate ({sorted(self._unknown)[0]}); "
                "no new order until Alpaca answers the lookup"
            )
        return None

    # -- state changes --------------------------------------------------------------------------

    def _reject(self, order: Any, reason: str, children: tuple[Any, ...] = ()) -> None:
        log.warning("order rejected: %s", reason)
        order.addinfo(reject_reason=reason)
        for o in (order, *children):
            if o.alive():
                o.reject(self)
                self.notify(o)

    def _accepted(
        self, order: Any, rec: OrderRecord, body: dict[str, Any], children: tuple[Any, ...]
    ) -> None:
        if rec.alpaca_id:
            self._by_alpaca[rec.alpaca_id] = order.ref
        for leg in body.get("legs") or []:
            kind = str(leg.get("type") or leg.get("order_type"))
            child = next((c for c in children if EXEC_TYPES.get(c.exectype) == kind or
                          (kind.startswith("stop") and c.exectype == Order.Stop)), None)  # fmt: skip
            if child is not None and leg.get("id"):
                self._by_alpaca[str(leg["id"])] = child.ref
                self._by_coid[str(leg["client_order_id"])] = child.ref
        if order.status == Order.Submitted:
            order.accept(self)
            self.notify(order)
            for child in children:
                child.accept(self)
                self.notify(child)
        self._apply_status(order, rec)

    def _adopt_sent(self, order: Any, rec: OrderRecord, replay: bool = False) -> None:
        """A backtrader order for a journal row that is already at Alpaca. On a ``replay`` (the
        same bar after a restart) its earlier fills are already in the positions read at start."""
        if rec.alpaca_id:
            self._by_alpaca[rec.alpaca_id] = order.ref
        if rec.status == "rejected":
            self._reject(order, rec.error or "rejected")
            return
        order.accept(self)
        self.notify(order)
        self._apply_status(order, rec, move_position=not replay)

    def _drain(self) -> None:
        while True:
            try:
                data = self.updates.get_nowait()
            except queue.Empty:
                return
            self._on_event(data)

    def _on_event(self, data: dict[str, Any]) -> None:
        body = data.get("order") or {}
        ref = self._by_coid.get(str(body.get("client_order_id"))) or self._by_alpaca.get(
            str(body.get("id"))
        )
        order = self.orders.get(ref) if ref is not None else None
        if order is None:
            return  # an external order: journaled, no backtrader order to notify
        event = data.get("event")
        if event in ("fill", "partial_fill"):
            self._execute(order, data)
        elif event in ("new", "accepted") and order.status == Order.Submitted:
            order.accept(self)
            self.notify(order)
        elif event in ("canceled", "expired", "rejected"):  # done_for_day: not final
            self._finish(order, str(event))

    def _execute(self, order: Any, data: dict[str, Any]) -> None:
        qty, price = float(data["qty"]), float(data["price"])
        filled = float((data.get("order") or {}).get("filled_qty") or 0.0)
        if filled and abs(order.executed.size) + qty > filled + 1e-9:
            return  # this execution is already applied (the resync filled the gap)
        self._apply_fill(order, qty if order.isbuy() else -qty, price)

    def _apply_fill(
        self, order: Any, size: float, price: float, move_position: bool = True
    ) -> None:
        if not order.alive():
            return
        data = order.data
        pos = self.positions[symbol_key(data._name)]
        if not move_position:  # already in the position: account for the order on a copy
            pos = pos.clone()
            pos.set(pos.size - size, pos.price)
        old_price = pos.price
        psize, pprice, opened, closed = pos.update(size, price)
        ci = self.getcommissioninfo(data)
        closedvalue = ci.getoperationcost(closed, old_price) if closed else 0.0
        pnl = ci.profitandloss(-closed, old_price, price) if closed else 0.0
        order.execute(data.datetime[0], size, price, closed, closedvalue,
                      ci.getcommission(closed, price), opened, ci.getoperationcost(opened, price),
                      ci.getcommission(opened, price), 0.0, pnl, psize, pprice)  # fmt: skip
        if order.executed.remsize and abs(order.executed.remsize) > 1e-9:
            order.partial()
        else:
            order.completed()
        self.notify(order)
        self._account_at = 0.0  # cash changed: refresh on the next read
        # a filled bracket exit's sibling is canceled by Alpaca; the stream reports it

    def _finish(self, order: Any, status: str) -> None:
        if not order.alive():
            return
        if status == "expired":  # Alpaca decides: not backtrader's own valid-date rule
            order.status = Order.Expired
            order.executed.dt = order.data.datetime[0]
        elif status == "rejected":
            order.reject(self)
        else:
            order.cancel()
        self.notify(order)

    def _apply_status(self, order: Any, rec: OrderRecord, move_position: bool = True) -> None:
        """Bring a backtrader order up to a journal row (after a lookup or a resync)."""
        have = abs(float(order.executed.size))
        if rec.filled_qty > have + 1e-9 and rec.filled_avg_price:
            total = rec.filled_qty * rec.filled_avg_price
            done = have * (order.executed.price or 0.0)
            gap = rec.filled_qty - have
            size = gap if order.isbuy() else -gap
            self._apply_fill(order, size, (total - done) / gap, move_position)
        if rec.is_final and order.alive() and rec.status != "filled":
            self._finish(order, rec.status)

    # -- reconciliation -------------------------------------------------------------------------

    def resync(self) -> None:
        """Re-read orders, fills and positions; settle unknown orders; halt on a mismatch."""
        self._resync.clear()
        self._last_attempt = time.monotonic()
        try:
            report = reconcile(self.api, self.journal, tolerance=self.cfg.position_tolerance,
                               adopt=self.store.adopt_positions, baseline=self.store.baseline)  # fmt: skip
        except PositionMismatch as err:
            self._halt(err, str(err))
            return
        except BROKER_FAULTS as err:  # a passing fault: try again later
            self._resync.set()
            why = "unreachable" if isinstance(err, BrokerUnavailable) else "answer malformed"
            self._halt(err, f"Alpaca {why}, reconciliation pending ({err})")
            return
        self.halted, self._halt_error = None, None
        if self.store.baseline != self._saved_baseline:
            self.store.save_baseline()
            self._saved_baseline = dict(self.store.baseline)
        self._last_check = time.monotonic()
        self._unknown = {c for c in self._unknown
                         if (r := self.journal.get(c)) is None or r.status == "unknown"}  # fmt: skip
        for coid, ref in list(self._by_coid.items()):
            rec = self.journal.get(coid)
            order = self.orders.get(ref)
            if rec is None or order is None:
                continue
            if rec.alpaca_id:
                self._by_alpaca[rec.alpaca_id] = ref
            if order.status == Order.Submitted and rec.status not in ("pending_submit", "unknown"):
                self._adopt_sent(order, rec)
            else:
                self._apply_status(order, rec)
        self._load_positions(report.positions)

    def _halt(self, err: Exception, why: str) -> None:
        self.halted, self._halt_error = why, err
        log.error("trading halted: %s", why)

    @property
    def position_mismatch(self) -> bool:
        """Whether trading is halted because the journal's positions differ from Alpaca's."""
        return isinstance(self._halt_error, PositionMismatch)

    def check_positions(self) -> None:
        """The periodic position check: a mismatch halts trading."""
        self._resync.set()
        self.resync()

    def _load_positions(self, positions: dict[str, tuple[float, float]]) -> None:
        keep = {k: p for k, p in self.positions.items() if p.size}
        for key in set(keep) | set(positions):
            qty, price = positions.get(key, (0.0, 0.0))
            have = self.positions[key]
            if abs(have.size - qty) > 1e-9:
                log.info("position %s: %s -> %s (from Alpaca)", key, have.size, qty)
                self.positions[key] = Position(qty, price)
