"""``btml trade kill`` and ``btml trade status`` against the Alpaca fake: the mode refusals, and
broker answers outside the Trading API's schema (one clear line, exit 1, nothing stored)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.journal import Journal, OrderIntent
from brokers.alpaca.rest import OrderSpec, TradingAPI
from brokers.alpaca.sim.trading import KEY_ID, SECRET, AlpacaFake, first_only, set_field
from brokers.alpaca.store import KILL_KEY
from btml.cli import main

pytestmark = pytest.mark.timeout(60)
ENV = {"APCA_API_KEY_ID": KEY_ID, "APCA_API_SECRET_KEY": SECRET}


@pytest.fixture
def fake() -> Iterator[AlpacaFake]:
    with AlpacaFake() as server:
        server.set_price("AAPL", 100.0)
        yield server
        assert not server.errors, server.errors


def _run(fake: AlpacaFake, tmp_path: Path, *args: str, env: dict[str, str] = ENV) -> object:
    base = ["--store", str(tmp_path / "store"), "trade", "--trading-url", fake.url,
            "--journal", str(tmp_path / "journal.sqlite")]  # fmt: skip
    return CliRunner().invoke(main, [*base, *args], env=env)


def _journaled_order(fake: AlpacaFake, tmp_path: Path, qty: float, limit: float | None) -> str:
    cfg = AlpacaConfig(key_id=KEY_ID, secret_key=SECRET, trading_url=fake.url,
                       journal=tmp_path / "journal.sqlite")  # fmt: skip
    with Journal(cfg.journal) as journal:
        rec = journal.record_intent(OrderIntent(
            strategy="cli", symbol="AAPL", bar_time="2026-03-02T15:00:00Z", side="buy", qty=qty,
            order_type="limit" if limit else "market", limit_price=limit,
        ))  # fmt: skip
        body, _ = TradingAPI(cfg).submit_idempotent(OrderSpec(
            client_order_id=rec.client_order_id, symbol="AAPL", side="buy", qty=qty,
            order_type="limit" if limit else "market", limit_price=limit,
        ))  # fmt: skip
        journal.mark_sent(rec.client_order_id, body)
    return rec.client_order_id


def test_kill_cancels_everything_and_flattens(fake: AlpacaFake, tmp_path: Path) -> None:
    fake.set_price("MSFT", 50.0)
    TradingAPI(AlpacaConfig(key_id=KEY_ID, secret_key=SECRET, trading_url=fake.url,
                            journal=tmp_path / "x.sqlite")).submit_idempotent(
        OrderSpec(client_order_id="held-1", symbol="MSFT", side="buy", qty=3))  # fmt: skip
    coid = _journaled_order(fake, tmp_path, 2, limit=90.0)  # rests: limit below the market
    result = _run(fake, tmp_path, "kill", "--flatten", "--yes")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "canceled 1 orders, closed 1 positions" in result.output  # type: ignore[attr-defined]
    assert fake.position_qty("MSFT") == 0
    assert all(o["status"] != "new" for o in fake.orders())
    with Journal(tmp_path / "journal.sqlite") as journal:
        assert journal.get(coid).status == "canceled"  # type: ignore[union-attr]
    assert KEY_ID not in result.output and SECRET not in result.output  # type: ignore[attr-defined]


def test_kill_asks_for_confirmation(fake: AlpacaFake, tmp_path: Path) -> None:
    _journaled_order(fake, tmp_path, 2, limit=90.0)
    result = CliRunner().invoke(
        main,
        ["--store", str(tmp_path / "s"), "trade", "--trading-url", fake.url, "--journal",
         str(tmp_path / "journal.sqlite"), "kill"],
        env=ENV, input="n\n",
    )  # fmt: skip
    assert result.exit_code != 0 and "Aborted" in result.output
    assert [o["status"] for o in fake.orders()] == ["new"]  # nothing canceled


def test_status_agrees_then_reports_a_mismatch(fake: AlpacaFake, tmp_path: Path) -> None:
    _journaled_order(fake, tmp_path, 2, limit=None)  # fills at once; the fill is in the order
    ok = _run(fake, tmp_path, "status")
    assert ok.exit_code == 0, ok.output  # type: ignore[attr-defined]
    assert "AAPL" in ok.output and "agree" in ok.output  # type: ignore[attr-defined]
    TradingAPI(AlpacaConfig(key_id=KEY_ID, secret_key=SECRET, trading_url=fake.url,
                            journal=tmp_path / "x.sqlite")).submit_idempotent(
        OrderSpec(client_order_id="by-hand", symbol="AAPL", side="buy", qty=1))  # fmt: skip
    # the by-hand order is closed (filled) and not in the journal: the position disagrees
    bad = _run(fake, tmp_path, "status")
    assert bad.exit_code == 1
    assert "AAPL: Alpaca 3, journal 2" in bad.output  # type: ignore[attr-defined]


def test_status_counts_a_fill_journaled_from_a_lookup_before_its_event(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    """A running session that looked its order up (filled) before the fill event arrived has a
    final order and no fill in its journal: status used to say "Alpaca 2, journal 0"."""
    coid = _journaled_order(fake, tmp_path, 2, limit=None)
    cfg = AlpacaConfig(key_id=KEY_ID, secret_key=SECRET, trading_url=fake.url,
                       journal=tmp_path / "journal.sqlite")  # fmt: skip
    found = TradingAPI(cfg).order_by_client_id(coid)
    assert found is not None and found["status"] == "filled"
    with Journal(cfg.journal) as journal:
        journal.mark_sent(coid, found)
        assert journal.get(coid).status == "filled"  # type: ignore[union-attr]
        assert not journal.fills() and not journal.open_orders()
    before = cfg.journal.read_bytes()
    result = _run(fake, tmp_path, "status")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "agree" in result.output  # type: ignore[attr-defined]
    assert cfg.journal.read_bytes() == before  # read-only: the gap is not written


def test_live_needs_the_confirmation_and_keys(fake: AlpacaFake, tmp_path: Path) -> None:
    """Bad input (a ConfigError) exits 2, as every command's does."""
    live = _run(fake, tmp_path, "--live", "status")
    assert live.exit_code == 2 and "explicit confirmation" in live.output  # type: ignore[attr-defined]
    wrong = _run(fake, tmp_path, "--live", "--i-understand-this-is-real-money", "status")
    assert wrong.exit_code == 2 and "paper account" in wrong.output  # type: ignore[attr-defined]
    nokeys = _run(fake, tmp_path, "status", env={"APCA_API_KEY_ID": "", "APCA_API_SECRET_KEY": ""})
    assert nokeys.exit_code == 2 and "APCA_API_KEY_ID" in nokeys.output  # type: ignore[attr-defined]
    missing = _run(fake, tmp_path)
    assert missing.exit_code == 1 and "--model" in missing.output  # type: ignore[attr-defined]


def test_status_writes_nothing_beside_a_running_session(fake: AlpacaFake, tmp_path: Path) -> None:
    """An intent journaled by a running bot and not yet sent stays as it is after status."""
    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        rec = journal.record_intent(OrderIntent(
            strategy="cli", symbol="AAPL", bar_time="2026-03-02T15:00:00Z", side="buy", qty=1,
        ))  # fmt: skip
    before = path.read_bytes()
    result = _run(fake, tmp_path, "status")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert rec.client_order_id in result.output  # type: ignore[attr-defined]
    with Journal(path) as journal:
        assert journal.get(rec.client_order_id).status == "pending_submit"  # type: ignore[union-attr]
    assert path.read_bytes() == before


# -- answers outside the Trading API's schema: one line, exit 1, nothing stored -------------------


def _dump(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return list(db.iterdump())


def _kill_entry(path: Path) -> dict[str, Any] | None:
    """The journal's kill switch entry, read beside the process that writes it."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT value FROM journal_meta WHERE key = ?", (KILL_KEY,)).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def _one_error_line(result: Any) -> str:
    """The command failed cleanly: exit 1 by ``fail()``, no traceback, one ``error:`` line."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_status_with_orders_as_one_object_is_one_clear_line(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    _journaled_order(fake, tmp_path, 2, limit=90.0)
    before = _dump(tmp_path / "journal.sqlite")
    fake.reshape_next("GET", "/v2/orders", first_only)
    line = _one_error_line(_run(fake, tmp_path, "status"))
    assert line.startswith("error: Alpaca GET /v2/orders (status=open) answered one object")
    assert _dump(tmp_path / "journal.sqlite") == before


def test_kill_journals_its_intent_first_and_reports_what_it_did_when_a_later_step_fails(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    path = tmp_path / "journal.sqlite"
    coid = _journaled_order(fake, tmp_path, 2, limit=90.0)
    with Journal(path) as journal:
        status = journal.get(coid).status  # type: ignore[union-attr]
    seen: list[dict[str, Any] | None] = []

    def journal_at_cancel(body: Any) -> Any:  # runs in the fake as the cancel arrives
        seen.append(_kill_entry(path))
        return body

    fake.reshape_next("DELETE", "/v2/orders", journal_at_cancel)
    fake.reshape_next("GET", "/v2/orders", first_only)  # the read after the cancel
    result = _run(fake, tmp_path, "kill", "--yes")
    line = _one_error_line(result)
    assert "canceled 1 orders" in result.output  # type: ignore[attr-defined]
    assert line.startswith("error: kill switch stopped after canceled 1 orders: Alpaca GET "
                           "/v2/orders (status=all) answered one object")  # fmt: skip
    assert seen and seen[0] is not None and seen[0]["status"] == "requested"
    entry = _kill_entry(path)
    assert entry is not None and entry["status"] == "failed" and entry["canceled"] == 1
    assert "GET /v2/orders (status=all)" in entry["error"]
    assert [o["status"] for o in fake.orders()] == ["canceled"]
    with Journal(path) as journal:  # not read back: the next reconciliation journals the cancel
        assert journal.get(coid).status == status != "canceled"  # type: ignore[union-attr]


def test_kill_refused_by_a_malformed_account_sends_and_stores_nothing(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    _journaled_order(fake, tmp_path, 2, limit=90.0)
    before = _dump(tmp_path / "journal.sqlite")
    fake.reshape_next("GET", "/v2/account", set_field("account_number", 12345))
    line = _one_error_line(_run(fake, tmp_path, "kill", "--yes"))
    assert line.startswith("error: Alpaca GET /v2/account answered a malformed Account: "
                           "account_number: input should be a valid string (got 12345)")  # fmt: skip
    assert fake.hits("DELETE", "/v2/orders") == 0
    assert [o["status"] for o in fake.orders()] == ["new"]
    assert _dump(tmp_path / "journal.sqlite") == before


# -- the session as a recorded run --------------------------------------------------------------


def _session_model(store: Path) -> str:
    """A registered tiny model (seeded, untrained weights: the session dies before a signal)."""
    from mlmodels.pipeline import register_untrained
    from mlmodels.registry import ModelRegistry

    card = register_untrained(ModelRegistry(store / "models"), "tiny", "live",
                              features=["ret_1", "ret_5"], window=16)  # fmt: skip
    return card.ref


def _trade(fake: AlpacaFake, tmp_path: Path, model: str) -> Any:
    return _run(fake, tmp_path, "--model", model, "--symbols", "AAPL", "--serving", "inprocess",
                "--stream-url", fake.stream_url, "--data-url", "http://127.0.0.1:9",
                "--data-stream-url", "ws://127.0.0.1:9/v2/iex")  # fmt: skip


def _no_secret_in(store: Path, run_id: str) -> None:
    """Neither key (nor a mask in its place) is in the run's files or its database row."""
    blobs = [p.read_bytes() for p in (store / "runs" / run_id).rglob("*") if p.is_file()]
    with closing(sqlite3.connect(store / "runs.sqlite")) as db:
        blobs.append(
            repr(db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()).encode()
        )
    assert len(blobs) >= 4 and blobs[-1] != b"None"
    for blob in blobs:
        assert KEY_ID.encode() not in blob and SECRET.encode() not in blob
        assert b"***" not in blob and b"key_id" not in blob and b"secret_key" not in blob


def test_a_session_that_dies_is_a_failed_run_without_secrets(
    fake: AlpacaFake, tmp_path: Path
) -> None:
    """Alpaca holds a position the journal does not know: the broker refuses to start."""
    from workflows.runs import RunRegistry

    store = tmp_path / "store"
    ref = _session_model(store)
    TradingAPI(AlpacaConfig(key_id=KEY_ID, secret_key=SECRET, trading_url=fake.url,
                            journal=tmp_path / "x.sqlite")).submit_idempotent(
        OrderSpec(client_order_id="by-hand", symbol="AAPL", side="buy", qty=1))  # fmt: skip
    result = _trade(fake, tmp_path, ref)
    line = _one_error_line(result)
    assert "AAPL" in line
    run_id = result.output.split("session run ")[1].split()[0]  # type: ignore[attr-defined]
    with RunRegistry(store) as runs:
        rec = runs.get(run_id)
    assert (rec.kind, rec.status) == ("session", "failed")
    assert rec.error is not None and rec.error.startswith("PositionMismatch: ")
    assert rec.metrics["orders"] == 0 and rec.metrics["fills"] == 0
    assert rec.metrics["final_equity"] is None  # the account was never read as the session's
    assert rec.params["model"] == ref and rec.params["symbols"] == ["AAPL"]
    assert rec.params["alpaca"]["trading_url"] == fake.url
    _no_secret_in(store, run_id)


def test_a_refused_session_records_nothing(fake: AlpacaFake, tmp_path: Path) -> None:
    result = _trade(fake, tmp_path, "nope")
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "no model called 'nope'" in result.output  # type: ignore[attr-defined]
    assert not (tmp_path / "store" / "runs").exists()
    assert not (tmp_path / "store" / "runs.sqlite").exists()
    assert not (tmp_path / "journal.sqlite").exists()  # nothing journaled either


def test_session_params_hold_no_key_token_or_password(tmp_path: Path) -> None:
    from mlmodels.pipeline import register_untrained
    from mlmodels.registry import ModelRegistry
    from workflows.trading import plan_session

    card = register_untrained(ModelRegistry(tmp_path / "models"), "tiny", "live",
                              features=["ret_1", "ret_5"], window=16)  # fmt: skip
    cfg = AlpacaConfig(
        key_id=KEY_ID, secret_key=SECRET,
        trading_url="https://bob:tok3n@paper.example.com/base?token=abc123#frag",
        data_url=f"https://data.example.com/{KEY_ID}/bars",  # a key pasted into a URL
        journal="postgresql+psycopg://bob:hunter2@db.example.com/journal?password=pw2",
    )  # fmt: skip
    params = plan_session(tmp_path, card.ref, ["AAPL"], cfg).params()
    text = json.dumps(params)
    for secret in (KEY_ID, SECRET, "tok3n", "abc123", "hunter2", "pw2", "***"):
        assert secret not in text, secret
    alpaca = params["alpaca"]
    assert alpaca["trading_url"] == "https://paper.example.com/base"
    assert alpaca["journal"] == "postgresql+psycopg://db.example.com/journal"
    assert "data_url" not in alpaca and "key_id" not in alpaca and "secret_key" not in alpaca
    assert params["model"] == "live:1" and params["mode"] == "paper"


def test_each_serving_call_has_a_deadline_shorter_than_a_bar(tmp_path: Path) -> None:
    """A hung worker must not cost a live session several bars: by default each TorchServe
    call (retries included) has half a bar, at most 10 s; --serving-deadline sets it; the run
    records the one it used."""
    from mlmodels.pipeline import register_untrained
    from mlmodels.registry import ModelRegistry
    from workflows.trading import plan_session

    card = register_untrained(ModelRegistry(tmp_path / "models"), "tiny", "live",
                              features=["ret_1", "ret_5"], window=16)  # fmt: skip
    cfg = AlpacaConfig(key_id=KEY_ID, secret_key=SECRET)
    plan = plan_session(tmp_path, card.ref, ["AAPL"], cfg, timeframe="1m")
    assert plan.deadline() == 10.0 and plan.params()["serving_deadline"] == 10.0
    hourly = plan_session(tmp_path, card.ref, ["AAPL"], cfg, timeframe="1h")
    assert hourly.deadline() == 10.0  # never more than 10 s, even with an hour to spare
    set_ = plan_session(tmp_path, card.ref, ["AAPL"], cfg, serving_deadline=2.5)
    assert set_.deadline() == 2.5 and set_.params()["serving_deadline"] == 2.5


@pytest.mark.parametrize("value", ["0", "-1", "4000"])
def test_a_bad_serving_deadline_is_refused_before_anything_runs(
    fake: AlpacaFake, tmp_path: Path, value: str
) -> None:
    result = _run(fake, tmp_path, "--model", "nope", "--symbols", "AAPL",
                  "--serving-deadline", value)  # fmt: skip
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    out = result.output.strip().splitlines()  # type: ignore[attr-defined]
    assert out[-1] == f"error: --serving-deadline must be in (0, 3600] seconds, got {float(value)}"
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert not (tmp_path / "store" / "runs").exists()
    assert not (tmp_path / "journal.sqlite").exists()


def test_trade_report_without_sessions_or_with_a_bad_date_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["--store", str(store), "trade", "report", "--since",
                                       "2026-01-05"])  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: no trading session started since 2026-01-05; `btml runs list --kind session` "
        "lists them"
    )
    result = CliRunner().invoke(main, ["--store", str(store), "trade", "report", "--since",
                                       "last tuesday"])  # fmt: skip
    assert result.exit_code == 2 and "--since 'last tuesday' is not a date" in result.output
    assert "Traceback" not in result.output


def test_trade_report_refuses_a_session_whose_journal_is_gone_and_records_nothing(
    tmp_path: Path,
) -> None:
    from workflows.runs import RunRegistry

    store = tmp_path / "store"
    with RunRegistry(store) as runs, runs.start("session", {
        "model": "m:1", "timeframe": "1m", "ml": {},
        "alpaca": {"journal": str(tmp_path / "gone.sqlite"), "strategy": "s"},
    }) as run:  # fmt: skip
        stamp = pd.Timestamp("2026-03-02 14:31", tz="UTC")
        pd.DataFrame({"open": [1.0], "high": [1.0], "low": [1.0], "close": [1.0],
                      "volume": [1.0], "symbol": ["AAPL"]},
                     index=pd.DatetimeIndex([stamp], name="datetime")).to_parquet(
            run.add_artifact("bars.parquet"))  # fmt: skip
        pd.DataFrame({"timestamp": [stamp], "symbol": ["AAPL"], "target": [0.0]}).to_parquet(
            run.add_artifact("decisions.parquet")
        )
        session = run.id
    result = CliRunner().invoke(main, ["--store", str(store), "trade", "report", "--since",
                                       "2020-01-01"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: session {session}: its journal ({tmp_path / 'gone.sqlite'}) is not found; "
        "pass it with `btml trade --journal PATH report ...`"
    )
    with RunRegistry(store) as runs:
        assert [r.id for r in runs.list()] == [session]
