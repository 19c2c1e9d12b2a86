"""The dashboard's REST API over a real store and a real SQLite run registry (FastAPI's
TestClient): auth, every resource, bad input (422 naming the field, nothing started), and a
backtest job run to its end in its own process."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from brokers.alpaca.journal import Journal, OrderIntent
from btml.cli import main
from core.errors import ConfigError
from mlmodels.features import feature_names
from mlmodels.pipeline import register_untrained
from mlmodels.registry import CHAMPION_FILE, ModelRegistry
from tests.webapp_util import AUTH, TOKEN, client, make_store, until_final
from webapp import DashboardSettings
from webapp.auth import TOKEN_ENV, load_token, token_file
from workflows.runs import RunRegistry

API = "/api/v1"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("dash-store"))


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the store (the registry database included) and its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "dashboard" not in p.parts
    }


# -- auth ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}],
    ids=["none", "wrong", "not-bearer"],
)
def test_every_api_call_needs_the_token(root: Path, headers: dict[str, str]) -> None:
    with client(root) as c:
        for path in ("system/health", "data", "models", "runs", "jobs", "portfolio", "risk"):
            r = c.get(f"{API}/{path}", headers=headers)
            assert r.status_code == 401, path
            assert "token" in r.json()["detail"]
        r = c.post(
            f"{API}/backtest", headers=headers, json={"symbols": ["AAPL"], "baseline": "buyhold"}
        )
        assert r.status_code == 401
        assert c.get(f"{API}/jobs", headers=AUTH).json()["jobs"] == []  # nothing started


def test_the_url_token_sets_an_httponly_same_site_cookie_and_leaves_the_url(root: Path) -> None:
    with client(root) as c:
        r = c.get(f"/backtests?token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/backtests"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get(f"{API}/session").status_code == 200  # the cookie now carries it
        c.cookies.clear()
        assert c.get(f"{API}/session").status_code == 401
        assert c.post(f"{API}/login", json={"token": "nope" * 5}).status_code == 401
        assert c.post(f"{API}/login", json={"token": TOKEN}).status_code == 200
        assert c.get(f"{API}/session").status_code == 200


def test_the_page_is_served_without_the_token_but_holds_no_data(root: Path) -> None:
    with client(root) as c:
        r = c.get("/training")
        assert r.status_code == 200 and '<div id="root">' in r.text
        assert "AAPL" not in r.text


def test_a_generated_token_is_kept_in_the_store_with_mode_0600(tmp_path: Path) -> None:
    token = load_token(tmp_path, env={})
    path = token_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32 and load_token(tmp_path, env={}) == token  # stable across starts
    assert load_token(tmp_path, env={TOKEN_ENV: "from-the-environment-123"}) == (
        "from-the-environment-123"
    )


def test_another_host_needs_allow_remote(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--allow-remote"):
        DashboardSettings(store=tmp_path, host="0.0.0.0")
    DashboardSettings(store=tmp_path, host="0.0.0.0", allow_remote=True)
    res = CliRunner().invoke(main, ["--store", str(tmp_path), "dashboard", "--host", "0.0.0.0"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: --host 0.0.0.0 is reachable from other machines; add --allow-remote "
        "(and put TLS in a reverse proxy in front of it)"
    ]


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(main, ["--store", str(tmp_path), "dashboard", "--port", str(port)])
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: --port {port}: cannot listen on 127.0.0.1:{port}")
    assert len(res.output.strip().splitlines()) == 1


# -- resources ----------------------------------------------------------------------------


def test_health_reports_versions_store_database_and_no_secret(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCA_API_KEY_ID", "PKSECRETKEYID123")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "very-secret-value-456")
    with client(root) as c:
        r = c.get(f"{API}/system/health", headers=AUTH)
    body = r.json()
    assert r.status_code == 200 and body["ok"] is True
    assert body["versions"]["backtrader"].startswith("1.9")
    assert body["database"]["ok"] and body["database"]["url"].startswith("sqlite:///")
    assert body["serving"]["running"] is False
    assert body["store"]["exists"]
    text = r.text
    for secret in ("PKSECRETKEYID123", "very-secret-value-456", TOKEN):
        assert secret not in text


def test_health_says_when_the_database_cannot_be_opened(root: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with client(root, db_url=f"sqlite:///{tmp_path}/a-file/runs.sqlite") as c:
        health = c.get(f"{API}/system/health", headers=AUTH).json()
        runs = c.get(f"{API}/runs", headers=AUTH)
    assert health["ok"] is False and health["database"]["ok"] is False
    assert health["database"]["error"]
    assert runs.status_code == 503 and "run registry" in runs.json()["detail"]


def test_data_lists_coverage_source_and_validation(root: Path) -> None:
    with client(root) as c:
        body = c.get(f"{API}/data", headers=AUTH).json()
        bars = c.get(f"{API}/data/AAPL/bars?limit=10", headers=AUTH).json()
        missing = c.get(f"{API}/data/NOPE/bars", headers=AUTH)
    rows = {r["symbol"]: r for r in body["series"]}
    assert set(rows) == {"AAPL", "IBM"}
    assert rows["AAPL"]["timeframe"] == "1Day" and rows["AAPL"]["rows"] > 1000
    assert rows["AAPL"]["first"].startswith("2008") and rows["AAPL"]["validation"]["ok"] in (
        True,
        False,
    )
    assert rows["AAPL"]["validation"]["summary"]
    assert len(bars["bars"]) == 10 and {"time", "open", "close"} <= set(bars["bars"][0])
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "symbol"]


def test_models_list_the_registry_and_show_a_card(root: Path) -> None:
    with client(root) as c:
        models = c.get(f"{API}/models", headers=AUTH).json()["models"]
        card = c.get(f"{API}/models/m:1", headers=AUTH).json()
        missing = c.get(f"{API}/models/nope", headers=AUTH)
        presets = c.get(f"{API}/models/presets", headers=AUTH).json()
    assert [m["ref"] for m in models] == ["m:1"] and models[0]["arch"] == "tiny"
    assert models[0]["champion"] and card["champion"]  # the only version, never promoted
    assert card["name"] == "m" and card["features"] and card["window"] == 16
    assert missing.status_code == 404 and "no model called 'nope'" in missing.json()["detail"]
    assert "tiny" in presets["presets"] and presets["baselines"] == ["buyhold", "sma"]


def test_models_mark_the_champion_the_promoted_version_else_the_latest(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    for seed in (0, 1):
        register_untrained(registry, "tiny", "m", features=list(feature_names(False)), window=8,
                           seed=seed)  # fmt: skip

    def champions(*refs: str) -> tuple[dict[str, bool], dict[str, bool], list[str]]:
        with client(tmp_path) as c:
            body = c.get(f"{API}/models", headers=AUTH).json()
            cards = {ref: c.get(f"{API}/models/{ref}", headers=AUTH).json() for ref in refs}
        return ({m["ref"]: m["champion"] for m in body["models"]},
                {ref: card["champion"] for ref, card in cards.items()}, body["errors"])  # fmt: skip

    listed, cards, errors = champions("m:1", "m:2", "m")  # never promoted: the latest
    assert listed == {"m:2": True, "m:1": False} and list(listed) == ["m:2", "m:1"]
    assert cards == {"m:1": False, "m:2": True, "m": True} and errors == []
    registry.set_champion("m", 1, {"version": 1, "previous": 2, "action": "rollback"})
    listed, cards, errors = champions("m:1", "m:2", "m")  # the recorded one, though older
    assert listed == {"m:2": False, "m:1": True}
    assert cards == {"m:1": True, "m:2": False, "m": True} and errors == []
    (tmp_path / "models" / "m" / CHAMPION_FILE).write_text("{not json")
    listed, cards, errors = champions("m:2")  # unreadable: no badge, and the list says why
    assert listed == {"m:2": False, "m:1": False} and cards == {"m:2": False}
    assert len(errors) == 1 and "not a valid champion record" in errors[0]
    (tmp_path / "models" / "m" / CHAMPION_FILE).write_text('{"version": 3, "history": []}')
    listed, _, errors = champions()  # a champion since removed by hand
    assert listed == {"m:2": False, "m:1": False}
    assert errors == ["m: champion v3 is no longer in the registry"]


def test_openapi_is_published_under_api_v1(root: Path) -> None:
    with client(root) as c:
        spec = c.get(f"{API}/openapi.json").json()
    paths = set(spec["paths"])
    for p in ("/api/v1/system/health", "/api/v1/data", "/api/v1/backtest", "/api/v1/train",
              "/api/v1/runs/{run_id}", "/api/v1/risk", "/api/v1/training/metrics/{run_id}"):  # fmt: skip
        assert p in paths, p
    assert "BacktestBody" in spec["components"]["schemas"]


# -- bad input: 422 naming the field, nothing started or written ---------------------------


@pytest.mark.parametrize(
    ("path", "body", "field", "message"),
    [
        ("backtest", {"symbols": ["AAPL"], "model": "nope"}, "model", "no model called 'nope'"),
        ("backtest", {"symbols": ["NOPE"], "baseline": "buyhold"}, "symbols", "NOPE (1Day) is not in the store"),
        ("backtest", {"symbols": ["AAPL"], "baseline": "hodl"}, None, "baseline must be one of buyhold, sma"),
        ("backtest", {"symbols": ["AAPL"]}, None, "exactly one of --model or --baseline"),
        ("backtest", {"symbols": ["AAPL"], "baseline": "buyhold", "cash": 1}, "cash", "Extra inputs"),
        ("train", {"symbols": ["AAPL"], "arch": "tiney"}, None, "did you mean 'tiny'"),
        ("train", {"symbols": ["NOPE"]}, "symbols", "NOPE (1Day) is not in the store"),
        ("train", {"symbols": ["AAPL"], "epochs": 0}, "epochs", "greater than or equal to 1"),
        ("data/import", {"path": "/no/such/file.csv"}, "path", "is not a file"),
    ],
)  # fmt: skip
def test_a_refused_request_is_422_naming_the_field_and_starts_nothing(
    root: Path, path: str, body: dict[str, object], field: str | None, message: str
) -> None:
    before = snapshot(root)
    with client(root) as c:
        r = c.post(f"{API}/{path}", headers=AUTH, json=body)
        jobs = c.get(f"{API}/jobs", headers=AUTH).json()["jobs"]
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert message in detail["msg"]
    if field is not None:
        assert field in detail["loc"]
    assert jobs == []
    assert snapshot(root) == before


def test_an_unknown_run_is_404_and_a_bad_status_422(root: Path) -> None:
    with client(root) as c:
        assert c.get(f"{API}/runs/20990101T000000", headers=AUTH).status_code == 404
        assert c.get(f"{API}/backtest/results/20990101T000000", headers=AUTH).status_code == 404
        bad = c.get(f"{API}/runs?status=sleeping", headers=AUTH)
    assert bad.status_code == 422 and "status must be one of" in bad.json()["detail"][0]["msg"]


def test_the_kill_switch_asks_for_confirmation(root: Path) -> None:
    with client(root) as c:
        r = c.post(f"{API}/live/kill", headers=AUTH, json={"confirm": "yes", "flatten": True})
        jobs = c.get(f"{API}/jobs", headers=AUTH).json()["jobs"]
    assert r.status_code == 422 and "type KILL" in r.json()["detail"][0]["msg"]
    assert jobs == []


# -- a job end to end ---------------------------------------------------------------------


def test_a_backtest_job_runs_in_its_own_process_and_its_results_are_served(root: Path) -> None:
    with client(root) as c:
        r = c.post(f"{API}/backtest", headers=AUTH, json={"symbols": ["AAPL", "IBM"], "model": "m"})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["params"]["model"] == "m:1"  # resolved before it started
        done = until_final(c, job["id"])
        assert done["state"] == "ok", done
        assert done["pid"] != os.getpid()
        run = c.get(f"{API}/runs/{done['run_id']}", headers=AUTH).json()
        res = c.get(f"{API}/backtest/results/{done['run_id']}", headers=AUTH).json()
        sheet = c.get(f"{API}/backtest/results/{done['run_id']}/tearsheet", headers=AUTH)
        listed = c.get(f"{API}/runs?kind=backtest", headers=AUTH).json()["runs"]
    assert run["status"] == "ok" and run["kind"] == "backtest"
    assert run["params"]["symbols"] == ["AAPL", "IBM"]
    assert f"run {done['run_id']}" in run["job_log"]
    assert set(res["curves"]) >= {"buy-and-hold"} and len(res["curves"]) == 3
    first = next(iter(res["curves"].values()))
    assert first[0]["value"] == pytest.approx(1.0, abs=0.05) and len(first) > 100
    assert res["metrics"]["sharpe"] == run["metrics"]["sharpe"]
    assert sheet.status_code == 200 and "<html" in sheet.text.lower()
    assert done["run_id"] in [r["id"] for r in listed]
    with RunRegistry(root) as reg:  # the CLI's registry sees the same run
        assert reg.get(done["run_id"]).status == "ok"


def test_runs_compare_puts_metrics_side_by_side(root: Path) -> None:
    with client(root) as c:
        ids = []
        for baseline in ("buyhold", "sma"):
            r = c.post(
                f"{API}/backtest", headers=AUTH, json={"symbols": ["AAPL"], "baseline": baseline}
            )
            ids.append(until_final(c, r.json()["id"])["run_id"])
        table = c.get(f"{API}/runs/compare?ids={','.join(ids)}", headers=AUTH).json()
        first = c.get(f"{API}/runs?kind=backtest&limit=1", headers=AUTH).json()
        second = c.get(f"{API}/runs?kind=backtest&limit=1&before={first['next']}", headers=AUTH)
    assert [r["id"] for r in first["runs"]] == [ids[1]] and first["next"] == ids[1]
    assert [r["id"] for r in second.json()["runs"]] == [ids[0]]
    assert table["runs"] == ids
    sharpe = table["metrics"]["sharpe"]
    assert set(sharpe) == set(ids) and sharpe[ids[0]] != sharpe[ids[1]]


def test_the_live_resources_read_the_journal(root: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal-paper.sqlite"
    with Journal(journal) as j:
        rec = j.record_intent(OrderIntent(strategy="ml", symbol="AAPL", bar_time=datetime(2016, 1, 4, tzinfo=UTC), side="buy",
                                          qty=10, signal={"prob_up": 0.61}))  # fmt: skip
        j.apply_update({"event": "fill", "execution_id": "x1", "price": "100.0", "qty": "10",
                        "timestamp": "2016-01-04T15:00:00Z",
                        "order": {"client_order_id": rec.client_order_id, "symbol": "AAPL",
                                  "side": "buy", "qty": "10", "filled_qty": "10",
                                  "filled_avg_price": "100.0", "status": "filled"}})  # fmt: skip
    with client(root, journals=(journal,)) as c:
        orders = c.get(f"{API}/orders", headers=AUTH).json()["orders"]
        fills = c.get(f"{API}/fills", headers=AUTH).json()["fills"]
        pos = c.get(f"{API}/positions", headers=AUTH).json()["positions"]
        sig = c.get(f"{API}/signals", headers=AUTH).json()["signals"]
        risk = c.get(f"{API}/risk", headers=AUTH).json()
    assert [o["status"] for o in orders] == ["filled"]
    assert [(f["qty"], f["price"]) for f in fills] == [(10, 100.0)]
    assert pos[0]["symbol"] == "AAPL" and pos[0]["qty"] == 10 and pos[0]["avg_entry_price"] == 100
    assert pos[0]["unrealized_pnl"] == pytest.approx((pos[0]["last_price"] - 100) * 10)
    assert sig[0]["signal"] == {"prob_up": 0.61}
    assert risk["var_95"]["historical"] > 0 and risk["var_95"]["parametric"] > 0
    assert risk["exposure"]["limit"] == 1.0
    json.dumps(risk)
