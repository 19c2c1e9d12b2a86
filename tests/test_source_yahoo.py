"""YahooSource against recorded Yahoo chart answers, through yfinance's real code path.

Nothing is mocked above the HTTP layer: the source gets a real ``requests.Session`` whose
transport adapter (:class:`RecordedYahoo`) answers every request yfinance makes from recordings:
the chart API by symbol, plus plausible answers for the cookie / crumb handshake and the
quote-summary lookup yfinance falls back to when a symbol has no timezone. No request leaves
the process. The recordings are real answers from Yahoo (``tests/fixtures/yahoo_chart``); the
one synthetic answer (hourly bars, for 1h and 4h) is marked where it is built.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pandas as pd
import pytest
import requests
import yfinance as yf
import yfinance.base
from requests.adapters import HTTPAdapter
from urllib3.response import HTTPResponse
from yfinance.data import YfData

from core.errors import ConfigError, SourceUnavailable, SymbolNotFound
from feeds.sources.base import Source
from feeds.sources.yahoo import YahooSource
from feeds.timeframes import resample

# yfinance 1.7 calls pandas APIs that pandas 3.1 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:yfinance")

FIXTURES = Path(__file__).parent / "fixtures" / "yahoo_chart"
AAPL_JAN = "chart-AAPL-2020-01-01-to-2020-01-03.json"
AAPL_49 = "chart-AAPL-2020-08-31-to-2020-11-07.json"
AAPL_1M = "chart-AAPL-2025-02-01-to-2025-02-02-includePrePost-false-interval-1m.json"
BTC_JAN = "chart-BTC-USD-2020-01-01-to-2020-01-03.json"
WSKT_JAN = "chart-WSKT.JK-2020-01-01-to-2020-01-03.json"

# Yahoo's answers for unknown symbols and a stale crumb (bodies as Yahoo sends them).
CHART_NOT_FOUND = {
    "chart": {
        "result": None,
        "error": {"code": "Not Found", "description": "No data found, symbol may be delisted"},
    }
}
QUOTE_NOT_FOUND = {
    "quoteSummary": {
        "result": None,
        "error": {"code": "Not Found", "description": "Quote not found for symbol: NOPE"},
    }
}
INVALID_CRUMB = {
    "finance": {"result": None, "error": {"code": "Unauthorized", "description": "Invalid Crumb"}}
}


def load(name: str) -> dict[str, Any]:
    """A recording: ``{"request": {"url", ...}, "response": {"status", "headers", "bodyJson"}}``."""
    with open(FIXTURES / name, encoding="utf-8") as fh:
        return dict(json.load(fh))


def chart_result(recording: dict[str, Any]) -> dict[str, Any]:
    return dict(recording["response"]["bodyJson"]["chart"]["result"][0])


def recorded_query(recording: dict[str, Any]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(recording["request"]["url"]).query).items()}


class RecordedYahoo(HTTPAdapter):
    """A transport adapter that answers Yahoo's endpoints from recordings, offline.

    ``charts`` maps a symbol to its recording; other symbols get Yahoo's 404 body. A price
    request (not yfinance's ``range=1d`` timezone probe) gets the recording cut to the requested
    window, as Yahoo cuts its answers; it must ask for the recording's interval and stay inside
    the recorded window, so the fake never invents an answer. ``down`` makes every request
    raise that error.
    """

    def __init__(
        self,
        charts: dict[str, dict[str, Any]] | None = None,
        *,
        down: type[Exception] | None = None,
        quote_summary: tuple[int, dict[str, Any]] = (404, QUOTE_NOT_FOUND),
        chart_status: tuple[int, bytes] | None = None,
    ) -> None:
        super().__init__()
        self.charts = charts or {}
        self.down = down
        self.quote_summary = quote_summary
        self.chart_status = chart_status
        self.seen: list[tuple[str, Any]] = []  # (url, timeout) of every request

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        url = str(request.url)
        self.seen.append((url, kwargs.get("timeout")))
        if self.down is not None:
            raise self.down(f"test: network down, cannot reach {urlsplit(url).hostname}")
        parts = urlsplit(url)
        if parts.hostname == "fc.yahoo.com":  # the cookie page (Yahoo's 404 sets a cookie)
            return self._answer(request, 404, b"<html>Not Found</html>", "text/html")
        if parts.path == "/v1/test/getcrumb":
            return self._answer(request, 200, b"kqX0vhlNsbo", "text/plain;charset=utf-8")
        if parts.path.startswith("/v8/finance/chart/"):
            return self._chart(request, unquote(parts.path.rsplit("/", 1)[1]), parts.query)
        if parts.path.startswith("/v10/finance/quoteSummary/"):
            status, body = self.quote_summary
            return self._answer(request, status, json.dumps(body).encode(), "application/json")
        return self._answer(request, 404, b"<html>Not Found</html>", "text/html")

    def _chart(
        self, request: requests.PreparedRequest, symbol: str, query: str
    ) -> requests.Response:
        if self.chart_status is not None:
            status, text = self.chart_status
            return self._answer(request, status, text, "text/html")
        recording = self.charts.get(symbol)
        if recording is None:
            return self._answer(
                request, 404, json.dumps(CHART_NOT_FOUND).encode(), "application/json"
            )
        q = {k: v[0] for k, v in parse_qs(query).items()}
        answer = recording["response"]["bodyJson"] if "range" in q else cut(recording, q)
        response = recording["response"]
        body = json.dumps(answer).encode()
        return self._answer(request, response["status"], body, response["headers"]["content-type"])

    def _answer(
        self, request: requests.PreparedRequest, status: int, body: bytes, content_type: str
    ) -> requests.Response:
        raw = HTTPResponse(
            body=io.BytesIO(body),
            headers={"content-type": content_type},
            status=status,
            reason=HTTPStatus(status).phrase,
            preload_content=False,
        )
        return self.build_response(request, raw)

    def price_requests(self) -> list[dict[str, str]]:
        """Query parameters of the chart requests for prices (not the timezone probes)."""
        out = []
        for url, _ in self.seen:
            parts = urlsplit(url)
            q = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path.startswith("/v8/finance/chart/") and "range" not in q:
                out.append(q)
        return out


def cut(recording: dict[str, Any], q: dict[str, str]) -> dict[str, Any]:
    """The recorded answer cut to ``[period1, period2]`` (Yahoo includes a bar at period2)."""
    result = copy.deepcopy(chart_result(recording))
    assert q["interval"] == result["meta"]["dataGranularity"], f"asked for {q['interval']}"
    p1, p2 = int(q["period1"]), int(q["period2"])
    rec = recorded_query(recording)
    slack = 86400  # the recordings ask from 00:00 UTC, yfinance from the exchange's midnight
    assert int(rec["period1"]) - slack <= p1 and p2 <= int(rec["period2"]) + slack, (
        f"window {p1}..{p2} is outside the recording's {rec['period1']}..{rec['period2']}"
    )
    keep = [i for i, t in enumerate(result.get("timestamp", [])) if p1 <= t <= p2]
    if "timestamp" in result:
        result["timestamp"] = [result["timestamp"][i] for i in keep]
        for (block,) in result["indicators"].values():
            block.update({k: [v[i] for i in keep] for k, v in block.items()})
    for kind, events in result.get("events", {}).items():
        result["events"][kind] = {k: e for k, e in events.items() if p1 <= e["date"] <= p2}
    body = copy.deepcopy(recording["response"]["bodyJson"])
    body["chart"]["result"] = [result]
    return dict(body)


def session_for(adapter: RecordedYahoo) -> requests.Session:
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


@pytest.fixture(scope="module", autouse=True)
def _yfinance_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # yfinance keeps a timezone and cookie cache on disk; keep it out of the user's folders.
    # (It only takes effect if no earlier test opened the cache; either way it is harmless.)
    yf.set_tz_cache_location(str(tmp_path_factory.mktemp("yfinance-cache")))


@pytest.fixture(autouse=True)
def _fresh_response_cache() -> Iterator[None]:
    # yfinance memoises chart answers for past date ranges process-wide (an LRU keyed by URL
    # and parameters, not by session); clear it so each test sees its own session's answers.
    YfData.cache_get.cache_clear()
    yield
    YfData.cache_get.cache_clear()


def source(adapter: RecordedYahoo, **settings: Any) -> YahooSource:
    return YahooSource(session=session_for(adapter), **settings)


DAILY_CASES = [
    # recording, symbol, start, end, expected session dates (Yahoo's period2 is inclusive:
    # the BTC recording holds 2020-01-03 too, which [start, end) leaves out)
    (AAPL_JAN, "AAPL", "2020-01-01", "2020-01-03", ["2020-01-02"]),
    (BTC_JAN, "BTC-USD", "2020-01-01", "2020-01-03", ["2020-01-01", "2020-01-02"]),
    (AAPL_49, "AAPL", "2020-08-31", "2020-11-07", None),
    # Jakarta (UTC+7): the 2020-01-02 session is stamped 02:00 UTC; its label is its own date
    (WSKT_JAN, "WSKT.JK", "2020-01-01", "2020-01-03", ["2020-01-02"]),
]


@pytest.mark.parametrize(("name", "symbol", "start", "end", "dates"), DAILY_CASES)
def test_daily_bars_equal_the_recorded_quotes(
    name: str, symbol: str, start: str, end: str, dates: list[str] | None
) -> None:
    recording = load(name)
    adapter = RecordedYahoo({symbol: recording})
    frame = source(adapter, timeout=7.5).fetch(symbol, start=start, end=end)

    n = len(frame)
    if dates is not None:
        assert list(frame.index.strftime("%Y-%m-%d")) == dates
    quote = chart_result(recording)["indicators"]["quote"][0]
    for col in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(frame[col].to_numpy(), np.asarray(quote[col][:n], float))
    assert str(frame.index.tz) == "UTC" and frame.index.name == "datetime"
    assert (frame.index == frame.index.normalize()).all()  # 00:00 UTC of the session date
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert all(frame[c].dtype == np.float64 for c in frame.columns)
    assert frame.attrs["symbol"] == symbol and frame.attrs["source"] == "yahoo"
    assert frame.attrs["timeframe"] == "1Day" and frame.attrs["adjustment"] == "split"
    (q,) = adapter.price_requests()
    assert q["interval"] == "1d" and q["includePrePost"] == "False"
    assert all(
        timeout == 7.5 for url, timeout in adapter.seen if "/chart/" in url and "period1" in url
    )


def test_49_daily_bars_span_the_recorded_range() -> None:
    frame = source(RecordedYahoo({"AAPL": load(AAPL_49)})).fetch(
        "AAPL", start="2020-08-31", end="2020-11-07"
    )
    assert len(frame) == 49
    assert frame.index[0] == pd.Timestamp("2020-08-31", tz="UTC")
    assert frame.index[-1] == pd.Timestamp("2020-11-06", tz="UTC")
    assert frame.index.is_monotonic_increasing and frame.index.is_unique


def test_bars_are_cut_to_start_inclusive_end_exclusive() -> None:
    recording = load(AAPL_49)
    src = source(RecordedYahoo({"AAPL": recording}), actions=True)
    frame = src.fetch("AAPL", start="2020-09-15", end="2020-10-01")
    assert frame.index[0] == pd.Timestamp("2020-09-15", tz="UTC")
    assert frame.index[-1] == pd.Timestamp("2020-09-30", tz="UTC") and len(frame) == 12
    assert (frame[["dividends", "stock_splits"]] == 0).all().all()  # both events fall outside
    # a daily bar is labelled 00:00 UTC of its date: a start later that day leaves it out
    later = src.fetch("AAPL", start="2020-09-15 12:00", end="2020-10-01")
    assert later.index[0] == pd.Timestamp("2020-09-16", tz="UTC")


def test_actions_keep_the_recorded_dividend_and_split() -> None:
    adapter = RecordedYahoo({"AAPL": load(AAPL_49)})
    frame = source(adapter, actions=True).fetch("AAPL", start="2020-08-31", end="2020-11-07")

    assert list(frame.columns) == [
        "open",
        "high",
        "low",
        "close",
        "volume",
        "dividends",
        "stock_splits",
    ]
    events = chart_result(load(AAPL_49))["events"]
    (split,) = events["splits"].values()
    (dividend,) = events["dividends"].values()
    splits = frame["stock_splits"][frame["stock_splits"] != 0]
    dividends = frame["dividends"][frame["dividends"] != 0]
    assert splits.to_dict() == {pd.Timestamp("2020-08-31", tz="UTC"): 4.0}
    assert split["numerator"] / split["denominator"] == 4.0
    assert dividends.to_dict() == {pd.Timestamp("2020-11-06", tz="UTC"): dividend["amount"]}
    assert len(frame) == 49


def test_adjusted_and_split_only_prices_are_recorded_in_attrs() -> None:
    recording = load(AAPL_49)
    result = chart_result(recording)
    quote, adjclose = result["indicators"]["quote"][0], result["indicators"]["adjclose"][0]
    window = {"start": "2020-08-31", "end": "2020-11-07"}

    plain = source(RecordedYahoo({"AAPL": recording})).fetch("AAPL", **window)
    adjusted = source(RecordedYahoo({"AAPL": recording}), adjust=True).fetch("AAPL", **window)

    assert plain.attrs["adjustment"] == "split"  # Yahoo's unadjusted prices are split-adjusted
    assert adjusted.attrs["adjustment"] == "adjusted"
    np.testing.assert_array_equal(plain["close"].to_numpy(), np.asarray(quote["close"], float))
    factor = np.asarray(adjclose["adjclose"], float) / np.asarray(quote["close"], float)
    np.testing.assert_allclose(adjusted["close"].to_numpy(), adjclose["adjclose"], rtol=1e-12)
    np.testing.assert_allclose(adjusted["open"].to_numpy(), plain["open"] * factor, rtol=1e-12)
    np.testing.assert_array_equal(adjusted["volume"].to_numpy(), plain["volume"].to_numpy())
    assert (adjusted["close"] < plain["close"]).iloc[:-1].all()  # dividend of 2020-11-06


def test_btc_usd_is_classified_as_crypto_and_aapl_as_stocks() -> None:
    btc = source(RecordedYahoo({"BTC-USD": load(BTC_JAN)})).fetch(
        "BTC-USD", start="2020-01-01", end="2020-01-03"
    )
    aapl = source(RecordedYahoo({"AAPL": load(AAPL_JAN)})).fetch(
        "aapl", start="2020-01-01", end="2020-01-03"
    )
    assert btc.attrs["asset_class"] == "crypto" and btc.attrs["exchange_timezone"] == "UTC"
    assert aapl.attrs["asset_class"] == "stocks" and aapl.attrs["symbol"] == "AAPL"
    assert aapl.attrs["currency"] == "USD"


def test_intraday_request_for_a_weekend_is_an_empty_answer_and_symbol_not_found() -> None:
    # The real 1m recording is of Saturday 2025-02-01: Yahoo answers 200 with no bars, which
    # yfinance would otherwise turn into an empty frame.
    recording = load(AAPL_1M)
    adapter = RecordedYahoo({"AAPL": recording})
    with pytest.raises(SymbolNotFound, match=r"AAPL 1m 2025-02-01 00:00 -> 2025-02-02 00:00"):
        source(adapter).fetch("AAPL", timeframe="1m", start="2025-02-01", end="2025-02-02")
    (q,) = adapter.price_requests()
    recorded = recorded_query(recording)
    assert (q["interval"], q["includePrePost"]) == ("1m", "False")
    assert (q["period1"], q["period2"]) == (recorded["period1"], recorded["period2"])


# A SYNTHETIC hourly answer: no real intraday recording with bars is available. It is the
# recorded AAPL chart meta with seven regular-session 1h bars on 2020-09-01 (13:30..19:30 UTC)
# and hand-made prices, so the resampled values below can be checked by hand.
HOURLY_OPEN = 1598967000  # 2020-09-01 09:30 EDT, the recorded daily bar's timestamp
HOURLY = {
    "open": [132.76, 133.0, 133.8, 134.5, 131.5, 132.0, 133.0],
    "high": [133.5, 134.0, 134.8, 134.6, 132.2, 133.1, 134.3],
    "low": [132.0, 132.5, 133.2, 131.0, 130.53, 131.8, 132.9],
    "close": [133.0, 133.8, 134.5, 131.5, 132.0, 133.0, 134.18],
    "volume": [1000, 2000, 3000, 4000, 5000, 6000, 7000],
}


def hourly_recording() -> dict[str, Any]:
    recording = copy.deepcopy(load(AAPL_49))
    result = chart_result(recording)
    period = {
        "timezone": "EDT",
        "start": HOURLY_OPEN,
        "end": HOURLY_OPEN + 23400,
        "gmtoffset": -14400,
    }
    result["meta"].update(dataGranularity="1h", tradingPeriods=[[period]])
    result["timestamp"] = [HOURLY_OPEN + 3600 * i for i in range(7)]
    result["indicators"] = {"quote": [HOURLY], "adjclose": [{"adjclose": HOURLY["close"]}]}
    result.pop("events")
    recording["response"]["bodyJson"]["chart"]["result"] = [result]
    return recording


def test_hourly_bars_keep_their_start_instant_in_utc() -> None:
    adapter = RecordedYahoo({"AAPL": hourly_recording()})
    frame = source(adapter).fetch("AAPL", timeframe="1h", start="2020-09-01", end="2020-09-02")
    expected = pd.date_range("2020-09-01 13:30", periods=7, freq="1h", tz="UTC")
    assert list(frame.index) == list(expected) and frame.index.name == "datetime"
    np.testing.assert_array_equal(frame["close"].to_numpy(), HOURLY["close"])
    assert frame.attrs["timeframe"] == "1h"


def test_4h_is_fetched_as_1h_and_resampled() -> None:
    adapter = RecordedYahoo({"AAPL": hourly_recording()})
    frame = source(adapter).fetch("AAPL", timeframe="4h", start="2020-09-01", end="2020-09-02")

    assert [q["interval"] for q in adapter.price_requests()] == ["1h"]
    assert frame.attrs["timeframe"] == "4h"
    assert list(frame.index) == [
        pd.Timestamp("2020-09-01 12:00", tz="UTC"),
        pd.Timestamp("2020-09-01 16:00", tz="UTC"),
    ]
    assert frame.to_dict("list") == {
        "open": [132.76, 134.5],
        "high": [134.8, 134.6],
        "low": [132.0, 130.53],
        "close": [134.5, 134.18],
        "volume": [6000.0, 22000.0],
    }
    hourly = source(RecordedYahoo({"AAPL": hourly_recording()})).fetch(
        "AAPL", timeframe="1h", start="2020-09-01", end="2020-09-02"
    )
    pd.testing.assert_frame_equal(frame, resample(hourly, "4h"))


@pytest.mark.parametrize(
    ("fallback_spent", "quote_summary"),
    [
        (False, (404, QUOTE_NOT_FOUND)),
        (False, (401, INVALID_CRUMB)),
        (True, (404, QUOTE_NOT_FOUND)),
    ],
    ids=["quote-summary-404", "quote-summary-401", "fallback-spent"],
)
def test_unknown_symbol_is_symbol_not_found(
    monkeypatch: pytest.MonkeyPatch, fallback_spent: bool, quote_summary: tuple[int, dict[str, Any]]
) -> None:
    # When the chart API has no timezone for a symbol, yfinance asks the quote-summary API
    # instead, but only twice per process (a module counter): both paths must say "not found".
    monkeypatch.setattr(yfinance.base, "_tz_info_fetch_ctr", 2 if fallback_spent else 0)
    adapter = RecordedYahoo({"AAPL": load(AAPL_JAN)}, quote_summary=quote_summary)
    with pytest.raises(SymbolNotFound, match=r"^NOPE 1Day .*finance\.yahoo\.com") as info:
        source(adapter).fetch("NOPE", start="2020-01-01", end="2020-01-03")
    assert not isinstance(info.value, SourceUnavailable)
    assert any("/v8/finance/chart/NOPE" in url for url, _ in adapter.seen)
    asked_quote_summary = any("quoteSummary/NOPE" in url for url, _ in adapter.seen)
    assert asked_quote_summary is not fallback_spent


@pytest.mark.parametrize("error", [requests.ConnectionError, requests.ReadTimeout])
def test_network_failure_is_source_unavailable(error: type[Exception]) -> None:
    adapter = RecordedYahoo({"AAPL": load(AAPL_49)}, down=error)
    with pytest.raises(SourceUnavailable, match=r"^AAPL 1Day .*cannot reach Yahoo"):
        source(adapter).fetch("AAPL", start="2020-08-31", end="2020-11-07")
    assert adapter.seen  # the failure came from the session, not from a shortcut


def test_server_error_page_is_source_unavailable() -> None:
    adapter = RecordedYahoo(chart_status=(503, b"<html><body>Service Unavailable</body></html>"))
    with pytest.raises(SourceUnavailable, match=r"^AAPL 1Day"):
        source(adapter).fetch("AAPL", start="2020-08-31", end="2020-11-07")


def test_fetch_leaves_yfinance_hiding_errors_as_it_was() -> None:
    before = yf.config.debug.hide_exceptions
    with pytest.raises(SymbolNotFound):
        source(RecordedYahoo()).fetch("NOPE", start="2020-01-01", end="2020-01-03")
    assert yf.config.debug.hide_exceptions == before


def test_settings_and_arguments_are_checked() -> None:
    assert isinstance(YahooSource(), Source) and YahooSource.name == "yahoo"
    with pytest.raises(ConfigError, match="timeout"):
        YahooSource(timeout=0)
    with pytest.raises(ConfigError, match="adjust"):
        YahooSource(adjust="yes")  # type: ignore[arg-type]
    src = source(RecordedYahoo())
    with pytest.raises(ConfigError, match="before end"):
        src.fetch("AAPL", start="2020-02-01", end="2020-01-01")
    with pytest.raises(ConfigError, match="unknown timeframe"):
        src.fetch("AAPL", timeframe="2h")
    with pytest.raises(ConfigError, match="Unsupported session type"):
        YahooSource(session=object()).fetch("AAPL", start="2020-01-01", end="2020-01-03")
