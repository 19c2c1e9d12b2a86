"""The order journal's storage: SQLAlchemy Core tables, engine set-up, and row functions.

Private to ``brokers.alpaca.journal``; the rules they implement are in its docstring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from brokers.alpaca.journal_model import (
    EVENT_STATUS,
    FINAL_STATUSES,
    GAP_PREFIX,
    MAX_ID,
    REJECTED_REQUESTS,
    SCHEMA_VERSION,
    STATUS_RANK,
    UNKNOWN,
    CorruptJournalError,
    FillRecord,
    JournalConfig,
    JournalError,
    OrderRecord,
    as_float,
    db_time,
    jsonable,
    parse_time,
    str_or_none,
)
from core.sqlite import foreign_header, sqlite_engine
from core.utc import utc_datetime

# ---------------------------------------------------------------------------------------------
# schema


META = sa.MetaData()
ORDERS = sa.Table(
    "journal_orders",
    META,
    sa.Column("client_order_id", sa.String(MAX_ID), primary_key=True),
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
FILLS = sa.Table(
    "journal_fills",
    META,
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
META_KV = sa.Table(
    "journal_meta",
    META,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
INTENT_FIELDS: tuple[str, ...] = (
    "symbol",
    "side",
    "qty",
    "notional",
    "order_type",
    "limit_price",
    "stop_price",
)
INTENT_FIELDS += ("time_in_force", "order_class", "strategy", "leg")


# ---------------------------------------------------------------------------------------------
# engine and schema


def make_engine(url: sa.URL, cfg: JournalConfig) -> Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    database = url.database or ""
    if database not in ("", ":memory:"):
        _check_sqlite_file(Path(database))
    return sqlite_engine(url, busy_timeout_s=cfg.busy_timeout_s, synchronous=cfg.synchronous)


def _check_sqlite_file(path: Path) -> None:
    if path.is_dir():
        raise JournalError(f"order journal path {path} is a directory; give a file path")
    head = foreign_header(path)
    if head is not None:
        raise CorruptJournalError(
            path,
            f"order journal {path} is not an SQLite database (it starts with {head[:8]!r}); "
            "it was left untouched: move it aside or point the journal at another file",
        )
    path.parent.mkdir(parents=True, exist_ok=True)


def create_schema(engine: Engine, where: str) -> None:
    try:
        with engine.begin() as conn:
            if engine.url.get_backend_name() == "postgresql":  # one creator at a time
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7261534)"))
            tables = set(sa.inspect(conn).get_table_names())
            ours = {t.name for t in META.sorted_tables}
            if tables & ours and "journal_meta" not in tables:
                raise JournalError(
                    f"{where} has tables {sorted(tables & ours)} that no order journal wrote"
                )
            META.create_all(conn)
            version = conn.execute(
                sa.select(META_KV.c.value).where(META_KV.c.key == "schema_version")
            ).scalar()
            if version is None:
                conn.execute(META_KV.insert().values(key="schema_version", value=SCHEMA_VERSION))
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


def select_order_row(conn: Connection, coid: str) -> sa.RowMapping | None:
    return conn.execute(ORDERS.select().where(ORDERS.c.client_order_id == coid)).mappings().first()


def fetch_order_row(conn: Connection, coid: str) -> sa.RowMapping:
    row = select_order_row(conn, coid)
    assert row is not None, coid
    return row


def order_record(row: sa.RowMapping) -> OrderRecord:
    values = {k: v for k, v in row.items() if k != "raw"}
    for key in ("created_at", "updated_at", "sent_at", "bar_time"):
        values[key] = utc_datetime(values[key]) if values[key] is not None else None
    values["external"] = bool(values["external"])
    return OrderRecord(**values)


def update_order_row(
    conn: Connection, coid: str, changes: dict[str, Any], order: Mapping[str, Any]
) -> None:
    if changes:
        changes = changes | {"raw": jsonable(order)}
        conn.execute(ORDERS.update().where(ORDERS.c.client_order_id == coid).values(**changes))


def insert_fill(conn: Connection, fill: FillRecord) -> bool:
    exists = conn.execute(
        sa.select(FILLS.c.execution_id).where(FILLS.c.execution_id == fill.execution_id)
    ).first()
    if exists is not None:
        return False
    conn.execute(FILLS.insert().values(**{**asdict(fill), "timestamp": db_time(fill.timestamp)}))
    return True


def set_gap(conn: Connection, coid: str, when: datetime, *, only_if_gap: bool) -> float:
    """Make the order's gap row (fills the stream missed) what its real fills leave uncovered
    of its ``filled_qty``, at the exact price the averages imply; returns the gap's quantity.

    Reconciliation calls it for orders with missing fills; ``apply_update`` calls it with
    ``only_if_gap`` after a real execution, so a fill the stream delivers after a REST read saw
    it replaces the gap instead of being counted twice. The execution id is deterministic, so
    repeating it changes nothing.
    """
    rows = conn.execute(FILLS.select().where(FILLS.c.client_order_id == coid)).mappings().all()
    gaps = [r for r in rows if str(r["execution_id"]).startswith(GAP_PREFIX)]
    if only_if_gap and not gaps:
        return 0.0
    order = fetch_order_row(conn, coid)
    real = [r for r in rows if not str(r["execution_id"]).startswith(GAP_PREFIX)]
    left = float(order["filled_qty"]) - sum(float(r["qty"]) for r in real)
    if gaps:
        ids = [g["execution_id"] for g in gaps]
        conn.execute(FILLS.delete().where(FILLS.c.execution_id.in_(ids)))
    if left <= 1e-9 or not order["filled_avg_price"]:
        return 0.0
    done = sum(float(r["qty"]) * float(r["price"]) for r in real)
    price = (float(order["filled_qty"]) * float(order["filled_avg_price"]) - done) / left
    gap = FillRecord(
        execution_id=f"{GAP_PREFIX}{order['alpaca_id'] or coid}-{float(order['filled_qty']):.9f}",
        client_order_id=coid, symbol=str(order["symbol"]), side=str(order["side"]), qty=left,
        price=price, timestamp=when,
    )  # fmt: skip
    insert_fill(conn, gap)
    return left


def external_row(order: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    created = parse_time(order["created_at"]) if order.get("created_at") else now
    return {
        "client_order_id": str(order["client_order_id"]),
        "alpaca_id": str_or_none(order.get("id")),
        "symbol": str(order.get("symbol") or ""),
        "side": str(order.get("side") or ""),
        "qty": as_float(order.get("qty")),
        "notional": as_float(order.get("notional")),
        "order_type": str(order.get("type") or order.get("order_type") or ""),
        "limit_price": as_float(order.get("limit_price")),
        "stop_price": as_float(order.get("stop_price")),
        "time_in_force": str(order.get("time_in_force") or ""),
        "order_class": str(order.get("order_class") or "simple"),
        "status": str(order.get("status") or UNKNOWN),
        "filled_qty": as_float(order.get("filled_qty")) or 0.0,
        "filled_avg_price": as_float(order.get("filled_avg_price")),
        "created_at": db_time(created),
        "updated_at": db_time(parse_time(order["updated_at"]) if order.get("updated_at") else now),
        "external": True,
        "raw": jsonable(order),
    }


def order_changes(
    row: sa.RowMapping, order: Mapping[str, Any], event: str | None
) -> dict[str, Any]:
    """The column changes an order JSON (from a reply or an event) makes to ``row``; {} if none."""
    changes: dict[str, Any] = {}
    proposed = order.get("status") or EVENT_STATUS.get(event or "", event)
    status = _next_status(row["status"], str(proposed) if proposed else None, event)
    if status != row["status"]:
        changes["status"] = status
    if order.get("id") and row["alpaca_id"] is None:
        changes["alpaca_id"] = str(order["id"])
    filled = as_float(order.get("filled_qty"))
    if filled is not None and filled > row["filled_qty"]:
        changes["filled_qty"] = filled
    avg = as_float(order.get("filled_avg_price"))
    if (
        avg is not None
        and filled is not None
        and filled >= row["filled_qty"]
        and avg != row["filled_avg_price"]
    ):
        changes["filled_avg_price"] = avg
    if changes:
        stamp = order.get("updated_at")
        when = db_time(parse_time(stamp)) if stamp else row["updated_at"]
        changes["updated_at"] = max(when, row["updated_at"])
    return changes


def _next_status(old: str, new: str | None, event: str | None) -> str:
    if new is None or new == old:
        return old
    if old in FINAL_STATUSES:  # only a late fill overrides a cancel/expiry
        return new if new == "filled" and event == "fill" else old
    if new in FINAL_STATUSES or event in REJECTED_REQUESTS:
        return new
    return new if STATUS_RANK.get(new, 3) >= STATUS_RANK.get(old, 3) else old


def parse_event(event: Any) -> tuple[Mapping[str, Any], Mapping[str, Any], str, datetime]:
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
    return event, order, name, utc_datetime(parse_time(stamp)) if stamp else datetime.now(UTC)


def fill_of(
    event: Mapping[str, Any],
    name: str,
    order: Mapping[str, Any],
    row: sa.RowMapping,
    when: datetime,
) -> FillRecord | None:
    if name not in ("fill", "partial_fill"):
        return None
    qty, price = as_float(event.get("qty")), as_float(event.get("price"))
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
