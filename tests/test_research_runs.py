"""Walk-forward and stress as recorded runs (``workflows.walkforward.run_walk_forward``,
``workflows.stress.run_stress``): a real walk-forward of the tiny preset over a small synthetic
market in a real store, real run-registry files; refused requests record nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from analyzers.backtest import CostConfig
from btml.cli import main
from core.errors import ConfigError, DataError, ModelNotFound, SymbolNotFound
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from mlmodels.registry import ModelRegistry
from mlmodels.splits import WalkForward
from mlmodels.trainer import TrainConfig
from workflows.backtest import MLRunConfig, clip_range, run_baseline
from workflows.runs import RunRegistry
from workflows.runs_info import file_sha256
from workflows.stress import StressConfig, run_stress
from workflows.walkforward import WalkForwardConfig, WalkForwardRunResult, run_walk_forward

pytestmark = pytest.mark.timeout(900)
SYMBOLS = ("SYN000", "SYN001")
FILES = tuple(f"raw/stocks/1Day/{s}.parquet" for s in SYMBOLS)
TEST_BARS = 150
TRADING = MLRunConfig(min_edge=0.0, horizon_agreement=0)  # lets the timid tiny model trade
QUIET = {"log": lambda _: None}


def _request(**changes: Any) -> WalkForwardConfig:
    base: dict[str, Any] = {
        "symbols": SYMBOLS, "name": "rec", "window": 16, "ml": TRADING,
        "folds": WalkForward(n_splits=2, test_size=TEST_BARS),
        "train": TrainConfig(epochs=2, batch_size=64, lr=3e-3, patience=2, threads=1),
    }  # fmt: skip
    return WalkForwardConfig(**(base | changes))


def _db_rows(root: Path) -> list[str]:
    with closing(sqlite3.connect(root / "runs.sqlite")) as db:
        return list(db.iterdump())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    """Two symbols, 1200 daily bars from 2006, stored; one recorded two-fold walk-forward."""
    root = tmp_path_factory.mktemp("research-runs")
    store = ParquetStore(root)
    for frame in generate_market(SyntheticConfig(n_symbols=2, n_bars=1200, seed=3,
                                                 start="2006-01-02")).values():  # fmt: skip
        store.write(frame, merge=False)
    yield root, run_walk_forward(root, _request(tearsheet=True), **QUIET)


def test_the_walk_forward_run_records_one_trial_with_its_folds(recorded) -> None:
    """The folds of one walk-forward are one configuration tried (one seed), not a trial each:
    one trial row, the configuration beside its ``result`` with every fold's details."""
    root, out = recorded
    assert isinstance(out, WalkForwardRunResult)
    res = out.result
    with RunRegistry(root) as runs:
        rec, trials = runs.get(out.run_id), runs.trials(out.run_id)
    assert (rec.kind, rec.status, rec.n_trials) == ("walkforward", "ok", 1)
    assert rec.inputs == {f: file_sha256(root / f) for f in FILES}
    assert WalkForwardConfig.from_dict(rec.params) == out.config  # plain, resolved values
    assert rec.params["train"]["threads"] == 1 and rec.params["folds"]["n_splits"] == 2
    (trial,) = trials
    assert trial["train"]["seed"] == 0 and "threads" not in trial["train"]
    assert trial["folds"]["n_splits"] == 2 and trial["arch"] == "tiny" and "name" not in trial
    result = trial["result"]
    assert result["sharpe"] == pytest.approx(out.stitched.stats.sharpe, rel=1e-12)
    assert result["total_return"] == pytest.approx(out.stitched.stats.total_return, rel=1e-12)
    assert [f["fold"] for f in result["folds"]] == [1, 2]
    for fold, card, (_, row) in zip(result["folds"], res.cards, res.folds.iterrows(), strict=True):
        assert fold["model"] == card.ref and fold["model_config"] == card.model_config
        assert [fold[f"{k}_range"] for k in ("train", "val", "test")] == [
            card.date_ranges[k] for k in ("train", "val", "test")
        ]
        assert pd.Timestamp(fold["test_start"]) == row["test_start"]
        assert fold["return"] == pytest.approx(row["return"], rel=1e-12)
        assert fold["trades"] == row["trades"]
    # the first configuration on this data: deflated as one trial
    assert rec.metrics["dsr_n_trials"] == 1 and rec.metrics["dsr_prior_trials"] == 0
    assert rec.metrics["seeds"] == 1 and "pbo" not in rec.metrics


def test_the_walk_forward_run_keeps_the_stitched_returns_and_links_its_models(recorded) -> None:
    root, out = recorded
    res = out.result
    with RunRegistry(root) as runs:
        rec = runs.get(out.run_id)
    assert {"returns.parquet", "summary.json", "folds.csv", "tearsheet.html"} <= set(rec.artifacts)
    saved = pd.read_parquet(rec.dir / "returns.parquet").iloc[:, 0]
    assert len(saved) == 2 * TEST_BARS
    assert saved.to_numpy() == pytest.approx(res.returns.to_numpy(), rel=1e-12)
    folds = pd.read_csv(rec.dir / "folds.csv", index_col="fold")
    assert list(folds["model"]) == ["rec-f1:1", "rec-f2:1"]
    assert folds["sharpe"].tolist() == pytest.approx(res.folds["sharpe"].tolist(), rel=1e-12)
    assert rec.metrics["deflated_sharpe"] == pytest.approx(res.dsr["dsr"], rel=1e-12)
    assert rec.metrics["total_return"] == pytest.approx(out.stitched.stats.total_return)
    assert rec.metrics["folds"] == 2 and rec.metrics["bars"] == 2 * TEST_BARS
    reg = ModelRegistry(root / "models")
    assert [reg.card(c.ref).training_run for c in res.cards] == [out.run_id] * 2
    assert rec.dependents == ("model rec-f1:1", "model rec-f2:1")
    before = _db_rows(root)
    refused = CliRunner().invoke(main, ["--store", str(root), "runs", "rm", out.run_id, "--yes"])
    assert refused.exit_code == 2 and "is used by model rec-f1:1, model rec-f2:1" in refused.stderr
    assert _db_rows(root) == before and rec.dir.is_dir()


def test_the_walk_forward_is_benchmarked_by_buy_and_hold_over_its_test_bars(recorded) -> None:
    """Buy-and-hold of the same symbols over each fold's test segment, at the same costs,
    stitched like the folds: saved beside the walk-forward's returns, in its metrics, and
    the benchmark of its tearsheet."""
    root, out = recorded
    res = out.result
    frames = {s: ParquetStore(root).read(s, "1Day") for s in SYMBOLS}
    assert len(res.benchmarks) == 2
    for bench, (_, row) in zip(res.benchmarks, res.folds.iterrows(), strict=True):
        alone = run_baseline("buyhold", clip_range(frames, row["test_start"], row["test_end"]),
                             CostConfig())  # fmt: skip
        pd.testing.assert_series_equal(bench.returns, alone.returns)
    pd.testing.assert_series_equal(res.benchmark, pd.concat([b.returns for b in res.benchmarks]))
    pd.testing.assert_index_equal(res.benchmark.index, res.returns.index)
    saved = pd.read_parquet(out.run_dir / "returns.parquet")
    assert list(saved.columns) == ["walk-forward rec", "buy-and-hold"]
    assert saved["buy-and-hold"].to_numpy() == pytest.approx(res.benchmark.to_numpy(), rel=1e-12)
    with RunRegistry(root) as runs:
        metrics = runs.get(out.run_id).metrics
    total = float((1 + res.benchmark).prod() - 1)
    assert metrics["buyhold_total_return"] == pytest.approx(total, rel=1e-9)
    assert metrics["buyhold_bars"] == 2 * TEST_BARS
    page = (out.run_dir / "tearsheet.html").read_text()
    assert "walk-forward rec vs buy-and-hold" in page  # not "vs no benchmark"


def test_stress_records_a_trial_per_scenario(recorded) -> None:
    root, wf = recorded
    out = run_stress(root, StressConfig(model="rec-f2", symbols=SYMBOLS, ml=TRADING), **QUIET)
    with RunRegistry(root) as runs:
        rec, trials = runs.get(out.run_id), runs.trials(out.run_id)
    assert (rec.kind, rec.status) == ("stress", "ok")
    assert rec.params["model"] == "rec-f2:1"  # resolved to the version used
    assert rec.parents == (wf.run_id,)  # the run that trained the model
    model_files = {"models/rec-f2/v1/model_card.json", "models/rec-f2/v1/weights.pt"}
    assert set(rec.inputs) == set(FILES) | model_files
    assert [t["scenario"] for t in trials] == list(out.table["scenario"]) == [
        "GFC 2008-2009", "gap -20 % (all symbols)", "volatility x3 for 60 bars",
    ]  # fmt: skip
    assert [t["shock"]["kind"] for t in trials] == ["crash", "gap", "volatility"]
    assert trials[1]["shock"]["size"] == -0.2 and trials[2]["shock"]["factor"] == 3.0
    assert [t["return"] for t in trials] == pytest.approx(out.table["return"].tolist())
    saved = pd.read_csv(rec.dir / "stress.csv")
    assert saved["max_drawdown"].tolist() == pytest.approx(out.table["max_drawdown"].tolist())
    assert rec.metrics["scenarios"] == 3 and rec.metrics["limits_breached"] == out.limits_breached
    assert rec.metrics["worst_return"] == pytest.approx(out.table["return"].min())


@pytest.mark.parametrize(
    ("request_", "error", "message"),
    [
        ({"symbols": ("SYN000", "NOPE")}, SymbolNotFound, r"NOPE \(1Day\) is not in the store"),
        ({"folds": WalkForward(n_splits=5, test_size=500)}, DataError, "too few bars for 5 folds"),
        ({"arch": "tiney"}, ConfigError, "did you mean 'tiny'"),
        ({"index": "NOIDX"}, SymbolNotFound, r"NOIDX \(1Day\) is not in the store"),
    ],
)
def test_a_refused_walk_forward_records_nothing(recorded, request_, error, message) -> None:
    root, _ = recorded
    before, folders = _db_rows(root), sorted((root / "runs").iterdir())
    with pytest.raises(error, match=message):
        run_walk_forward(root, _request(name="refused", **request_), **QUIET)
    assert _db_rows(root) == before and sorted((root / "runs").iterdir()) == folders
    assert "refused-f1" not in ModelRegistry(root / "models").names()


def test_a_refused_stress_or_config_records_nothing(recorded) -> None:
    root, _ = recorded
    before, folders = _db_rows(root), sorted((root / "runs").iterdir())
    with pytest.raises(ModelNotFound, match="no model called 'nope'"):
        run_stress(root, StressConfig(model="nope", symbols=SYMBOLS), **QUIET)
    with pytest.raises(SymbolNotFound, match=r"NOPE \(1Day\) is not in the store"):
        run_stress(root, StressConfig(model="rec-f1", symbols=("NOPE",)), **QUIET)
    with pytest.raises(ConfigError, match="no symbols given"):
        StressConfig(model="rec-f1", symbols=())
    with pytest.raises(ConfigError, match="--name must be non-empty"):
        _request(name="a:b")
    with pytest.raises(ConfigError, match="serving must be one of"):
        _request(serving="ray")
    assert _db_rows(root) == before and sorted((root / "runs").iterdir()) == folders


def test_walkforward_cli_records_the_run_and_refuses_with_one_line(recorded) -> None:
    root, _ = recorded
    before = _db_rows(root)
    runner = CliRunner()
    base = ["--store", str(root), "walkforward", "--window", "16", "--epochs", "1"]
    bad = runner.invoke(main, [*base, "--symbols", "SYN000", "--folds", "0"])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: n_splits must be >= 1, got 0"
    assert _db_rows(root) == before
    res = runner.invoke(main, [*base, "--symbols", ",".join(SYMBOLS), "--name", "cli", "--folds",
                               "1", "--test-bars", str(TEST_BARS)])  # fmt: skip
    assert res.exit_code == 0, res.output
    run_id = res.stdout.split("recorded as run ")[1].split()[0]
    with RunRegistry(root) as runs:
        rec = runs.get(run_id)
    assert (rec.kind, rec.status, rec.n_trials) == ("walkforward", "ok", 1)
    assert rec.params["name"] == "cli" and rec.params["train"]["epochs"] == 1
    assert rec.dependents == ("model cli-f1:1",)
    # deflated by the fixture's walk-forward on the same data too (the stress run tried none)
    assert rec.metrics["dsr_n_trials"] == 2 and rec.metrics["dsr_prior_trials"] == 1
    assert "2 configurations tried on this data, 1 in earlier runs" in res.stdout
