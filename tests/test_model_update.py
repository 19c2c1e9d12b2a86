"""``btml models update`` (issue "operating it"): a challenger fine-tuned on the bars stored
since the model's data ended, its paths frozen, gated on the newest bars, registered as the
next version with its lineage; too few new bars are refused in one line, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from btml.cli import main
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelRegistry
from mlmodels.trainer import TrainConfig
from workflows.model_update import UpdateConfig, update_model
from workflows.runs import RunRegistry

pytestmark = pytest.mark.timeout(600)
FIRST = 700  # bars the champion is trained on


@pytest.fixture(scope="module")
def market():
    return generate_market(SyntheticConfig(n_symbols=3, n_bars=1100, seed=4, planted_strength=0.3))


def _store(tmp_path: Path, market, bars: int) -> Path:
    root = tmp_path / "store"
    store = ParquetStore(root)
    for frame in market.values():
        store.write(frame.iloc[:bars], merge=False)
    history = {s: f.iloc[:FIRST] for s, f in market.items()}
    train_model(
        history, "tiny", name="m", registry=ModelRegistry(root / "models"),
        train_cfg=TrainConfig(epochs=2, batch_size=64, seed=0, threads=1),
        data_cfg=DatasetConfig(window=20),
    )  # fmt: skip
    return root


def test_an_update_registers_a_gated_challenger_with_its_lineage(tmp_path: Path, market) -> None:
    root = _store(tmp_path, market, 1100)
    registry = ModelRegistry(root / "models")
    champion, parent = registry.load("m:1")
    out = update_model(root, "m", UpdateConfig(epochs=3, lr=1e-3), log=lambda _: None)
    assert out.new_bars >= 390 and out.challenger_loss < out.champion_loss
    card = out.card
    assert card is not None and card.ref == "m:2" and registry.versions("m") == [1, 2]
    assert registry.card("m").ref == "m:1"  # the parent stays the champion until promoted
    lineage = card.training["lineage"]
    assert lineage["parent"] == "m:1" and lineage["kind"] == "frozen-base"
    assert card.date_ranges["train"][0] > parent.date_ranges["test"][1]  # new bars only
    assert card.date_ranges["test"][0] > card.date_ranges["val"][1]
    assert "parent_test" in card.metrics and card.report is not None
    challenger, _ = registry.load("m:2")
    old, new = champion.state_dict(), challenger.state_dict()
    frozen = [k for k in old if k.split(".")[0] in ("xlstm", "transformer")]
    learnt = [k for k in old if k.split(".")[0] == "heads"]
    assert frozen and all(torch.equal(old[k], new[k]) for k in frozen)
    assert any(not torch.equal(old[k], new[k]) for k in learnt)
    with RunRegistry(root) as runs:
        rec = runs.get(out.run_id)
    assert rec.kind == "update" and rec.metrics["registered"] == "m:2"


def test_too_few_new_bars_are_refused_in_one_line_and_nothing_changes(
    tmp_path: Path, market
) -> None:
    root = _store(tmp_path, market, 760)
    with RunRegistry(root) as runs:
        before = runs.count()
    res = CliRunner().invoke(main, ["--store", str(root), "models", "update", "m"])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "new bars since" in lines[0] and "needs at least" in lines[0]
    assert "--min-bars" in lines[0] and "Traceback" not in res.output
    assert ModelRegistry(root / "models").versions("m") == [1]
    with RunRegistry(root) as runs:
        assert runs.count() == before
