"""Training as a recorded run (workflows.train, ``btml train``): real training of the tiny
preset on a small synthetic market in a real store, real run-registry files."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
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
from mlmodels.pipeline import register_untrained
from mlmodels.registry import CARD_FILE, ModelCard, ModelRegistry
from workflows.runs import RunRegistry
from workflows.runs_info import file_sha256
from workflows.train import TrainRunConfig, checkpoint_dir, train

pytestmark = pytest.mark.timeout(600)
SYMBOLS = ("SYN000", "SYN001")
FILES = tuple(f"raw/stocks/1Day/{s}.parquet" for s in SYMBOLS)
TRAIN = ["--symbols", ",".join(SYMBOLS), "--epochs", "2", "--window", "16", "--threads", "1"]


def _market(root: Path) -> Path:
    store = ParquetStore(root)
    for frame in generate_market(SyntheticConfig(n_symbols=2, n_bars=700, seed=9)).values():
        store.write(frame)
    return root


def _btml(store: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--store", str(store), *args])


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the store, and the run database's rows, as they are now."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and p.suffix != ".sqlite"}  # fmt: skip
    with closing(sqlite3.connect(root / "runs.sqlite")) as db:
        files["<db>"] = "\n".join(db.iterdump()).encode()
    return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """``btml train`` once, from the command line: the store and the printed run id."""
    store = _market(tmp_path_factory.mktemp("train-runs"))
    res = _btml(store, "train", *TRAIN, "--name", "m")
    assert res.exit_code == 0, res.output
    assert "registered m:1" in res.output
    yield store, res.output.split("recorded as run ")[1].split()[0]


def test_the_training_run_holds_params_inputs_history_card_and_metrics(trained) -> None:
    store, run_id = trained
    card = ModelRegistry(store / "models").card("m:1")
    with RunRegistry(store) as runs:
        rec = runs.get(run_id)
    assert (rec.kind, rec.status, rec.error) == ("train", "ok", None)
    # the resolved request, as plain values that build the same config back
    cfg = TrainRunConfig.from_dict(rec.params)
    assert cfg.symbols == SYMBOLS and cfg.name == "m" and cfg.threads == 1 and cfg.epochs == 2
    assert json.loads((rec.dir / "params.json").read_text()) == rec.params
    # the stored Parquet files it read, by their bytes
    assert rec.inputs == {f: file_sha256(store / f) for f in FILES}
    assert set(rec.artifacts) == {"history.csv", "model_card.json"}
    history = pd.read_csv(rec.dir / "history.csv")
    assert list(history["epoch"]) == list(range(1, card.training["epochs_run"] + 1))
    want = pd.DataFrame(card.training["history"])
    for col in ("train_loss", "val_loss", "val_direction"):
        assert history[col].tolist() == pytest.approx(want[col].tolist(), rel=1e-12)
    copied = ModelCard.from_file(rec.dir / "model_card.json")
    assert copied == card and copied.training_run == run_id  # the card names the run
    t = card.metrics["test"]
    assert rec.metrics["test_direction_accuracy"] == pytest.approx(t["direction_accuracy"])
    assert rec.metrics["baselines_test_majority_direction_accuracy"] == pytest.approx(
        card.metrics["baselines_test"]["majority_direction_accuracy"]
    )
    assert rec.metrics["best_epoch"] == card.training["best_epoch"]
    assert rec.metrics["parameters"] == card.parameters and rec.metrics["model"] == "m:1"
    assert rec.dependents == ("model m:1",)
    # checkpoints live outside the run registry's folders
    assert (checkpoint_dir(store, "m") / "last.pt").is_file()
    assert sorted(p.name for p in (store / "runs").iterdir()) == [run_id]


def test_runs_rm_of_the_training_run_is_refused_and_changes_nothing(trained) -> None:
    store, run_id = trained
    before = _snapshot(store)
    res = _btml(store, "runs", "rm", run_id, "--yes")
    assert res.exit_code == 2
    err = res.stderr.strip().splitlines()
    assert err == [f"error: run {run_id} is used by model m:1; nothing was removed: "
                   "remove those first"]  # fmt: skip
    assert _snapshot(store) == before
    ModelRegistry(store / "models").load("m:1")  # the model is whole


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbols", "SYN000,NOPE"], "NOPE (1Day) is not in the store"),
        (["--symbols", "SYN000", "--arch", "tiney"], "did you mean 'tiny'"),
        (["--symbols", "SYN000", "--name", "a/b"], "--name must be non-empty"),
        (["--universe", "nope"], "unknown universe 'nope'"),
        (["--symbols", "SYN000,SYN000"], "a symbol is named twice"),
        (["--symbols", "SYN000", "--epochs", "0"], "epochs must be >= 1, got 0"),
        ([], "nothing to train on"),
    ],
)
def test_a_refused_request_records_and_trains_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    store = _market(tmp_path / "s")
    before = {p for p in store.rglob("*")}
    res = _btml(store, "train", "--window", "16", *args)
    assert res.exit_code == 2, res.output
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert {p for p in store.rglob("*")} == before  # no run folder, database, model, checkpoint
    assert not (store / "runs.sqlite").exists() and not (store / "models").exists()


def test_an_interrupted_training_is_a_cancelled_run_and_resume_finishes_it(tmp_path: Path) -> None:
    store = _market(tmp_path / "s")
    cfg = TrainRunConfig(symbols=SYMBOLS, epochs=3, window=16, name="r", threads=1, patience=5)

    def ctrl_c_after_two(epoch: int, row: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(store, cfg, on_epoch=ctrl_c_after_two, log=lambda _: None)
    with RunRegistry(store) as runs:
        (first,) = runs.list()
    assert (first.kind, first.status, first.error) == ("train", "cancelled", "interrupted")
    assert len(pd.read_csv(first.dir / "history.csv")) == 2  # what it did is kept
    assert ModelRegistry(store / "models").names() == [] and first.dependents == ()
    done = train(store, dataclasses.replace(cfg, resume=True), log=lambda _: None)
    assert done.card.training["epochs_run"] == 3 and len(done.card.training["history"]) == 3
    assert done.card.training_run == done.run_id != first.id
    with RunRegistry(store) as runs:
        rec = runs.get(done.run_id)
        assert rec.status == "ok" and rec.dependents == ("model r:1",)
        assert runs.get(first.id).status == "cancelled"
    history = pd.read_csv(rec.dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]  # the resumed epochs and the new one
    assert history["train_loss"].iloc[:2].tolist() == pytest.approx(
        pd.read_csv(first.dir / "history.csv")["train_loss"].tolist(), rel=1e-12
    )


def test_the_config_refuses_what_it_cannot_train() -> None:
    with pytest.raises(ConfigError, match="not both"):
        TrainRunConfig(symbols=("A",), universe="small")
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'; did you mean 'epochs'"):
        TrainRunConfig.from_dict({"symbols": ["A"], "epoch": 3})
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        TrainRunConfig(symbols=("A",), threads=0)
    resolved = TrainRunConfig(symbols=("A",), arch="tiny").resolved()
    assert resolved.name == "tiny" and resolved.threads and resolved.threads >= 1
    assert TrainRunConfig.from_dict(resolved.to_dict()) == resolved


def test_cards_written_before_runs_were_recorded_still_load(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    card = register_untrained(reg, "tiny", "old", features=["ret_1", "ret_5"], window=16)
    path = reg.path(card.ref) / CARD_FILE
    raw = json.loads(path.read_text())
    del raw["training_run"]  # as an older version wrote it
    path.write_text(json.dumps(raw))
    _, loaded = reg.load("old:1")
    assert loaded.training_run is None and loaded == card


def test_seeds_train_each_report_the_spread_and_register_the_best_by_validation(
    tmp_path: Path,
) -> None:
    store = _market(tmp_path)
    res = _btml(store, "train", *TRAIN, "--name", "s", "--seeds", "3", "--seed", "4")
    assert res.exit_code == 0, res.output
    assert "3 seeds; registered seed" in res.output and "direction_accuracy:" in res.output
    assert ModelRegistry(store / "models").versions("s") == [1]  # one model, not three
    card = ModelRegistry(store / "models").card("s:1")
    run_id = res.output.split("recorded as run ")[1].split()[0]
    with RunRegistry(store) as runs:
        rec = runs.get(run_id)
    table = pd.read_csv(rec.dir / "seeds.csv", index_col="seed")
    assert list(table.index) == [4, 5, 6]
    chosen = int(table["val_loss"].idxmin())  # by validation, never by test
    assert card.training["seed"] == chosen == rec.metrics["seed_chosen"]
    assert card.training["seeds"]["chosen"] == chosen
    acc = table["direction_accuracy"]
    assert table.loc[chosen, "direction_accuracy"] == pytest.approx(
        card.report["heads"]["direction"]["models"]["network"]["accuracy"]["value"]  # type: ignore[index]
    )
    assert rec.metrics["seeds"] == 3
    assert rec.metrics["seeds_direction_accuracy_mean"] == pytest.approx(acc.mean())
    assert rec.metrics["seeds_direction_accuracy_std"] == pytest.approx(acc.std(ddof=1))
    assert acc.nunique() > 1 or table["val_loss"].nunique() > 1  # the seeds differ
    history = pd.read_csv(rec.dir / "history.csv")
    assert set(history["seed"]) == {4, 5, 6}
    bad = _btml(store, "train", *TRAIN, "--name", "s", "--seeds", "0")
    assert bad.exit_code == 2 and "--seeds" in bad.output
