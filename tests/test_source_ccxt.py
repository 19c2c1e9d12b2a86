"""CcxtSource against the real ccxt binance client, served recorded klines on a loopback server."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from brokers.alpaca.sim.loopback import LoopbackServer, Reply, Request
from core.errors import ConfigError, SourceUnavailable, SymbolNotFound
from feeds.sources.base import Source
from feeds.sources.ccxt_source import CcxtSource

RECORDING = Path(__file__).parent / "fixtures" / "binance" / "klines_btcusdt_1d_testnet.json"
ROWS: list[list[Any]] = json.loads(RECORDING.read_text())["client"][0]["return"]
DAY_MS = 86_400_000
INFO, KLINES = "/api/v3/exchangeInfo", "/api/v3/klines"
KEY, SECRET = "binance-loopback-key-0001", "binance-loopback-secret-0001"

# Binance's GET /api/v3/exchangeInfo, cut down to BTCUSDT: the fields and example values of the
# response schema in ../shared/specs/binance/spot_api.yaml, with BTC/USDT's assets and filters.
EXCHANGE_INFO: dict[str, Any] = {
    "timezone": "UTC",
    "serverTime": 1592882214236,
    "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 1200}
    ],
    "exchangeFilters": [],
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "baseAsset": "BTC",
            "baseAssetPrecision": 8,
            "quoteAsset": "USDT",
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": False,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": True,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": "0.01000000",
                    "maxPrice": "1000000.00000000",
                    "tickSize": "0.01000000",
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": "0.00001000",
                    "maxQty": "9000.00000000",
                    "stepSize": "0.00001000",
                },
            ],
            "permissions": ["SPOT"],
            "permissionSets": [["SPOT", "MARGIN"]],
            "defaultSelfTradePreventionMode": "NONE",
            "allowedSelfTradePreventionModes": ["NONE"],
        }
    ],
}


def klines_from(rows: list[list[Any]], overlap: int = 0) -> Any:
    """A /klines handler: rows with open time >= startTime (minus ``overlap`` days), ``limit`` of them."""

    def answer(request: Request) -> list[list[Any]] | Reply:
        if request.param("symbol") != "BTCUSDT":
            return Reply(400, {"code": -1121, "msg": "Invalid symbol."})
        since = int(request.param("startTime") or 0) - overlap * DAY_MS
        limit = int(request.param("limit") or 500)
        return [r for r in rows if r[0] >= since][:limit]

    return answer


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        srv.route("GET", INFO, EXCHANGE_INFO)
        srv.route("GET", KLINES, klines_from(ROWS))
        yield srv
        assert not srv.errors, srv.errors


def _source(server: LoopbackServer, **settings: Any) -> CcxtSource:
    settings.setdefault("retries", 0)
    settings.setdefault("page_limit", 5)
    settings.setdefault("drop_partial", False)  # the recorded bars would not depend on the clock
    return CcxtSource(api_url=server.base_url, **settings)


def _expected(rows: list[list[Any]]) -> pd.DataFrame:
    idx = pd.DatetimeIndex(pd.to_datetime([r[0] for r in rows], unit="ms", utc=True))
    data = np.array([[float(x) for x in r[1:6]] for r in rows], dtype=np.float64)
    cols = ["open", "high", "low", "close", "volume"]
    return pd.DataFrame(data, index=idx.rename("datetime").as_unit("ns"), columns=cols)


def _start_times(server: LoopbackServer) -> list[int]:
    return [int(r.param("startTime") or -1) for r in server.requests_to("GET", KLINES)]


def test_pages_join_into_the_recording(server: LoopbackServer) -> None:
    frame = _source(server).fetch("BTC/USDT", start=pd.Timestamp(ROWS[0][0], unit="ms"))

    pd.testing.assert_frame_equal(frame, _expected(ROWS), check_freq=False)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert str(frame.index.tz) == "UTC" and frame.index.name == "datetime"
    assert frame.index.is_unique and frame.index.is_monotonic_increasing
    assert list(frame.dtypes) == [np.float64] * 5
    assert frame.attrs == {
        "symbol": "BTC/USDT",
        "source": "ccxt",
        "timeframe": "1Day",
        "adjustment": "raw",
        "asset_class": "crypto",
        "exchange": "binance",
    }
    # 13 rows, 5 a page: 3 pages, then an empty one ends the loop; since = newest + 1 ms
    assert _start_times(server) == [ROWS[0][0], ROWS[4][0] + 1, ROWS[9][0] + 1, ROWS[12][0] + 1]
    klines = server.requests_to("GET", KLINES)
    assert {(r.param("symbol"), r.param("interval"), r.param("limit")) for r in klines} == {
        ("BTCUSDT", "1d", "5")
    }
    assert {r.path for r in server.requests} == {INFO, KLINES}  # spot only: no fapi/dapi/sapi
    assert server.hits("GET", INFO) == 1


def test_overlapping_pages_are_deduplicated(server: LoopbackServer) -> None:
    server.route("GET", KLINES, klines_from(ROWS, overlap=1))  # each page repeats a bar
    frame = _source(server).fetch("BTC-USDT", start=pd.Timestamp(ROWS[0][0], unit="ms"))
    pd.testing.assert_frame_equal(frame, _expected(ROWS), check_freq=False)


def test_start_defaults_to_2010_and_the_rate_limiter_spaces_requests(
    server: LoopbackServer,
) -> None:
    frame = _source(server).fetch("BTC/USDT")
    assert len(frame) == len(ROWS)
    assert _start_times(server)[0] == 1_262_304_000_000  # 2010-01-01
    arrivals = [r.received_at for r in server.requests_to("GET", KLINES)]
    gaps = np.diff(arrivals)
    assert len(gaps) == 3 and gaps.min() >= 0.04  # binance's rateLimit: 50 ms per request


def test_end_is_exclusive_and_stops_the_paging(server: LoopbackServer) -> None:
    start, end = (pd.Timestamp(ROWS[i][0], unit="ms", tz="UTC") for i in (2, 7))
    frame = _source(server).fetch("BTC/USDT", start=start, end=end)
    pd.testing.assert_frame_equal(frame, _expected(ROWS[2:7]), check_freq=False)
    assert _start_times(server) == [ROWS[2][0]]  # the page reached end: no second request


@pytest.mark.parametrize(
    ("ours", "ccxts"), [("1m", "1m"), ("5m", "5m"), ("15m", "15m"), ("1h", "1h"), ("4h", "4h")]
)
def test_timeframes_map_to_ccxt(server: LoopbackServer, ours: str, ccxts: str) -> None:
    frame = _source(server, page_limit=20).fetch("BTC/USDT", timeframe=ours)
    assert {r.param("interval") for r in server.requests_to("GET", KLINES)} == {ccxts}
    assert frame.attrs["timeframe"] == ours


def test_the_bar_still_forming_is_dropped_by_default(server: LoopbackServer) -> None:
    today = int(pd.Timestamp.now(tz="UTC").floor("D").value // 1_000_000)
    rows = [[today - DAY_MS, *ROWS[0][1:]], [today, *ROWS[1][1:]]]
    server.route("GET", KLINES, klines_from(rows))
    start = pd.Timestamp(today - DAY_MS, unit="ms")
    frame = _source(server, drop_partial=True).fetch("BTC/USDT", start=start)
    pd.testing.assert_frame_equal(frame, _expected(rows[:1]), check_freq=False)
    kept = _source(server, drop_partial=False).fetch("BTC/USDT", start=start)
    assert len(kept) == 2


def test_unknown_symbol_is_symbol_not_found_without_asking_for_bars(
    server: LoopbackServer,
) -> None:
    with pytest.raises(SymbolNotFound, match="ETH/USDT"):
        _source(server).fetch("ETH/USDT")
    assert server.hits("GET", KLINES) == 0


def test_exchange_invalid_symbol_answer_is_symbol_not_found(server: LoopbackServer) -> None:
    server.route("GET", KLINES, Reply(400, {"code": -1121, "msg": "Invalid symbol."}))
    with pytest.raises(SymbolNotFound, match="Invalid symbol"):
        _source(server).fetch("BTC/USDT")


def test_no_bars_is_symbol_not_found(server: LoopbackServer) -> None:
    server.route("GET", KLINES, [])
    with pytest.raises(SymbolNotFound, match="no 1d bars for BTC/USDT"):
        _source(server).fetch("BTC/USDT")


@pytest.mark.parametrize(
    ("route", "fault"),
    [
        (KLINES, {"status": 500}),
        (KLINES, {"status": 503}),
        (KLINES, {"status": 429}),
        (KLINES, {"status": 418}),
        (KLINES, {"drop": True}),
        (INFO, {"status": 502}),
        (INFO, {"drop": True}),
    ],
)
def test_server_faults_are_source_unavailable(
    server: LoopbackServer, route: str, fault: dict[str, Any]
) -> None:
    server.fail("GET", route, on=1, **fault)
    with pytest.raises(SourceUnavailable, match="retry later"):
        _source(server).fetch("BTC/USDT")
    assert server.hits("GET", route) == 1


def test_fault_on_a_later_page_is_source_unavailable(server: LoopbackServer) -> None:
    server.fail("GET", KLINES, on=2, status=500)
    with pytest.raises(SourceUnavailable):
        _source(server).fetch("BTC/USDT")


def test_a_slow_server_times_out(server: LoopbackServer) -> None:
    server.fail("GET", KLINES, on=1, delay=1.0)
    with pytest.raises(SourceUnavailable, match="RequestTimeout"):
        _source(server, timeout=0.2).fetch("BTC/USDT")


@pytest.mark.parametrize("fault", [{"status": 429}, {"status": 500}, {"drop": True}])
def test_failures_are_retried_when_asked(server: LoopbackServer, fault: dict[str, Any]) -> None:
    server.fail("GET", KLINES, on=1, **fault)
    frame = _source(server, retries=1, retry_wait=0, page_limit=20).fetch("BTC/USDT")
    assert len(frame) == len(ROWS)
    assert server.hits("GET", KLINES) == 3  # the failure, the page, the empty page


def test_keys_never_appear_in_errors_logs_or_repr(
    server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    echo = {"code": -2015, "msg": f"Invalid API-key {KEY}, IP, or permissions ({SECRET})."}
    source = _source(server, api_key=KEY, secret=SECRET)
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        assert len(source.fetch("BTC/USDT")) == len(ROWS)
        server.route("GET", KLINES, Reply(401, echo))
        with pytest.raises(ConfigError, match="check api_key= and secret=") as info:
            source.fetch("BTC/USDT")
        texts.append(str(info.value))
        server.fail("GET", KLINES, on=server.hits("GET", KLINES) + 1, drop=True)
        with pytest.raises(SourceUnavailable) as dropped:
            source.fetch("BTC/USDT")
        texts.append(str(dropped.value))
    assert "***" in texts[0]
    for text in [caplog.text, repr(source), repr(source.settings), *texts]:
        assert KEY not in text and SECRET not in text
    assert "keys=set" in repr(source)


def test_keys_in_ccxts_own_request_log_are_redacted(
    server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    # margin pairs are a signed request: ccxt sends the key as a header and logs the headers
    server.route("GET", "/sapi/v1/margin/allPairs", [])
    server.route("GET", "/sapi/v1/margin/isolated/allPairs", [])
    source = _source(server, api_key=KEY, secret=SECRET, options={"fetchMargins": True})
    with caplog.at_level(logging.DEBUG):
        source.fetch("BTC/USDT")
    signed = server.requests_to("GET", "/sapi/v1/margin/allPairs")
    assert signed and signed[0].headers["X-MBX-APIKEY"] == KEY  # the key was really sent
    assert "X-MBX-APIKEY': '***'" in caplog.text
    assert KEY not in caplog.text and SECRET not in caplog.text


def test_unknown_exchange_lists_close_matches() -> None:
    with pytest.raises(ConfigError, match="did you mean 'binance'"):
        CcxtSource("binanse")


def test_exchange_without_ohlcv_is_refused() -> None:
    with pytest.raises(ConfigError, match="no OHLCV history"):
        CcxtSource("bitflyer")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"page_limit": 0}, "page_limit=0"),
        ({"timeout": -1}, "timeout=-1 must be > 0"),
        ({"retry_wait": -1}, "must be >= 0"),
        ({"api_url": "127.0.0.1:9"}, "must start with http"),
        ({"pagelimit": 5}, "settings are exchange, page_limit"),
        ({"api_key": KEY}, "pass both api_key= and secret="),
    ],
)
def test_settings_are_checked_at_construction(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CcxtSource(**settings)


def test_is_a_source() -> None:
    assert isinstance(CcxtSource(), Source)
