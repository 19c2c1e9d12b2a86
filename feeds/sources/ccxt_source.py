"""Crypto bars from any ccxt exchange (Binance by default), as canonical OHLCV frames.

:meth:`CcxtSource.fetch` pages through ``fetch_ohlcv(symbol, timeframe, since, limit)``: each
request starts one millisecond after the newest bar so far, and the loop stops at ``end``, or
when a page brings no new bar; bars are de-duplicated by their open time. ccxt throttles the
requests itself (``enableRateLimit``, the exchange's published rate), and retries network
failures, HTTP 429 and 5xx ``retries`` times, ``retry_wait`` seconds apart (ccxt's
``maxRetriesOnFailure``); after that they raise :class:`~core.errors.SourceUnavailable`.

By default the bar that is still forming (its period has not ended yet) is dropped: it would be
stored as if final. Symbols are ccxt's unified ones (``BTC/USDT``); ``BTC-USDT`` is accepted.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ccxt
import pandas as pd

from core.config import DataConfig
from core.errors import ConfigError, SourceUnavailable, SymbolNotFound
from core.utc import to_utc
from feeds.frame import make_frame
from feeds.timeframes import get_timeframe

log = logging.getLogger(__name__)
#: ccxt logs every request's headers at DEBUG (API key included): it logs here instead, redacted.
http_log = logging.getLogger(f"{__name__}.http")

T = TypeVar("T")

CCXT_TIMEFRAMES: dict[str, str] = {
    "1m": "1m",
    "5m": "5m",
    "15m": "15m",
    "1h": "1h",
    "4h": "4h",
    "1Day": "1d",
}
#: Where history starts when ``start`` is not given (exchanges answer from their first bar).
EARLIEST_START = pd.Timestamp("2010-01-01", tz="UTC")
#: Options for every exchange, then per exchange; the user's ``options`` override both.
DEFAULT_OPTIONS: dict[str, Any] = {"defaultType": "spot"}
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    # only the spot exchangeInfo on load_markets (not the futures ones), no wallet endpoints
    "binance": {
        "fetchMarkets": {"types": ["spot"]},
        "fetchMargins": False,
        "fetchCurrencies": False,
    },
}


@dataclass(frozen=True, kw_only=True)
class CcxtSettings(DataConfig):
    """Everything about a :class:`CcxtSource` except the keys.

    ``exchange``: a ccxt exchange id. ``page_limit``: bars asked per request. ``timeout``:
    seconds per request. ``retries`` / ``retry_wait``: ccxt's retries of failed requests.
    ``api_url``: a base URL replacing the scheme and host of every ``exchange.urls['api']``
    entry (tests, proxies). ``options``: ccxt exchange options, merged over the defaults.
    ``drop_partial``: drop the bar still forming. ``max_pages``: a safety stop for the loop.
    """

    exchange: str = "binance"
    page_limit: int = 1000
    timeout: float = 30.0
    retries: int = 2
    retry_wait: float = 1.0
    api_url: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    drop_partial: bool = True
    max_pages: int = 10_000

    def __post_init__(self) -> None:
        if self.exchange not in ccxt.exchanges:
            close = difflib.get_close_matches(self.exchange, ccxt.exchanges, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"exchange={self.exchange!r} is not a ccxt exchange id{hint} "
                f"(all {len(ccxt.exchanges)} ids: ccxt.exchanges)"
            )
        if self.page_limit < 1 or self.max_pages < 1:
            raise ConfigError(
                f"page_limit={self.page_limit} and max_pages={self.max_pages} must be >= 1"
            )
        if not self.timeout > 0:
            raise ConfigError(f"timeout={self.timeout!r} must be > 0 seconds")
        if self.retries < 0 or self.retry_wait < 0:
            raise ConfigError(
                f"retries={self.retries!r} and retry_wait={self.retry_wait!r} must be >= 0"
            )
        if self.api_url is not None and not self.api_url.startswith(("http://", "https://")):
            raise ConfigError(f"api_url={self.api_url!r} must start with http:// or https://")


class CcxtSource:
    """Bars from a ccxt exchange. Keys are optional (public history needs none).

    The keyword arguments besides ``api_key`` / ``secret`` are the fields of
    :class:`CcxtSettings`.
    """

    name = "ccxt"

    def __init__(
        self,
        exchange: str = "binance",
        *,
        api_key: str | None = None,
        secret: str | None = None,
        **settings: Any,
    ) -> None:
        try:
            self.settings = CcxtSettings(exchange=exchange, **settings)
        except TypeError as err:
            raise ConfigError(f"CcxtSource: {err}; settings are {_FIELDS}") from None
        if bool(api_key) != bool(secret):
            raise ConfigError("CcxtSource: pass both api_key= and secret=, or neither")
        self.__secrets = tuple(s for s in (api_key, secret) if s)
        self._exchange = self._make_exchange(api_key, secret)

    def __repr__(self) -> str:
        keys = "set" if self.__secrets else "none"
        return f"CcxtSource({self.settings!r}, keys={keys})"

    def fetch(
        self,
        symbol: str,
        *,
        timeframe: str = "1Day",
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Return the bars of ``symbol`` (``BTC/USDT``) in ``[start, end)``, all pages."""
        tf = get_timeframe(timeframe)
        ccxt_tf = self._ccxt_timeframe(tf.name)
        start_ts = to_utc(start) or EARLIEST_START
        end_ts = to_utc(end)
        unified = self._market_symbol(symbol)
        log.debug("ccxt %s: %s %s bars from %s", self._exchange.id, unified, ccxt_tf, start_ts)
        rows = self._paginate(
            unified,
            ccxt_tf,
            step_ms=int(tf.delta.total_seconds() * 1000),
            since=_ms(start_ts),
            end_ms=None if end_ts is None else _ms(end_ts),
        )
        if not rows:
            raise SymbolNotFound(
                f"{self._exchange.id} returned no {ccxt_tf} bars for {unified} from {start_ts} "
                f"to {end_ts or 'now'}; check the dates (the pair may be listed later)"
            )
        frame = pd.DataFrame(
            [r[1:6] for r in rows],
            columns=["open", "high", "low", "close", "volume"],
            index=pd.DatetimeIndex(pd.to_datetime([r[0] for r in rows], unit="ms", utc=True)),
        )
        return make_frame(
            frame,
            symbol=unified,
            source=self.name,
            timeframe=tf.name,
            adjustment="raw",
            asset_class="crypto",
            extra_attrs={"exchange": self._exchange.id},
        )

    def _make_exchange(self, api_key: str | None, secret: str | None) -> ccxt.Exchange:
        """Build the ccxt exchange object (no network); rewrite its API URLs if asked."""
        s = self.settings
        options = {
            **DEFAULT_OPTIONS,
            **EXCHANGE_OPTIONS.get(s.exchange, {}),
            "maxRetriesOnFailure": s.retries,
            "maxRetriesOnFailureDelay": int(s.retry_wait * 1000),
            **s.options,
        }
        config: dict[str, Any] = {
            "enableRateLimit": True,
            "timeout": int(s.timeout * 1000),
            "options": options,
            "logger": http_log,
        }
        if api_key and secret:
            config.update(apiKey=api_key, secret=secret)
            _REDACTOR.secrets.update((api_key, secret))
            http_log.addFilter(_REDACTOR)  # idempotent
        exchange: ccxt.Exchange = getattr(ccxt, s.exchange)(config)
        if not exchange.has.get("fetchOHLCV"):
            raise ConfigError(
                f"{s.exchange} offers no OHLCV history through ccxt; use an exchange whose "
                "has['fetchOHLCV'] is true (for example binance, kraken, coinbase)"
            )
        if s.api_url is not None:
            exchange.urls["api"] = _rebase(exchange.urls.get("api"), s.api_url)
        return exchange

    def _ccxt_timeframe(self, name: str) -> str:
        ccxt_tf = CCXT_TIMEFRAMES[name]
        offered = self._exchange.timeframes or {}
        if ccxt_tf not in offered:
            raise ConfigError(
                f"{self._exchange.id} has no {name} bars; it offers {', '.join(offered)}. "
                "Fetch a finer timeframe and resample (feeds.timeframes.resample)"
            )
        return ccxt_tf

    def _market_symbol(self, symbol: str) -> str:
        """The unified symbol for ``symbol``, loading the exchange's markets once."""
        wanted = symbol.upper()
        if "/" not in wanted and "-" in wanted:
            wanted = wanted.replace("-", "/", 1)
        market = self._guard(wanted, lambda: self._load_market(wanted))
        return str(market["symbol"])

    def _load_market(self, symbol: str) -> dict[str, Any]:
        self._exchange.load_markets()
        return dict(self._exchange.market(symbol))

    def _paginate(
        self, symbol: str, ccxt_tf: str, *, step_ms: int, since: int, end_ms: int | None
    ) -> list[list[Any]]:
        """All bars in ``[since, end_ms)``, page by page, sorted and unique by open time."""
        start_ms, limit = since, self.settings.page_limit
        rows: dict[int, list[Any]] = {}
        for _ in range(self.settings.max_pages):
            fetch = partial(self._exchange.fetch_ohlcv, symbol, ccxt_tf, since, limit)
            batch: list[list[Any]] = self._guard(symbol, fetch)
            stamps = [int(r[0]) for r in batch]
            fresh = {
                t: r
                for t, r in zip(stamps, batch, strict=True)
                if t >= start_ms and (end_ms is None or t < end_ms) and t not in rows
            }
            rows.update(fresh)
            if not fresh or max(stamps) < since:
                break
            since = max(stamps) + 1
            if end_ms is not None and since + step_ms > end_ms:
                break
        else:
            raise ConfigError(
                f"{symbol}: still receiving bars after max_pages={self.settings.max_pages} pages; "
                "narrow start/end or raise max_pages"
            )
        if self.settings.drop_partial:
            now = self._exchange.milliseconds()
            rows = {t: r for t, r in rows.items() if t + step_ms <= now}
        return [rows[t] for t in sorted(rows)]

    def _guard(self, symbol: str, call: Callable[[], T]) -> T:
        """Run one call into ccxt, translating its exceptions into the project's tree."""
        name = self.settings.exchange
        try:
            return call()
        except ccxt.BadSymbol as err:
            raise SymbolNotFound(
                f"{name} has no market {symbol!r} ({self._redact(err)}); use a unified symbol "
                "such as BTC/USDT (see exchange.symbols)"
            ) from err
        except ccxt.AuthenticationError as err:
            raise ConfigError(
                f"{name} refused the keys for {symbol}: {self._redact(err)}; check api_key= and "
                "secret= (public history needs no keys)"
            ) from err
        except ccxt.NetworkError as err:  # timeouts, dropped connections, 429, 5xx
            raise SourceUnavailable(
                f"{name} unavailable for {symbol} ({type(err).__name__}): {self._redact(err)}; "
                "retry later"
            ) from err
        except ccxt.BadRequest as err:
            raise ConfigError(
                f"{name} rejected the request for {symbol}: {self._redact(err)}"
            ) from err
        except ccxt.BaseError as err:
            raise SourceUnavailable(
                f"{name} failed for {symbol} ({type(err).__name__}): {self._redact(err)}"
            ) from err

    def _redact(self, err: BaseException) -> str:
        """The error text, shortened, with any key replaced by ``***``."""
        text = str(err)
        for secret in self.__secrets:
            text = text.replace(secret, "***")
        return text[:300]


_FIELDS = ", ".join(CcxtSettings.__dataclass_fields__)


class _Redactor(logging.Filter):
    """Replaces every known key in a log record's text by ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for secret in self.secrets:
            text = text.replace(secret, "***")
        record.msg, record.args = text, None
        return True


_REDACTOR = _Redactor()


def _ms(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)


def _rebase(api: Any, base: str) -> Any:
    """``urls['api']`` (a URL, or nested dicts of URLs) with scheme and host taken from ``base``."""
    if isinstance(api, str):
        return base.rstrip("/") + urlsplit(api).path
    if isinstance(api, dict):
        return {k: _rebase(v, base) for k, v in api.items()}
    return api
