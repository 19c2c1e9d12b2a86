"""Contract test: every Trading API call the broker makes, against a mock built from Alpaca's
official OpenAPI spec alone (Stoplight Prism), with no code of ours answering.

Prism validates each request against the spec (a malformed one gets 422, missing keys 401) and
answers with the spec's examples, which our code must parse. ``make install`` (and so CI)
installs Prism from npm into ``.venv/node``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.rest import OrderRejected, OrderSpec, TradingAPI
from brokers.alpaca.store import check_mode

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "tests" / "fixtures" / "alpaca" / "trading-api.json"
PRISM = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "prism"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = str(PRISM) if PRISM.exists() else shutil.which("prism")
    assert exe, "Prism is not installed: run `make install` (npm install @stoplight/prism-cli)"
    port = _free_port()
    log = (tmp_path_factory.mktemp("prism") / "prism.log").open("w")
    proc = subprocess.Popen(
        [exe, "mock", "-h", "127.0.0.1", "-p", str(port), str(SPEC)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url + "/v2/clock", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, "Prism exited at start"
                assert time.monotonic() < deadline, "Prism did not listen within 60 s"
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def api(prism: str, tmp_path: Path) -> TradingAPI:
    return TradingAPI(AlpacaConfig(key_id="PKCONTRACT", secret_key="contract-secret",
                                   trading_url=prism, journal=tmp_path / "j.sqlite",
                                   retries=0))  # fmt: skip


def test_reads_match_the_spec(api: TradingAPI) -> None:
    account = api.account()
    check_mode(account, api.config)  # the spec's example is a paper account (PA...)
    assert float(account["equity"]) > 0
    assert "is_open" in api.clock()
    assert isinstance(api.positions(), list)
    assert isinstance(api.orders("open"), list)
    assert isinstance(api.orders("closed", after=datetime(2026, 1, 1, tzinfo=UTC)), list)
    fills = api.fills(after=datetime(2026, 1, 1, tzinfo=UTC))
    assert fills and fills[0]["activity_type"] == "FILL"
    found = api.order_by_client_id("btml-AAPL-20260302T150000Z-0-abcdef0123")
    assert found is not None and "client_order_id" in found


@pytest.mark.parametrize(
    "spec",
    [
        OrderSpec(client_order_id="c-market", symbol="AAPL", side="buy", qty=1.5),
        OrderSpec(client_order_id="c-limit", symbol="AAPL", side="sell", qty=2,
                  order_type="limit", limit_price=190.5),
        OrderSpec(client_order_id="c-stop", symbol="AAPL", side="sell", qty=2,
                  order_type="stop", stop_price=180.0),
        OrderSpec(client_order_id="c-stoplimit", symbol="AAPL", side="sell", qty=2,
                  order_type="stop_limit", stop_price=180.0, limit_price=179.5),
        OrderSpec(client_order_id="c-bracket", symbol="AAPL", side="buy", qty=2,
                  order_class="bracket", take_profit=200.0, stop_loss=170.0),
        OrderSpec(client_order_id="c-crypto", symbol="BTC/USD", side="buy", qty=0.01,
                  time_in_force="gtc"),
        OrderSpec(client_order_id="c-notional", symbol="AAPL", side="buy", notional=250.0),
    ],
    ids=lambda s: s.client_order_id,
)  # fmt: skip
def test_order_requests_validate_against_the_spec(api: TradingAPI, spec: OrderSpec) -> None:
    body, how = api.submit_idempotent(spec)  # a request the spec refuses would be a 422
    assert how == "sent" and body["id"] and "status" in body


def test_cancels_and_closes_match_the_spec(api: TradingAPI) -> None:
    assert api.cancel("61e69015-8549-4bfd-b9c3-01e75843f47d") is True
    assert isinstance(api.cancel_all(), list)
    assert isinstance(api.close_all_positions(), list)


def test_the_mock_does_refuse_what_breaks_the_spec(prism: str, tmp_path: Path) -> None:
    """The contract test can fail: a request outside the spec is refused by the mock."""
    api = TradingAPI(AlpacaConfig(key_id="PK", secret_key="S", trading_url=prism,
                                  journal=tmp_path / "j.sqlite", retries=0))  # fmt: skip
    bad = requests.post(f"{prism}/v2/orders", json={"symbol": "AAPL", "side": "sideways",
                        "type": "market", "time_in_force": "day", "qty": "1"},
                        headers={"APCA-API-KEY-ID": "PK", "APCA-API-SECRET-KEY": "S"},
                        timeout=5)  # fmt: skip
    assert bad.status_code == 422
    assert requests.get(f"{prism}/v2/account", timeout=5).status_code == 401
    with pytest.raises(OrderRejected):
        api._read("bad", lambda: api.client.get("/orders", {"status": "nonsense"}))
