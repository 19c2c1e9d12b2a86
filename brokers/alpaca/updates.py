"""``TradeUpdates``: Alpaca's ``trade_updates`` stream in a background thread.

Built on alpaca-py's ``TradingStream``, which already reconnects with backoff after a drop but
says nothing when it does. The subclass here reports every successful connection, so the
broker knows when it must re-read orders and positions (fills that happened while the stream
was down are not replayed by Alpaca), and stops at once instead of waiting out the SDK's 5 s
receive poll. Payloads reach ``on_update`` as raw dicts (the ``data`` of each message) on the
stream's thread; the callback must be thread-safe and quick (the broker journals and queues).
Each payload is checked against its schema first (``brokers.alpaca.answers``): a malformed one
is not passed on but logged in one line and counted in ``malformed``, and the ``on_reconnect``
hooks run, as after a reconnect (an update was lost: the broker re-reads orders and positions).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from alpaca.trading.stream import TradingStream

from brokers.alpaca.answers import check_trade_update
from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.rest import BrokerUnavailable
from core.errors import BrokerProtocolError

log = logging.getLogger(__name__)


class _HookedStream(TradingStream):
    """``TradingStream`` that calls ``on_connect`` after each authenticated connection."""

    def __init__(self, on_connect: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_connect = on_connect
        self._reconnect_min_backoff = 0.2

    async def _start_ws(self) -> None:
        await super()._start_ws()
        self._on_connect()


class TradeUpdates:
    """One ``trade_updates`` connection for the account (see the module docstring)."""

    def __init__(self, config: AlpacaConfig, on_update: Callable[[dict[str, Any]], None]) -> None:
        self.config = config
        self.on_update = on_update
        self.on_reconnect: list[Callable[[], None]] = []
        self.connections = 0
        self.malformed = 0  # payloads refused by the schema check
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream = _HookedStream(
            self._on_connect,
            api_key=config.key_id,
            secret_key=config.secret_key,
            paper=config.paper,
            raw_data=True,
            url_override=config.trading_stream_url,
            websocket_params={"ping_interval": 10, "ping_timeout": 30, "max_queue": 1024,
                              "open_timeout": config.connect_timeout},
        )  # fmt: skip
        self._stream.subscribe_trade_updates(self._handle)

    def __repr__(self) -> str:
        return f"TradeUpdates({self.config.mode}, connections={self.connections})"

    @property
    def connected(self) -> bool:
        return self._connected.is_set() and bool(self._stream._running)

    def start(self, timeout: float | None = None) -> None:
        """Connect in a background thread; wait until the stream listens (or raise)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._stream.run, name="alpaca-trade-updates")
        self._thread.daemon = True
        self._thread.start()
        wait = timeout if timeout is not None else self.config.connect_timeout * 2
        if not self._connected.wait(wait):
            self.stop()
            raise BrokerUnavailable(
                f"Alpaca trade_updates stream did not connect within {wait:.0f} s "
                f"({self.config.trading_stream_url or 'default ' + self.config.mode + ' stream'}); "
                "check the network and the keys"
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the stream and join its thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        stream = self._stream
        for _ in range(50):  # the SDK sets its loop only once the thread runs
            if stream._loop is not None or not thread.is_alive():
                break
            thread.join(0.02)
        loop = stream._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(stream.stop_ws(), loop).result(timeout)
                asyncio.run_coroutine_threadsafe(stream.close(), loop).result(timeout)
            except (RuntimeError, TimeoutError, asyncio.CancelledError):
                log.debug("trade_updates stream was already closing")
        thread.join(timeout)
        if thread.is_alive():
            log.warning("trade_updates thread did not stop within %.0f s", timeout)

    def _on_connect(self) -> None:
        self.connections += 1
        first = not self._connected.is_set()
        self._connected.set()
        if first:
            return
        log.warning("trade_updates stream reconnected (connection %d)", self.connections)
        self._resync_hooks()

    def _resync_hooks(self) -> None:
        for hook in list(self.on_reconnect):
            try:
                hook()
            except Exception:  # a hook must not kill the stream thread
                log.exception("trade_updates reconnect hook failed")

    async def _handle(self, message: Any) -> None:
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict):
            log.warning("trade_updates: ignored a message without data: %.200s", message)
            return
        try:
            check_trade_update(data)
        except BrokerProtocolError as err:  # lost, as in a gap: re-read instead
            log.error("%s", err)
            self._resync_hooks()
            self.malformed += 1
            return
        try:
            self.on_update(data)
        except Exception:  # journaling errors are logged; the broker's resync repairs them
            log.exception("trade_updates: handling an update failed")
