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

Storage: SQLAlchemy Core, SQLite by default (a file path; WAL mode, ``BEGIN IMMEDIATE``, full
sync), any SQLAlchemy URL otherwise. Each write is one transaction, so a process that dies
mid-way leaves every committed row readable by the next :class:`Journal` on the same file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from feeds.errors import CorruptFileError, StoreError

PENDING_SUBMIT = "pending_submit"  # written, not yet sent
UNKNOWN = "unknown"  # sent, but no answer came back
FINAL_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})
_RANK = {PENDING_SUBMIT: 0, UNKNOWN: 1, "new": 3}  # an unlisted (future) status ranks as "new"
_RANK |= dict.fromkeys(("accepted", "pending_new", "held", "accepted_for_bidding"), 2)
_RANK |= dict.fromkeys(("partially_filled", "pending_cancel", "pending_replace"), 4)
_RANK |= dict.fromkeys(("done_for_day", "stopped", "suspended", "calculated"), 4)
_EVENT_STATUS = {"fill": "filled", "partial_fill": "partially_filled"}
_REJECTED_REQUESTS = frozenset({"order_cancel_rejected", "order_replace_rejected"})
_MAX_ID = 128  # Alpaca's limit on client_order_id
_HASH_LEN = 10
_SQLITE_MAGIC = b"SQLite format 3\x00"
SCHEMA_VERSION = "1"
GAP_PREFIX = "gap-"  # execution ids of fills that reconciliation filled in for a stream gap


class JournalError(StoreError):
    """The journal cannot be read or written, or a call contradicts what it holds."""


class CorruptJournalError(CorruptFileError, JournalError):
    """The journal file is not a readable SQLite database; it was left untouched."""


class IntentConflictError(JournalError):
    """A ``client_order_id`` is already recorded with different order fields."""


# ---------------------------------------------------------------------------------------------
# client_order_id


def make_client_order_id(strategy: str, symbol: str, bar_time: Any, leg: str | int) -> str:
    """The deterministic ``client_order_id`` of one order leg of one strategy, symbol and bar.

    ``{strategy}-{symbol}-{YYYYmmddTHHMMSSZ}-{leg}-{hash}``: characters outside ``[A-Za-z0-9._]``
    become ``_``, and the 10-hex SHA-256 of the exact inputs keeps ids distinct when that mapping
    merges two inputs; the readable prefix is cut so the whole stays within Alpaca's 128
    characters. ``bar_time`` is a ``datetime``/``pandas.Timestamp`` or an ISO string; a naive
    time is taken as UTC. The same inputs give the same id in every process, so a resubmission
    after a restart is refused by Alpaca as a duplicate instead of trading twice.
    """
    parts = {"strategy": strategy, "symbol": symbol, "leg": str(leg)}
    for name, value in parts.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"make_client_order_id: {name} must be a non-empty string, got {value!r}"
            )
    when = _utc(_parse_time(bar_time))
    stamp = when.strftime("%Y%m%dT%H%M%S") + (
        f".{when.microsecond:06d}" if when.microsecond else ""
    )
    canonical = "\x1f".join([strategy, symbol, when.isoformat(), str(leg)])
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:_HASH_LEN]
    clean = [re.sub(r"[^A-Za-z0-9._]", "_", p) for p in (strategy, symbol, stamp + "Z", str(leg))]
    readable = "-".join(clean)[: _MAX_ID - _HASH_LEN - 1]
    return f"{readable}-{digest}"


# ---------------------------------------------------------------------------------------------
# value types


@dataclass(frozen=True, kw_only=True)
class JournalConfig:
    """Where and how the journal is stored.

    Attributes:
        url: a file path (SQLite) or any SQLAlchemy URL (``postgresql+psycopg://...``);
            ``sqlite://`` is an in-memory journal (tests only: it dies with the process).
        busy_timeout_s: how long a write waits for another process holding the SQLite lock.
        synchronous: SQLite ``PRAGMA synchronous`` (``FULL`` survives power loss, ``NORMAL``
            survives a process crash).
    """

    url: str | Path
    busy_timeout_s: float = 10.0
    synchronous: str = "FULL"

    def __post_init__(self) -> None:
        if not str(self.url).strip():
            raise ValueError("JournalConfig.url: give a file path or an SQLAlchemy URL")
        if not 0 < self.busy_timeout_s <= 600:
            raise ValueError(
                f"JournalConfig.busy_timeout_s must be in (0, 600], got {self.busy_timeout_s}"
            )
        if self.synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(
                f"JournalConfig.synchronous must be NORMAL, FULL or EXTRA, got {self.synchronous!r}"
            )

    @property
    def sqlalchemy_url(self) -> str:
        """The URL itself, or ``sqlite:///<absolute path>`` for a plain path."""
        text = str(self.url)
        if "://" in text:
            return text
        return f"sqlite:///{Path(text).expanduser().resolve()}"


@dataclass(frozen=True, kw_only=True)
class OrderIntent:
    """An order the strategy wants, before it is sent: what, why, and from which model.

    Exactly one of ``qty`` and ``notional`` (dollars, market orders) is given. ``signal`` holds
    the head outputs that caused the order (a ``Signal.to_dict()`` or any object with
    ``to_dict()``, or a mapping); ``model_name``/``model_version`` default to its
    ``model``/``version``.
    """

    strategy: str
    symbol: str
    bar_time: datetime
    side: str
    leg: str = "entry"
    qty: float | None = None
    notional: float | None = None
    order_type: str = "market"
    limit_price: float | None = None
    stop_price: float | None = None
    time_in_force: str = "day"
    order_class: str = "simple"
    model_name: str | None = None
    model_version: int | None = None
    signal: Any = None

    def __post_init__(self) -> None:
        if self.side not in ("buy", "sell"):
            raise ValueError(f"OrderIntent.side must be 'buy' or 'sell', got {self.side!r}")
        if (self.qty is None) == (self.notional is None):
            raise ValueError(f"OrderIntent: give exactly one of qty and notional ({self.symbol})")
        size = self.qty if self.qty is not None else self.notional
        if size is None or not math.isfinite(size) or size <= 0:
            raise ValueError(f"OrderIntent: qty/notional must be a positive number, got {size}")
        if self.order_type in ("limit", "stop_limit") and self.limit_price is None:
            raise ValueError(f"OrderIntent: a {self.order_type} order needs limit_price")
        if self.order_type in ("stop", "stop_limit") and self.stop_price is None:
            raise ValueError(f"OrderIntent: a {self.order_type} order needs stop_price")
        heads = _signal_dict(self.signal)
        object.__setattr__(self, "signal", heads)
        if heads is not None and self.model_name is None and heads.get("model") is not None:
            object.__setattr__(self, "model_name", str(heads["model"]))
        if heads is not None and self.model_version is None and heads.get("version") is not None:
            object.__setattr__(self, "model_version", int(heads["version"]))
        object.__setattr__(self, "bar_time", _utc(_parse_time(self.bar_time)))

    @property
    def client_order_id(self) -> str:
        """See :func:`make_client_order_id`."""
        return make_client_order_id(self.strategy, self.symbol, self.bar_time, self.leg)


@dataclass(frozen=True, kw_only=True)
class OrderRecord:
    """One journal row: the order as sent, its latest known state, and why it was placed."""

    client_order_id: str
    alpaca_id: str | None
    symbol: str
    side: str
    qty: float | None
    notional: float | None
    order_type: str
    limit_price: float | None
    stop_price: float | None
    time_in_force: str
    order_class: str
    status: str
    filled_qty: float
    filled_avg_price: float | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    error: str | None
    strategy: str | None
    bar_time: datetime | None
    leg: str | None
    model_name: str | None
    model_version: int | None
    signal: dict[str, Any] | None
    external: bool

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, kw_only=True)
class FillRecord:
    """One execution, unique by ``execution_id``; ``qty`` is unsigned, ``side`` says which way."""

    execution_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    price: float
    timestamp: datetime


@dataclass(frozen=True, kw_only=True)
class FillPosition:
    """A position rebuilt from fills: signed ``qty`` and the average entry price of what is open."""

    symbol: str
    qty: float
    avg_entry_price: float | None
    fills: int


@dataclass(frozen=True, kw_only=True)
class Applied:
    """What :meth:`Journal.apply_update` did: the row after it, and whether anything changed."""

    record: OrderRecord
    changed: bool
    fill: FillRecord | None  # the execution it added, ``None`` when none (or a duplicate)


def net_position(symbol: str, fills: Iterable[FillRecord]) -> FillPosition:
    """Signed quantity and average entry price after ``fills`` in order.

    Buys add, sells subtract. Adding to a position moves the average entry price
    (``(q*p + dq*price) / (q + dq)``); reducing keeps it; crossing zero starts a new average at
    the crossing fill's price; flat has no price.
    """
    qty, avg, n = 0.0, 0.0, 0
    for f in fills:
        n += 1
        delta = f.qty if f.side == "buy" else -f.qty
        new = qty + delta
        if qty == 0 or ((qty > 0) != (new > 0) and new != 0):
            avg = f.price
        elif abs(new) > abs(qty):
            avg = (abs(qty) * avg + abs(delta) * f.price) / abs(new)
        qty = 0.0 if math.isclose(new, 0.0, abs_tol=1e-9) else new
    return FillPosition(symbol=symbol, qty=qty, avg_entry_price=avg if qty else None, fills=n)


# ---------------------------------------------------------------------------------------------
# schema


_META = sa.MetaData()
_ORDERS = sa.Table(
    "journal_orders",
    _META,
    sa.Column("client_order_id", sa.String(_MAX_ID), primary_key=True),
    sa.Column("alpaca_id", sa.String(64), unique=True),
    sa.Column("symbol", sa.String(64), nullable=False, index=True),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("qty", sa.Float),
    sa.Column("notional", sa.Float),
    sa.Column("order_type", sa.String(16), nullable=False),
    sa.Column("limit_price", sa.Float),
    sa.Column("stop_price", sa.Float),
    sa.Column("time_in_force", sa.String(8), nullable=False),
    sa.Column("order_class", sa.String(16), nullable=False),
    sa.Column("status", sa.String(24), nullable=False, index=True),
    sa.Column("filled_qty", sa.Float, nullable=False),
    sa.Column("filled_avg_price", sa.Float),
    sa.Column("created_at", sa.DateTime, nullable=False),  # naive UTC on every backend
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("sent_at", sa.DateTime),
    sa.Column("error", sa.Text),
    sa.Column("strategy", sa.String(64)),
    sa.Column("bar_time", sa.DateTime),
    sa.Column("leg", sa.String(32)),
    sa.Column("model_name", sa.String(128)),
    sa.Column("model_version", sa.Integer),
    sa.Column("signal", sa.JSON),
    sa.Column("external", sa.Boolean, nullable=False),
    sa.Column("raw", sa.JSON),  # the latest order JSON seen from Alpaca
)
_FILLS = sa.Table(
    "journal_fills",
    _META,
    sa.Column("execution_id", sa.String(64), primary_key=True),
    sa.Column(
        "client_order_id",
        sa.ForeignKey("journal_orders.client_order_id"),
        nullable=False,
        index=True,
    ),
    sa.Column("symbol", sa.String(64), nullable=False, index=True),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("qty", sa.Float, nullable=False),
    sa.Column("price", sa.Float, nullable=False),
    sa.Column("timestamp", sa.DateTime, nullable=False),
)
_META_KV = sa.Table(
    "journal_meta",
    _META,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
_INTENT_FIELDS: tuple[str, ...] = (
    "symbol",
    "side",
    "qty",
    "notional",
    "order_type",
    "limit_price",
    "stop_price",
)
_INTENT_FIELDS += ("time_in_force", "order_class", "strategy", "leg")


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
        self._engine = _make_engine(self._url, self.config)
        try:
            _create_schema(self._engine, self.where)
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
        now = _db_time(self._clock())
        values = {f: getattr(intent, f) for f in _INTENT_FIELDS} | {
            "client_order_id": coid,
            "status": PENDING_SUBMIT,
            "filled_qty": 0.0,
            "created_at": now,
            "updated_at": now,
            "bar_time": _db_time(intent.bar_time),
            "model_name": intent.model_name,
            "model_version": intent.model_version,
            "signal": intent.signal,
            "external": False,
        }
        with self._write() as conn:
            row = _select(conn, coid)
            if row is None:
                conn.execute(_ORDERS.insert().values(**values))
                return _record(_fetch(conn, coid))
        old = {f: row[f] for f in _INTENT_FIELDS}
        new = {f: values[f] for f in _INTENT_FIELDS}
        if old != new:
            diff = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
            raise IntentConflictError(
                f"{coid}: already recorded with other order fields {diff}; an order that differs "
                "needs its own leg name (OrderIntent.leg)"
            )
        return _record(row)

    def mark_sent(self, client_order_id: str, order: Any) -> OrderRecord:
        """Store Alpaca's answer to the submit (its order JSON, or an alpaca-py ``Order``).

        Also the way to store what a lookup by ``client_order_id`` found for an ``unknown`` order.
        """
        body = _order_dict(order)
        if body.get("client_order_id") not in (None, client_order_id):
            raise JournalError(
                f"mark_sent({client_order_id!r}) got the order of {body['client_order_id']!r}"
            )
        with self._write() as conn:
            row = self._require(conn, client_order_id)
            changes = _order_changes(row, body, event=None)
            if row["sent_at"] is None:
                changes["sent_at"] = _db_time(self._clock())
            _update(conn, client_order_id, changes, body)
            return _record(_fetch(conn, client_order_id))

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
        event, order, name, when = _parse_event(event)
        coid = str(order["client_order_id"])
        with self._write() as conn:
            row = _select(conn, coid)
            created = row is None
            if row is None:
                conn.execute(_ORDERS.insert().values(**_external_row(order, when)))
                row = _fetch(conn, coid)
            fill = _fill_of(event, name, order, row, when)
            added = fill is not None and _insert_fill(conn, fill)
            changes = _order_changes(row, order, event=name)
            _update(conn, coid, changes, order)
            if added and fill is not None and not fill.execution_id.startswith(GAP_PREFIX):
                _rebalance_gaps(conn, coid, when)
            record = _record(_fetch(conn, coid))
        return Applied(
            record=record, changed=created or added or bool(changes), fill=fill if added else None
        )

    def adopt_external(self, order: Any) -> OrderRecord:
        """Record an order found at Alpaca that this journal did not create (``external``).

        An order already journaled is only brought up to date (its flags are kept).
        """
        body = _order_dict(order)
        if not body.get("client_order_id"):
            raise JournalError(f"adopt_external: order without client_order_id: {body}")
        coid = str(body["client_order_id"])
        with self._write() as conn:
            row = _select(conn, coid)
            if row is None:
                conn.execute(_ORDERS.insert().values(**_external_row(body, self._clock())))
            else:
                _update(conn, coid, _order_changes(row, body, event=None), body)
            return _record(_fetch(conn, coid))

    def set_meta(self, key: str, value: str) -> None:
        """Store a small named value with the journal (the adopted position baseline, say)."""
        if key == "schema_version":
            raise JournalError("schema_version is the journal's own")
        with self._write() as conn:
            conn.execute(_META_KV.delete().where(_META_KV.c.key == key))
            conn.execute(_META_KV.insert().values(key=key, value=value))

    # -- reads ----------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A value stored with :meth:`set_meta`, or ``None``."""
        with self._read() as conn:
            row = conn.execute(sa.select(_META_KV.c.value).where(_META_KV.c.key == key)).first()
        return None if row is None else str(row[0])

    def get(self, client_order_id: str) -> OrderRecord | None:
        """The row of ``client_order_id``, or ``None``."""
        with self._read() as conn:
            row = _select(conn, client_order_id)
        return None if row is None else _record(row)

    def orders(self, symbol: str | None = None) -> list[OrderRecord]:
        """Every journaled order (external ones included), oldest first."""
        return self._orders(sa.true(), symbol)

    def open_orders(self, symbol: str | None = None) -> list[OrderRecord]:
        """Orders live at Alpaca as far as the journal knows (answered, not final)."""
        skip = FINAL_STATUSES | {PENDING_SUBMIT, UNKNOWN}
        return self._orders(_ORDERS.c.status.not_in(sorted(skip)), symbol)

    def unknown_orders(self) -> list[OrderRecord]:
        """Orders whose fate is not known: sent without an answer, or written and maybe sent.

        After a restart every one of them must be looked up by ``client_order_id`` at Alpaca.
        """
        return self._orders(_ORDERS.c.status.in_([PENDING_SUBMIT, UNKNOWN]), None)

    def fills(
        self, client_order_id: str | None = None, symbol: str | None = None
    ) -> list[FillRecord]:
        """Executions in time order, optionally of one order or one symbol."""
        query = _FILLS.select().order_by(_FILLS.c.timestamp, _FILLS.c.execution_id)
        if client_order_id is not None:
            query = query.where(_FILLS.c.client_order_id == client_order_id)
        if symbol is not None:
            query = query.where(_FILLS.c.symbol == symbol)
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [FillRecord(**{**r, "timestamp": _utc(r["timestamp"])}) for r in rows]

    def position_from_fills(self, symbol: str) -> FillPosition:
        """The position in ``symbol`` that the journaled fills add up to (see :func:`net_position`)."""
        return net_position(symbol, self.fills(symbol=symbol))

    def missing_fills(self) -> dict[str, float]:
        """``{client_order_id: qty}`` where Alpaca reports more filled than the journal's fills.

        Executions that happened while the stream was down reach the journal only as an order's
        ``filled_qty`` (from :meth:`mark_sent`/:meth:`adopt_external`); they need a backfill
        (Alpaca's account activities) before :meth:`position_from_fills` can be trusted.
        """
        filled = sa.func.coalesce(sa.func.sum(_FILLS.c.qty), 0.0)
        query = (
            sa.select(_ORDERS.c.client_order_id, _ORDERS.c.filled_qty - filled)
            .select_from(_ORDERS.outerjoin(_FILLS))
            .group_by(_ORDERS.c.client_order_id, _ORDERS.c.filled_qty)
            .having(_ORDERS.c.filled_qty - filled > 1e-9)
        )
        with self._read() as conn:
            return {coid: float(gap) for coid, gap in conn.execute(query).all()}

    # -- internals ------------------------------------------------------------------------------

    def _orders(self, where: Any, symbol: str | None) -> list[OrderRecord]:
        query = (
            _ORDERS.select().where(where).order_by(_ORDERS.c.created_at, _ORDERS.c.client_order_id)
        )
        if symbol is not None:
            query = query.where(_ORDERS.c.symbol == symbol)
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query).mappings().all()]

    def _mark(
        self, coid: str, status: str, reason: str, from_statuses: tuple[str, ...]
    ) -> OrderRecord:
        with self._write() as conn:
            row = self._require(conn, coid)
            if row["status"] in from_statuses:
                now = _db_time(self._clock())
                changes = {"status": status, "error": reason, "updated_at": now}
                if row["sent_at"] is None:
                    changes["sent_at"] = now
                conn.execute(
                    _ORDERS.update().where(_ORDERS.c.client_order_id == coid).values(**changes)
                )
            return _record(_fetch(conn, coid))

    def _require(self, conn: Connection, coid: str) -> sa.RowMapping:
        row = _select(conn, coid)
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


# ---------------------------------------------------------------------------------------------
# engine and schema


def _make_engine(url: sa.URL, cfg: JournalConfig) -> Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    database = url.database or ""
    memory = database in ("", ":memory:")
    if not memory:
        _check_sqlite_file(Path(database))
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": cfg.busy_timeout_s}
    }
    if memory:
        kwargs["poolclass"] = sa.StaticPool
    engine = sa.create_engine(url, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is lazy)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={cfg.synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(cfg.busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # writes take the lock at once, so a read-then-write cannot race another process
        conn.exec_driver_sql("BEGIN" if conn.info.get("read_only") else "BEGIN IMMEDIATE")

    return engine


def _check_sqlite_file(path: Path) -> None:
    if path.is_dir():
        raise JournalError(f"order journal path {path} is a directory; give a file path")
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
        if head != _SQLITE_MAGIC:
            raise CorruptJournalError(
                path,
                f"order journal {path} is not an SQLite database (it starts with {head[:8]!r}); "
                "it was left untouched: move it aside or point the journal at another file",
            )
    path.parent.mkdir(parents=True, exist_ok=True)


def _create_schema(engine: Engine, where: str) -> None:
    try:
        with engine.begin() as conn:
            if engine.url.get_backend_name() == "postgresql":  # one creator at a time
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7261534)"))
            tables = set(sa.inspect(conn).get_table_names())
            ours = {t.name for t in _META.sorted_tables}
            if tables & ours and "journal_meta" not in tables:
                raise JournalError(
                    f"{where} has tables {sorted(tables & ours)} that no order journal wrote"
                )
            _META.create_all(conn)
            version = conn.execute(
                sa.select(_META_KV.c.value).where(_META_KV.c.key == "schema_version")
            ).scalar()
            if version is None:
                conn.execute(_META_KV.insert().values(key="schema_version", value=SCHEMA_VERSION))
            elif version != SCHEMA_VERSION:
                raise JournalError(
                    f"{where} holds journal schema {version}; this code reads {SCHEMA_VERSION}"
                )
    except sa.exc.DatabaseError as err:
        if engine.url.get_backend_name() != "sqlite":
            raise JournalError(f"order journal at {where}: {err}") from err
        path = engine.url.database
        raise CorruptJournalError(
            path,
            f"order journal {path} cannot be read ({err.orig}); it was left untouched: move it aside",
        ) from err
    except SQLAlchemyError as err:
        raise JournalError(f"order journal at {where}: {err}") from err


# ---------------------------------------------------------------------------------------------
# rows


def _select(conn: Connection, coid: str) -> sa.RowMapping | None:
    return (
        conn.execute(_ORDERS.select().where(_ORDERS.c.client_order_id == coid)).mappings().first()
    )


def _fetch(conn: Connection, coid: str) -> sa.RowMapping:
    row = _select(conn, coid)
    assert row is not None, coid
    return row


def _record(row: sa.RowMapping) -> OrderRecord:
    values = {k: v for k, v in row.items() if k != "raw"}
    for key in ("created_at", "updated_at", "sent_at", "bar_time"):
        values[key] = _utc(values[key]) if values[key] is not None else None
    values["external"] = bool(values["external"])
    return OrderRecord(**values)


def _update(conn: Connection, coid: str, changes: dict[str, Any], order: Mapping[str, Any]) -> None:
    if changes:
        changes = changes | {"raw": _jsonable(order)}
        conn.execute(_ORDERS.update().where(_ORDERS.c.client_order_id == coid).values(**changes))


def _insert_fill(conn: Connection, fill: FillRecord) -> bool:
    exists = conn.execute(
        sa.select(_FILLS.c.execution_id).where(_FILLS.c.execution_id == fill.execution_id)
    ).first()
    if exists is not None:
        return False
    conn.execute(_FILLS.insert().values(**{**asdict(fill), "timestamp": _db_time(fill.timestamp)}))
    return True


def _rebalance_gaps(conn: Connection, coid: str, when: datetime) -> None:
    """A real execution arrived for an order whose gap (fills the stream missed) was filled by
    reconciliation: the gap row becomes what the real fills still leave uncovered, so the same
    quantity is never counted twice (the stream may deliver a fill after a REST read saw it)."""
    rows = conn.execute(_FILLS.select().where(_FILLS.c.client_order_id == coid)).mappings().all()
    gaps = [r for r in rows if str(r["execution_id"]).startswith(GAP_PREFIX)]
    if not gaps:
        return
    order = _fetch(conn, coid)
    real = [r for r in rows if not str(r["execution_id"]).startswith(GAP_PREFIX)]
    real_qty = sum(float(r["qty"]) for r in real)
    left = float(order["filled_qty"]) - real_qty
    conn.execute(
        _FILLS.delete().where(_FILLS.c.execution_id.in_([g["execution_id"] for g in gaps]))
    )
    if left <= 1e-9 or not order["filled_avg_price"]:
        return
    done = sum(float(r["qty"]) * float(r["price"]) for r in real)
    price = (float(order["filled_qty"]) * float(order["filled_avg_price"]) - done) / left
    gap = FillRecord(
        execution_id=f"{GAP_PREFIX}{order['alpaca_id'] or coid}-{float(order['filled_qty']):.9f}",
        client_order_id=coid, symbol=str(order["symbol"]), side=str(order["side"]), qty=left,
        price=price, timestamp=when,
    )  # fmt: skip
    _insert_fill(conn, gap)


def _external_row(order: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    created = _parse_time(order["created_at"]) if order.get("created_at") else now
    return {
        "client_order_id": str(order["client_order_id"]),
        "alpaca_id": _str_or_none(order.get("id")),
        "symbol": str(order.get("symbol") or ""),
        "side": str(order.get("side") or ""),
        "qty": _float(order.get("qty")),
        "notional": _float(order.get("notional")),
        "order_type": str(order.get("type") or order.get("order_type") or ""),
        "limit_price": _float(order.get("limit_price")),
        "stop_price": _float(order.get("stop_price")),
        "time_in_force": str(order.get("time_in_force") or ""),
        "order_class": str(order.get("order_class") or "simple"),
        "status": str(order.get("status") or UNKNOWN),
        "filled_qty": _float(order.get("filled_qty")) or 0.0,
        "filled_avg_price": _float(order.get("filled_avg_price")),
        "created_at": _db_time(created),
        "updated_at": _db_time(
            _parse_time(order["updated_at"]) if order.get("updated_at") else now
        ),
        "external": True,
        "raw": _jsonable(order),
    }


def _order_changes(
    row: sa.RowMapping, order: Mapping[str, Any], event: str | None
) -> dict[str, Any]:
    """The column changes an order JSON (from a reply or an event) makes to ``row``; {} if none."""
    changes: dict[str, Any] = {}
    proposed = order.get("status") or _EVENT_STATUS.get(event or "", event)
    status = _next_status(row["status"], str(proposed) if proposed else None, event)
    if status != row["status"]:
        changes["status"] = status
    if order.get("id") and row["alpaca_id"] is None:
        changes["alpaca_id"] = str(order["id"])
    filled = _float(order.get("filled_qty"))
    if filled is not None and filled > row["filled_qty"]:
        changes["filled_qty"] = filled
    avg = _float(order.get("filled_avg_price"))
    if (
        avg is not None
        and filled is not None
        and filled >= row["filled_qty"]
        and avg != row["filled_avg_price"]
    ):
        changes["filled_avg_price"] = avg
    if changes:
        stamp = order.get("updated_at")
        when = _db_time(_parse_time(stamp)) if stamp else row["updated_at"]
        changes["updated_at"] = max(when, row["updated_at"])
    return changes


def _next_status(old: str, new: str | None, event: str | None) -> str:
    if new is None or new == old:
        return old
    if old in FINAL_STATUSES:  # only a late fill overrides a cancel/expiry
        return new if new == "filled" and event == "fill" else old
    if new in FINAL_STATUSES or event in _REJECTED_REQUESTS:
        return new
    return new if _RANK.get(new, 3) >= _RANK.get(old, 3) else old


def _parse_event(event: Any) -> tuple[Mapping[str, Any], Mapping[str, Any], str, datetime]:
    if hasattr(event, "model_dump"):  # an alpaca-py TradeUpdate
        event = event.model_dump(mode="json")
    if not isinstance(event, Mapping):
        raise JournalError(f"trade update must be a mapping, got {type(event).__name__}")
    if isinstance(event.get("data"), Mapping) and "order" not in event:
        event = event["data"]  # a whole stream message was passed
    order = event.get("order")
    if not isinstance(order, Mapping) or not order.get("client_order_id"):
        raise JournalError(f"trade update without order.client_order_id: {str(dict(event))[:300]}")
    name = str(event.get("event") or "")
    if not name:
        raise JournalError(f"trade update without an event name for {order['client_order_id']}")
    stamp = event.get("timestamp") or order.get("updated_at")
    return event, order, name, _utc(_parse_time(stamp)) if stamp else datetime.now(UTC)


def _fill_of(
    event: Mapping[str, Any],
    name: str,
    order: Mapping[str, Any],
    row: sa.RowMapping,
    when: datetime,
) -> FillRecord | None:
    if name not in ("fill", "partial_fill"):
        return None
    qty, price = _float(event.get("qty")), _float(event.get("price"))
    if qty is None or price is None:
        raise JournalError(
            f"{name} event for {order['client_order_id']} without qty/price: {dict(event)}"
        )
    execution = event.get("execution_id")
    if not execution:  # older payloads: a stable id from what identifies the execution
        key = f"{order.get('id')}|{when.isoformat()}|{qty}|{price}"
        execution = "synthetic-" + hashlib.sha256(key.encode()).hexdigest()[:24]
    return FillRecord(
        execution_id=str(execution),
        client_order_id=str(order["client_order_id"]),
        symbol=str(order.get("symbol") or row["symbol"]),
        side=str(order.get("side") or row["side"]),
        qty=qty,
        price=price,
        timestamp=when,
    )


# ---------------------------------------------------------------------------------------------
# values


def _order_dict(order: Any) -> dict[str, Any]:
    if hasattr(order, "model_dump"):  # an alpaca-py pydantic model
        return dict(order.model_dump(mode="json"))
    if isinstance(order, Mapping):
        return dict(order)
    raise JournalError(
        f"expected an order JSON mapping or an alpaca-py Order, got {type(order).__name__}"
    )


def _signal_dict(signal: Any) -> dict[str, Any] | None:
    if signal is None:
        return None
    raw = signal.to_dict() if hasattr(signal, "to_dict") else signal
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"OrderIntent.signal must be a mapping or have to_dict(), got {type(signal).__name__}"
        )
    return dict(_jsonable(raw))


def _jsonable(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (Postgres' JSON refuses them), tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return json.loads(json.dumps(value, default=str))


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):  # also pandas.Timestamp
        return value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
    if isinstance(value, str):
        text = _FRACTION.sub(r"\1", value.strip().replace("Z", "+00:00"))
        try:
            return datetime.fromisoformat(text)
        except ValueError as err:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from err
    raise ValueError(f"expected a datetime or an ISO 8601 string, got {value!r}")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _db_time(value: datetime) -> datetime:
    return _utc(value).replace(tzinfo=None)
