"""The order journal: every order intent is written before it is sent; every update applied once.

One row per order (keyed by a deterministic ``client_order_id``, see :func:`make_client_order_id`)
and one row per execution. The broker's write path is::

    rec = journal.record_intent(OrderIntent(strategy="ml", symbol="AAPL", bar_time=t,
                                            side="buy", qty=10, signal=signal))
    try:
        order = client.submit_order(... client_order_id=rec.client_order_id ...)
    except TimeoutError:                        # sent, but no answer: reconcile later
        journal.mark_unknown(rec.client_order_id, "submit timed out")
    else:
        journal.mark_sent(rec.client_order_id, order)
    ...
    journal.apply_update(trade_update_payload)  # from the trade_updates stream, any number of times

Status rules: an intent starts as ``pending_submit``; ``unknown`` means sent without an answer
(:meth:`Journal.unknown_orders` lists both, for reconciliation after a restart). Updates are
idempotent: the same event applied twice changes nothing, fills are de-duplicated by execution
id, an open status never moves back (``partially_filled`` never returns to ``new``) and a final
status (filled, canceled, expired, rejected, replaced) never reopens; only a late fill may turn a
canceled or expired order into ``filled``. An update for an order the journal does not know is
recorded as an external order, never dropped.

Layout: the value types, ids and errors are in ``journal_model``, the tables, engine and row
functions in ``journal_db``; this module holds :class:`Journal` and exports the public names.

Storage: SQLAlchemy Core, SQLite by default (a file path; WAL mode, ``BEGIN IMMEDIATE``, full
sync), any SQLAlchemy URL otherwise. Each write is one transaction, so a process that dies
mid-way leaves every committed row readable by the next :class:`Journal` on the same file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from brokers.alpaca.journal_db import (
    FILLS,
    INTENT_FIELDS,
    META_KV,
    ORDERS,
    create_schema,
    external_row,
    fetch_order_row,
    fill_of,
    insert_fill,
    make_engine,
    order_changes,
    order_record,
    parse_event,
    select_order_row,
    set_gap,
    update_order_row,
)
from brokers.alpaca.journal_model import (
    FINAL_STATUSES,
    GAP_PREFIX,
    PENDING_SUBMIT,
    SCHEMA_VERSION,
    UNKNOWN,
    Applied,
    CorruptJournalError,
    FillPosition,
    FillRecord,
    IntentConflictError,
    JournalConfig,
    JournalError,
    OrderIntent,
    OrderRecord,
    db_time,
    make_client_order_id,
    net_position,
    order_dict,
)
from core.utc import utc_datetime

__all__ = [
    "Applied",
    "CorruptJournalError",
    "FINAL_STATUSES",
    "FillPosition",
    "FillRecord",
    "GAP_PREFIX",
    "IntentConflictError",
    "Journal",
    "JournalConfig",
    "JournalError",
    "OrderIntent",
    "OrderRecord",
    "PENDING_SUBMIT",
    "SCHEMA_VERSION",
    "UNKNOWN",
    "make_client_order_id",
    "net_position",
]

# ---------------------------------------------------------------------------------------------
# the journal


class Journal:
    """The order journal over one database (see the module docstring for the rules).

    ``Journal("state/journal.sqlite")``, ``Journal("postgresql+psycopg://...")`` or
    ``Journal(JournalConfig(...))``. Thread-safe within a process; several processes may share
    one SQLite file (writes queue on its lock for up to ``busy_timeout_s``).
    """

    def __init__(
        self, target: str | Path | JournalConfig, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.config = target if isinstance(target, JournalConfig) else JournalConfig(url=target)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._url = sa.make_url(self.config.sqlalchemy_url)
        self.where = self._url.render_as_string(hide_password=True)
        self._engine = make_engine(self._url, self.config)
        try:
            create_schema(self._engine, self.where)
        except BaseException:
            self._engine.dispose()
            raise

    def close(self) -> None:
        """Release the database connections (committed rows are already on disk)."""
        self._engine.dispose()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------

    def record_intent(self, intent: OrderIntent) -> OrderRecord:
        """Write an order before it is sent; status ``pending_submit``.

        Recording the same intent again (a replay after a restart) returns the stored row: send
        only if it is still ``pending_submit``, and look it up at Alpaca by ``client_order_id``
        first (it may have left before the crash; Alpaca refuses a resend with a 422 anyway).
        The same ``client_order_id`` with different order fields raises
        :class:`IntentConflictError` (give the new order its own ``leg``).
        """
        coid = intent.client_order_id
        now = db_time(self._clock())
        values = {f: getattr(intent, f) for f in INTENT_FIELDS} | {
            "client_order_id": coid,
            "status": PENDING_SUBMIT,
            "filled_qty": 0.0,
            "created_at": now,
            "updated_at": now,
            "bar_time": db_time(intent.bar_time),
            "model_name": intent.model_name,
            "model_version": intent.model_version,
            "signal": intent.signal,
            "external": False,
        }
        with self._write() as conn:
            row = select_order_row(conn, coid)
            if row is None:
                conn.execute(ORDERS.insert().values(**values))
                return order_record(fetch_order_row(conn, coid))
        old = {f: row[f] for f in INTENT_FIELDS}
        new = {f: values[f] for f in INTENT_FIELDS}
        if old != new:
            diff = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
            raise IntentConflictError(
                f"{coid}: already recorded with other order fields {diff}; an order that differs "
                "needs its own leg name (OrderIntent.leg)"
            )
        return order_record(row)

    def mark_sent(self, client_order_id: str, order: Any) -> OrderRecord:
        """Store Alpaca's answer to the submit (its order JSON, or an alpaca-py ``Order``).

        Also the way to store what a lookup by ``client_order_id`` found for an ``unknown`` order.
        """
        body = order_dict(order)
        if body.get("client_order_id") not in (None, client_order_id):
            raise JournalError(
                f"mark_sent({client_order_id!r}) got the order of {body['client_order_id']!r}"
            )
        with self._write() as conn:
            row = self._require(conn, client_order_id)
            changes = order_changes(row, body, event=None)
            if row["sent_at"] is None:
                changes["sent_at"] = db_time(self._clock())
            update_order_row(conn, client_order_id, changes, body)
            return order_record(fetch_order_row(conn, client_order_id))

    def mark_unknown(self, client_order_id: str, reason: str) -> OrderRecord:
        """The submit got no answer (timeout, dropped connection): status ``unknown``.

        A row that already has an answer (the stream may beat the HTTP reply) is left as it is.
        """
        return self._mark(client_order_id, UNKNOWN, reason, from_statuses=(PENDING_SUBMIT,))

    def mark_rejected(self, client_order_id: str, reason: str) -> OrderRecord:
        """Alpaca refused the order, or reconciliation found it never arrived: ``rejected``.

        Not for a 422 "client_order_id must be unique": that order *is* at Alpaca.
        """
        return self._mark(
            client_order_id, "rejected", reason, from_statuses=(PENDING_SUBMIT, UNKNOWN)
        )

    def apply_update(self, event: Mapping[str, Any] | Any) -> Applied:
        """Apply one trade-update payload (the ``data`` of a ``trade_updates`` stream message).

        ``{"event": "fill", "execution_id", "price", "qty", "timestamp", "order": {...}}``, the
        whole message, or an alpaca-py ``TradeUpdate``. Idempotent; an order the journal does not
        know is adopted as external first.
        """
        event, order, name, when = parse_event(event)
        coid = str(order["client_order_id"])
        with self._write() as conn:
            row = select_order_row(conn, coid)
            created = row is None
            if row is None:
                conn.execute(ORDERS.insert().values(**external_row(order, when)))
                row = fetch_order_row(conn, coid)
            fill = fill_of(event, name, order, row, when)
            added = fill is not None and insert_fill(conn, fill)
            changes = order_changes(row, order, event=name)
            update_order_row(conn, coid, changes, order)
            if added and fill is not None and not fill.execution_id.startswith(GAP_PREFIX):
                set_gap(conn, coid, when, only_if_gap=True)
            record = order_record(fetch_order_row(conn, coid))
        return Applied(
            record=record, changed=created or added or bool(changes), fill=fill if added else None
        )

    def adopt_external(self, order: Any) -> OrderRecord:
        """Record an order found at Alpaca that this journal did not create (``external``).

        An order already journaled is only brought up to date (its flags are kept).
        """
        body = order_dict(order)
        if not body.get("client_order_id"):
            raise JournalError(f"adopt_external: order without client_order_id: {body}")
        coid = str(body["client_order_id"])
        with self._write() as conn:
            row = select_order_row(conn, coid)
            if row is None:
                conn.execute(ORDERS.insert().values(**external_row(body, self._clock())))
            else:
                update_order_row(conn, coid, order_changes(row, body, event=None), body)
            return order_record(fetch_order_row(conn, coid))

    def set_meta(self, key: str, value: str) -> None:
        """Store a small named value with the journal (the adopted position baseline, say)."""
        if key == "schema_version":
            raise JournalError("schema_version is the journal's own")
        with self._write() as conn:
            conn.execute(META_KV.delete().where(META_KV.c.key == key))
            conn.execute(META_KV.insert().values(key=key, value=value))

    def fill_gaps(self) -> dict[str, float]:
        """Journal the executions the stream missed (:meth:`missing_fills`) as one gap fill per
        order, at the price the order's averages imply; ``{client_order_id: qty}`` added."""
        added = {}
        for coid in self.missing_fills():
            with self._write() as conn:
                qty = set_gap(conn, coid, self._clock(), only_if_gap=False)
            if qty:
                added[coid] = qty
        return added

    # -- reads ----------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A value stored with :meth:`set_meta`, or ``None``."""
        with self._read() as conn:
            row = conn.execute(sa.select(META_KV.c.value).where(META_KV.c.key == key)).first()
        return None if row is None else str(row[0])

    def get(self, client_order_id: str) -> OrderRecord | None:
        """The row of ``client_order_id``, or ``None``."""
        with self._read() as conn:
            row = select_order_row(conn, client_order_id)
        return None if row is None else order_record(row)

    def orders(self, symbol: str | None = None) -> list[OrderRecord]:
        """Every journaled order (external ones included), oldest first."""
        return self._orders(sa.true(), symbol)

    def open_orders(self, symbol: str | None = None) -> list[OrderRecord]:
        """Orders live at Alpaca as far as the journal knows (answered, not final)."""
        skip = FINAL_STATUSES | {PENDING_SUBMIT, UNKNOWN}
        return self._orders(ORDERS.c.status.not_in(sorted(skip)), symbol)

    def unknown_orders(self) -> list[OrderRecord]:
        """Orders whose fate is not known: sent without an answer, or written and maybe sent.

        After a restart every one of them must be looked up by ``client_order_id`` at Alpaca.
        """
        return self._orders(ORDERS.c.status.in_([PENDING_SUBMIT, UNKNOWN]), None)

    def fills(
        self, client_order_id: str | None = None, symbol: str | None = None
    ) -> list[FillRecord]:
        """Executions in time order, optionally of one order or one symbol."""
        query = FILLS.select().order_by(FILLS.c.timestamp, FILLS.c.execution_id)
        if client_order_id is not None:
            query = query.where(FILLS.c.client_order_id == client_order_id)
        if symbol is not None:
            query = query.where(FILLS.c.symbol == symbol)
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [FillRecord(**{**r, "timestamp": utc_datetime(r["timestamp"])}) for r in rows]

    def position_from_fills(self, symbol: str) -> FillPosition:
        """The position in ``symbol`` that the journaled fills add up to (see :func:`net_position`)."""
        return net_position(symbol, self.fills(symbol=symbol))

    def missing_fills(self) -> dict[str, float]:
        """``{client_order_id: qty}`` where Alpaca reports more filled than the journal's fills.

        Executions that happened while the stream was down reach the journal only as an order's
        ``filled_qty`` (from :meth:`mark_sent`/:meth:`adopt_external`); they need a backfill
        (Alpaca's account activities) before :meth:`position_from_fills` can be trusted.
        """
        filled = sa.func.coalesce(sa.func.sum(FILLS.c.qty), 0.0)
        query = (
            sa.select(ORDERS.c.client_order_id, ORDERS.c.filled_qty - filled)
            .select_from(ORDERS.outerjoin(FILLS))
            .group_by(ORDERS.c.client_order_id, ORDERS.c.filled_qty)
            .having(ORDERS.c.filled_qty - filled > 1e-9)
        )
        with self._read() as conn:
            return {coid: float(gap) for coid, gap in conn.execute(query).all()}

    # -- internals ------------------------------------------------------------------------------

    def _orders(self, where: Any, symbol: str | None) -> list[OrderRecord]:
        query = ORDERS.select().where(where).order_by(ORDERS.c.created_at, ORDERS.c.client_order_id)
        if symbol is not None:
            query = query.where(ORDERS.c.symbol == symbol)
        with self._read() as conn:
            return [order_record(r) for r in conn.execute(query).mappings().all()]

    def _mark(
        self, coid: str, status: str, reason: str, from_statuses: tuple[str, ...]
    ) -> OrderRecord:
        with self._write() as conn:
            row = self._require(conn, coid)
            if row["status"] in from_statuses:
                now = db_time(self._clock())
                changes = {"status": status, "error": reason, "updated_at": now}
                if row["sent_at"] is None:
                    changes["sent_at"] = now
                conn.execute(
                    ORDERS.update().where(ORDERS.c.client_order_id == coid).values(**changes)
                )
            return order_record(fetch_order_row(conn, coid))

    def _require(self, conn: Connection, coid: str) -> sa.RowMapping:
        row = select_order_row(conn, coid)
        if row is None:
            raise JournalError(
                f"{coid}: not in the journal at {self.where}; record_intent() comes first"
            )
        return row

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._lock, self._guard(), self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._lock, self._guard(), self._engine.connect() as conn:
            conn.info["read_only"] = True  # a plain BEGIN: readers do not take the write lock
            try:
                yield conn
            finally:
                conn.info.pop("read_only", None)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as err:
            raise JournalError(f"order journal at {self.where}: {err}") from err
