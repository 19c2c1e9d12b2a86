"""The executors (workflows.executors): ordered results, bounded torch threads, no broker keys in
the workers' environments (read from the workers themselves and from /proc/PID/environ), and
the same walk-forward on every executor (the Ray one on a local runtime of 2 CPUs, slow tier)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from btml.cli import main
from core.errors import ConfigError
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from mlmodels.splits import WalkForward
from mlmodels.trainer import TrainConfig
from workflows.backtest import MLRunConfig
from workflows.executors import (
    Executor,
    ExecutorConfig,
    ProcessExecutor,
    SerialExecutor,
    open_executor,
    scrubbed_environ,
    worker_environ,
)
from workflows.walkforward import WalkForwardConfig, run_walk_forward

pytestmark = pytest.mark.timeout(600)
SECRETS = {
    "APCA_API_KEY_ID": "PKEXECUTORTEST0001",
    "APCA_API_SECRET_KEY": "executor-test-secret-0001",
    "ALPACA_API_KEY": "PKEXECUTORTEST0002",
    "BTML_DB": "postgresql+psycopg://btml:hunter2@db/btml",
}


def probe(delay: float) -> dict[str, Any]:
    """What a worker sees: its pid, torch threads, the secrets in its os.environ and in its
    initial environment (/proc/self/environ); sleeps ``delay`` first (to finish out of order)."""
    import torch

    time.sleep(delay)
    initial = Path("/proc/self/environ").read_bytes() if sys.platform == "linux" else b""
    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "delay": delay,
            "env": sorted(k for k in SECRETS if k in os.environ),
            "proc": sorted(k for k in SECRETS if f"{k}=".encode() in initial)}  # fmt: skip


def fails(x: int) -> int:
    if x == 2:
        raise ConfigError(f"task {x} refused")
    return x


@pytest.fixture(scope="module")
def workers() -> Iterator[ProcessExecutor]:
    """Two process workers started while the broker's keys are in this process's environment."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SECRETS.items():
            mp.setenv(k, v)
        ex = ProcessExecutor(2, threads=1)
        try:
            ex.map(probe, [0.0, 0.0])  # start both workers now, the keys set
            yield ex
        finally:
            ex.close()


def _check_workers(ex: Executor) -> None:
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SECRETS.items():
            mp.setenv(k, v)
        seen = ex.map(probe, [0.6, 0.3, 0.0, 0.0])
        assert all(os.environ[k] == v for k, v in SECRETS.items())  # ours are left as they were
    assert [s["delay"] for s in seen] == [0.6, 0.3, 0.0, 0.0]  # in the tasks' order
    assert {s["pid"] for s in seen}.isdisjoint({os.getpid()})
    for s in seen:
        assert s["env"] == [] and s["proc"] == [], s
        assert s["threads"] == ex.threads
        if sys.platform == "linux":  # and from outside, in case the worker's copy was edited
            initial = Path(f"/proc/{s['pid']}/environ").read_bytes()
            assert not any(v.encode() in initial for v in SECRETS.values())


def test_process_workers_return_in_order_on_one_thread_without_the_keys(workers) -> None:
    _check_workers(workers)


def test_a_task_error_reaches_the_caller_as_itself(workers) -> None:
    with pytest.raises(ConfigError, match="task 2 refused"):
        workers.map(fails, [1, 2, 3])
    assert workers.map(fails, [3, 1]) == [3, 1]  # the pool survives it


def test_the_serial_executor_runs_here_in_order() -> None:
    ex = SerialExecutor()
    assert ex.local and ex.map(fails, [3, 1]) == [3, 1]
    assert ex.map(os.getpid, []) == []


def test_secrets_are_kept_out_and_the_environment_restored(monkeypatch) -> None:
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BTML_STORE", "/data")
    assert set(SECRETS).isdisjoint(worker_environ()) and worker_environ()["BTML_STORE"] == "/data"
    before = dict(os.environ)
    with scrubbed_environ({"OMP_NUM_THREADS": "1"}):
        assert set(SECRETS).isdisjoint(os.environ) and os.environ["OMP_NUM_THREADS"] == "1"
    assert dict(os.environ) == before


def test_executor_config_is_checked() -> None:
    assert ExecutorConfig().kind == "serial" and ExecutorConfig(workers=3).n_workers == 3
    with pytest.raises(ConfigError, match="unknown executor 'proces'.*did you mean 'process'"):
        ExecutorConfig(kind="proces")
    with pytest.raises(ConfigError, match="workers must be in"):
        ExecutorConfig(kind="process", workers=0)
    with pytest.raises(ConfigError, match="--ray-address needs --executor ray"):
        ExecutorConfig(kind="process", ray_address="10.0.0.1:6379")
    assert isinstance(open_executor(ExecutorConfig()), SerialExecutor)


def test_ray_without_ray_installed_is_one_line_and_exit_2(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as when not installed
    with pytest.raises(ConfigError, match=r"needs Ray.*backtrader-ml\[ray\]"):
        ExecutorConfig(kind="ray")
    for cmd in (["walkforward"], ["sweep"]):
        res = CliRunner().invoke(
            main, ["--store", str(tmp_path), *cmd, "--symbols", "AAPL", "--executor", "ray"]
        )
        assert res.exit_code == 2, res.output
        assert res.stderr.strip().count("\n") == 0 and "pip install" in res.stderr
        assert "Traceback" not in res.output


# -- the same walk-forward on every executor (slow: trains 2 x 3 small models, starts Ray) -------

SYMBOLS = ("SYN000", "SYN001")


def _walk_forward(root: Path, executor: Any) -> pd.Series:
    if not root.exists():
        store = ParquetStore(root)
        for frame in generate_market(SyntheticConfig(n_symbols=2, n_bars=600, seed=3,
                                                     start="2006-01-02")).values():  # fmt: skip
            store.write(frame, merge=False)
    cfg = WalkForwardConfig(
        symbols=SYMBOLS, name="ex", window=16, ml=MLRunConfig(min_edge=0.0, horizon_agreement=0),
        folds=WalkForward(n_splits=2, test_size=80),
        train=TrainConfig(epochs=2, batch_size=64, lr=3e-3, patience=2, max_batches=10,
                          refit_direction=False),
    )  # fmt: skip
    out = run_walk_forward(root, cfg, log=lambda _: None, executor=executor)
    assert list(out.result.folds["model"]) == ["ex-f1:1", "ex-f2:1"]
    return out.result.returns


@pytest.mark.slow
def test_process_and_ray_walk_forwards_equal_the_serial_one(tmp_path) -> None:
    """Exactly the same stitched returns (fresh stores, so the same model versions too); Ray on
    a local runtime of 2 CPUs started for the test, its workers without the broker's keys."""
    serial = _walk_forward(tmp_path / "serial", None)
    process = _walk_forward(tmp_path / "process", ExecutorConfig(kind="process", workers=2))
    pd.testing.assert_series_equal(process, serial, check_exact=True)
    pytest.importorskip("ray", reason="pip install 'backtrader-ml[ray]' (make installs it)")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in SECRETS.items():
            mp.setenv(k, v)
        ray_ex = open_executor(ExecutorConfig(kind="ray", workers=2))
    try:
        on_ray = _walk_forward(tmp_path / "ray", ray_ex)
        pd.testing.assert_series_equal(on_ray, serial, check_exact=True)
        _check_workers(ray_ex)
    finally:
        ray_ex.close()
