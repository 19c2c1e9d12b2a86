"""Alpaca market data through alpaca-py's historical clients (stock and crypto bars).

Stocks go through :class:`~alpaca.data.historical.StockHistoricalDataClient` (API keys needed),
crypto pairs such as ``BTC/USD`` through
:class:`~alpaca.data.historical.CryptoHistoricalDataClient` (keys optional; with keys the rate
limit is higher). alpaca-py follows ``next_page_token`` itself, so one :meth:`AlpacaSource.fetch`
returns every page.

Errors: no bars, or an invalid symbol (HTTP 400/422 naming the symbol), raise
:class:`~core.errors.SymbolNotFound`; refused keys (401/403) and other rejected requests raise
:class:`~core.errors.ConfigError` saying what to check; server errors (5xx), rate limiting (429,
after alpaca-py's own ``retries`` spaced ``retry_wait`` seconds apart, which also cover 504),
timeouts and broken connections raise :class:`~core.errors.SourceUnavailable`. Every request
carries a ``timeout`` (alpaca-py sets none). The keys never appear in a message, a log line or
the ``repr``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd
import requests
from alpaca.common.exceptions import APIError
from alpaca.common.rest import RESTClient
from alpaca.data.enums import Adjustment, DataFeed
from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from requests.adapters import HTTPAdapter

from core.config import DataConfig
from core.credentials import KEY_ENV, SECRET_ENV, AlpacaCredentials
from core.errors import ConfigError, SourceUnavailable, SymbolNotFound
from core.utc import to_utc
from feeds.frame import guess_asset_class, make_frame
from feeds.timeframes import get_timeframe

log = logging.getLogger(__name__)

FEEDS: tuple[str, ...] = tuple(f.value for f in DataFeed)
ADJUSTMENTS: tuple[str, ...] = tuple(a.value for a in Adjustment)

#: Where history starts when ``start`` is not given (Alpaca's own default is today's open).
EARLIEST_START = pd.Timestamp("2016-01-01", tz="UTC")

TIMEFRAMES: dict[str, TimeFrame] = {
    "1m": TimeFrame(1, TimeFrameUnit.Minute),
    "5m": TimeFrame(5, TimeFrameUnit.Minute),
    "15m": TimeFrame(15, TimeFrameUnit.Minute),
    "1h": TimeFrame(1, TimeFrameUnit.Hour),
    "4h": TimeFrame(4, TimeFrameUnit.Hour),
    "1Day": TimeFrame(1, TimeFrameUnit.Day),
}


@dataclass(frozen=True, kw_only=True)
class AlpacaSettings(DataConfig):
    """Everything about an :class:`AlpacaSource` except the keys.

    ``feed``: stock feed, ``iex`` (free) or ``sip`` (all US exchanges, subscription for recent
    data), or another :class:`~alpaca.data.enums.DataFeed` value. ``adjustment``: ``raw``,
    ``split``, ``dividend`` or ``all`` (stocks only). ``url``: base URL replacing
    ``https://data.alpaca.markets`` (tests, proxies, other regions). ``timeout``: seconds per
    request. ``retries`` / ``retry_wait``: alpaca-py's own retries of HTTP 429 and 504.
    """

    feed: str = "iex"
    adjustment: str = "raw"
    url: str | None = None
    timeout: float = 30.0
    retries: int = 3
    retry_wait: float = 3.0

    def __post_init__(self) -> None:
        if self.feed not in FEEDS:
            raise ConfigError(f"feed={self.feed!r} is unknown: use one of {', '.join(FEEDS)}")
        if self.adjustment not in ADJUSTMENTS:
            raise ConfigError(
                f"adjustment={self.adjustment!r} is unknown: use one of {', '.join(ADJUSTMENTS)}"
            )
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url={self.url!r} must start with http:// or https://")
        if not self.timeout > 0:
            raise ConfigError(f"timeout={self.timeout!r} must be > 0 seconds")
        if self.retries < 0 or self.retry_wait < 0:
            raise ConfigError(
                f"retries={self.retries!r} and retry_wait={self.retry_wait!r} must be >= 0"
            )


class TimeoutAdapter(HTTPAdapter):
    """Gives every request sent through it a timeout unless the caller set one."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


class AlpacaSource:
    """Bars from Alpaca's market data API, as canonical OHLCV frames.

    ``key_id`` / ``secret_key`` default to the ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``
    environment variables; stock bars need them, crypto bars do not. The other keyword
    arguments are the fields of :class:`AlpacaSettings`.
    """

    name = "alpaca"

    def __init__(
        self, key_id: str | None = None, secret_key: str | None = None, **settings: Any
    ) -> None:
        try:
            self.settings = AlpacaSettings(**settings)
        except TypeError as err:
            raise ConfigError(f"AlpacaSource: {err}; settings are {_FIELDS}") from None
        env = AlpacaCredentials.from_env() if not (key_id and secret_key) else None
        self.__keys = (
            key_id or (env.key_id if env else None),
            secret_key or (env.secret_key if env else None),
        )
        self._stock: StockHistoricalDataClient | None = None
        self._crypto: CryptoHistoricalDataClient | None = None

    def __repr__(self) -> str:
        keys = "set" if all(self.__keys) else "none"
        return f"AlpacaSource({self.settings!r}, keys={keys})"

    def fetch(
        self,
        symbol: str,
        *,
        timeframe: str = "1Day",
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Return the bars of ``symbol`` in ``[start, end)``; ``BTC/USD``-style symbols are crypto."""
        tf = get_timeframe(timeframe)
        start_ts, end_ts = to_utc(start) or EARLIEST_START, to_utc(end)
        crypto = guess_asset_class(symbol) == "crypto"
        sym = symbol.upper().replace("-", "/") if crypto else symbol.upper()
        where = f"{sym} {tf.name} bars from {start_ts} to {end_ts or 'now'}"
        log.debug("alpaca: requesting %s", where)
        raw = self._bars(sym, TIMEFRAMES[tf.name], start_ts, end_ts, crypto=crypto)
        try:
            frame = _rows_to_frame(raw.get(sym) or [], start_ts, end_ts)
        except (KeyError, TypeError, ValueError) as err:
            raise SourceUnavailable(f"alpaca: malformed bars for {sym}: {err!r}") from err
        if frame.empty:
            feed = "crypto feed 'us'" if crypto else f"feed {self.settings.feed!r}"
            raise SymbolNotFound(
                f"alpaca returned no {where} ({feed}); check the symbol and the dates"
                + ("" if crypto else ", or try feed='sip' for symbols IEX does not trade")
            )
        return make_frame(
            frame,
            symbol=sym,
            source=self.name,
            timeframe=tf.name,
            adjustment="raw" if crypto else self.settings.adjustment,
            asset_class="crypto" if crypto else "stocks",
            extra_attrs={"feed": "us" if crypto else self.settings.feed},
        )

    def _bars(
        self,
        symbol: str,
        timeframe: TimeFrame,
        start: pd.Timestamp,
        end: pd.Timestamp | None,
        *,
        crypto: bool,
    ) -> dict[str, list[dict[str, Any]]]:
        """One guarded call into alpaca-py (which follows the pages); raw rows per symbol."""
        when: dict[str, Any] = {
            "start": start.to_pydatetime(),
            "end": None if end is None else end.to_pydatetime(),
        }
        # clients and requests are built outside the guard: their errors are ours (ConfigError)
        call: Callable[[], Any]
        if crypto:
            request = CryptoBarsRequest(symbol_or_symbols=symbol, timeframe=timeframe, **when)
            call = partial(self._crypto_client().get_crypto_bars, request)
        else:
            call = partial(
                self._stock_client().get_stock_bars, self._stock_request(symbol, timeframe, when)
            )
        try:
            raw = call()
        except APIError as err:
            raise self._api_error(err, symbol) from err
        except requests.RequestException as err:
            raise SourceUnavailable(
                f"alpaca: no answer for {symbol} from {self._base_url()}: "
                f"{self._redact(type(err).__name__ + ': ' + str(err))}; retry later"
            ) from err
        except (ValueError, TypeError, KeyError) as err:
            raise SourceUnavailable(
                f"alpaca: unexpected answer for {symbol} from {self._base_url()}: "
                f"{self._redact(str(err))[:200]}"
            ) from err
        if not isinstance(raw, dict):
            raise SourceUnavailable(f"alpaca: unexpected answer for {symbol}: {type(raw).__name__}")
        return raw

    def _stock_request(
        self, symbol: str, timeframe: TimeFrame, when: dict[str, Any]
    ) -> StockBarsRequest:
        return StockBarsRequest(
            symbol_or_symbols=symbol,
            timeframe=timeframe,
            adjustment=Adjustment(self.settings.adjustment),
            feed=DataFeed(self.settings.feed),
            **when,
        )

    def _crypto_client(self) -> CryptoHistoricalDataClient:
        """The cached crypto client; it sends the keys only when both are set."""
        if self._crypto is None:
            key_id, secret_key = self.__keys
            have_keys = bool(key_id and secret_key)
            self._crypto = CryptoHistoricalDataClient(
                api_key=key_id if have_keys else None,
                secret_key=secret_key if have_keys else None,
                raw_data=True,
                url_override=self.settings.url,
            )
            self._configure(self._crypto)
        return self._crypto

    def _stock_client(self) -> StockHistoricalDataClient:
        """The cached stock client; refuses early, with the fix, when keys are missing."""
        if self._stock is None:
            key_id, secret_key = self.__keys
            if not (key_id and secret_key):
                raise ConfigError(
                    f"alpaca stock bars need API keys: pass key_id= and secret_key=, or set "
                    f"{KEY_ENV} and {SECRET_ENV} (free keys at https://alpaca.markets)"
                )
            self._stock = StockHistoricalDataClient(
                api_key=key_id, secret_key=secret_key, raw_data=True, url_override=self.settings.url
            )
            self._configure(self._stock)
        return self._stock

    def _configure(self, client: RESTClient) -> None:
        """Add a timeout to every request and set alpaca-py's retry policy (private fields)."""
        adapter = TimeoutAdapter(self.settings.timeout)
        client._session.mount("http://", adapter)
        client._session.mount("https://", adapter)
        client._retry = self.settings.retries
        client._retry_wait = self.settings.retry_wait  # type: ignore[assignment]

    def _base_url(self) -> str:
        return self.settings.url or "https://data.alpaca.markets"

    def _redact(self, text: str) -> str:
        """``text`` with any key replaced by ``***`` (error bodies may echo request details)."""
        for secret in self.__keys:
            if secret:
                text = text.replace(secret, "***")
        return text

    def _api_error(self, err: APIError, symbol: str) -> Exception:
        """Translate an HTTP error answer into the project's exception tree."""
        status = err.status_code
        detail = self._redact(_api_message(err))
        what = f"alpaca answered HTTP {status} for {symbol}: {detail}"
        if status in (401, 403):
            return ConfigError(
                f"{what}. Check {KEY_ENV} / {SECRET_ENV} (key_id= / secret_key=): they must be a "
                "valid pair; the 'sip' feed needs a market data subscription for recent bars, "
                "feed='iex' does not"
            )
        if status == 429:
            return SourceUnavailable(
                f"{what}. Rate limited after {self.settings.retries} retries; wait and retry"
            )
        if status is None or status >= 500:
            return SourceUnavailable(f"{what}. The server failed; retry later")
        if status in (400, 404, 422) and "symbol" in detail.lower():
            return SymbolNotFound(f"{what}. Check the symbol (stocks: AAPL; crypto: BTC/USD)")
        if status == 404:
            return ConfigError(f"{what}. Check the base url ({self._base_url()})")
        return ConfigError(f"{what}. Check the request (dates, timeframe, feed, adjustment)")


_FIELDS = ", ".join(AlpacaSettings.__dataclass_fields__)


def _api_message(err: APIError) -> str:
    """The ``message`` of an Alpaca JSON error body, else the body text, shortened."""
    try:
        text = str(err.message)
    except (ValueError, KeyError, TypeError):
        text = str(err)
    return text.strip()[:300] or "(empty body)"


def _rows_to_frame(
    rows: list[dict[str, Any]], start: pd.Timestamp, end: pd.Timestamp | None
) -> pd.DataFrame:
    """Alpaca's raw bars (``t o h l c v``) as a sorted, de-duplicated frame within [start, end)."""
    if not rows:
        return pd.DataFrame(columns=["open", "high", "low", "close", "volume"])
    index = pd.to_datetime([r["t"] for r in rows], utc=True, format="ISO8601")
    frame = pd.DataFrame(
        {
            "open": [r["o"] for r in rows],
            "high": [r["h"] for r in rows],
            "low": [r["l"] for r in rows],
            "close": [r["c"] for r in rows],
            "volume": [r["v"] for r in rows],
        },
        index=pd.DatetimeIndex(index, name="datetime"),
    ).sort_index()
    frame = frame[~frame.index.duplicated(keep="first")]
    frame = frame[frame.index >= start]
    if end is not None:
        frame = frame[frame.index < end]
    return frame
