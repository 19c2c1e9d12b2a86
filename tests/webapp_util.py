"""The dashboard under test: a real store (the embedded sample, a tiny model), the app over
FastAPI's TestClient or a real uvicorn server on a free port, and a WebSocket reader."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from feeds.sample import load_sample
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelRegistry
from mlmodels.trainer import TrainConfig
from tests.serving_util import free_ports
from webapp import DashboardSettings, create_app

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SYMBOLS = ("AAPL", "IBM")


def make_store(root: Path, *, model: bool = True, since: str = "2008") -> Path:
    """AAPL and IBM from the embedded sample; with ``model`` a tiny ``m:1`` trained on them."""
    store = ParquetStore(root)
    sample = load_sample(adjusted=True)
    for sym in SYMBOLS:
        store.write(sample[sym].loc[since:], merge=False)
    if model:
        frames = {sym: store.read(sym, "1Day") for sym in SYMBOLS}
        train_model(
            frames, "tiny", name="m", registry=ModelRegistry(root / "models"),
            train_cfg=TrainConfig(epochs=1, batch_size=128, max_batches=3),
            data_cfg=DatasetConfig(window=16), work_dir=root / "train-work",
        )  # fmt: skip
    return root


def settings(root: Path, **kw: Any) -> DashboardSettings:
    return DashboardSettings(store=root, token=TOKEN, poll_seconds=0.2, **kw)


@contextmanager
def client(root: Path, **kw: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings(root, **kw))) as c:
        yield c


def free_port() -> int:
    return free_ports(1)[0]


@contextmanager
def live_server(root: Path, **kw: Any) -> Iterator[tuple[str, FastAPI]]:
    """A real uvicorn serving the dashboard in this process; yields its base URL and app."""
    port = free_port()
    app = create_app(settings(root, port=port, **kw))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


def wait_for(pred: Callable[[], Any], timeout: float = 120, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def job_state(c: TestClient, job_id: str) -> dict[str, Any]:
    r = c.get(f"/api/v1/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def until_final(c: TestClient, job_id: str, timeout: float = 180) -> dict[str, Any]:
    final = ("ok", "failed", "cancelled")
    job: dict[str, Any] = wait_for(
        lambda: (j := job_state(c, job_id))["state"] in final and j, timeout, 0.2
    )
    return job
