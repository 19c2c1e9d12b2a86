"""Jobs and the WebSocket, for real: each job is its own process running a workflow; the
WebSocket carries its progress and every training epoch; cancel ends it ``cancelled``; a
dashboard killed mid-job leaves a run that the next start marks ``lost`` (its partial
artefacts removed); a client that never reads is dropped; the job gets no secret."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from starlette.websockets import WebSocketDisconnect
from websockets.sync.client import connect

from serving.procs import alive
from tests.webapp_util import (
    AUTH,
    TOKEN,
    client,
    free_port,
    live_server,
    make_store,
    until_final,
    wait_for,
)
from workflows.runs import RunRegistry

API = "/api/v1"
TRAIN = {"symbols": ["AAPL", "IBM"], "arch": "tiny", "window": 16, "batch_size": 256}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("jobs-store"), model=False)


def read_until(ws: Any, pred: Any, limit: int = 10_000) -> list[dict[str, Any]]:
    seen = []
    for _ in range(limit):
        msg = ws.receive_json()
        seen.append(msg)
        if pred(msg):
            return seen
    raise AssertionError(f"no matching message in {limit}")


def test_the_websocket_needs_the_token_and_this_origin(root: Path) -> None:
    with client(root) as c:
        for headers in ({}, {"Authorization": "Bearer wrong-wrong-wrong-wrong"},
                        {**AUTH, "Origin": "http://evil.example"}):  # fmt: skip
            with (
                pytest.raises(WebSocketDisconnect) as info,
                c.websocket_connect(f"{API}/ws", headers=headers) as ws,
            ):
                ws.receive_json()
            assert info.value.code == 1008
        with c.websocket_connect(
            f"{API}/ws", headers={**AUTH, "Origin": "http://testserver"}
        ) as ws:
            ws.send_json({"type": "subscribe", "data": {"topics": ["nope"]}})
            assert "unknown topics" in ws.receive_json()["data"]["message"]


def test_a_training_job_streams_every_epoch_and_its_losses_are_served(root: Path) -> None:
    with client(root) as c, c.websocket_connect(f"{API}/ws", headers=dict(AUTH)) as ws:
        ws.send_json({"type": "subscribe", "data": {"topics": ["jobs", "training"]}})
        first = [ws.receive_json(), ws.receive_json()]
        assert {m["type"] for m in first} == {"jobs", "training"} and all(
            m["snapshot"] for m in first
        )
        r = c.post(f"{API}/train", headers=AUTH, json={**TRAIN, "name": "streamed", "epochs": 3})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        seen = read_until(
            ws, lambda m: m["type"] == "jobs" and m["data"]["state"] in ("ok", "failed")
        )
        done = seen[-1]["data"]
        assert done["state"] == "ok", (done["error"], done["last_log"])
        epochs = [m["data"] for m in seen if m["type"] == "training"]
        assert [e["epoch"] for e in epochs] == [1, 2, 3]
        assert all(e["run_id"] == done["run_id"] and e["losses"] for e in epochs)
        states = [
            m["data"]["state"] for m in seen if m["type"] == "jobs" and m["data"]["id"] == job_id
        ]
        assert states[0] == "queued" and "running" in states and states[-1] == "ok"
        progress = [
            m["data"]["progress"] for m in seen if m["type"] == "jobs" and m["data"]["progress"]
        ]
        assert progress == sorted(progress) and progress[-1] == 1.0
        served = c.get(f"{API}/training/metrics/{done['run_id']}", headers=AUTH).json()
        models = c.get(f"{API}/models", headers=AUTH).json()["models"]
    assert [row["epoch"] for row in served["epochs"]] == [1, 2, 3]
    assert set(epochs[0]["losses"]) <= set(served["epochs"][0])
    assert any(m["ref"] == "streamed:1" and m["training_run"] == done["run_id"] for m in models)


def test_cancel_ends_a_running_job_and_its_run_cancelled_without_secrets_in_its_process(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APCA_API_SECRET_KEY", "never-in-a-job-process")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "nor-this-one")
    with client(root) as c:
        job = c.post(
            f"{API}/train", headers=AUTH, json={**TRAIN, "name": "long", "epochs": 500}
        ).json()
        twin = c.post(f"{API}/train", headers=AUTH, json={**TRAIN, "name": "long", "epochs": 5})
        assert twin.status_code == 409 and "already training model 'long'" in twin.json()["detail"]
        running = wait_for(
            lambda: (j := c.get(f"{API}/jobs/{job['id']}", headers=AUTH).json())["run_id"] and j
        )
        env = Path(f"/proc/{running['pid']}/environ").read_bytes().split(b"\0")
        assert not [
            e for e in env if b"never-in-a-job" in e or b"nor-this-one" in e or TOKEN.encode() in e
        ]
        assert b"OMP_NUM_THREADS=1" in env
        cancelled = c.post(f"{API}/runs/{running['run_id']}/cancel", headers=AUTH)
        assert cancelled.status_code == 200
        final = until_final(c, job["id"], timeout=60)
    assert final["state"] == "cancelled"
    with RunRegistry(root) as reg:
        assert reg.get(running["run_id"]).status == "cancelled"
    assert not alive(running["pid"])


def test_jobs_beyond_the_limit_wait_their_turn(root: Path) -> None:
    with client(root, max_jobs=1) as c:
        a = c.post(
            f"{API}/backtest", headers=AUTH, json={"symbols": ["AAPL"], "baseline": "sma"}
        ).json()
        b = c.post(
            f"{API}/backtest", headers=AUTH, json={"symbols": ["IBM"], "baseline": "sma"}
        ).json()
        assert a["state"] == "running" and b["state"] == "queued"
        assert until_final(c, b["id"])["state"] == "ok"
        runs = [until_final(c, j["id"]) for j in (a, b)]
    assert runs[0]["ended_at"] <= runs[1]["started_at"]


def test_a_killed_dashboard_leaves_a_lost_run_without_partial_artefacts(root: Path) -> None:
    port = free_port()
    env = {**os.environ, "BTML_DASHBOARD_TOKEN": TOKEN}
    dash = subprocess.Popen(
        [sys.executable, "-m", "btml.cli", "--store", str(root), "dashboard", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}{API}"
    try:
        wait_for(lambda: _up(base), timeout=60)
        job = requests.post(
            f"{base}/train",
            headers=AUTH,
            json={**TRAIN, "name": "doomed", "epochs": 500},
            timeout=30,
        ).json()
        info = wait_for(lambda: _history_started(base, root, job["id"]), timeout=120)
        dash.send_signal(signal.SIGKILL)
        dash.wait(10)
        wait_for(lambda: not alive(info["pid"]), timeout=20)  # the job died with it
    finally:
        dash.kill()
    run_dir = root / "runs" / info["run_id"]
    assert (run_dir / "history.csv").exists()
    with client(root) as c:
        run = c.get(f"{API}/runs/{info['run_id']}", headers=AUTH).json()
    assert run["status"] == "lost" and "ended without finishing" in run["error"]
    assert not (run_dir / "history.csv").exists()
    assert (run_dir / "params.json").exists() and (run_dir / "job.log").exists()


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/session", headers=AUTH, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def _history_started(base: str, root: Path, job_id: str) -> dict[str, Any] | None:
    job = requests.get(f"{base}/jobs/{job_id}", headers=AUTH, timeout=5).json()
    if job["run_id"] and (root / "runs" / job["run_id"] / "history.csv").exists():
        return dict(job)
    return None


def test_a_client_that_never_reads_is_dropped_not_buffered(root: Path) -> None:
    with live_server(root) as (url, app):
        hub = app.state.hub
        ws_url = url.replace("http", "ws") + f"{API}/ws"
        with connect(ws_url, additional_headers=AUTH, max_size=None) as ws:
            ws.send(json.dumps({"type": "subscribe", "data": {"topics": ["alerts"]}}))
            wait_for(lambda: hub.subscribers == 1, timeout=10)
            payload = "x" * 4096
            for i in range(20_000):  # ~80 MB: far more than the socket buffers and the queue
                hub.publish("alerts", {"i": i, "pad": payload})
                if i % 1000 == 0 and hub.subscribers == 0:
                    break
            wait_for(lambda: hub.subscribers == 0, timeout=30)
        time.sleep(0.1)


def test_a_download_job_fetches_from_alpaca_with_the_keys_only_it_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job talks to the project's Alpaca data server (real alpaca-py client); the keys
    reach this job's process because it needs them, and never a response."""
    import pandas as pd

    from brokers.alpaca.sim.data import AlpacaDataFake
    from brokers.alpaca.sim.loopback import LoopbackServer
    from brokers.alpaca.sim.trading import KEY_ID, SECRET
    from feeds.store import ParquetStore

    with AlpacaDataFake(key_id=KEY_ID, secret_key=SECRET) as data, LoopbackServer() as rest:
        data.serve_history(rest)
        for day in pd.bdate_range("2026-03-02", periods=5):
            for minute in range(0, 390, 30):
                t = day.tz_localize("America/New_York") + pd.Timedelta(hours=9, minutes=30 + minute)
                px = 100 + day.day + minute / 1000
                data.push_bar("AAPL", t, px, px + 0.5, px - 0.5, px + 0.1, 1000, stream=False)
        monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
        monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
        monkeypatch.setenv("BTML_ALPACA_DATA_URL", rest.base_url)
        with client(tmp_path) as c:
            body = {
                "symbols": ["AAPL"],
                "source": "alpaca",
                "start": "2026-03-01",
                "end": "2026-03-09",
            }
            r = c.post(f"{API}/data/download", headers=AUTH, json=body)
            assert r.status_code == 202, r.text
            done = until_final(c, r.json()["id"])
            listed = c.get(f"{API}/data", headers=AUTH).text
    assert done["state"] == "ok", (done["error"], done["last_log"])
    assert done["progress"] == 1.0
    frame = ParquetStore(tmp_path).read("AAPL", "1Day")
    assert len(frame) == 5 and frame.attrs.get("source", "alpaca") == "alpaca"
    assert KEY_ID not in listed and SECRET not in listed


def test_the_kill_switch_from_the_dashboard_is_journaled_and_cancels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from brokers.alpaca.config import AlpacaConfig
    from brokers.alpaca.journal import Journal, OrderIntent
    from brokers.alpaca.rest import OrderSpec, TradingAPI
    from brokers.alpaca.sim.trading import KEY_ID, SECRET, AlpacaFake
    from brokers.alpaca.store import KILL_KEY

    journal = tmp_path / "live" / "journal-paper.sqlite"
    journal.parent.mkdir()
    with AlpacaFake() as fake:
        fake.set_price("AAPL", 100.0)
        cfg = AlpacaConfig(key_id=KEY_ID, secret_key=SECRET, trading_url=fake.url, journal=journal)
        with Journal(journal) as j:
            rec = j.record_intent(OrderIntent(strategy="ml", symbol="AAPL", side="buy", qty=2,
                                              bar_time="2026-03-02T15:00:00Z", order_type="limit",
                                              limit_price=90.0))  # fmt: skip
            body, _ = TradingAPI(cfg).submit_idempotent(OrderSpec(
                client_order_id=rec.client_order_id, symbol="AAPL", side="buy", qty=2,
                order_type="limit", limit_price=90.0))  # fmt: skip
            j.mark_sent(rec.client_order_id, body)
        monkeypatch.setenv("APCA_API_KEY_ID", KEY_ID)
        monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
        monkeypatch.setenv("APCA_API_BASE_URL", fake.url)
        with client(tmp_path) as c:
            r = c.post(f"{API}/live/kill", headers=AUTH, json={"confirm": "KILL"})
            assert r.status_code == 202, r.text
            done = until_final(c, r.json()["id"])
            orders = c.get(f"{API}/orders", headers=AUTH).json()["orders"]
        assert done["state"] == "ok", (done["error"], done["last_log"])
        assert [o["status"] for o in fake.orders()] == ["canceled"]
        assert not fake.errors
    with Journal(journal) as j:
        entry = json.loads(j.meta(KILL_KEY) or "{}")
    assert entry["status"] == "done" and "canceled 1 orders" in " ".join(entry["done"])
    assert [o["status"] for o in orders] == ["canceled"]
