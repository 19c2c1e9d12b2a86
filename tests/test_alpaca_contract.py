"""Contract test: every Trading API call the broker makes, against a mock built from Alpaca's
official OpenAPI spec alone (Stoplight Prism), with no code of ours answering.

Prism validates each request against the spec (a malformed one gets 422, missing keys 401).
Two passes:

* static (``prism mock``): answers are the spec's examples. What our client returns must be a
  list of objects, or one object, with the spec's required fields and types (checked here
  against the spec itself, not just ``isinstance(list)``). Where the spec's examples break the
  spec, the client must refuse them with ``BrokerProtocolError`` naming the endpoint: the
  examples of ``GET /v2/orders`` are single Order objects where the schema has an array, and
  ``GET /v2/orders:by_client_order_id`` has no example, so Prism fills its decimals with the
  placeholder ``"string"``. The kill switch and ``btml trade status`` meet exactly that.
* dynamic (``prism mock -d``): answers generated from the schemas (decimals as random words,
  random enum values, timestamps from 1900), so examples alone cannot hide a parsing bug. Each
  call either returns answers that conform to the spec or raises ``BrokerProtocolError``
  naming its endpoint; any other exception is a parsing bug. The seed is fixed (override with
  ``BTML_PRISM_SEED``) so a failure reproduces, and chosen so the generated lists have items.

``make install`` (and so CI) installs Prism from npm into ``.venv/node``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.journal import Journal
from brokers.alpaca.reconcile import reconcile
from brokers.alpaca.rest import OrderRejected, OrderSpec, TradingAPI
from brokers.alpaca.store import KILL_KEY, check_mode, kill_switch
from core.errors import BrokerProtocolError, BtmlError
from workflows.trading import trade_status

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "tests" / "fixtures" / "alpaca" / "trading-api.json"
PRISM = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "prism"
SEED = os.environ.get("BTML_PRISM_SEED", "7")  # a seed whose generated lists have items
SINCE = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMAS: dict[str, Any] = json.loads(SPEC.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _prism(log_dir: Path, *options: str) -> Iterator[str]:
    exe = str(PRISM) if PRISM.exists() else shutil.which("prism")
    assert exe, "Prism is not installed: run `make install` (npm install @stoplight/prism-cli)"
    port = _free_port()
    log = (log_dir / "prism.log").open("w")
    proc = subprocess.Popen(
        [exe, "mock", *options, "-h", "127.0.0.1", "-p", str(port), str(SPEC)],
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


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _prism(tmp_path_factory.mktemp("prism")) as url:
        yield url


@pytest.fixture(scope="module")
def prism_dynamic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _prism(tmp_path_factory.mktemp("prism-d"), "-d", "--seed", SEED) as url:
        yield url


def _config(url: str, tmp_path: Path) -> AlpacaConfig:
    return AlpacaConfig(key_id="PKCONTRACT", secret_key="contract-secret", trading_url=url,
                        journal=tmp_path / "j.sqlite", retries=0)  # fmt: skip


@pytest.fixture
def api(prism: str, tmp_path: Path) -> TradingAPI:
    return TradingAPI(_config(prism, tmp_path))


# -- the spec's own schemas, as the judge of what the client returns ------------------------------


def _violations(schema: dict[str, Any], value: Any, at: str = "$") -> list[str]:
    """What of ``value`` breaks ``schema``: $ref, all/any/oneOf, type, enum, required,
    properties and items (the parts of JSON Schema the Trading API spec uses for answers)."""
    if "$ref" in schema:
        schema = SCHEMAS["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    out = [v for sub in schema.get("allOf", []) for v in _violations(sub, value, at)]
    for key in ("anyOf", "oneOf"):
        if key in schema and all(_violations(s, value, at) for s in schema[key]):
            out.append(f"{at}: matches no branch of {key}")
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    python: dict[str, Any] = {"string": str, "boolean": bool, "object": dict, "array": list,
                              "null": type(None), "integer": int, "number": (int, float)}  # fmt: skip
    if kinds and not any(isinstance(value, python[k]) for k in kinds):
        return [*out, f"{at}: {value!r:.40} is not {kinds}"]
    if "enum" in schema and value is not None and value not in schema["enum"]:
        out.append(f"{at}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        out += [f"{at}: missing {k}" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                out += _violations(sub, value[key], f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += _violations(schema["items"], item, f"{at}[{i}]")
    return out


def _schema(path: str, method: str) -> dict[str, Any]:
    responses = SCHEMAS["paths"][path][method]["responses"]
    answer = next(v for k, v in responses.items() if k.startswith("2"))
    return dict(answer["content"]["application/json"]["schema"])


def _conforms(answer: Any, path: str, method: str) -> None:
    """``answer`` has the spec's shape: every element an object of the right schema, with its
    required fields and the spec's types (a list of key names would not pass)."""
    schema = _schema(path, method)
    assert isinstance(answer, list) == (schema.get("type") == "array"), f"{method} {path}"
    assert _violations(schema, answer) == [], f"{method} {path}"
    items = answer if isinstance(answer, list) else [answer]
    assert all(isinstance(item, dict) for item in items), f"{method} {path}: {answer!r:.80}"


# -- every call the broker makes: what it reads and the spec path of its answer -------------------

BRACKET = OrderSpec(client_order_id="c-bracket", symbol="AAPL", side="buy", qty=2,
                    order_class="bracket", take_profit=200.0, stop_loss=170.0)  # fmt: skip
CALLS: dict[str, tuple[Callable[[TradingAPI], Any], str, str, str]] = {
    # name: (call, spec path, method, the endpoint a BrokerProtocolError names)
    "account": (lambda a: a.account(), "/v2/account", "get", "GET /v2/account"),
    "clock": (lambda a: a.clock(), "/v2/clock", "get", "GET /v2/clock"),
    "positions": (lambda a: a.positions(), "/v2/positions", "get", "GET /v2/positions"),
    "orders open": (lambda a: a.orders("open"), "/v2/orders", "get",
                    "GET /v2/orders (status=open)"),
    "orders closed": (lambda a: a.orders("closed", after=SINCE), "/v2/orders", "get",
                      "GET /v2/orders (status=closed)"),
    "order by client id": (lambda a: a.order_by_client_id("btml-AAPL-0-abcdef0123"),
                           "/v2/orders:by_client_order_id", "get",
                           "GET /v2/orders:by_client_order_id"),
    "fills": (lambda a: a.fills(after=SINCE), "/v2/account/activities/{activity_type}", "get",
              "GET /v2/account/activities/FILL"),
    "submit": (lambda a: a.submit_idempotent(BRACKET)[0], "/v2/orders", "post",
               "POST /v2/orders"),
    "cancel all": (lambda a: a.cancel_all(), "/v2/orders", "delete", "DELETE /v2/orders"),
    "close all": (lambda a: a.close_all_positions(), "/v2/positions", "delete",
                  "DELETE /v2/positions"),
}  # fmt: skip
# what the spec's examples give: None parses; else the field a BrokerProtocolError names
STATIC: dict[str, str | None] = dict.fromkeys(CALLS, None) | {
    "orders open": "(body)",  # the examples are single Order objects, the schema an array
    "orders closed": "(body)",
    "order by client id": "qty",  # no example: Prism fills decimals with "string"
}


@pytest.mark.parametrize("name", list(CALLS))
def test_static_answers_parse_to_the_spec_or_are_refused(api: TradingAPI, name: str) -> None:
    call, path, method, endpoint = CALLS[name]
    field = STATIC[name]
    if field is None:
        answer = call(api)
        _conforms(answer, path, method)
        assert answer, f"{name}: the spec's example is not empty"
        return
    with pytest.raises(BrokerProtocolError) as err:
        call(api)
    assert (err.value.endpoint, err.value.field) == (endpoint, field)


def test_static_account_and_fills_read_as_the_broker_reads_them(api: TradingAPI) -> None:
    account = api.account()
    check_mode(account, api.config)  # the spec's example is a paper account (PA...)
    assert float(account["equity"]) > 0 and isinstance(api.clock()["is_open"], bool)
    fills = api.fills(after=SINCE)
    assert fills[0]["activity_type"] == "FILL" and float(fills[0]["qty"]) > 0
    assert all(float(p["qty"]) and p["side"] in ("long", "short") for p in api.positions())


def test_status_and_kill_on_the_spec_mock_refuse_orders_as_one_object(
    prism: str, tmp_path: Path
) -> None:
    """The issue, against the spec alone: status stops with the protocol error; kill journals
    its intent, cancels, then reports the malformed read instead of dying."""
    config = _config(prism, tmp_path)
    with pytest.raises(BrokerProtocolError, match=r"GET /v2/orders \(status=open\) answered one"):
        trade_status(config)
    report = kill_switch(config, flatten=True)
    assert report.canceled == 1 and report.closed == 1  # the examples' one item each
    assert isinstance(report.error, BrokerProtocolError)
    assert report.error.endpoint == "GET /v2/orders (status=all)" and report.positions is None
    with Journal(config.journal) as journal:
        entry = json.loads(journal.meta(KILL_KEY) or "{}")
    assert entry["status"] == "failed" and entry["done"] == report.done


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
        BRACKET,
        OrderSpec(client_order_id="c-crypto", symbol="BTC/USD", side="buy", qty=0.01,
                  time_in_force="gtc"),
        OrderSpec(client_order_id="c-notional", symbol="AAPL", side="buy", notional=250.0),
    ],
    ids=lambda s: s.client_order_id,
)  # fmt: skip
def test_order_requests_validate_against_the_spec(api: TradingAPI, spec: OrderSpec) -> None:
    body, how = api.submit_idempotent(spec)  # a request the spec refuses would be a 422
    assert how == "sent"
    _conforms(body, "/v2/orders", "post")


def test_cancel_of_one_order_matches_the_spec(api: TradingAPI) -> None:
    assert api.cancel("61e69015-8549-4bfd-b9c3-01e75843f47d") is True


def test_the_mock_does_refuse_what_breaks_the_spec(prism: str, tmp_path: Path) -> None:
    """The contract test can fail: a request outside the spec is refused by the mock."""
    api = TradingAPI(_config(prism, tmp_path))
    bad = requests.post(f"{prism}/v2/orders", json={"symbol": "AAPL", "side": "sideways",
                        "type": "market", "time_in_force": "day", "qty": "1"},
                        headers={"APCA-API-KEY-ID": "PK", "APCA-API-SECRET-KEY": "S"},
                        timeout=5)  # fmt: skip
    assert bad.status_code == 422
    assert requests.get(f"{prism}/v2/account", timeout=5).status_code == 401
    with pytest.raises(OrderRejected):
        api._read("bad", lambda: api.client.get("/orders", {"status": "nonsense"}))


def test_the_spec_check_can_fail() -> None:
    """A list of key names, or an order without its required fields, breaks the schema."""
    assert _violations(_schema("/v2/orders", "get"), ["id", "client_order_id"])
    assert _violations(_schema("/v2/orders", "post"), {"id": "x", "notional": None})
    assert _violations(_schema("/v2/positions", "get"), [{"symbol": "AAPL", "qty": 5}])


# -- dynamic: answers generated from the schemas ---------------------------------------------------


@pytest.mark.parametrize("name", list(CALLS))
def test_dynamic_answers_parse_to_the_spec_or_name_the_endpoint(
    prism_dynamic: str, tmp_path: Path, name: str
) -> None:
    call, path, method, endpoint = CALLS[name]
    api = TradingAPI(_config(prism_dynamic, tmp_path))
    try:
        answer = call(api)
    except BrokerProtocolError as err:  # refused: must say which endpoint and field
        assert err.endpoint == endpoint and err.field, f"seed {SEED}: {err}"
        assert f"Alpaca {endpoint} " in str(err)
        return
    _conforms(answer, path, method)  # accepted: it must be what the spec describes
    assert answer, f"seed {SEED}: {name} generated nothing to check; choose another seed"


DECIMALS = ("qty", "notional", "filled_qty", "filled_avg_price", "limit_price", "stop_price",
            "avg_entry_price", "cash", "equity", "price")  # fmt: skip


def test_dynamic_decimals_that_are_words_are_refused(prism_dynamic: str, tmp_path: Path) -> None:
    """The schemas type Alpaca's decimals as plain strings, so the generator writes words: an
    answer the broker accepts has numbers wherever it reads one; the others are refused."""
    api = TradingAPI(_config(prism_dynamic, tmp_path))
    refused: dict[str, str] = {}
    for name in ("account", "positions", "orders open", "order by client id", "submit", "fills"):
        try:
            answer = CALLS[name][0](api)
        except BrokerProtocolError as err:
            refused[name] = err.field
            continue
        for item in answer if isinstance(answer, list) else [answer]:
            for key in DECIMALS:
                if item.get(key) is not None:
                    float(item[key])  # a word here would be a parsing bug
    assert refused, f"seed {SEED}: every generated answer had numbers for decimals"
    assert set(refused.values()) <= set(DECIMALS) | {"(body)", "id", "status", "side", "symbol",
                                                     "client_order_id", "created_at",
                                                     "updated_at"}, refused  # fmt: skip


def test_dynamic_flows_end_in_a_broker_error_never_a_crash(
    prism_dynamic: str, tmp_path: Path
) -> None:
    config = _config(prism_dynamic, tmp_path)
    for flow in (lambda: trade_status(config), lambda: kill_switch(config, flatten=True)):
        with pytest.raises(BtmlError):  # the account's words for numbers: refused, or the mode
            flow()
    with Journal(config.journal) as journal:
        before = (journal.orders(), journal.fills())
        with pytest.raises(BrokerProtocolError):
            reconcile(TradingAPI(config), journal)
        assert (journal.orders(), journal.fills()) == before
        assert journal.meta(KILL_KEY) is None  # kill was refused before its intent
