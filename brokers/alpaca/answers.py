"""The Trading API's answers, checked against their schemas where they enter the broker.

Every body ``TradingAPI`` returns (and every ``trade_updates`` payload) passes one of the
checks here before any other code reads it: the shape (a list where the spec has an array, an
object where it has one), the fields the broker reads with the spec's types, and the decimals
that the broker turns into numbers. A body that fails raises :class:`BrokerProtocolError`
naming the endpoint and the field, and is not used: the caller treats it as a broker fault
(no new orders; reconcile again later), never as data.

The models are pydantic models of the official OpenAPI spec (``Order``, ``Position``,
``Account``, ``legacy_clock``, ``TradingActivities``, ``CanceledOrderResponse``,
``PositionClosedResponse``), cut to the fields the broker reads:

* a field is required when the spec requires it or the broker cannot work without it (an
  order's ``id``, ``client_order_id`` and ``status``; a position's ``symbol``, ``qty``,
  ``avg_entry_price`` and ``side``);
* the spec types Alpaca's decimals as plain strings, so a schema check alone lets ``"n/a"``
  through; here every decimal the broker converts must be a finite number (a decimal string,
  or a JSON number as older answers have);
* timestamps must parse with the journal's own parser;
* fields the broker does not read are not checked, so an answer is never refused over a field
  nothing uses (a new asset class, say).

alpaca-py's own models are not used for this: they type the decimals as ``str`` (``"n/a"``
passes) and their enums lag the spec (``AssetClass`` lacks the spec's ``us_index`` and
``ipo``, ``AccountStatus`` its ``ACCOUNT_CLOSED_PENDING``), so a valid answer could fail.
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
)
from pydantic import ValidationError as PydanticError

from brokers.alpaca.journal_model import parse_time
from core.errors import BrokerProtocolError

__all__ = [
    "AccountAnswer",
    "CanceledOrderAnswer",
    "ClockAnswer",
    "ClosedPositionAnswer",
    "FillActivityAnswer",
    "OrderAnswer",
    "PositionAnswer",
    "TradeUpdateAnswer",
    "check_list",
    "check_object",
    "check_trade_update",
]


def _decimal(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("not a decimal number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("not a decimal number") from None
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return value


def _uuid(value: str) -> str:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValueError("not a UUID") from None
    return value


def _stamp(value: str) -> str:
    try:
        parse_time(value)  # the journal's parser: what passes here, the journal can store
    except ValueError:
        raise ValueError("not an ISO 8601 time") from None
    return value


Decimal = Annotated[Any, AfterValidator(_decimal)]
Text = Annotated[str, StringConstraints(min_length=1)]
Id = Annotated[str, AfterValidator(_uuid)]
Stamp = Annotated[str, AfterValidator(_stamp)]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields the broker does not read pass as they are


class OrderAnswer(_Answer):
    """Order (and a bracket's legs): what the journal and the broker read of one."""

    id: Id
    client_order_id: Text
    status: Text
    symbol: str | None = None
    side: Literal["buy", "sell"] | None = None
    type: str | None = None
    order_type: str | None = None
    order_class: str | None = None
    time_in_force: str | None = None
    qty: Decimal | None = None
    notional: Decimal | None = None
    filled_qty: Decimal | None = None
    filled_avg_price: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    created_at: Stamp | None = None
    updated_at: Stamp | None = None
    legs: list[OrderAnswer] | None = None


class PositionAnswer(_Answer):
    """Position: reconciliation and the kill switch read these."""

    symbol: Text
    qty: Decimal
    avg_entry_price: Decimal
    side: Literal["long", "short"]
    asset_class: Text


class AccountAnswer(_Answer):
    """Account: the mode check and the broker's cash and value."""

    id: Text
    status: Text
    account_number: str | None = None
    cash: Decimal | None = None
    equity: Decimal | None = None
    trading_blocked: StrictBool | None = None
    account_blocked: StrictBool | None = None


class ClockAnswer(_Answer):
    """legacy_clock: every field is required by the spec."""

    timestamp: Stamp
    is_open: StrictBool
    next_open: Stamp
    next_close: Stamp


class FillActivityAnswer(_Answer):
    """TradingActivities of type FILL; ``id`` pages the list."""

    id: Text
    activity_type: str | None = None
    symbol: str | None = None
    qty: Decimal | None = None
    price: Decimal | None = None
    cum_qty: Decimal | None = None
    leaves_qty: Decimal | None = None
    transaction_time: Stamp | None = None


class CanceledOrderAnswer(_Answer):
    """CanceledOrderResponse: one item of ``DELETE /v2/orders``."""

    id: Id | None = None
    status: StrictInt | None = None


class ClosedPositionAnswer(_Answer):
    """PositionClosedResponse: one item of ``DELETE /v2/positions`` (``body`` is the closing
    order, or Alpaca's error when that position could not be closed; not read)."""

    symbol: Text
    status: StrictInt


class TradeUpdateAnswer(_Answer):
    """The ``data`` of a ``trade_updates`` message; a fill carries its ``qty`` and ``price``."""

    event: Text
    order: OrderAnswer
    qty: Decimal | None = None
    price: Decimal | None = None
    timestamp: Stamp | None = None


_FILL_EVENTS = ("fill", "partial_fill")
_ADAPTERS: dict[type[_Answer], TypeAdapter[Any]] = {}


def check_object(endpoint: str, model: type[_Answer], body: Any) -> dict[str, Any]:
    """``body`` when it is one ``model`` object, else :class:`BrokerProtocolError`."""
    if not isinstance(body, dict):
        raise _shape_error(endpoint, model, body)
    try:
        model.model_validate(body)
    except PydanticError as err:
        raise _field_error(endpoint, model, err) from None
    return body


def check_trade_update(body: Any) -> dict[str, Any]:
    """A ``trade_updates`` payload: a :class:`TradeUpdateAnswer`, and a fill with its
    ``qty`` and ``price``; else :class:`BrokerProtocolError`."""
    endpoint = "trade_updates stream"
    check_object(endpoint, TradeUpdateAnswer, body)
    if body["event"] in _FILL_EVENTS:
        for name in ("qty", "price"):
            if body.get(name) is None:
                problem = f"sent a {body['event']} event without its {name}"
                raise _protocol(endpoint, name, problem)
    return body


def check_list(endpoint: str, model: type[_Answer], body: Any) -> list[dict[str, Any]]:
    """``body`` when it is a list of ``model`` objects, else :class:`BrokerProtocolError`."""
    if not isinstance(body, list):
        raise _shape_error(endpoint, model, body, many=True)
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(list[model])  # type: ignore[valid-type]
    try:
        adapter.validate_python(body)
    except PydanticError as err:
        raise _field_error(endpoint, model, err) from None
    return body


def _name(model: type[_Answer]) -> str:
    return model.__name__.removesuffix("Answer")


def _shape_error(
    endpoint: str, model: type[_Answer], body: Any, many: bool = False
) -> BrokerProtocolError:
    got = "one object" if isinstance(body, dict) else f"a JSON {_kind(body)}"
    what = f"a list of {_name(model)} objects" if many else f"one {_name(model)} object"
    return _protocol(endpoint, "(body)", f"answered {got} where the Trading API has {what}")


def _field_error(endpoint: str, model: type[_Answer], err: PydanticError) -> BrokerProtocolError:
    first = err.errors()[0]
    path = first["loc"]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    field = ".".join(str(p) for p in path if not isinstance(p, int)) or "(body)"
    why = _reason(first)
    got = "" if first["type"] == "missing" else f" (got {_short(first.get('input'))})"
    more = err.error_count() - 1
    extra = f"; {more} more problem{'s' if more > 1 else ''}" if more > 0 else ""
    problem = f"answered a malformed {_name(model)}: {where or '(body)'}: {why}{got}{extra}"
    return _protocol(endpoint, field, problem)


def _reason(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "not an object"
    text = str(error["msg"])
    return text[:1].lower() + text[1:]


def _protocol(endpoint: str, field: str, problem: str) -> BrokerProtocolError:
    return BrokerProtocolError(
        endpoint,
        field,
        f"Alpaca {endpoint} {problem}; the answer was not used (a broker fault: retry later)",
    )


def _kind(value: Any) -> str:
    names = {str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
