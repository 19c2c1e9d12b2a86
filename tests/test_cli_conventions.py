"""The ``btml`` group's process settings: ``-v`` / ``-q`` (the project's log level, set up only in
the CLI) and the torch threads (``--threads`` / ``BTML_THREADS``, default min(cores, 4)).

Real commands show the effects: ``data download`` from Alpaca (served recorded bodies on a
loopback server) logs its request at DEBUG, and ``backtest --serving inprocess`` runs the
model's handler, which logs at INFO how many torch threads it has.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from brokers.alpaca.sim.loopback import LoopbackServer
from btml.cli import main
from btml.common import (
    MAX_DEFAULT_THREADS,
    PROJECT_LOGGERS,
    THREADS_ENV,
    apply_threads,
    cores,
    default_threads,
    log_level,
)

FIXTURES = Path(__file__).parent / "fixtures" / "alpaca"
REQUESTED = "DEBUG feeds.sources.alpaca: alpaca: requesting AAPL 1Day bars"
READY = "INFO serving.handler: btml handler ready: m:1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (THREADS_ENV, "BTML_SERVE_THREADS", "BTML_STORE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def alpaca(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    """Alpaca's historical bars on a loopback server (two recorded AAPL days), keys in the env."""
    recorded = json.loads((FIXTURES / "data__test_historical_stock_data.json").read_text())
    body = next(r["body"] for r in recorded["responses"] if r["test"] == "test_get_bars")
    with LoopbackServer() as srv:
        srv.route("GET", "/v2/stocks/bars", {"bars": body["bars"], "next_page_token": None})
        monkeypatch.setenv("BTML_ALPACA_DATA_URL", srv.base_url)
        monkeypatch.setenv("APCA_API_KEY_ID", "PKCLICONVENTIONS01")
        monkeypatch.setenv("APCA_API_SECRET_KEY", "cli-conventions-secret-0001")
        yield srv


def _download(store: Path, *flags: str) -> Any:
    args = ["--store", str(store), *flags, "data", "download", "AAPL", "--source", "alpaca"]
    return CliRunner().invoke(main, [*args, "--start", "2022-01-01", "--end", "2022-03-01"])


def test_verbose_shows_the_debug_lines_and_the_default_does_not(
    alpaca: LoopbackServer, tmp_path: Path
) -> None:
    res = _download(tmp_path / "v", "-v")
    assert res.exit_code == 0, res.output
    assert REQUESTED in res.stderr  # the source's debug line, on stderr
    assert REQUESTED not in res.stdout
    for i, flags in enumerate([(), ("-q",)]):
        res = _download(tmp_path / str(i), *flags)
        assert res.exit_code == 0, res.output
        assert "DEBUG" not in res.stderr, flags
    assert len(alpaca.requests) == 3  # each run made the request (logged or not)


def test_verbose_and_quiet_together_are_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["--store", str(tmp_path), "-v", "-q", "data", "list"])
    assert res.exit_code == 2
    assert "-v/--verbose and -q/--quiet exclude each other" in res.stderr


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with AAPL (2010-2013 of the embedded sample) and an untrained ``tiny`` m:1."""
    from feeds.sample import load_sample
    from feeds.store import ParquetStore
    from mlmodels.features import feature_names
    from mlmodels.pipeline import register_untrained
    from mlmodels.registry import ModelRegistry

    root = tmp_path_factory.mktemp("conventions")
    ParquetStore(root).write(load_sample(adjusted=True)["AAPL"].loc["2010":], merge=False)
    features = list(feature_names(False))
    register_untrained(ModelRegistry(root / "models"), "tiny", "m", features=features, window=8)
    return root


BACKTEST = ["backtest", "--model", "m:1", "--symbols", "AAPL", "--start", "2012-10-01"]
TRAIN = ["train", "--symbols", "AAPL", "--epochs", "1", "--window", "8", "--batch-size", "64"]


def _project_logging() -> list[tuple[int, list[logging.Handler]]]:
    return [(lg.level, list(lg.handlers)) for lg in map(logging.getLogger, PROJECT_LOGGERS)]


def test_quiet_hides_the_info_lines(model_store: Path) -> None:
    before = _project_logging()
    runner = CliRunner()
    res = runner.invoke(main, ["--store", str(model_store), *BACKTEST, "--serving", "inprocess"])
    assert res.exit_code == 0, res.output
    assert READY in res.stderr  # the model handler's info line, shown by default
    res = runner.invoke(
        main, ["--store", str(model_store), "-q", *BACKTEST, "--serving", "inprocess"]
    )
    assert res.exit_code == 0, res.output
    assert "INFO" not in res.stderr and "ml m:1" in res.stdout  # quiet, and it still ran
    assert _project_logging() == before  # the CLI's logging set-up ends with the command


def _trained_threads(store: Path, output: str) -> Any:
    """The torch threads the training run recorded (``btml runs show ID --json``)."""
    run_id = output.rsplit("recorded as run ", 1)[1].split()[0]
    res = CliRunner().invoke(main, ["--store", str(store), "runs", "show", run_id, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["params"]["threads"]


def test_training_runs_with_the_threads_of_btml_threads(model_store: Path) -> None:
    import torch

    before = torch.get_num_threads()
    runner = CliRunner()
    default = min(len(os.sched_getaffinity(0)), 4)  # the cores this process may use, up to 4
    for flags, threads in [((), default), (("--threads", "1"), 1)]:
        res = runner.invoke(main, ["--store", str(model_store), *flags, *TRAIN])
        assert res.exit_code == 0, res.output
        assert _trained_threads(model_store, res.stdout) == threads, flags
        # set for the command only: this process keeps its own threads and environment
        assert torch.get_num_threads() == before and THREADS_ENV not in os.environ


@pytest.mark.skipif(cores() < 2, reason="one core: one thread is also the default")
def test_a_new_process_takes_its_threads_from_btml_threads(model_store: Path) -> None:
    # a fresh process imports torch only inside the command, after the group set the threads
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env[THREADS_ENV] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "btml", "--store", str(model_store), *TRAIN],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _trained_threads(model_store, proc.stdout) == 1


def test_a_bad_btml_threads_is_a_usage_error(tmp_path: Path) -> None:
    for value in ("0", "many"):
        res = CliRunner(env={THREADS_ENV: value}).invoke(
            main, ["--store", str(tmp_path), "data", "list"]
        )
        assert res.exit_code == 2, value
        assert "--threads" in res.stderr, res.stderr


# -- the helpers in btml/common.py ----------------------------------------------------------------


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 2), (4, 4), (8, 4), (64, 4), (0, 1)])
def test_default_threads_are_the_cores_up_to_four(cores: int, threads: int) -> None:
    assert default_threads(cores) == threads
    assert 1 <= default_threads() <= MAX_DEFAULT_THREADS


def test_log_levels() -> None:
    assert log_level(verbose=False, quiet=False) == logging.INFO
    assert log_level(verbose=True, quiet=False) == logging.DEBUG
    assert log_level(verbose=False, quiet=True) == logging.WARNING


class FakeTorch:
    """What ``apply_threads`` uses of torch, recorded (the test process's torch is not touched)."""

    def __init__(self, threads: int) -> None:
        self.threads, self.calls = threads, [threads]

    def get_num_threads(self) -> int:
        return self.threads

    def set_num_threads(self, n: int) -> None:
        self.threads = n
        self.calls.append(n)


def test_apply_threads_sets_the_environment_and_an_imported_torch_then_undoes_it() -> None:
    env = {"OMP_NUM_THREADS": "8", "PATH": "/bin"}
    undo = apply_threads(3, env, {})  # torch not imported yet: it will read OMP_NUM_THREADS
    assert env == {"OMP_NUM_THREADS": "3", THREADS_ENV: "3", "PATH": "/bin"}
    undo()
    assert env == {"OMP_NUM_THREADS": "8", "PATH": "/bin"}
    torch = FakeTorch(16)
    undo = apply_threads(2, env, {"torch": torch})  # already imported: set it directly too
    assert torch.threads == 2 and env["OMP_NUM_THREADS"] == "2"
    undo()
    assert torch.calls == [16, 2, 16] and env == {"OMP_NUM_THREADS": "8", "PATH": "/bin"}
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="threads must be >= 1"):
        apply_threads(0, env, {})
