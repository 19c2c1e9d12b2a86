"""The run registry (workflows.runs) and ``btml runs``: real SQLite files, real processes, and
a real PostgreSQL cluster when the machine has one (skipped with the reason otherwise)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from btml.cli import main
from core.errors import ConfigError
from feeds.sample import load_sample
from feeds.store import ParquetStore
from tests.postgres import new_database, pg_cluster
from workflows import (
    RegistryError,
    RunInUse,
    RunNotFound,
    RunRegistry,
    RunStateError,
    code_version,
    file_sha256,
    new_run_id,
)
from workflows.runs_db import VERSION_TABLE, Base

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]
SPAWN = mp.get_context("spawn")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunRegistry]:
    with RunRegistry(tmp_path) as reg:
        yield reg


def _db_rows(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn, conn:
        return list(conn.iterdump())


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _cli(store: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["--store", str(store), "runs", *args], env=env)


# ---------------------------------------------------------------------------------------------
# ids, code version, hashes


def test_ids_made_in_sequence_sort_in_creation_order() -> None:
    ids = [new_run_id() for _ in range(500)]
    assert sorted(ids) == ids and len(set(ids)) == 500
    assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{6}", ids[0])
    frozen = datetime(2026, 12, 5, 10, 15, 2, tzinfo=UTC)  # a clock that stands still ...
    still = [new_run_id(frozen) for _ in range(50)]
    back = [new_run_id(frozen - timedelta(seconds=5)) for _ in range(50)]  # ... then steps back
    assert sorted(still + back) == still + back


def test_registry_ids_sort_like_runs_were_started(registry: RunRegistry) -> None:
    made = [registry.start("backtest").id for _ in range(30)]
    assert sorted(made) == made
    assert [r.id for r in registry.list(limit=None)] == made[::-1]


def test_code_version_is_git_describe_in_a_checkout() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not running from a git checkout")
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert code_version() == out.stdout.strip()


def test_file_sha256_of_real_bytes(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc" * 700_000)  # several read blocks
    import hashlib

    assert file_sha256(f) == hashlib.sha256(b"abc" * 700_000).hexdigest()


# ---------------------------------------------------------------------------------------------
# one run


def test_start_writes_folder_and_a_running_row(tmp_path: Path, registry: RunRegistry) -> None:
    data = tmp_path / "AAPL.parquet"
    data.write_bytes(b"not really parquet")
    run = registry.start("backtest", {"symbol": "AAPL", "fast": 5, "path": data},
                         inputs={"AAPL": file_sha256(data)})  # fmt: skip
    assert run.dir == tmp_path / "runs" / run.id and run.dir.is_dir()
    assert json.loads((run.dir / "params.json").read_text()) == {
        "symbol": "AAPL", "fast": 5, "path": str(data)}  # fmt: skip
    meta = json.loads((run.dir / "run.json").read_text())
    assert meta["status"] == "running" and meta["ended_at"] is None
    assert meta["inputs"] == {"AAPL": file_sha256(data)} and meta["code_version"] == code_version()
    with closing(sqlite3.connect(tmp_path / "runs.sqlite")) as conn, conn:
        row = conn.execute("SELECT kind, status, pid FROM runs WHERE id = ?", (run.id,)).fetchone()
    assert row == ("backtest", "running", os.getpid())


def test_the_context_manager_finishes_ok(registry: RunRegistry) -> None:
    with registry.start("train", {"epochs": 2}) as run:
        run.log_metrics({"loss": 0.5})
        run.log_metrics({"loss": 0.25, "acc": float("nan")})  # later values win, NaN is None
    rec = registry.get(run.id)
    assert rec.status == "ok" and rec.error is None and rec.ended_at is not None
    assert rec.metrics == {"loss": 0.25, "acc": None}
    assert json.loads((run.dir / "metrics.json").read_text()) == {"loss": 0.25, "acc": None}
    assert json.loads((run.dir / "run.json").read_text())["status"] == "ok"
    with pytest.raises(RunStateError):
        run.finish("ok")


def test_an_exception_marks_the_run_failed_and_is_reraised(registry: RunRegistry) -> None:
    with pytest.raises(ValueError, match="no bars for AAPL"), registry.start("backtest") as run:
        raise ValueError("no bars for AAPL")
    rec = registry.get(run.id)
    assert rec.status == "failed" and rec.error == "ValueError: no bars for AAPL"
    assert json.loads((run.dir / "run.json").read_text())["status"] == "failed"
    with pytest.raises(KeyboardInterrupt), registry.start("session") as live:
        raise KeyboardInterrupt
    assert registry.get(live.id).status == "cancelled"


def test_finish_rejects_an_unknown_status(registry: RunRegistry) -> None:
    run = registry.start("stress")
    with pytest.raises(RunStateError, match="ok"):
        run.finish("done")
    assert registry.get(run.id).status == "running"


def test_artifacts_named_or_copied_in(tmp_path: Path, registry: RunRegistry) -> None:
    outside = tmp_path / "report.html"
    outside.write_text("<html>")
    with registry.start("backtest") as run:
        run.add_artifact("trades.csv").write_text("a,b\n")
        copied = run.add_artifact(outside)
        nested = run.add_artifact(run.dir / "plots" / "equity.png")
        with pytest.raises(ConfigError):
            run.add_artifact("params.json")
        with pytest.raises(ConfigError):
            run.add_artifact("../escape.txt")
        with pytest.raises(ConfigError):
            run.add_artifact(tmp_path / "missing.txt")
    assert copied == run.dir / "report.html" and copied.read_text() == "<html>"
    assert nested.parent.is_dir()
    assert registry.get(run.id).artifacts == ("trades.csv", "report.html", "plots/equity.png")
    assert json.loads((run.dir / "run.json").read_text())["artifacts"][1] == "report.html"


def test_trials_are_recorded_and_counted(registry: RunRegistry) -> None:
    grid = [{"fast": f, "slow": 30} for f in (5, 10)]
    with registry.start("walkforward", trials=grid) as run:
        assert run.record_trials([{"fast": 20, "slow": 30}]) == 3
    assert registry.get(run.id).n_trials == 3
    assert registry.trials(run.id) == [*grid, {"fast": 20, "slow": 30}]
    assert json.loads((run.dir / "trials.json").read_text()) == registry.trials(run.id)


def test_backtests_no_longer_overwrite_each_other(registry: RunRegistry) -> None:
    runs = []
    for sharpe in (1.0, 2.0):
        with registry.start("backtest", {"symbol": "AAPL"}) as run:
            run.add_artifact("equity.csv").write_text(f"{sharpe}\n")
            run.log_metrics({"sharpe": sharpe})
        runs.append(run)
    assert runs[0].dir != runs[1].dir
    assert [(r.dir / "equity.csv").read_text() for r in runs] == ["1.0\n", "2.0\n"]


def test_get_by_unique_prefix_and_unknown_ids(registry: RunRegistry) -> None:
    run = registry.start("train")
    assert registry.get(run.id[:-3]).id == run.id
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        registry.get("nope")
    registry.start("train")
    with pytest.raises(RunNotFound, match="ambiguous"):
        registry.get(run.id[:8])
    with pytest.raises(RunNotFound):
        registry.start("backtest", parent_ids=["nope"])
    assert len(registry.list()) == 2  # the refused start left nothing behind
    assert len(list(registry.runs_dir.iterdir())) == 2


def test_unserialisable_params_are_refused_before_anything_is_written(
    registry: RunRegistry,
) -> None:
    with pytest.raises(ConfigError, match=r"params\.model"):
        registry.start("train", {"model": object()})
    assert registry.list() == [] and not any(registry.runs_dir.glob("*"))


# ---------------------------------------------------------------------------------------------
# dependencies and removal


def test_rm_refused_while_a_run_or_model_depends_on_it(tmp_path: Path) -> None:
    with RunRegistry(tmp_path) as reg:
        with reg.start("train") as parent:
            parent.add_artifact("weights.pt").write_bytes(b"\x00\x01")
        with reg.start("backtest", parent_ids=[parent.id]) as child:
            pass
        reg.link_model("tiny:v3", parent.id)
        assert reg.get(parent.id).dependents == (f"run {child.id}", "model tiny:v3")
        assert reg.get(child.id).parents == (parent.id,)
        before = (_db_rows(tmp_path / "runs.sqlite"), _folder_bytes(tmp_path / "runs"))
        with pytest.raises(RunInUse) as err:
            reg.remove(parent.id)
        assert err.value.dependents == (f"run {child.id}", "model tiny:v3")
    result = _cli(tmp_path, "rm", parent.id, "--yes")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and child.id in lines[0] and "model tiny:v3" in lines[0]
    assert (_db_rows(tmp_path / "runs.sqlite"), _folder_bytes(tmp_path / "runs")) == before

    with RunRegistry(tmp_path) as reg:
        assert reg.remove(child.id) == child.id
        with pytest.raises(RunInUse, match="model tiny:v3"):
            reg.remove(parent.id)
        assert reg.unlink_model("tiny:v3") == 1
        reg.remove(parent.id)
        assert reg.list() == [] and list((tmp_path / "runs").iterdir()) == []
        with closing(sqlite3.connect(tmp_path / "runs.sqlite")) as conn, conn:
            assert conn.execute("SELECT count(*) FROM run_depends").fetchone() == (0,)


def test_depends_on_after_start_and_rm_of_a_live_run(registry: RunRegistry) -> None:
    a = registry.start("import")
    a.finish()
    b = registry.start("train")
    b.depends_on(a.id)
    b.depends_on(a.id)  # twice is once
    with pytest.raises(ConfigError):
        b.depends_on(b.id)
    assert registry.get(a.id).dependents == (f"run {b.id}",)
    with pytest.raises(RunStateError, match="still running"):
        registry.remove(b.id)
    b.finish()
    registry.remove(b.id)
    assert registry.get(a.id).dependents == ()


# ---------------------------------------------------------------------------------------------
# lost runs


def _start_and_die(store: str, db_url: str | None, conn: Connection) -> None:
    reg = RunRegistry(store, db_url)
    run = reg.start("session", {"paper": True})
    conn.send(run.id)
    conn.close()
    os._exit(0)  # no finish, no clean-up: like a killed process


def test_runs_of_dead_processes_are_marked_lost(tmp_path: Path, registry: RunRegistry) -> None:
    mine = registry.start("session")
    parent_end, child_end = SPAWN.Pipe()
    proc = SPAWN.Process(target=_start_and_die, args=(str(tmp_path), None, child_end))
    proc.start()
    dead_id = parent_end.recv()
    proc.join(60)
    assert proc.exitcode == 0
    assert registry.get(dead_id).status == "running"
    assert registry.mark_lost() == [dead_id]
    rec = registry.get(dead_id)
    assert rec.status == "lost" and rec.ended_at is not None and str(proc.pid) in (rec.error or "")
    assert json.loads((rec.dir / "run.json").read_text())["status"] == "lost"
    assert registry.get(mine.id).status == "running" and registry.mark_lost() == []
    registry.remove(dead_id)  # a lost run is not running: it may go


def test_a_reused_pid_does_not_keep_a_run_alive(tmp_path: Path, registry: RunRegistry) -> None:
    run = registry.start("session")
    with (
        closing(sqlite3.connect(tmp_path / "runs.sqlite")) as conn,
        conn,
    ):  # same pid, another start time
        conn.execute("UPDATE runs SET pid_started = pid_started - 1000 WHERE id = ?", (run.id,))
    assert registry.mark_lost() == [run.id]
    run.finish("ok")  # the process was alive after all: its own finish wins
    assert registry.get(run.id).status == "ok"


# ---------------------------------------------------------------------------------------------
# the database


def _make_runs(store: str, db_url: str | None, worker: int, barrier: Any, conn: Connection) -> None:
    try:
        barrier.wait(60)
        with RunRegistry(store, db_url) as reg:  # both open a new database at once
            for i in range(10):
                with reg.start("sweep", {"worker": worker, "i": i}) as run:
                    run.log_metrics({"i": i})
                    run.record_trials([{"i": i}])
        conn.send("ok")
    except BaseException:
        conn.send(traceback.format_exc())


def _run_two_writers(store: Path, db_url: str | None) -> None:
    barrier = SPAWN.Barrier(2)
    pipes = [SPAWN.Pipe() for _ in range(2)]
    procs = [SPAWN.Process(target=_make_runs, args=(str(store), db_url, k, barrier, pipes[k][1]))
             for k in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    answers = [pipes[k][0].recv() if pipes[k][0].poll(120) else "no answer" for k in range(2)]
    for p in procs:
        p.join(60)
    assert answers == ["ok", "ok"], answers


def test_two_processes_open_and_write_one_new_sqlite_registry(tmp_path: Path) -> None:
    _run_two_writers(tmp_path, None)
    with RunRegistry(tmp_path) as reg:
        found = reg.list(limit=None)
        assert len(found) == 20 and len({r.id for r in found}) == 20
        assert {r.status for r in found} == {"ok"} and all(r.n_trials == 1 for r in found)
        assert {(r.params["worker"], r.params["i"]) for r in found} == {
            (w, i) for w in range(2) for i in range(10)}  # fmt: skip
    assert len(list((tmp_path / "runs").iterdir())) == 20
    with closing(sqlite3.connect(tmp_path / "runs.sqlite")) as conn, conn:
        assert conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [("0001",)]


def test_the_migrations_build_exactly_the_models(registry: RunRegistry, tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'runs.sqlite'}")
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(ctx, Base.metadata) == []
    engine.dispose()


def test_a_file_that_is_not_sqlite_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    db.write_bytes(b"PAR1 something else")
    with pytest.raises(RegistryError, match="not an SQLite database"):
        RunRegistry(tmp_path)
    assert db.read_bytes() == b"PAR1 something else"
    assert _cli(tmp_path, "list").exit_code == 1


# ---------------------------------------------------------------------------------------------
# btml runs


def _two_runs(store: Path) -> tuple[str, str]:
    with RunRegistry(store) as reg:
        with reg.start("backtest", {"symbol": "AAPL"}) as a:
            a.log_metrics({"sharpe": 1.234567, "trades": 10, "final_value": 1234567.891})
        with reg.start("backtest", {"symbol": "MSFT"}) as b:
            b.log_metrics({"sharpe": 0.5, "max_drawdown": -0.000123})
        reg.start("train")
    return a.id, b.id


def test_cli_compare_puts_runs_side_by_side(tmp_path: Path) -> None:
    a, b = _two_runs(tmp_path)
    result = _cli(tmp_path, "compare", a, b)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["metric", a, b]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:]}
    assert rows == {"sharpe": ["1.2346", "0.5000"], "trades": ["10", "-"],
                    "final_value": ["1,234,567.89", "-"], "max_drawdown": ["-", "-1.230e-04"]}  # fmt: skip
    parsed = json.loads(_cli(tmp_path, "compare", a, b, "--json").stdout)
    assert parsed["runs"] == [a, b]
    assert parsed["metrics"]["trades"] == {a: 10, b: None}


def test_cli_list_and_show_with_json(tmp_path: Path) -> None:
    a, b = _two_runs(tmp_path)
    listed = json.loads(_cli(tmp_path, "list", "--json").stdout)
    assert [r["kind"] for r in listed] == ["train", "backtest", "backtest"]
    only = json.loads(_cli(tmp_path, "list", "--kind", "backtest", "--limit", "1", "--json").stdout)
    assert [r["id"] for r in only] == [b]
    text = _cli(tmp_path, "list", "--status", "ok")
    assert text.exit_code == 0 and a in text.stdout and "train" not in text.stdout
    shown = json.loads(_cli(tmp_path, "show", a, "--json").stdout)
    assert shown["params"] == {"symbol": "AAPL"} and shown["status"] == "ok"
    assert shown["metrics"]["trades"] == 10 and shown["dir"] == str(tmp_path / "runs" / a)
    human = _cli(tmp_path, "show", a[:-2])
    assert (
        human.exit_code == 0
        and "symbol = AAPL" in human.stdout
        and "sharpe = 1.2346" in human.stdout
    )


@pytest.mark.parametrize("args", [["show", "nope"], ["show", "nope", "--json"], ["rm", "nope"],
                                  ["compare", "nope", "nope2"]])  # fmt: skip
def test_cli_unknown_id_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    _two_runs(tmp_path)
    result = _cli(tmp_path, *args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: no run 'nope' in {tmp_path / 'runs.sqlite'}; `btml runs list` shows the runs"]  # fmt: skip


def test_cli_in_a_real_process_unknown_id_exit_2(tmp_path: Path) -> None:
    _two_runs(tmp_path)
    out = subprocess.run([sys.executable, "-m", "btml.cli", "--store", str(tmp_path), "runs",
                          "show", "nope"], capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "no run 'nope'" in out.stderr


def test_cli_rm_asks_unless_yes_and_prints_json(tmp_path: Path) -> None:
    a, b = _two_runs(tmp_path)
    no = CliRunner().invoke(main, ["--store", str(tmp_path), "runs", "rm", a], input="n\n")
    assert no.exit_code == 1 and (tmp_path / "runs" / a).is_dir()
    yes = CliRunner().invoke(main, ["--store", str(tmp_path), "runs", "rm", a], input="y\n")
    assert yes.exit_code == 0 and not (tmp_path / "runs" / a).exists()
    assert json.loads(_cli(tmp_path, "rm", b, "--yes", "--json").stdout) == {"removed": b}


def test_cli_db_option_and_env_var(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "reg.sqlite"
    url = f"sqlite:///{other}"
    with RunRegistry(tmp_path / "store", url) as reg:
        reg.start("stress").finish()
    store = tmp_path / "store"
    assert json.loads(_cli(store, "list", "--json").stdout) == []
    by_env = json.loads(_cli(store, "list", "--json", env={"BTML_DB": url}).stdout)
    by_flag = CliRunner().invoke(
        main, ["--store", str(store), "runs", "--db", url, "list", "--json"]
    )
    by_group = CliRunner().invoke(
        main, ["--store", str(store), "--db", url, "runs", "list", "--json"]
    )
    kinds = [[r["kind"] for r in json.loads(res.stdout)] for res in (by_flag, by_group)]
    assert [r["kind"] for r in by_env] == ["stress"] and kinds == [["stress"], ["stress"]]


def _store_ibm(root: Path) -> Path:
    ParquetStore(root).write(load_sample(adjusted=True)["IBM"].loc["2010"], merge=False)
    return root


def _backtest(store: Path, *group: str, env: dict[str, str] | None = None) -> Any:
    cli = [*group, "backtest", "--baseline", "sma", "--symbols", "IBM"]
    return CliRunner().invoke(main, ["--store", str(store), *cli], env=env)


def _recorded(res: Any) -> str:
    """The run id a command printed (``recorded as run ID ...``)."""
    found = re.search(r"recorded as run (\S+)", res.stdout)
    assert found, res.output
    return found.group(1)


def _run_ids(store: Path, *group: str, env: dict[str, str] | None = None) -> list[str]:
    res = CliRunner().invoke(main, ["--store", str(store), *group, "runs", "list", "--json"],
                             env=env)  # fmt: skip
    assert res.exit_code == 0, res.output
    return [r["id"] for r in json.loads(res.stdout)]


def test_btml_db_records_a_command_where_btml_runs_reads(tmp_path: Path) -> None:
    """``btml --db URL`` (or ``BTML_DB``) is the registry of every command, not only of
    ``btml runs``: the backtest is recorded there and the store's own SQLite never sees it."""
    store = _store_ibm(tmp_path / "store")
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'reg.sqlite'}"
    by_flag, by_env = _backtest(store, "--db", url), _backtest(store, env={"BTML_DB": url})
    assert by_flag.exit_code == 0 and by_env.exit_code == 0, by_flag.output + by_env.output
    made = [_recorded(r) for r in (by_flag, by_env)]
    assert sorted(_run_ids(store, "--db", url)) == sorted(made)
    assert _run_ids(store, env={"BTML_DB": url}) == _run_ids(store, "--db", url)
    assert not (store / "runs.sqlite").exists() and _run_ids(store) == []
    assert {p.name for p in (store / "runs").iterdir()} == set(made)  # folders stay in the store
    assert _backtest(store).exit_code == 0  # without --db: the store's SQLite
    assert len(_run_ids(store)) == 1 and len(_run_ids(store, "--db", url)) == 2


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "error: run registry: 'not a url' is not a database URL"),
        ("nosuchdb://h/x", "error: run registry: 'nosuchdb://h/x' is not a database URL"),
        ("sqlite://", "error: run registry: give SQLite a file, not an in-memory database"),
    ],
    ids=["garbage", "unknown-database", "in-memory"],
)
def test_a_bad_btml_db_fails_with_one_line_before_any_work(
    tmp_path: Path, url: str, message: str
) -> None:
    store = _store_ibm(tmp_path)
    before = _folder_bytes(store)
    for res in (_backtest(store, "--db", url), _backtest(store, env={"BTML_DB": url})):
        assert res.exit_code == 2 and res.stdout == "", res.output
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith(message)
    assert _folder_bytes(store) == before  # no run folder, no registry file


# ---------------------------------------------------------------------------------------------
# PostgreSQL (a throw-away cluster from tests/postgres.py)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with pg_cluster("btml-runs-pg-") as url:
        yield url


@pytest.fixture
def pg_db(pg_url: str, request: pytest.FixtureRequest) -> str:
    """A new empty database on the cluster for one test."""
    return new_database(pg_url, "r_" + request.node.name)


def test_postgresql_round_trip_and_refused_rm(tmp_path: Path, pg_db: str) -> None:
    with RunRegistry(tmp_path, pg_db) as reg:
        with reg.start("train", {"epochs": 1}, trials=[{"lr": 1e-3}]) as parent:
            parent.log_metrics({"loss": 0.1})
        child = reg.start("backtest", parent_ids=[parent.id])
        reg.link_model("tiny:v1", parent.id)
        with pytest.raises(RunInUse):
            reg.remove(parent.id)
    with RunRegistry(tmp_path, pg_db) as again:  # reopened: already at head
        rec = again.get(parent.id)
        assert rec.status == "ok" and rec.metrics == {"loss": 0.1} and rec.n_trials == 1
        assert rec.dependents == (f"run {child.id}", "model tiny:v1")
        assert again.compare([parent.id, child.id]).values == {"loss": (0.1, None)}
    assert not (tmp_path / "runs.sqlite").exists()
    result = _cli(tmp_path, "rm", parent.id, "--yes", env={"BTML_DB": pg_db})
    assert result.exit_code == 2 and "model tiny:v1" in result.stderr


def test_a_command_records_its_run_in_postgresql_through_btml_db(
    tmp_path: Path, pg_db: str
) -> None:
    store = _store_ibm(tmp_path)
    res = _backtest(store, env={"BTML_DB": pg_db})
    assert res.exit_code == 0, res.output
    run = _recorded(res)
    assert _run_ids(store, env={"BTML_DB": pg_db}) == [run] == _run_ids(store, "--db", pg_db)
    assert not (store / "runs.sqlite").exists()
    with RunRegistry(store, pg_db) as reg:
        rec = reg.get(run)
    assert (rec.kind, rec.status, rec.params["baseline"]) == ("backtest", "ok", "sma")
    assert rec.metrics["bars"] > 200 and "returns.parquet" in rec.artifacts


def test_two_processes_open_and_write_one_new_postgresql_registry(
    tmp_path: Path, pg_db: str
) -> None:
    _run_two_writers(tmp_path, pg_db)
    with RunRegistry(tmp_path, pg_db) as reg:
        found = reg.list(limit=None)
        assert len({r.id for r in found}) == 20 and {r.status for r in found} == {"ok"}
