"""``btml sweep`` (workflows.sweep, workflows.sweep_space): search spaces as data, a real study of
small walk-forwards on planted synthetic data stored in the run registry's database (SQLite; a
real PostgreSQL cluster in the slow tier), resumed with the same space, refused with another
(the database byte for byte unchanged), and the trials recorded in the run registry."""

from __future__ import annotations

import json
import sqlite3
import tomllib
from collections.abc import Iterator
from contextlib import closing
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
from tests.postgres import new_database, pg_cluster
from workflows.backtest import MLRunConfig
from workflows.executors import ExecutorConfig
from workflows.runs import RunRegistry
from workflows.sweep import (
    DEFAULT_SPACE,
    SearchSpace,
    StudyMismatch,
    SweepConfig,
    SweepResult,
    check_study,
    existing_studies,
    load_space,
    run_sweep,
)
from workflows.walkforward import WalkForwardConfig

pytestmark = pytest.mark.timeout(900)
SYMBOLS = ("SYN000", "SYN001")
PLANT = SyntheticConfig.pure_random_walk(
    n_symbols=2, n_bars=600, seed=3, planted_strength=0.3, start="2006-01-02"
)
SPACE_TOML = """
[train]
lr = {low = 1e-3, high = 1e-2, log = true}

[ml]
min_edge = {low = 0.0, high = 0.05}
allow_short = [true, false]
"""
SPACE = tomllib.loads(SPACE_TOML)
BASE = WalkForwardConfig(
    symbols=SYMBOLS, window=16, folds=WalkForward(n_splits=2, test_size=80),
    ml=MLRunConfig(min_edge=0.0, horizon_agreement=0),  # lets a briefly trained model trade
    train=TrainConfig(epochs=2, batch_size=64, patience=2, max_batches=10, refit_direction=False),
)  # fmt: skip
QUIET = {"log": lambda _: None}


def _request(**changes: Any) -> SweepConfig:
    return SweepConfig(**({"walkforward": BASE, "space": SPACE, "trials": 2, "startup_trials": 2,
                           "prune_after": 1, "batch": 2} | changes))  # fmt: skip


def _make_store(root: Path) -> Path:
    store = ParquetStore(root)
    for frame in generate_market(PLANT).values():
        store.write(frame, merge=False)
    return root


def _db_dump(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return list(db.iterdump())


# -- the search space ----------------------------------------------------------------------------


def test_a_space_reads_from_toml_and_json_alike(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(SPACE_TOML)
    flat = {"train.lr": {"low": 0.001, "high": 0.01, "log": True},
            "ml.min_edge": {"low": 0, "high": 0.05}, "ml.allow_short": [True, False]}  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps({"space": flat}))
    toml, js = load_space(tmp_path / "s.toml"), load_space(tmp_path / "s.json")
    assert toml == js
    assert [d.name for d in toml.dims] == ["ml.allow_short", "ml.min_edge", "train.lr"]
    assert toml.to_dict()["ml.min_edge"] == {"low": 0.0, "high": 0.05}  # floats, whatever given
    assert SearchSpace.parse(tomllib.loads(toml.to_toml())) == toml
    default = SearchSpace.parse(DEFAULT_SPACE)
    assert SearchSpace.parse(tomllib.loads(default.to_toml())) == default


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"train": {"lrate": {"low": 0.1, "high": 0.2}}},
            "unknown parameter.*did you mean 'train.lr'",
        ),
        ({"window": {"low": 30, "high": 20}}, "window: needs low < high"),
        ({"window": {"low": 16.5, "high": 20}}, "window: low, high and step must be integers"),
        ({"train.lr": {"low": 0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
        ({"arch": {"low": 1, "high": 2}}, "arch: give a list of choices"),
        ({"arch": ["tiny", "huge"]}, "arch = 'huge'.*unknown architecture"),
        ({"ml.min_edge": {"low": 0.0, "high": 2.0}}, "ml.min_edge = 2.0: min_edge must be in"),
        ({"model.dropout": {"low": 0.0, "high": 1.0}}, "dropout must be in"),
        ({"train.lr": {"low": 0.1, "high": 0.2, "steps": 2}}, "a range has low, high"),
        ({}, "no parameters"),
    ],
)
def test_a_bad_space_is_one_error_naming_the_parameter(space: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SweepConfig(walkforward=BASE, space=space)


def test_the_request_is_checked() -> None:
    with pytest.raises(ConfigError, match="give one seed"):
        SweepConfig(walkforward=WalkForwardConfig(symbols=SYMBOLS, seeds=3))
    with pytest.raises(ConfigError, match="study name"):
        SweepConfig(walkforward=BASE, study="a/b")
    with pytest.raises(ConfigError, match="unknown objective 'sharp'"):
        SweepConfig(walkforward=BASE, objective="sharp")
    cfg = _request()
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    # what a study is: its space, objective and base request less the searched values
    other_lr = _request(walkforward=BASE.__class__(**{**BASE.__dict__, "train": TrainConfig(
        epochs=2, batch_size=64, patience=2, max_batches=10, refit_direction=False, lr=0.5)}))  # fmt: skip
    assert other_lr.identity() == cfg.identity()
    assert _request(objective="sortino").identity() != cfg.identity()


def test_sweep_help_and_the_space_it_shows(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["sweep", "--help"])
    assert res.exit_code == 0
    for flag in ("--space", "--study", "--new-study", "--trials", "--objective", "--executor",
                 "--workers", "--ray-address", "--show-space"):  # fmt: skip
        assert flag in res.output
    shown = CliRunner().invoke(main, ["sweep", "--show-space"])
    assert shown.exit_code == 0
    assert SearchSpace.parse(tomllib.loads(shown.output)) == SearchSpace.parse(DEFAULT_SPACE)
    (tmp_path / "bad.toml").write_text("[train]\nlr = {low = 1, high = 0}\n")
    bad = CliRunner().invoke(
        main, ["sweep", "--symbols", "A", "--space", str(tmp_path / "bad.toml")]
    )
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and "train.lr" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0


# -- a real study in the registry's SQLite database -----------------------------------------------


@pytest.fixture(scope="module")
def swept(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, SweepResult, SweepResult]]:
    """Two trials of a new study, then one more resuming it (each trial: two folds)."""
    root = _make_store(tmp_path_factory.mktemp("sweep"))
    first = run_sweep(root, _request(), **QUIET)
    again = run_sweep(root, _request(trials=1), **QUIET)
    yield root, first, again


def test_the_study_lives_in_the_registry_database_and_resumes(swept) -> None:
    import optuna

    root, first, again = swept
    url = f"sqlite:///{(root / 'runs.sqlite').resolve()}"
    study = optuna.load_study(study_name="sweep", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert (first.study, first.resumed, again.study, again.resumed) == (
        "sweep",
        False,
        "sweep",
        True,
    )
    assert list(again.table.index.sort_values()) == [0, 1, 2]  # the study's trials, ranked
    assert set(again.table["run"]) == {first.run_id, again.run_id}
    ranked = again.table["objective"].tolist()
    assert ranked == sorted(ranked, reverse=True) and again.best is not None
    assert again.best["value"] == pytest.approx(study.best_value)
    params = [t.params for t in study.trials]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 3  # the resumed draw is new
    assert set(existing_studies(url)) == {"sweep"}


def test_every_trial_is_a_registry_trial_and_the_best_is_deflated_by_all(swept) -> None:
    root, first, again = swept
    with RunRegistry(root) as reg:
        rec, trials = reg.get(again.run_id), reg.trials(first.run_id)
        listed = CliRunner().invoke(main, ["--store", str(root), "runs", "list", "--kind", "sweep"])
    assert (rec.kind, rec.status, rec.n_trials) == ("sweep", "ok", 1)
    assert len(trials) == 2 and listed.exit_code == 0 and first.run_id in listed.output
    for n, trial in enumerate(trials):
        assert trial["result"]["state"] == "complete" and trial["result"]["trial"] == n
        assert trial["ml"]["min_edge"] == pytest.approx(first.table.loc[n, "ml.min_edge"])
        assert [f["fold"] for f in trial["result"]["folds"]] == [1, 2]
        assert "threads" not in trial["train"] and "name" not in trial
    # every configuration of the study counts: the first run's two, then the resumed one
    assert rec.metrics["dsr_n_trials"] == 3 and rec.metrics["dsr_prior_trials"] == 2
    assert rec.metrics["study"] == "sweep" and rec.metrics["study_trials"] == 3
    assert again.selection is not None and again.selection.pbo is not None  # 3 finished trials
    assert rec.metrics["pbo"] == pytest.approx(again.selection.pbo.pbo)
    assert {"summary.json", "trials.csv", "returns.parquet"} <= set(rec.artifacts)
    summary = json.loads((rec.dir / "summary.json").read_text())
    assert summary["best"]["trial"] == again.best["trial"] and summary["resumed"] is True
    returns = pd.read_parquet(first.run_dir / "returns.parquet")
    assert list(returns.columns) == ["t0", "t1"] and len(returns) == 2 * 80
    assert len(pd.read_csv(rec.dir / "trials.csv")) == 3
    assert rec.dependents == ("model sweep-t2-f1:1", "model sweep-t2-f2:1")  # its trial's models


def test_another_space_is_refused_and_the_database_is_untouched(swept) -> None:
    root, _, _ = swept
    db = root / "runs.sqlite"
    before, dump = db.read_bytes(), _db_dump(db)
    (root / "other.toml").write_text("[ml]\nmin_edge = {low = 0.0, high = 0.02}\n")
    args = ["--store", str(root), "sweep", "--symbols", ",".join(SYMBOLS), "--space",
            str(root / "other.toml"), "--folds", "2", "--test-bars", "80"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().count("\n") == 0
    assert "study 'sweep'" in res.stderr and "--new-study starts a fresh one" in res.stderr
    assert db.read_bytes() == before and _db_dump(db) == dump
    url = f"sqlite:///{db.resolve()}"
    with pytest.raises(StudyMismatch, match="another search space"):
        check_study(url, _request(space={"ml": {"min_edge": {"low": 0.0, "high": 0.02}}}))
    assert check_study(url, _request(new_study=True)) == ("sweep-2", False)
    assert check_study(url, _request(trials=7)) == ("sweep", True)
    assert db.read_bytes() == before


# -- slow: the same study on every executor, and on PostgreSQL ----------------------------------


@pytest.mark.slow
def test_the_process_executor_gives_the_serial_study(swept, tmp_path: Path) -> None:
    _, first, _ = swept
    root = _make_store(tmp_path / "process")
    ex = ExecutorConfig(kind="process", workers=2)
    out = run_sweep(root, _request(), executor=ex, **QUIET)
    cols = ["state", "objective", "sharpe", "trades", "train.lr", "ml.min_edge", "ml.allow_short"]
    pd.testing.assert_frame_equal(out.table[cols], first.table[cols], check_exact=True)


@pytest.mark.slow
def test_a_study_on_postgresql_resumes_and_refuses_another_space(tmp_path: Path, request) -> None:
    with pg_cluster() as pg:
        url = new_database(pg, request.node.name)
        root = _make_store(tmp_path / "pg")
        first = run_sweep(root, _request(), db_url=url, **QUIET)
        again = run_sweep(root, _request(trials=1), db_url=url, **QUIET)
        assert (first.resumed, again.resumed, len(again.table)) == (False, True, 3)
        with RunRegistry(root, url) as reg:
            assert reg.get(again.run_id).metrics["dsr_n_trials"] == 3
            n_runs = reg.count()
        with pytest.raises(StudyMismatch, match="'sweep' in postgresql"):
            run_sweep(root, _request(objective="sortino"), db_url=url, **QUIET)
        with RunRegistry(root, url) as reg:
            assert reg.count() == n_runs
        assert not (root / "runs.sqlite").exists()
