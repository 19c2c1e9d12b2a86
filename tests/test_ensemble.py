"""``btml models ensemble`` (issue "operating it"): one servable model whose heads combine its
members', fit and tested on bars none of them saw, compared with its best member; members that
differ are refused naming the difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from analyzers.backtest import run_backtest
from btml.cli import main
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig
from mlmodels.ensemble import Member, make_ensemble
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelRegistry
from mlmodels.trainer import TrainConfig
from serving.client import InProcessClient
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
from strategies.windows import FeatureWindows

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ensemble") / "store"
    market = generate_market(
        SyntheticConfig(n_symbols=3, n_bars=1100, seed=4, planted_strength=0.3)
    )
    pstore = ParquetStore(root)
    for frame in market.values():
        pstore.write(frame, merge=False)
    history = {s: f.iloc[:700] for s, f in market.items()}
    reg = ModelRegistry(root / "models")
    for name, seed, window in (("a", 0, 20), ("b", 1, 20), ("w30", 2, 30)):
        train_model(history, "tiny", name=name, registry=reg, data_cfg=DatasetConfig(window=window),
                    train_cfg=TrainConfig(epochs=2, batch_size=64, seed=seed, threads=1))  # fmt: skip
    return root


def test_a_mean_ensemble_is_one_model_whose_heads_average_its_members(store: Path) -> None:
    ens, card = make_ensemble(store, "ens", [Member("a:1"), Member("b:1", 3.0)], "mean")
    assert card.ref == "ens:1" and card.training["weights"] == pytest.approx([0.25, 0.75])
    m = card.metrics
    assert set(m["members_test"]) == {"a:1", "b:1"} and m["best_member"] in m["members_test"]
    assert isinstance(m["beats_best_member"], bool)
    assert card.date_ranges["test"][0] > max(
        ModelRegistry(store / "models").card(r).date_ranges["val"][1] for r in ("a:1", "b:1")
    )  # tested on bars no member saw
    served = InProcessClient.from_registry(store / "models", "ens:1", threads=1)
    a = InProcessClient.from_registry(store / "models", "a:1", threads=1)
    b = InProcessClient.from_registry(store / "models", "b:1", threads=1)
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(4, 20, len(card.features))).astype(np.float32)
    got, sa, sb = served.predict(windows), a.predict(windows), b.predict(windows)
    for e, x, y in zip(got, sa, sb, strict=True):
        np.testing.assert_allclose(
            e.direction, 0.25 * np.array(x.direction) + 0.75 * np.array(y.direction), atol=1e-5
        )
        np.testing.assert_allclose(
            e.returns, 0.25 * np.array(x.returns) + 0.75 * np.array(y.returns), atol=1e-6
        )
        assert e.confidence <= 0.25 * x.confidence + 0.75 * y.confidence + 1e-6  # disagreement


def test_an_ensemble_backtests_batched_as_per_bar(store: Path) -> None:
    make_ensemble(store, "stacked", [Member("a:1"), Member("b:1")], "stack")
    card = ModelRegistry(store / "models").card("stacked")
    assert sum(card.training["weights"]) == pytest.approx(1.0)
    assert all(w >= 0 for w in card.training["weights"])
    frames = {s: ParquetStore(store).read(s) for s in card.symbols}
    windows = FeatureWindows.build(frames, card.features, card.window)
    client = InProcessClient.from_registry(store / "models", card.ref, threads=1)
    runs = {}
    for mode in ("per-bar", "batched"):
        cfg = MLSignalConfig(min_edge=0.0, horizon_agreement=0, sizer="fixed", inference=mode)
        kwargs = {"config": cfg, "client": client, "windows": windows}
        runs[mode] = run_backtest(mode, frames, MLSignalStrategy, strategy_kwargs=kwargs)
    assert runs["per-bar"].stats.trades > 0
    assert runs["batched"].final_value == pytest.approx(runs["per-bar"].final_value, rel=1e-9)


def test_members_that_differ_are_refused_naming_the_difference(store: Path) -> None:
    before = ModelRegistry(store / "models").names()
    res = CliRunner().invoke(main, ["--store", str(store), "models", "ensemble", "bad",
                                    "--members", "a:1,w30:1"])  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "w30:1 has window 30, a:1 20; members must agree" in lines[0]
    res = CliRunner().invoke(main, ["--store", str(store), "models", "ensemble", "bad",
                                    "--members", "a:1"])  # fmt: skip
    assert res.exit_code == 2 and "at least two models" in res.output
    assert ModelRegistry(store / "models").names() == before


def test_the_cli_prints_the_comparison_with_the_best_member(store: Path) -> None:
    res = CliRunner().invoke(main, ["--store", str(store), "models", "ensemble", "z",
                                    "--members", "a:1=1,b:1=1", "--method", "zscore"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "registered z:1 (zscore of a:1, b:1" in res.output
    assert "its best member" in res.output
    show = CliRunner().invoke(main, ["--store", str(store), "models", "show", "z"])
    assert show.exit_code == 0, show.output
    assert torch.load(ModelRegistry(store / "models").path("z:1") / "weights.pt",
                      weights_only=True)  # fmt: skip
    assert pd.Timestamp(ModelRegistry(store / "models").card("z").date_ranges["test"][0])


def test_an_ensemble_is_not_updated_itself(store: Path) -> None:
    from core.errors import ConfigError
    from workflows.model_update import update_model

    make_ensemble(store, "upd", [Member("a:1"), Member("b:1")], "mean")
    with pytest.raises(ConfigError, match="upd:1 is an ensemble: update its members"):
        update_model(store, "upd", log=lambda _: None)
