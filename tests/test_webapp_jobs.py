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
        assert done["state"] == "ok", done
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
