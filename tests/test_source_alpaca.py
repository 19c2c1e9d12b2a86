"""AlpacaSource against the real alpaca-py clients, served recorded bodies on a loopback server."""

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
from feeds.sources.alpaca import AlpacaSource
from feeds.sources.base import Source

FIXTURES = Path(__file__).parent / "fixtures" / "alpaca"
BARS = "/v2/stocks/bars"
CRYPTO_BARS = "/v1beta3/crypto/us/bars"
KEY_ID, SECRET = "PKLOOPBACKKEY0001", "s3cr3t-loopback-value-0001"


def _bodies(name: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / name).read_text())
    return {r["test"]: r["body"] for r in data["responses"]}


STOCK = _bodies("data__test_historical_stock_data.json")
CRYPTO = _bodies("data__test_historical_crypto_data.json")
PAGE1 = STOCK["test_get_bars"]  # 2 AAPL bars and a next_page_token
PAGE2_ROWS: list[dict[str, Any]] = STOCK["test_multisymbol_get_bars"]["bars"]["AAPL"]
PAGE2: dict[str, Any] = {"bars": {"AAPL": PAGE2_ROWS}, "next_page_token": None}
AAPL_ROWS = PAGE1["bars"]["AAPL"] + PAGE2_ROWS
ONE_PAGE = {"bars": PAGE1["bars"], "next_page_token": None}


def _paged(request: Request) -> dict[str, Any] | Reply:
    """Page 1 without a token; page 2 only for the token page 1 handed out."""
    token = request.param("page_token")
    if token is None:
        return PAGE1
    if token == PAGE1["next_page_token"]:
        return PAGE2
    return Reply(400, {"code": 40010001, "message": f"bad page_token {token}"})


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv
        assert not srv.errors, srv.errors


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)


def _source(server: LoopbackServer, **settings: Any) -> AlpacaSource:
    settings.setdefault("retries", 0)
    return AlpacaSource(KEY_ID, SECRET, url=server.base_url, **settings)


def _when(request: Request, name: str) -> pd.Timestamp:
    value = request.param(name)
    assert value is not None, f"no {name} in {request.query}"
    return pd.Timestamp(value)


def _expected(rows: list[dict[str, Any]]) -> pd.DataFrame:
    idx = pd.DatetimeIndex(pd.to_datetime([r["t"] for r in rows], utc=True), name="datetime")
    cols = {"open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}
    data = {k: np.array([r[v] for r in rows], dtype=np.float64) for k, v in cols.items()}
    return pd.DataFrame(data, index=idx.as_unit("ns"))


def test_stock_bars_follow_next_page_token_and_equal_the_recording(server: LoopbackServer) -> None:
    server.route("GET", BARS, _paged)
    frame = _source(server).fetch("AAPL", start=pd.Timestamp("2022-02-01"))

    pd.testing.assert_frame_equal(frame, _expected(AAPL_ROWS), check_freq=False)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert str(frame.index.tz) == "UTC" and frame.index.name == "datetime"
    assert frame.index.is_monotonic_increasing and frame.index.is_unique
    assert list(frame.dtypes) == [np.float64] * 5
    assert frame.attrs == {
        "symbol": "AAPL",
        "source": "alpaca",
        "timeframe": "1Day",
        "adjustment": "raw",
        "asset_class": "stocks",
        "feed": "iex",
    }
    first, second = server.requests_to("GET", BARS)
    assert first.param("page_token") is None
    assert second.param("page_token") == PAGE1["next_page_token"]
    for req in (first, second):
        assert req.param("symbols") == "AAPL" and req.param("timeframe") == "1Day"
        assert _when(req, "start") == pd.Timestamp("2022-02-01", tz="UTC")
        assert req.headers["APCA-API-KEY-ID"] == KEY_ID
        assert req.headers["APCA-API-SECRET-KEY"] == SECRET


@pytest.mark.parametrize("feed", ["iex", "sip"])
@pytest.mark.parametrize("adjustment", ["raw", "split", "dividend", "all"])
def test_feed_and_adjustment_reach_the_request_and_the_attrs(
    server: LoopbackServer, feed: str, adjustment: str
) -> None:
    server.route("GET", BARS, ONE_PAGE)
    frame = _source(server, feed=feed, adjustment=adjustment).fetch("aapl")
    (req,) = server.requests
    assert (req.param("feed"), req.param("adjustment")) == (feed, adjustment)
    assert (frame.attrs["feed"], frame.attrs["adjustment"]) == (feed, adjustment)


@pytest.mark.parametrize(
    ("ours", "alpacas"),
    [
        ("1m", "1Min"),
        ("5m", "5Min"),
        ("15m", "15Min"),
        ("1h", "1Hour"),
        ("4h", "4Hour"),
        ("1d", "1Day"),
    ],
)
def test_timeframes_map_to_alpaca(server: LoopbackServer, ours: str, alpacas: str) -> None:
    server.route("GET", BARS, ONE_PAGE)
    frame = _source(server).fetch("AAPL", timeframe=ours)
    assert server.requests[0].param("timeframe") == alpacas
    assert frame.attrs["timeframe"] == {"1d": "1Day"}.get(ours, ours)


def test_range_is_start_inclusive_end_exclusive_and_start_defaults_to_2016(
    server: LoopbackServer,
) -> None:
    server.route("GET", BARS, ONE_PAGE)  # the server ignores the range: the source must not
    source = _source(server)
    frame = source.fetch("AAPL", start="2022-02-01 05:00", end="2022-02-02 05:00")  # type: ignore[arg-type]
    assert list(frame.index) == [pd.Timestamp("2022-02-01 05:00", tz="UTC")]
    assert _when(server.requests[0], "end") == pd.Timestamp("2022-02-02 05:00", tz="UTC")
    source.fetch("AAPL")
    assert _when(server.requests[1], "start") == pd.Timestamp("2016-01-01", tz="UTC")
    assert server.requests[1].param("end") is None


def test_crypto_bars_need_no_keys_and_equal_the_recording(server: LoopbackServer) -> None:
    body = CRYPTO["test_get_crypto_bars"]  # BTC/USD and ETH/USD
    server.route("GET", CRYPTO_BARS, body)
    source = AlpacaSource(url=server.base_url, retries=0)
    frame = source.fetch("btc-usd", timeframe="4h")

    pd.testing.assert_frame_equal(frame, _expected(body["bars"]["BTC/USD"]), check_freq=False)
    assert frame.attrs["symbol"] == "BTC/USD" and frame.attrs["asset_class"] == "crypto"
    assert frame.attrs["adjustment"] == "raw" and frame.attrs["timeframe"] == "4h"
    (req,) = server.requests
    assert req.param("symbols") == "BTC/USD" and req.param("timeframe") == "4Hour"
    assert "APCA-API-KEY-ID" not in req.headers and req.param("feed") is None


def test_crypto_sends_keys_when_given(server: LoopbackServer) -> None:
    server.route("GET", CRYPTO_BARS, CRYPTO["test_get_crypto_bars"])
    _source(server).fetch("ETH/USD")
    assert server.requests[0].headers["APCA-API-KEY-ID"] == KEY_ID


def test_keys_come_from_the_environment(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    server.route("GET", BARS, ONE_PAGE)
    AlpacaSource(url=server.base_url).fetch("AAPL")
    assert server.requests[0].headers["APCA-API-SECRET-KEY"] == SECRET


def test_stock_bars_without_keys_fail_before_any_request(server: LoopbackServer) -> None:
    with pytest.raises(ConfigError, match="APCA_API_KEY_ID"):
        AlpacaSource(url=server.base_url).fetch("AAPL")
    assert server.requests == []


@pytest.mark.parametrize(
    "body",
    [
        STOCK["test_get_bars_single_empty_response"],  # recorded: {"bars": {}}
        {"bars": {"TSLA": PAGE1["bars"]["AAPL"]}, "next_page_token": None},  # another symbol only
    ],
)
def test_empty_answer_is_symbol_not_found(server: LoopbackServer, body: dict[str, Any]) -> None:
    server.route("GET", BARS, body)
    with pytest.raises(SymbolNotFound, match="AAPL"):
        _source(server).fetch("AAPL")


def test_bars_outside_the_range_are_symbol_not_found(server: LoopbackServer) -> None:
    server.route("GET", BARS, ONE_PAGE)
    with pytest.raises(SymbolNotFound):
        _source(server).fetch("AAPL", start=pd.Timestamp("2023-01-01", tz="UTC"))


def test_invalid_symbol_422_is_symbol_not_found(server: LoopbackServer) -> None:
    server.route("GET", BARS, Reply(422, {"code": 42210000, "message": "invalid symbol: AAPL$"}))
    with pytest.raises(SymbolNotFound, match=r"invalid symbol: AAPL\$"):
        _source(server).fetch("AAPL$")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_keys_say_to_check_them(server: LoopbackServer, status: int) -> None:
    server.route("GET", BARS, Reply(status, {"message": "forbidden."}))
    with pytest.raises(ConfigError, match="APCA_API_KEY_ID") as info:
        _source(server).fetch("AAPL")
    assert f"HTTP {status}" in str(info.value)


def test_other_4xx_is_a_config_error(server: LoopbackServer) -> None:
    server.route("GET", BARS, Reply(400, {"code": 40010001, "message": "invalid start"}))
    with pytest.raises(ConfigError, match="invalid start"):
        _source(server).fetch("AAPL")


@pytest.mark.parametrize(
    "fault", [{"status": 500}, {"status": 503}, {"drop": True}, {"status": 429}, {"status": 504}]
)
def test_server_faults_are_source_unavailable(
    server: LoopbackServer, fault: dict[str, Any]
) -> None:
    server.route("GET", BARS, ONE_PAGE)
    server.fail("GET", BARS, on=1, **fault)
    with pytest.raises(SourceUnavailable):
        _source(server, retries=0).fetch("AAPL")
    assert server.hits("GET", BARS) == 1


def test_fault_on_the_second_page_is_source_unavailable(server: LoopbackServer) -> None:
    server.route("GET", BARS, _paged)
    server.fail("GET", BARS, on=2, drop=True)
    with pytest.raises(SourceUnavailable, match="no answer"):
        _source(server).fetch("AAPL")


@pytest.mark.parametrize("status", [429, 504])
def test_rate_limit_is_retried_by_alpaca_py(server: LoopbackServer, status: int) -> None:
    server.route("GET", BARS, ONE_PAGE)
    server.fail("GET", BARS, on=[1, 2], status=status)
    frame = _source(server, retries=2, retry_wait=0).fetch("AAPL")
    assert len(frame) == 2 and server.hits("GET", BARS) == 3


def test_a_slow_server_times_out(server: LoopbackServer) -> None:
    server.route("GET", BARS, ONE_PAGE)
    server.fail("GET", BARS, on=1, delay=1.0)
    with pytest.raises(SourceUnavailable, match="(?i)timed out"):
        _source(server, timeout=0.2).fetch("AAPL")


def test_keys_never_appear_in_errors_logs_or_repr(
    server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    echo = f"forbidden for key {KEY_ID} / {SECRET}"  # a server that echoes the request
    server.route("GET", BARS, _paged)
    server.route("GET", CRYPTO_BARS, Reply(403, {"message": echo}))
    source = _source(server)
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        source.fetch("AAPL")
        with pytest.raises(ConfigError) as info:
            source.fetch("BTC/USD")
        errors.append(str(info.value))
        server.fail("GET", BARS, on=3, drop=True)
        with pytest.raises(SourceUnavailable) as unavailable:
            source.fetch("AAPL")
        errors.append(str(unavailable.value))
    assert "***" in errors[0]
    seen = [caplog.text, repr(source), *errors, repr(source.settings)]
    for text in seen:
        assert KEY_ID not in text and SECRET not in text
    assert "keys=set" in repr(source)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"feed": "nasdaq"}, "feed='nasdaq' is unknown: use one of iex, sip"),
        ({"adjustment": "dividends"}, "adjustment='dividends' is unknown"),
        ({"url": "data.example.com"}, "must start with http"),
        ({"timeout": 0}, "timeout=0 must be > 0"),
        ({"retries": -1}, "must be >= 0"),
        ({"feeds": "sip"}, "settings are feed, adjustment, url"),
    ],
)
def test_settings_are_checked_at_construction(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AlpacaSource(KEY_ID, SECRET, **settings)


def test_is_a_source() -> None:
    assert isinstance(AlpacaSource(), Source)
