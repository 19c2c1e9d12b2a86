"""What walk-forwards and sweeps report (research issue): every head over all the folds' test
samples against its naive baseline, the folds' activity summed, the survivorship warning of an
index of today's constituents, ``--entry-rule`` chosen per fold, a sweep's best trial rerun as
a walk-forward counting once, and a trial the median pruner stops.

Real tiny trainings, backtests and registries over a small trending synthetic market stored
under the ``small`` universe's names, beside an index built from that universe."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from btml.cli import main
from feeds.index import IndexConfig, build_from_store
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from feeds.universes import UNIVERSES, survivorship_warning
from mlmodels.dataset import DatasetConfig
from mlmodels.splits import WalkForward
from mlmodels.trainer import TrainConfig
from workflows.backtest import MLRunConfig
from workflows.runs import RunRegistry
from workflows.runs_trials import Trial
from workflows.sweep import StudyMismatch, SweepConfig, SweepResult, check_study, run_sweep
from workflows.sweep_space import IDENTITY, apply_params, open_storage, trial_config
from workflows.train import read_stored
from workflows.walkforward import (
    WalkForwardConfig,
    WalkForwardRunResult,
    plan_walk_forward,
    run_walk_forward,
    seed_config,
)
from workflows.walkforward_report import BASELINES_NOTE, stitched_report

pytestmark = pytest.mark.timeout(900)
# a steady uptrend: being long earns a clearly positive Sharpe ratio on every test segment
MARKET = SyntheticConfig(
    n_symbols=10, n_bars=600, seed=3, start="2006-01-02", drift=1.0, annual_vol=0.15,
    regimes=None, garch=None, jump_prob=0.0,
)  # fmt: skip
SYMBOLS = ("AAPL", "MSFT")
TEST_BARS = 80
TRADING = MLRunConfig(min_edge=0.0, horizon_agreement=0, sizer="fixed")  # a brief model trades
NEVER = MLRunConfig(entry_rule="return", min_return=0.9)  # 90 % expected: never enters
BASE = WalkForwardConfig(
    symbols=SYMBOLS, name="wr", window=16, ml=TRADING,
    folds=WalkForward(n_splits=2, test_size=TEST_BARS),
    train=TrainConfig(epochs=2, batch_size=64, patience=2, max_batches=10, refit_direction=False,
                      threads=1),
)  # fmt: skip
WARNING = f"index TODAY: {survivorship_warning('small')}"
QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``small`` universe's ten names as a synthetic market, and index TODAY built from
    the universe (today's constituents: its frame carries the survivorship warning)."""
    root = tmp_path_factory.mktemp("wf-report")
    st = ParquetStore(root)
    for sym, frame in zip(UNIVERSES["small"], generate_market(MARKET).values(), strict=True):
        frame.attrs["symbol"] = sym
        st.write(frame, merge=False)
    build_from_store(st, IndexConfig(name="TODAY", universe="small"), "1Day")
    assert ParquetStore(root).read("TODAY").attrs["survivorship"] == survivorship_warning("small")
    return root


@pytest.fixture(scope="module")
def wf(store: Path) -> WalkForwardRunResult:
    return run_walk_forward(store, BASE, **QUIET)


def _metrics(store: Path, run_id: str) -> dict[str, Any]:
    with RunRegistry(store) as reg:
        return dict(reg.get(run_id).metrics)


def _cli(store: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--store", str(store), "--threads", "1", *args])


# -- every head, stitched over the folds' test samples ------------------------------------------


def test_each_head_is_reported_over_every_folds_test_samples(store: Path, wf) -> None:
    """Before: each fold's card had its report and the walk-forward none (no ``oos_*``)."""
    report, cards = wf.result.report, wf.result.cards
    assert report is not None and report["folds"] == 2 and report["baselines"] == BASELINES_NOTE
    per_fold = [c.metrics["report"] for c in cards]
    assert report["n"] == sum(r["n"] for r in per_fold)
    assert report["dates"] == sum(r["dates"] for r in per_fold)  # the segments do not overlap
    n = np.array([r["n"] for r in per_fold])
    for head, metric in [("direction", "accuracy"), ("direction", "logloss"),
                         *((f"price_{h}", "hit_rate") for h in (1, 4, 24))]:  # fmt: skip
        folds = [r["heads"][head]["models"]["network"][metric]["value"] for r in per_fold]
        got = report["heads"][head]["models"]["network"][metric]["value"]
        assert got == pytest.approx(float(np.average(folds, weights=n)), rel=1e-9)  # pooled
    # the naive baselines only, said so; the trained ones stay in the folds' cards
    assert set(report["heads"]["direction"]["models"]) == {"network", "majority"}
    assert set(report["heads"]["price_1"]["models"]) == {"network", "mean"}
    assert {"logistic", "lightgbm"} <= set(per_fold[0]["heads"]["direction"]["models"])
    m = _metrics(store, wf.run_id)
    assert m["oos_edge"] == report["edge"]["summary"]
    assert m["oos_edge"].startswith(("edge: ", "no edge: "))
    assert m["oos_baselines"] == BASELINES_NOTE
    net = report["heads"]["direction"]["models"]["network"]["accuracy"]
    assert m["oos_direction_network_accuracy"] == pytest.approx(net["value"], rel=1e-12)
    assert (m["oos_direction_network_accuracy_lo"], m["oos_direction_network_accuracy_hi"]) == (
        pytest.approx(net["lo"], rel=1e-12), pytest.approx(net["hi"], rel=1e-12))  # fmt: skip
    assert "oos_price_24_network_rank_ic_lo" in m and "oos_direction_majority_accuracy" in m
    assert isinstance(m["oos_beat_direction_accuracy_majority"], bool)
    saved = json.loads((wf.run_dir / "oos_report.json").read_text())
    assert saved["edge"]["summary"] == m["oos_edge"] and saved["n"] == report["n"]


def _same(a: Any, b: Any) -> bool:
    """Equal numbers (to rounding) in equal structures; None for a non-finite number."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def test_one_fold_stitched_alone_is_that_folds_own_report(store: Path, wf) -> None:
    """The stitched report is training's report over more samples: one fold's predictions
    alone give its card's figures for the network and the naive baselines, and its edge."""
    frames, _, _ = read_stored(store, SYMBOLS, "1Day")
    plan = plan_walk_forward(
        frames, name="x", arch="tiny", folds=BASE.folds, train_cfg=BASE.train,
        data_cfg=DatasetConfig(window=BASE.window, skip_short=True),
    )  # fmt: skip
    for preds, card in zip(wf.result.predictions, wf.result.cards, strict=True):
        alone, own = stitched_report(plan.probe, [preds]), card.metrics["report"]
        assert alone["n"] == own["n"] and _same(alone["edge"], own["edge"])
        for head, rep in alone["heads"].items():
            for model, figures in rep["models"].items():  # the network and the naive one
                assert _same(figures, own["heads"][head]["models"][model]), (head, model)


def test_folds_without_a_validation_tail_are_stitched_without_the_confidence_baseline(
    store: Path, wf
) -> None:
    """The confidence's naive rate is the validation hit rate: with no validation samples
    the confidence head is left out, the other heads are scored as before."""
    frames, _, _ = read_stored(store, SYMBOLS, "1Day")
    probe = plan_walk_forward(
        frames, name="x", arch="tiny", folds=BASE.folds, train_cfg=BASE.train,
        data_cfg=DatasetConfig(window=BASE.window, skip_short=True),
    ).probe  # fmt: skip
    bare = [replace(p, split=replace(p.split, val=p.split.val[:0]), val={})
            for p in wf.result.predictions]  # fmt: skip
    report = stitched_report(probe, bare)
    assert "confidence" not in report["heads"] and "confidence" in wf.result.report["heads"]
    assert _same(report["heads"]["direction"], wf.result.report["heads"]["direction"])


def test_walkforward_help_counts_sweeps_and_offers_the_entry_rule(store: Path) -> None:
    """Before: the help named backtests and walk-forwards only, and had no --entry-rule."""
    res = _cli(store, "walkforward", "--help")
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "the finished backtests, walk-forwards and sweeps in the run registry" in text
    assert "--entry-rule [direction|return|auto]" in text and "--min-return" in text


# -- activity ------------------------------------------------------------------------------------


def test_the_stitched_run_sums_its_folds_activity(store: Path, wf) -> None:
    """Before: round trips, open positions and exposure were None on the stitched run."""
    folds, s = wf.result.results, wf.stitched.stats
    bars = [len(r.returns) for r in folds]
    assert s.round_trips == sum(r.stats.round_trips for r in folds)
    assert s.open_positions == sum(r.stats.open_positions for r in folds)
    assert s.trades == s.round_trips + s.open_positions == wf.result.folds["trades"].sum()
    assert s.exposure == pytest.approx(
        np.average([r.stats.exposure for r in folds], weights=bars), rel=1e-12
    )
    assert s.exposure is not None and s.exposure > 0
    m = _metrics(store, wf.run_id)
    assert (m["round_trips"], m["open_positions"]) == (s.round_trips, s.open_positions)
    assert m["exposure"] == pytest.approx(s.exposure, rel=1e-12)
    # buy-and-hold over the same test bars: two positions open at each fold's end, no trip
    assert (m["buyhold_round_trips"], m["buyhold_open_positions"]) == (0, 2 * 2)
    assert m["buyhold_activity"].endswith("0 round trips: buy and hold")


@pytest.fixture(scope="module")
def indexed(store: Path) -> tuple[WalkForwardRunResult, list[str]]:
    """One fold over index TODAY (today's constituents) with a rule that never enters, and
    what it logged."""
    lines: list[str] = []
    cfg = replace(BASE, name="ix", index="TODAY", ml=NEVER,
                  folds=WalkForward(n_splits=1, test_size=TEST_BARS))  # fmt: skip
    return run_walk_forward(store, cfg, log=lines.append), lines


def test_a_walk_forward_that_never_trades_says_so(store: Path, indexed) -> None:
    """Before: its activity was not measured (None), so nothing said it never traded."""
    indexed, _ = indexed
    s = indexed.stitched.stats
    assert (s.trades, s.round_trips, s.exposure, s.activity) == (0, 0, 0.0, "never traded")
    assert _metrics(store, indexed.run_id)["activity"] == "never traded"


def test_a_walk_forward_over_an_index_of_todays_constituents_warns(
    store: Path, indexed, wf
) -> None:
    """Before: no warning anywhere (backtests warned, walk-forwards did not)."""
    indexed, lines = indexed
    assert f"warning: {WARNING}" in lines
    assert indexed.warnings == (WARNING,)
    assert _metrics(store, indexed.run_id)["warnings"] == [WARNING]
    assert json.loads((indexed.run_dir / "summary.json").read_text())["warnings"] == [WARNING]
    assert wf.warnings == () and "warnings" not in _metrics(store, wf.run_id)  # no index


# -- btml walkforward --entry-rule and btml sweep over the index -----------------------------------


def _run_id(output: str) -> str:
    return output.split("recorded as run ")[1].split()[0]


def test_walkforward_cli_chooses_the_entry_rule_per_fold(store: Path) -> None:
    """``auto`` by default, chosen on each fold's own validation range and recorded per fold;
    the per-head edge line and the survivorship warning printed. Before: no --entry-rule."""
    args = ["walkforward", "--symbols", ",".join(SYMBOLS), "--index", "TODAY", "--window", "16",
            "--epochs", "1", "--test-bars", str(TEST_BARS)]  # fmt: skip
    res = _cli(store, *args, "--name", "auto", "--folds", "2")
    assert res.exit_code == 0, res.output
    out, run_id = res.stdout, _run_id(res.stdout)
    with RunRegistry(store) as reg:
        rec, (trial,) = reg.get(run_id), reg.trials(run_id)
    assert rec.params["ml"]["entry_rule"] == "auto" and rec.params["ml"]["min_return"] == 0.0
    folds = pd.read_csv(rec.dir / "folds.csv", index_col="fold")
    assert set(folds["entry_rule_chosen"]) <= {"direction", "return"} and len(folds) == 2
    for fold, row in zip(trial["result"]["folds"], folds.itertuples(), strict=True):
        assert fold["entry_rule_chosen"] == row.entry_rule_chosen
        lo, hi = (pd.Timestamp(t).date() for t in fold["val_range"])  # this fold's own
        chose = f"entry rule: auto chose {row.entry_rule_chosen} on the validation split"
        assert f"{chose} {lo} .. {hi}" in out
    header = next(ln for ln in out.splitlines() if "test_start" in ln).split()
    assert header[-1] == "entry_rule_chosen" and not any("entry_val" in c for c in header)
    edge = next(ln for ln in out.splitlines() if ln.startswith("per head, stitched over 2 folds"))
    assert edge.split(": ", 1)[1] == rec.metrics["oos_edge"]
    assert f"  baselines: {BASELINES_NOTE}" in out
    assert f"warning: {WARNING}" in out.split("out-of-sample: return")[1]
    assert rec.metrics["warnings"] == [WARNING]
    res = _cli(store, *args, "--name", "ret", "--folds", "1", "--entry-rule", "return",
               "--min-return", "0.02")  # fmt: skip
    assert res.exit_code == 0, res.output
    with RunRegistry(store) as reg:
        rec = reg.get(_run_id(res.stdout))
    assert (rec.params["ml"]["entry_rule"], rec.params["ml"]["min_return"]) == ("return", 0.02)
    assert "entry rule: auto" not in res.stdout


def test_sweep_over_an_index_of_todays_constituents_warns(store: Path, tmp_path: Path) -> None:
    (tmp_path / "space.toml").write_text("[ml]\nmin_edge = {low = 0.0, high = 0.05}\n")
    res = _cli(store, "sweep", "--symbols", ",".join(SYMBOLS), "--index", "TODAY", "--space",
               str(tmp_path / "space.toml"), "--study", "ix", "--trials", "1", "--folds", "1",
               "--test-bars", str(TEST_BARS), "--epochs", "1", "--window", "16")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("run ") and f"warning: {WARNING}" in res.stdout
    run_id = _run_id(res.stdout)
    assert _metrics(store, run_id)["warnings"] == [WARNING]
    summary = json.loads((store / "runs" / run_id / "summary.json").read_text())
    assert summary["warnings"] == [WARNING]


# -- a sweep: a pruned trial, and its best rerun as a walk-forward --------------------------------


@pytest.fixture(scope="module")
def swept(store: Path) -> SweepResult:
    """Four trials of entry_prob 0 (trades in the uptrend) or 1 (never enters), one at a time;
    pruning starts after one finished trial."""
    cfg = SweepConfig(walkforward=BASE, space={"ml.entry_prob": [0.0, 1.0]}, study="prune",
                      trials=4, startup_trials=4, prune_after=1, batch=1)  # fmt: skip
    return run_sweep(store, cfg, **QUIET)


def test_the_median_pruner_stops_a_clearly_worse_trial(store: Path, swept) -> None:
    """A trial that never enters scores 0 after fold 1, below the median of the finished
    ones (a trading trial's positive Sharpe and a never-entering one's 0): pruned, recorded
    as pruned in the study, the run's trials, its table and its metrics."""
    import optuna

    url = f"sqlite:///{(store / 'runs.sqlite').resolve()}"
    study = optuna.load_study(study_name="prune", storage=url)
    drawn = [t.params["ml.entry_prob"] for t in study.trials]
    assert drawn == [1.0, 0.0, 1.0, 1.0]  # the seeded sampler's draws (what makes the prune)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert study.trials[1].value > 0 and study.trials[0].value == 0.0
    with RunRegistry(store) as reg:
        trials = reg.trials(swept.run_id)
    assert [t["result"]["state"] for t in trials] == ["complete", "complete", "pruned", "pruned"]
    assert [len(t["result"]["folds"]) for t in trials] == [2, 2, 1, 1]  # stopped after fold 1
    assert list(swept.table["state"]) == ["complete", "complete", "pruned", "pruned"]
    m = _metrics(store, swept.run_id)
    assert (m["complete"], m["pruned"], m["failed"]) == (2, 2, 0)


def test_the_best_trial_rerun_as_a_walk_forward_is_one_configuration(store: Path, swept) -> None:
    """The docs' advice, rerunning the best trial with btml walkforward (batched inference,
    its default), tries nothing new. Before: the sweep's trials kept ml.inference and
    ml.chunk, the walk-forward's did not, so the rerun counted as another configuration."""
    assert swept.best is not None
    cfg, model = apply_params(BASE, swept.best["params"])
    assert not model
    rerun = replace(cfg, name="rerun", ml=replace(cfg.ml, inference="batched"))
    _, _, inputs = read_stored(store, SYMBOLS, "1Day")
    with RunRegistry(store) as reg:
        before = reg.data_trials(inputs)
    assert before.n_trials >= 2  # the sweep's two configurations (and earlier runs')
    out = run_walk_forward(store, rerun, **QUIET)
    with RunRegistry(store) as reg:
        after, rec = reg.data_trials(inputs), reg.get(out.run_id)
    assert after.n_trials == before.n_trials
    assert rec.metrics["dsr_n_trials"] == rec.metrics["dsr_prior_trials"] == before.n_trials
    best = next(t for t in after.trials if swept.run_id in t.runs and out.run_id in t.runs)
    assert best.config == swept.best["config"]


def test_a_trial_is_recorded_as_a_walk_forward_records_its_seed() -> None:
    a = replace(BASE, ml=replace(TRADING, inference="batched", chunk=64))
    assert trial_config(BASE, {}) == seed_config(BASE, BASE.train.seed)
    assert Trial(trial_config(a, {})).key == Trial(trial_config(BASE, {})).key
    assert trial_config(BASE, {"dropout": 0.2})["model"] == {"dropout": 0.2}


def test_a_study_made_when_trials_kept_the_inference_mode_still_resumes(tmp_path: Path) -> None:
    """Its stored identity's base request has ml.inference and ml.chunk; they are not what
    the study is, so the same request resumes it (anything else is still refused)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = SweepConfig(walkforward=BASE, space={"ml.entry_prob": [0.0, 1.0]}, study="old")
    old = cfg.identity()
    old["base"]["ml"] |= {"inference": "per-bar", "chunk": 256}
    url = f"sqlite:///{tmp_path / 'runs.sqlite'}"
    storage = open_storage(url)
    try:
        study = optuna.create_study(storage=storage, study_name="old", direction="maximize")
        study.set_user_attr(IDENTITY, old)
    finally:
        storage.remove_session()
        storage.engine.dispose()
    assert check_study(url, cfg) == ("old", True)
    with pytest.raises(StudyMismatch, match="another base request"):
        check_study(url, replace(cfg, walkforward=replace(BASE, window=24)))
