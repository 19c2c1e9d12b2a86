"""Yahoo Finance through yfinance: daily and intraday bars as canonical OHLCV frames.

What the frames hold:

* **Adjustment.** Yahoo's "unadjusted" prices are already split-adjusted (AAPL's close on
  2020-01-02 comes back as 75.09; it traded at 300.35 before the 4:1 split of 2020-08-31), so
  ``adjust=False`` frames record ``attrs["adjustment"] = "split"``. ``adjust=True`` also scales
  open/high/low/close for dividends (yfinance's ``auto_adjust``) and records ``"adjusted"``.
* **Actions.** ``actions=True`` keeps ``dividends`` (cash per share on the ex-date bar) and
  ``stock_splits`` (the ratio on the split bar, 0 elsewhere) as extra columns.
* **Timestamps.** Daily bars are labelled 00:00 UTC of their exchange-local session date (the
  store's convention); intraday bars keep their start instant, converted to UTC.
* **4h** is not a Yahoo interval: 1h bars are fetched and resampled with
  :func:`feeds.timeframes.resample`.

Errors. yfinance normally logs a failure and returns an empty frame. Its ``raise_errors=True``
is deprecated in 1.7 and does not reach the ticker's timezone lookup, where a network failure
then looks like "possibly delisted; no timezone found". Every fetch therefore runs with
``yfinance.config.debug.hide_exceptions = False`` (restored afterwards, under a lock, so Yahoo
fetches in one process are serialised) and the exceptions are mapped: no data or an unknown
symbol -> :class:`~core.errors.SymbolNotFound`; network errors, timeouts, rate limits and
server errors -> :class:`~core.errors.SourceUnavailable`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yfinance as yf
from yfinance.exceptions import YFDataException, YFRateLimitError, YFTickerMissingError

from core.errors import BtmlError, ConfigError, SourceUnavailable, SymbolNotFound
from core.utc import to_utc
from feeds.frame import guess_asset_class, make_frame
from feeds.timeframes import Timeframe, get_timeframe, resample

#: Yahoo's interval for each of our timeframes (4h has none: 1h is fetched and resampled).
YAHOO_INTERVALS: dict[str, str] = {
    "1m": "1m",
    "5m": "5m",
    "15m": "15m",
    "1h": "1h",
    "4h": "1h",
    "1Day": "1d",
}
_FETCHED_AS: dict[str, str] = {"4h": "1h"}
_ACTION_COLUMNS: dict[str, str] = {"Dividends": "dividends", "Stock Splits": "stock_splits"}
_ASSET_CLASSES: dict[str, str] = {"CRYPTOCURRENCY": "crypto", "INDEX": "index"}
_HINT = (
    "Check the ticker on finance.yahoo.com (Yahoo spells some symbols with suffixes such as "
    ".L, .TO or pairs such as BTC-USD); intraday bars exist only for recent days "
    "(1m: 30 days, 5m/15m: 60 days, 1h: 730 days)."
)
_YF_LOCK = threading.Lock()


@contextmanager
def _yfinance_raising() -> Iterator[None]:
    """Make yfinance raise instead of logging and returning an empty frame; restore afterwards."""
    with _YF_LOCK:
        before = yf.config.debug.hide_exceptions
        yf.config.debug.hide_exceptions = False
        try:
            yield
        finally:
            yf.config.debug.hide_exceptions = before


@dataclass(frozen=True, kw_only=True)
class YahooSource:
    """Bars from Yahoo Finance via yfinance.

    ``adjust``: scale prices for dividends too (Yahoo's prices are always split-adjusted).
    ``actions``: keep ``dividends`` and ``stock_splits`` columns.
    ``session``: an HTTP session handed to yfinance (a ``requests`` or ``curl_cffi`` Session);
    ``None`` lets yfinance use its own browser-impersonating one.
    ``timeout``: seconds allowed for each HTTP request of the price download.
    """

    name = "yahoo"  # not a dataclass field (unannotated): the registry name

    adjust: bool = False
    actions: bool = False
    session: Any = field(default=None, repr=False, compare=False)
    timeout: float = 10.0

    def __post_init__(self) -> None:
        for flag in ("adjust", "actions"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(
                    f"YahooSource.{flag} must be True or False, got {getattr(self, flag)!r}"
                )
        t = self.timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 300:
            raise ConfigError(
                f"YahooSource.timeout must be a number of seconds in (0, 300], got {t!r}"
            )

    def fetch(
        self,
        symbol: str,
        *,
        timeframe: str = "1Day",
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Return the canonical frame for ``symbol`` with bars in ``[start, end)`` (UTC).

        ``start=None`` asks for as much history as Yahoo keeps at that interval; ``end=None``
        means now. Raises :class:`SymbolNotFound` when Yahoo has no bars (unknown symbol, or
        nothing in the range) and :class:`SourceUnavailable` when Yahoo cannot be reached.
        """
        sym = symbol.strip().upper()
        if not sym:
            raise ConfigError("YahooSource.fetch: symbol is empty")
        tf = get_timeframe(timeframe)
        lo, hi = to_utc(start), to_utc(end)
        if lo is not None and hi is not None and lo >= hi:
            raise ConfigError(f"{sym}: start {lo} must be before end {hi}")
        fetched = get_timeframe(_FETCHED_AS.get(tf.name, tf.name))
        raw, meta = self._download(sym, fetched, lo, hi)
        frame = _clip(self._to_frame(raw, sym, fetched, meta), lo, hi)
        if fetched.name != tf.name:
            frame = _resample_with_actions(frame, tf.name)
        if frame.empty:
            raise SymbolNotFound(
                f"{_describe(sym, tf.name, lo, hi)}: Yahoo returned no bars in the range. {_HINT}"
            )
        return frame

    def _download(
        self, symbol: str, tf: Timeframe, lo: pd.Timestamp | None, hi: pd.Timestamp | None
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Run yfinance's ``Ticker.history`` and return its frame and the chart metadata."""
        try:
            ticker = yf.Ticker(symbol, session=self.session)
        except YFDataException as err:  # yfinance refuses the session object
            raise ConfigError(f"YahooSource.session: {err}") from err
        try:
            with _yfinance_raising():
                raw = ticker.history(
                    interval=YAHOO_INTERVALS[tf.name],
                    prepost=False,
                    actions=self.actions,
                    auto_adjust=self.adjust,
                    back_adjust=False,
                    repair=False,
                    keepna=False,
                    timeout=self.timeout,
                    **_window(lo, hi, daily=not tf.intraday),
                )
                # Read named keys only: iterating the whole metadata would fetch the lazy
                # 'tradingPeriods' with one more request.
                md = ticker.get_history_metadata()
                meta = {
                    k: md[k]
                    for k in ("instrumentType", "currency", "exchangeTimezoneName")
                    if k in md
                }
        except Exception as err:
            mapped = _translate(err, _describe(symbol, tf.name, lo, hi))
            if mapped is None:
                raise
            raise mapped from err
        if raw is None or raw.empty:  # defensive: yfinance's quiet way of saying "nothing"
            raise SymbolNotFound(
                f"{_describe(symbol, tf.name, lo, hi)}: Yahoo returned no bars. {_HINT}"
            )
        return raw, meta

    def _to_frame(
        self, raw: pd.DataFrame, symbol: str, tf: Timeframe, meta: dict[str, Any]
    ) -> pd.DataFrame:
        """yfinance's frame (exchange-local index, capitalised columns) -> the canonical frame."""
        data = raw.rename(columns=_ACTION_COLUMNS)
        data = data[data["Close"].notna()]  # an event outside every bar comes as a price-less row
        idx = pd.DatetimeIndex(data.index)
        if not tf.intraday and idx.tz is not None:
            idx = idx.tz_localize(None).normalize().tz_localize("UTC")
        data = data.set_axis(idx, axis=0)
        kind = str(meta.get("instrumentType") or "")
        extra = {
            "currency": meta.get("currency"),
            "exchange_timezone": meta.get("exchangeTimezoneName"),
        }
        return make_frame(
            data,
            symbol=symbol,
            source=self.name,
            timeframe=tf.name,
            adjustment="adjusted" if self.adjust else "split",
            asset_class=_ASSET_CLASSES.get(kind, guess_asset_class(symbol)),
            extra_attrs={k: str(v) for k, v in extra.items() if v is not None},
            keep=tuple(_ACTION_COLUMNS.values()) if self.actions else (),
        )


def _window(lo: pd.Timestamp | None, hi: pd.Timestamp | None, *, daily: bool) -> dict[str, Any]:
    """``start``/``end``/``period`` arguments for yfinance.

    Daily bars are asked for by exchange-local date (the first session dated on or after
    ``lo``, up to the last one before ``hi``), so exchanges east of UTC are not cut short;
    intraday bars by instant. The exact ``[lo, hi)`` cut is made afterwards by :func:`_clip`.
    """
    out: dict[str, Any] = {}
    if lo is None:
        out["period"] = "max"
    else:
        out["start"] = lo.ceil("D").date() if daily else lo
    if hi is not None:
        out["end"] = hi.ceil("D").date() if daily else hi
    return out


def _clip(frame: pd.DataFrame, lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> pd.DataFrame:
    """Keep the bars labelled in ``[lo, hi)``; attrs are kept."""
    mask = pd.Series(True, index=frame.index)
    if lo is not None:
        mask &= frame.index >= lo
    if hi is not None:
        mask &= frame.index < hi
    out = frame[mask.to_numpy()]
    out.attrs = dict(frame.attrs)
    return out


def _resample_with_actions(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """Resample OHLCV with :func:`resample`, carrying dividends (summed) and splits (multiplied)."""
    out = resample(frame, target)
    offset = get_timeframe(target).offset
    if "dividends" in frame.columns:
        bins = frame["dividends"].resample(offset, label="left", closed="left")
        out["dividends"] = bins.sum().reindex(out.index).fillna(0.0)
    if "stock_splits" in frame.columns:
        ratios = (
            frame["stock_splits"].replace(0.0, 1.0).resample(offset, label="left", closed="left")
        )
        out["stock_splits"] = ratios.prod().reindex(out.index).fillna(1.0).replace(1.0, 0.0)
    return out


def _describe(symbol: str, timeframe: str, lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> str:
    """``AAPL 1Day 2020-08-31 00:00 -> 2020-11-07 00:00 UTC`` for error messages."""
    a = "start of history" if lo is None else f"{lo:%Y-%m-%d %H:%M}"
    b = "now" if hi is None else f"{hi:%Y-%m-%d %H:%M}"
    return f"{symbol} {timeframe} {a} -> {b} UTC"


def _translate(err: Exception, where: str) -> BtmlError | None:
    """Map an exception raised inside yfinance to ours; ``None`` for one we do not expect."""
    if isinstance(err, YFTickerMissingError):
        return SymbolNotFound(f"{where}: Yahoo has no bars ({err.rationale}). {_HINT}")
    if isinstance(err, YFRateLimitError):
        return SourceUnavailable(
            f"{where}: Yahoo is rate-limiting this client (HTTP 429); retry in a few minutes"
        )
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int) and status > 0:  # curl_cffi reports "no answer" as status 0
        url = str(getattr(response, "url", "") or "")
        # A 4xx outside the chart API comes from yfinance's quote-summary fallback of the
        # timezone lookup, which runs only after the chart API had nothing for the symbol.
        if status == 404 or (
            400 <= status < 500 and status != 429 and "/finance/chart/" not in url
        ):
            return SymbolNotFound(
                f"{where}: Yahoo does not know this symbol (HTTP {status}). {_HINT}"
            )
        return SourceUnavailable(f"{where}: Yahoo answered HTTP {status}; retry later")
    if isinstance(err, OSError):  # requests / curl_cffi errors, DNS, timeouts, refused connections
        return SourceUnavailable(
            f"{where}: cannot reach Yahoo ({type(err).__name__}: {err}); check the network and retry"
        )
    if isinstance(err, json.JSONDecodeError | YFDataException):
        return SourceUnavailable(f"{where}: Yahoo sent an unusable answer ({err}); retry later")
    return None
