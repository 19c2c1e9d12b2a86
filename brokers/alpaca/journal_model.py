"""The order journal's value types, ids and errors (see ``brokers.alpaca.journal``)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.errors import CorruptFileError, StoreError
from core.utc import utc_datetime

PENDING_SUBMIT = "pending_submit"  # written, not yet sent
UNKNOWN = "unknown"  # sent, but no answer came back
FINAL_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})
STATUS_RANK = {
    PENDING_SUBMIT: 0,
    UNKNOWN: 1,
    "new": 3,
}  # an unlisted (future) status ranks as "new"
STATUS_RANK |= dict.fromkeys(("accepted", "pending_new", "held", "accepted_for_bidding"), 2)
STATUS_RANK |= dict.fromkeys(("partially_filled", "pending_cancel", "pending_replace"), 4)
STATUS_RANK |= dict.fromkeys(("done_for_day", "stopped", "suspended", "calculated"), 4)
EVENT_STATUS = {"fill": "filled", "partial_fill": "partially_filled"}
REJECTED_REQUESTS = frozenset({"order_cancel_rejected", "order_replace_rejected"})
MAX_ID = 128  # Alpaca's limit on client_order_id
_HASH_LEN = 10
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
    when = utc_datetime(parse_time(bar_time))
    stamp = when.strftime("%Y%m%dT%H%M%S") + (
        f".{when.microsecond:06d}" if when.microsecond else ""
    )
    canonical = "\x1f".join([strategy, symbol, when.isoformat(), str(leg)])
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:_HASH_LEN]
    clean = [re.sub(r"[^A-Za-z0-9._]", "_", p) for p in (strategy, symbol, stamp + "Z", str(leg))]
    readable = "-".join(clean)[: MAX_ID - _HASH_LEN - 1]
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
        object.__setattr__(self, "bar_time", utc_datetime(parse_time(self.bar_time)))

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
# values


def order_dict(order: Any) -> dict[str, Any]:
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
    return dict(jsonable(raw))


def jsonable(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (Postgres' JSON refuses them), tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return json.loads(json.dumps(value, default=str))


def as_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):  # also pandas.Timestamp
        return value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
    if isinstance(value, str):
        text = _FRACTION.sub(r"\1", value.strip().replace("Z", "+00:00"))
        try:
            return datetime.fromisoformat(text)
        except ValueError as err:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from err
    raise ValueError(f"expected a datetime or an ISO 8601 string, got {value!r}")


def db_time(value: datetime) -> datetime:
    return utc_datetime(value).replace(tzinfo=None)
