"""``TradingAPI``: every Trading API call the broker makes, guarded, on alpaca-py's client.

alpaca-py's ``TradingClient`` sets no timeout and retries 429/504 itself, 3 s apart, on any
method, submits included. Here its own retries are off and every call goes through one policy:

* every request has a connect and a read timeout (``AlpacaConfig``);
* a client-side limiter keeps under ``max_requests_per_minute`` in any ``rate_window``;
* 429: wait until the ``X-RateLimit-Reset`` the answer gives (every call waits, not only the
  one that met it), then try again;
* reads and cancels: 5xx, timeouts and reset connections are retried ``retries`` times with
  bounded exponential backoff and full jitter, then :class:`BrokerUnavailable`;
* submits are never blindly retried. A timeout, 5xx or reset connection leaves the order
  UNKNOWN: it is looked up by its ``client_order_id`` and re-sent with the same id only when
  Alpaca does not have it (:meth:`TradingAPI.submit_idempotent`), so a submit can never trade
  twice. Any other 4xx is final: :class:`OrderRejected` carries Alpaca's message.

Answers are the raw JSON dicts of the Trading API (``raw_data=True``): numbers as strings,
each checked against its schema before it is returned (``brokers.alpaca.answers``). A
malformed answer raises :class:`BrokerProtocolError` naming the endpoint and the field; like
:class:`BrokerUnavailable` it is a broker fault (``BROKER_FAULTS``): no new orders, reconcile
again later.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest

from brokers.alpaca.answers import (
    AccountAnswer,
    CanceledOrderAnswer,
    ClockAnswer,
    ClosedPositionAnswer,
    FillActivityAnswer,
    OrderAnswer,
    PositionAnswer,
    check_list,
    check_object,
)
from brokers.alpaca.config import AlpacaConfig
from core.errors import BrokerProtocolError, BtmlError, ConfigError, SourceUnavailable
from feeds.sources.alpaca import TimeoutAdapter as TimeoutAdapter

log = logging.getLogger(__name__)

# no usable answer: timeouts, resets (also mid-body), and bodies that are not JSON (a proxy page)
_AMBIGUOUS = (requests.RequestException, ValueError)


class BrokerUnavailable(SourceUnavailable):
    """Alpaca did not answer usefully within the retries (network, 5xx, rate limit)."""


class OrderRejected(BtmlError):
    """Alpaca refused an order (a final 4xx); ``message`` is Alpaca's own."""

    def __init__(self, text: str, status: int | None = None, message: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.message = message


class OrderUnknown(BrokerUnavailable):
    """A submit got no answer and the lookup by ``client_order_id`` failed too: unknown."""


# passing faults of the broker: no answer, or an answer outside the schema
BROKER_FAULTS: tuple[type[BtmlError], ...] = (BrokerUnavailable, BrokerProtocolError)


@dataclass(frozen=True, kw_only=True)
class OrderSpec:
    """What to send: the order fields of a journal intent plus its ``client_order_id``."""

    client_order_id: str
    symbol: str
    side: str
    qty: float | None = None
    notional: float | None = None
    order_type: str = "market"
    limit_price: float | None = None
    stop_price: float | None = None
    time_in_force: str = "day"
    order_class: str = "simple"
    take_profit: float | None = None
    stop_loss: float | None = None

    def __post_init__(self) -> None:
        if self.order_class == "bracket" and (self.take_profit is None or self.stop_loss is None):
            raise ConfigError(
                f"{self.symbol}: a bracket order needs take_profit and stop_loss prices"
            )

    def body(self) -> dict[str, Any]:
        """The create-order JSON body, as the Trading API spec types it (decimals as strings;
        alpaca-py's request models send numbers, which the official spec does not allow)."""
        kind = self.order_type
        if kind not in ("market", "limit", "stop", "stop_limit"):
            raise ConfigError(f"order type {kind!r}: use market, limit, stop or stop_limit")
        body: dict[str, Any] = {
            "symbol": self.symbol,
            "side": self.side,
            "type": kind,
            "time_in_force": self.time_in_force,
            "client_order_id": self.client_order_id,
        }
        if self.qty is not None:
            body["qty"] = _decimal(self.qty)
        else:
            body["notional"] = _decimal(self.notional)
        if kind in ("limit", "stop_limit"):
            body["limit_price"] = _decimal(self.limit_price)
        if kind in ("stop", "stop_limit"):
            body["stop_price"] = _decimal(self.stop_price)
        if self.order_class == "bracket":
            body["order_class"] = "bracket"
            body["take_profit"] = {"limit_price": _decimal(self.take_profit)}
            body["stop_loss"] = {"stop_price": _decimal(self.stop_loss)}
        return body


def _decimal(value: float | None) -> str:
    """A decimal string with up to 9 places (Alpaca's precision), no exponent, no trailing 0."""
    if value is None or not math.isfinite(value):
        raise ConfigError(f"order field must be a finite number, got {value!r}")
    return f"{value:.9f}".rstrip("0").rstrip(".")


class RateLimiter:
    """At most ``limit`` calls in any ``window`` seconds, plus a shared pause after a 429."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._times: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                while self._times and now - self._times[0] >= self.window:
                    self._times.popleft()
                wait = self._paused_until - now
                if wait <= 0 and len(self._times) < self.limit:
                    self._times.append(now)
                    return waited
                if wait <= 0:
                    wait = self.window - (now - self._times[0])
            time.sleep(max(wait, 0.001))
            waited += max(wait, 0.001)

    def pause_until(self, monotonic_deadline: float) -> None:
        """Hold every caller until ``monotonic_deadline`` (a 429's reset)."""
        with self._lock:
            self._paused_until = max(self._paused_until, monotonic_deadline)


class TradingAPI:
    """The guarded Trading API (see the module docstring). Thread-safe."""

    def __init__(self, config: AlpacaConfig) -> None:
        self.config = config
        self.client = TradingClient(
            config.key_id,
            config.secret_key,
            paper=config.paper,
            raw_data=True,
            url_override=config.trading_url,
        )
        adapter = TimeoutAdapter((config.connect_timeout, config.read_timeout))  # type: ignore[arg-type]
        self.client._session.mount("http://", adapter)
        self.client._session.mount("https://", adapter)
        self.client._retry = 0  # our policy below, not alpaca-py's blind 429/504 retries
        self.limiter = RateLimiter(config.max_requests_per_minute, config.rate_window)
        self.calls = 0

    def __repr__(self) -> str:
        return f"TradingAPI({self.config.mode}, {self.config.base_url})"

    # -- reads ----------------------------------------------------------------------------------

    def account(self) -> dict[str, Any]:
        """The account (``GET /v2/account``)."""
        body = self._read("account", self.client.get_account)
        return check_object("GET /v2/account", AccountAnswer, body)

    def clock(self) -> dict[str, Any]:
        """The market clock (``GET /v2/clock``)."""
        return check_object(
            "GET /v2/clock", ClockAnswer, self._read("clock", self.client.get_clock)
        )

    def positions(self) -> list[dict[str, Any]]:
        """Every open position (``GET /v2/positions``)."""
        body = self._read("positions", self.client.get_all_positions)
        return check_list("GET /v2/positions", PositionAnswer, body)

    def orders(self, status: str = "open", after: datetime | None = None) -> list[dict[str, Any]]:
        """Orders by status (``open``, ``closed``, ``all``), newest first, up to 500."""
        req = GetOrdersRequest(status=QueryOrderStatus(status), limit=500, after=after)
        body = self._read(f"orders {status}", lambda: self.client.get_orders(req))
        return check_list(f"GET /v2/orders (status={status})", OrderAnswer, body)

    def order_by_client_id(self, client_order_id: str) -> dict[str, Any] | None:
        """The order with this ``client_order_id``, or ``None`` when Alpaca has none."""
        try:
            body = self._read(
                f"order {client_order_id}",
                lambda: self.client.get_order_by_client_id(client_order_id),
            )
        except _NotFound:
            return None
        return check_object("GET /v2/orders:by_client_order_id", OrderAnswer, body)

    def fills(self, after: datetime | None = None) -> list[dict[str, Any]]:
        """Account activities of type FILL (executions), oldest first, every page."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"direction": "asc", "page_size": 100}
            if after is not None:
                params["after"] = after.isoformat()
            if token:
                params["page_token"] = token
            page = check_list(
                "GET /v2/account/activities/FILL",
                FillActivityAnswer,
                self._read(
                    "fill activities",
                    lambda p=params: self.client.get("/account/activities/FILL", p),  # type: ignore[misc]
                ),
            )
            out.extend(page)
            if len(page) < 100:
                return out
            token = page[-1]["id"]

    # -- writes ---------------------------------------------------------------------------------

    def cancel(self, order_id: str) -> bool:
        """Cancel one order; ``False`` when Alpaca says it is already final or gone."""
        try:
            self._read(f"cancel {order_id}", lambda: self.client.cancel_order_by_id(order_id))
        except _NotFound:
            return False
        except OrderRejected as err:
            if err.status == 422:  # "order is already in filled state" and friends
                return False
            raise
        return True

    def cancel_all(self) -> list[dict[str, Any]]:
        """Cancel every open order (``DELETE /v2/orders``): one item per order."""
        body = self._read("cancel all", self.client.cancel_orders)
        return check_list("DELETE /v2/orders", CanceledOrderAnswer, [] if body is None else body)

    def close_all_positions(self) -> list[dict[str, Any]]:
        """Cancel every order and close every position at market (``DELETE /v2/positions``)."""
        body = self._read(
            "close all positions",
            lambda: self.client.delete("/positions", {"cancel_orders": "true"}),
        )
        return check_list(
            "DELETE /v2/positions", ClosedPositionAnswer, [] if body is None else body
        )

    def submit_idempotent(self, spec: OrderSpec) -> tuple[dict[str, Any], str]:
        """Send ``spec`` exactly once; returns ``(order JSON, how)``.

        ``how`` is ``sent``, ``found`` (it had arrived: the answer was lost, or Alpaca refused
        the resend as a duplicate) or ``resent`` (it had not arrived; sent again with the same
        ``client_order_id``). Raises :class:`OrderRejected` on a final 4xx and
        :class:`OrderUnknown` when neither the submit nor the lookups got an answer.
        """
        attempts = self.config.retries + 1
        how = "sent"
        for attempt in range(attempts):
            try:
                return self._submit_once(spec), how
            except _Ambiguous as err:
                log.warning("%s: submit got no answer (%s); looking it up", spec.symbol, err)
                found = self._lookup_after_failure(spec, err)
                if found is not None:
                    return found, "found"
                how = "resent"
                self._sleep_backoff(attempt)
            except _Duplicate:
                found = self.order_by_client_id(spec.client_order_id)
                if found is not None:
                    return found, "found"
                raise OrderUnknown(
                    f"{spec.client_order_id}: Alpaca calls it a duplicate but cannot find it"
                ) from None
        raise OrderUnknown(
            f"{spec.symbol} order {spec.client_order_id}: no answer after {attempts} attempts; "
            "it stays UNKNOWN in the journal and is looked up again before any new order"
        )

    def _submit_once(self, spec: OrderSpec) -> dict[str, Any]:
        body = spec.body()  # a bad field is the caller's error, not a lost answer
        self._pace()
        try:
            answer = self.client.post("/orders", body)
        except APIError as err:
            status, message = err.status_code, self._message(err)
            if status == 429:
                self._pause_for(err)
                raise _Ambiguous("HTTP 429") from err  # not processed; the lookup confirms
            if status is None or status >= 500:
                raise _Ambiguous(f"HTTP {status}") from err
            if status == 422 and "client_order_id must be unique" in message:
                raise _Duplicate() from err
            raise OrderRejected(
                f"Alpaca rejected {spec.side} {spec.qty or spec.notional} {spec.symbol} "
                f"(HTTP {status}): {message}",
                status=status,
                message=message,
            ) from err
        except _AMBIGUOUS as err:
            raise _Ambiguous(type(err).__name__) from err
        return check_object("POST /v2/orders", OrderAnswer, answer)

    def _lookup_after_failure(self, spec: OrderSpec, err: Exception) -> dict[str, Any] | None:
        try:
            return self.order_by_client_id(spec.client_order_id)
        except BrokerUnavailable as lookup_err:
            raise OrderUnknown(
                f"{spec.symbol} order {spec.client_order_id}: the submit failed ({err}) and the "
                f"lookup failed too ({lookup_err}); it stays UNKNOWN in the journal"
            ) from lookup_err

    # -- the policy -----------------------------------------------------------------------------

    def _read(self, what: str, call: Callable[[], Any]) -> Any:
        """Run an idempotent call with the rate limit, 429 waits and bounded retries."""
        last: Exception | None = None
        for attempt in range(self.config.retries + 1):
            self._pace()
            try:
                return call()
            except APIError as err:
                status = err.status_code
                if status == 429:
                    self._pause_for(err)
                    last = err
                    continue
                if status == 404:
                    raise _NotFound() from err
                if status is not None and status < 500:
                    raise self._refused(what, err) from err
                last = err
            except _AMBIGUOUS as err:
                last = err
            if attempt < self.config.retries:
                self._sleep_backoff(attempt)
        raise BrokerUnavailable(
            f"Alpaca {what}: no answer after {self.config.retries + 1} attempts "
            f"({self.config.redact(str(last))}); retry later"
        )

    def _refused(self, what: str, err: APIError) -> Exception:
        status, message = err.status_code, self._message(err)
        if status in (401, 403) and what in ("account", "clock", "positions"):
            return ConfigError(
                f"Alpaca refused the keys for {what} (HTTP {status}: {message}); check "
                f"APCA_API_KEY_ID / APCA_API_SECRET_KEY and that they are {self.config.mode} keys"
            )
        return OrderRejected(f"Alpaca {what}: HTTP {status}: {message}", status, message)

    def _pace(self) -> None:
        self.limiter.acquire()
        self.calls += 1

    def _pause_for(self, err: APIError) -> None:
        """Hold every call until the reset that a 429's headers give (1 s when they give none)."""
        response = err.response
        reset = response.headers.get("X-RateLimit-Reset") if response is not None else None
        try:
            wait = float(reset) - time.time() if reset else 1.0
        except ValueError:
            wait = 1.0
        wait = min(max(wait, 0.5), 60.0)  # a reset already past (clock skew): still back off
        log.warning("Alpaca rate limit hit: every call waits %.1f s (X-RateLimit-Reset)", wait)
        self.limiter.pause_until(time.monotonic() + wait)

    def _sleep_backoff(self, attempt: int) -> None:
        cap = min(self.config.backoff_max, self.config.backoff_initial * 2**attempt)
        time.sleep(random.uniform(0, cap))

    def _message(self, err: APIError) -> str:
        try:
            text = str(err.message)
        except (ValueError, KeyError, TypeError):
            text = str(err)
        return self.config.redact(text)[:300]


class _Ambiguous(Exception):
    """A submit whose outcome is unknown (no answer, 5xx, 429)."""


class _Duplicate(Exception):
    """Alpaca refused a submit because the ``client_order_id`` exists: it arrived before."""


class _NotFound(Exception):
    """A 404 on a lookup or cancel."""
