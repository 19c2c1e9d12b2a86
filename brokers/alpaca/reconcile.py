"""Reconciliation: make the journal agree with Alpaca before any new order, or refuse to trade.

:func:`reconcile` runs at start, after the ``trade_updates`` stream reconnects, and
periodically. It reads everything it needs from Alpaca first (each answer checked against its
schema by ``TradingAPI``), and writes to the journal only once every read has succeeded: a
read that fails (no answer, or a malformed one) leaves the journal as it was. Then, in order:

1. every order of unknown fate (journaled, maybe sent) is looked up by ``client_order_id``:
   found, it is adopted (``mark_sent``); absent, it never reached Alpaca and is marked rejected
   (a stale intent is not sent after a restart: the strategy decides again on the next bar);
2. Alpaca's open orders are read: journaled ones are brought up to date, unknown ones are
   recorded as external (never dropped);
3. journaled orders still open in the journal but no longer open at Alpaca (they ended while
   we were away) are read back and updated;
4. executions that the stream missed show as ``filled_qty`` above the journaled fills; each gap
   becomes one fill at the exact price implied by the two averages, with a deterministic
   execution id, so repeating the reconciliation adds nothing;
5. positions at Alpaca are compared with the journal's fills (plus an adopted ``baseline`` for
   holdings that predate the journal). Any difference beyond ``tolerance`` raises
   :class:`PositionMismatch`, which lists every difference.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from brokers.alpaca.journal import FINAL_STATUSES, Journal, OrderRecord, net_position
from core.errors import BtmlError

log = logging.getLogger(__name__)


class PositionMismatch(BtmlError):
    """Alpaca's positions and the journal's disagree; trading must not go on."""

    def __init__(self, text: str, differences: Mapping[str, tuple[float, float]]) -> None:
        super().__init__(text)
        self.differences = dict(differences)


class _Api(Protocol):
    def order_by_client_id(self, client_order_id: str) -> dict[str, Any] | None: ...
    def orders(self, status: str = ..., after: datetime | None = ...) -> list[dict[str, Any]]: ...
    def positions(self) -> list[dict[str, Any]]: ...


@dataclass
class ReconcileReport:
    """What one reconciliation found and did."""

    adopted: list[str] = field(default_factory=list)
    never_arrived: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    closed_while_away: list[str] = field(default_factory=list)
    gap_fills: dict[str, float] = field(default_factory=dict)
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)
    differences: dict[str, tuple[float, float]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Reads:
    """What reconciliation read from Alpaca, before it writes anything."""

    found: dict[str, dict[str, Any] | None]  # unknown fate: client_order_id -> the lookup
    open_now: list[dict[str, Any]]
    closed: dict[str, dict[str, Any] | None]  # left the open list while away -> the order
    positions: list[dict[str, Any]]


def symbol_key(symbol: str) -> str:
    """Positions are keyed without the slash: Alpaca reports ``BTC/USD`` as ``BTCUSD``."""
    return symbol.replace("/", "").upper()


def reconcile(
    api: _Api,
    journal: Journal,
    *,
    tolerance: float = 1e-6,
    adopt: bool = False,
    baseline: dict[str, float] | None = None,
    crypto_fee_tolerance: float = 0.01,
    read_only: bool = False,
) -> ReconcileReport:
    """Steps 1-5 of the module docstring. ``adopt`` takes any position difference as a
    baseline (holdings from before the journal) instead of refusing; ``baseline`` is updated.

    Crypto: Alpaca takes its fee out of the coin received, so a crypto position may be a
    little below the journal's fills; a shortfall within ``crypto_fee_tolerance`` (relative)
    is taken as fees into the baseline, with a warning. ``read_only`` (``btml trade status``
    beside a running bot) writes nothing: it lists unknown and external orders and compares
    positions with the journal as it stands.
    """
    t0 = time.perf_counter()
    report = ReconcileReport()
    if read_only:
        open_now = api.orders("open")
        report.never_arrived = [r.client_order_id for r in journal.unknown_orders()]
        report.external = [str(o["client_order_id"]) for o in open_now
                           if journal.get(str(o["client_order_id"])) is None]  # fmt: skip
        baseline = _with_unjournaled_fills(api, journal, open_now, dict(baseline or {}))
        positions = api.positions()
    else:
        reads = _read_all(api, journal)  # a failed read raises here: nothing written yet
        _settle_unknown(journal, reads.found, report)
        _adopt_open(journal, reads.open_now, report)
        _update_closed(journal, reads.closed, report)
        _fill_gaps(journal, report)
        positions = reads.positions
    fees = crypto_fee_tolerance
    _compare_positions(positions, journal, report, tolerance, adopt, baseline, fees)
    report.seconds = time.perf_counter() - t0
    return report


def _read_all(api: _Api, journal: Journal) -> _Reads:
    """Every read of steps 1-5: the lookups of unknown orders, the open orders, the orders
    that left the open list while we were away, and the positions."""
    unknown = journal.unknown_orders()
    found = {r.client_order_id: api.order_by_client_id(r.client_order_id) for r in unknown}
    open_now = api.orders("open")
    open_ids = {str(o["client_order_id"]) for o in open_now}
    gone = [r for r in journal.open_orders() if r.client_order_id not in open_ids]
    gone += [r for r in unknown if r.client_order_id not in open_ids
             and _live(found[r.client_order_id])]  # fmt: skip
    return _Reads(found, open_now, _read_closed(api, gone), api.positions())


def _live(order: dict[str, Any] | None) -> bool:
    return order is not None and str(order.get("status")) not in FINAL_STATUSES


def _read_closed(api: _Api, gone: list[OrderRecord]) -> dict[str, dict[str, Any] | None]:
    """The orders open in the journal but no longer open at Alpaca, as Alpaca has them now."""
    if not gone:
        return {}
    since = _before(min(r.created_at for r in gone))
    closed = {str(o["client_order_id"]): o for o in api.orders("closed", after=since)}
    return {
        r.client_order_id: closed.get(r.client_order_id)
        or api.order_by_client_id(r.client_order_id)
        for r in gone
    }


def _with_unjournaled_fills(
    api: _Api, journal: Journal, open_now: list[dict[str, Any]], base: dict[str, float]
) -> dict[str, float]:
    """``base`` plus what Alpaca has filled of the journal's live orders beyond the journal's
    fills (a running session journals them a moment later), and, for orders the journal already
    holds as final (a lookup saw the fill before its event arrived), their ``filled_qty``
    beyond the journaled fills: reads only."""
    live = journal.open_orders() + journal.unknown_orders()
    live_ids = {r.client_order_id for r in live}
    for coid, gap in journal.missing_fills().items():
        rec = journal.get(coid)
        if coid in live_ids or rec is None:
            continue
        key = symbol_key(rec.symbol)
        base[key] = base.get(key, 0.0) + (gap if rec.side == "buy" else -gap)
    if not live:
        return base
    theirs = {str(o["client_order_id"]): o for o in open_now}
    since = _before(min(r.created_at for r in live))
    theirs |= {str(o["client_order_id"]): o for o in api.orders("closed", after=since)}
    for rec in live:
        order = theirs.get(rec.client_order_id)
        if order is None:
            continue
        done = sum(f.qty for f in journal.fills(client_order_id=rec.client_order_id))
        gap = float(order.get("filled_qty") or 0.0) - done
        if gap > 1e-9:
            key = symbol_key(rec.symbol)
            base[key] = base.get(key, 0.0) + (gap if rec.side == "buy" else -gap)
    return base


def _settle_unknown(
    journal: Journal, found: dict[str, dict[str, Any] | None], report: ReconcileReport
) -> None:
    for coid, order in found.items():
        if order is not None:
            journal.mark_sent(coid, order)
            report.adopted.append(coid)
            log.info("%s: found at Alpaca (%s), adopted", coid, order.get("status"))
        else:
            journal.mark_rejected(coid, "never reached Alpaca (not re-sent)")
            report.never_arrived.append(coid)
            log.warning("%s: not at Alpaca; marked rejected, not re-sent", coid)


def _adopt_open(journal: Journal, open_now: list[dict[str, Any]], report: ReconcileReport) -> None:
    for order in open_now:
        coid = str(order.get("client_order_id") or "")
        if not coid:
            continue
        if journal.get(coid) is None:
            journal.adopt_external(order)
            report.external.append(coid)
            log.warning("%s %s %s: an order we did not place (external), recorded",
                        coid, order.get("side"), order.get("symbol"))  # fmt: skip
        else:
            journal.mark_sent(coid, order)


def _update_closed(
    journal: Journal, closed: dict[str, dict[str, Any] | None], report: ReconcileReport
) -> None:
    for coid, body in closed.items():
        if body is None:
            log.warning("%s: open in the journal, unknown at Alpaca", coid)
            continue
        journal.mark_sent(coid, body)
        report.closed_while_away.append(coid)


def _fill_gaps(journal: Journal, report: ReconcileReport) -> None:
    report.gap_fills = journal.fill_gaps()
    for coid, gap in report.gap_fills.items():
        log.info("%s: %.6g filled while the stream was down, journaled", coid, gap)


def _compare_positions(
    positions: list[dict[str, Any]],
    journal: Journal,
    report: ReconcileReport,
    tolerance: float,
    adopt: bool,
    baseline: dict[str, float] | None,
    fee_tolerance: float = 0.0,
) -> None:
    base = baseline if baseline is not None else {}
    broker, crypto = _broker_positions(positions)
    report.positions = broker
    by_key: dict[str, list[Any]] = {}
    for f in journal.fills():
        by_key.setdefault(symbol_key(f.symbol), []).append(f)
    for key in sorted(set(by_key) | set(broker) | set(base)):
        fills = by_key.get(key, [])
        ours = net_position(key, fills).qty + base.get(key, 0.0)
        theirs = broker.get(key, (0.0, 0.0))[0]
        if abs(theirs - ours) <= tolerance:
            continue
        if (key in crypto or any("/" in f.symbol for f in fills)) and _fees(
            theirs, ours, fee_tolerance
        ):
            base[key] = base.get(key, 0.0) + theirs - ours
            log.warning(
                "%s: %.9g below the journal's fills taken as crypto fees", key, ours - theirs
            )
            continue
        report.differences[key] = (theirs, ours)
    if not report.differences:
        return
    if adopt:
        for key, (theirs, ours) in report.differences.items():
            base[key] = base.get(key, 0.0) + theirs - ours
            log.warning("%s: adopted %s held at Alpaca outside the journal", key, theirs - ours)
        report.differences.clear()
        return
    lines = "; ".join(f"{k}: Alpaca {t:g}, journal {o:g}" for k, (t, o) in
                      report.differences.items())  # fmt: skip
    raise PositionMismatch(
        f"positions disagree beyond {tolerance:g}: {lines}. Trading is refused; inspect with "
        "`btml trade status`, fix the account or pass --adopt-positions to take Alpaca's "
        "positions as the starting point",
        report.differences,
    )


def _broker_positions(
    positions: list[dict[str, Any]],
) -> tuple[dict[str, tuple[float, float]], set[str]]:
    """Alpaca's positions as ``{key: (signed qty, average price)}``, and the crypto keys."""
    broker: dict[str, tuple[float, float]] = {}
    crypto: set[str] = set()
    for p in positions:
        qty = float(p["qty"]) * (-1.0 if p.get("side") == "short" and float(p["qty"]) > 0 else 1.0)
        broker[symbol_key(str(p["symbol"]))] = (qty, float(p.get("avg_entry_price") or 0.0))
        if p.get("asset_class") == "crypto":
            crypto.add(symbol_key(str(p["symbol"])))
    return broker, crypto


def _fees(theirs: float, ours: float, tolerance: float) -> bool:
    """Whether a crypto shortfall looks like fees taken in the coin: same side, smaller, within
    ``tolerance`` of the journal's position."""
    return (
        ours * theirs >= 0
        and abs(theirs) < abs(ours)
        and abs(ours - theirs) <= tolerance * abs(ours)
    )


def _before(when: datetime) -> datetime:
    from datetime import timedelta

    moment = when if when.tzinfo else when.replace(tzinfo=UTC)
    return moment - timedelta(seconds=1)
