"""The model zoo: output contract, presets, registry, trainer (resume, interrupt), scientific checks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from core.errors import ConfigError, DataError, ModelNotFound
from feeds.sources.synthetic import SyntheticConfig, generate_market
from mlmodels.dataset import DatasetConfig, build_dataset
from mlmodels.labels import LabelConfig
from mlmodels.losses import Curriculum, LossConfig, MultiTaskLoss
from mlmodels.nets.model import ARCHITECTURES, build_model, count_parameters, get_architecture
from mlmodels.pipeline import train_on_dataset
from mlmodels.registry import CARD_FILE, ModelRegistry, load_weights
from mlmodels.splits import WalkForward, chronological_split
from mlmodels.trainer import TrainConfig, Trainer
from workflows.runs import RunRegistry

SIZES = {
    "seed-full": (27.1e6 * 0.85, 27.1e6 * 1.15),
    "efficient-hybrid": (5e6, 6e6),
    "simplex-lstm": (2e6, 3e6),
    "tiny": (1, 300e3),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_preset_keeps_the_output_contract(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(ARCHITECTURES[arch].with_data(12, 30)).eval()
    with torch.inference_mode():
        out = model(
            torch.randn(3, 30, 12), torch.tensor([[1.0, 0.02, 5], [0, 0, 0], [-1, -0.1, 40]])
        )
    assert (
        out["price"].shape == (3, 3)
        and out["direction"].shape == (3, 3)
        and out["action"].shape == (3, 3)
    )
    for k in ("size", "volatility", "risk", "confidence"):
        assert out[k].shape == (3,)
    assert (out["volatility"] > 0).all() and (out["risk"] > 0).all()
    assert ((out["size"] >= 0) & (out["size"] <= 1)).all() and (
        (out["confidence"] >= 0) & (out["confidence"] <= 1)
    ).all()
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("arch", list(SIZES))
def test_preset_sizes(arch: str) -> None:
    lo, hi = SIZES[arch]
    assert lo <= count_parameters(build_model(ARCHITECTURES[arch].with_data(58, 60))) <= hi


def test_position_state_reaches_the_heads() -> None:
    torch.manual_seed(0)
    model = build_model(ARCHITECTURES["tiny"].with_data(8, 20)).eval()
    x = torch.randn(1, 20, 8)
    with torch.inference_mode():
        a = model(x, torch.tensor([[0.0, 0.0, 0.0]]))["action"]
        b = model(x, torch.tensor([[1.0, 0.05, 30.0]]))["action"]
    assert not torch.allclose(a, b)


def test_unknown_architecture_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        get_architecture("tiney")


@pytest.fixture(scope="module")
def small_ds():
    frames = generate_market(SyntheticConfig(n_symbols=2, n_bars=700, seed=5))
    ds = build_dataset(frames, DatasetConfig(window=16))
    split = chronological_split(ds.times, lookahead=24)
    ds.fit_scaler(split.train)
    return ds, split


def _tiny(ds):
    torch.manual_seed(0)
    return build_model(ARCHITECTURES["tiny"].with_data(len(ds.feature_names), ds.window))


def test_registry_round_trip_versions_and_corrupt_files(small_ds, tmp_path) -> None:
    ds, split = small_ds
    reg = ModelRegistry(tmp_path / "models")
    cfg = TrainConfig(epochs=1, batch_size=64, max_batches=3)
    model, card = train_on_dataset(
        ds,
        split,
        "tiny",
        name="m",
        registry=reg,
        train_cfg=cfg,
        data_cfg=DatasetConfig(window=16),
        work_dir=tmp_path / "run",
    )
    _, card2 = train_on_dataset(
        ds,
        split,
        "tiny",
        name="m",
        registry=reg,
        train_cfg=cfg,
        data_cfg=DatasetConfig(window=16),
        work_dir=tmp_path / "run2",
    )
    assert (card.version, card2.version) == (1, 2) and reg.versions("m") == [1, 2]
    loaded, lcard = reg.load("m:1")
    x = torch.from_numpy(ds.x(split.test[:4]))
    pos = torch.from_numpy(ds.position[split.test[:4]])
    with torch.inference_mode():
        np.testing.assert_allclose(
            loaded(x, pos)["price"].numpy(), model(x, pos)["price"].numpy(), rtol=1e-6
        )
    assert lcard.features == list(ds.feature_names) and lcard.scaler["names"] == list(
        ds.feature_names
    )
    assert set(lcard.date_ranges) == {"train", "val", "test"} and lcard.data_hash
    assert lcard.date_ranges["train"][1] < lcard.date_ranges["test"][0]
    assert reg.card("m").version == 2  # the latest by default
    with pytest.raises(ModelNotFound, match="no version 7"):
        reg.path("m:7")
    weights = reg.path("m:1") / "weights.pt"
    weights.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="corrupt or foreign checkpoint"):
        reg.load("m:1")
    foreign = dataclasses.replace(lcard, model_config={**lcard.model_config, "fusion_d": 64})
    with pytest.raises(DataError, match="corrupt or foreign checkpoint"):
        load_weights(reg.path("m:2") / "weights.pt", foreign)
    assert reg.load("m:2")[1].version == 2  # the other version is untouched


def test_feature_list_mismatch_is_refused(small_ds, tmp_path) -> None:
    ds, split = small_ds
    _, card = train_on_dataset(
        ds,
        split,
        "tiny",
        name="f",
        registry=None,
        train_cfg=TrainConfig(epochs=1, max_batches=1),
        data_cfg=DatasetConfig(window=16),
        work_dir=tmp_path,
    )
    card.check_features(list(ds.feature_names))
    with pytest.raises(DataError, match=r"expects 51 features, the data has 50 \(missing: ret_1"):
        card.check_features(list(ds.feature_names)[1:])


def test_interrupted_training_resumes_from_the_last_checkpoint(small_ds, tmp_path) -> None:
    ds, split = small_ds
    cfg = TrainConfig(epochs=4, batch_size=64, max_batches=4, patience=10)

    def stop_after_two(epoch: int, row: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    trainer = Trainer(_tiny(ds), ds, split.train, split.val, cfg, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(on_epoch=stop_after_two)
    first = torch.load(tmp_path / "last.pt", weights_only=True)
    assert first["epoch"] == 2 and len(first["history"]) == 2
    resumed = Trainer(_tiny(ds), ds, split.train, split.val, cfg, tmp_path)
    state = resumed.fit(resume=True)
    assert state.epoch == 4 and state.history[:2] == first["history"]
    (tmp_path / "last.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a checkpoint of this model"):
        Trainer(_tiny(ds), ds, split.train, split.val, cfg, tmp_path).fit(resume=True)


def test_non_finite_inputs_name_symbol_and_date(small_ds, tmp_path) -> None:
    ds, split = small_ds
    bad = dataclasses.replace(ds, rows=ds.rows.copy())
    bad.rows[bad.sample_row[split.train[0]]] = np.nan
    trainer = Trainer(_tiny(ds), bad, split.train[:64], split.val, TrainConfig(epochs=1), tmp_path)
    with pytest.raises(
        DataError,
        match=r"non-finite input in the window of SYN00\d at 20\S+ \S+: feature ret_1 \d+ bar",
    ):
        trainer.fit()


def test_loss_options() -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        LossConfig(weights={"prise": 1.0})
    loss = MultiTaskLoss(LossConfig(uncertainty=True), torch.ones(3))
    assert loss.log_vars is not None and loss.log_vars.requires_grad
    cur = Curriculum()
    base = LossConfig().weights
    assert [k for k, v in cur.weights(0, 10, base).items() if v] == ["direction"]
    assert sorted(k for k, v in cur.weights(3, 10, base).items() if v) == ["direction", "price"]
    assert all(v > 0 for v in cur.weights(9, 10, base).values())


@pytest.fixture
def torch_threads() -> Iterator[Callable[[int], None]]:
    """Set torch's intra-op threads for one test; the count before it is restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _walk_forward_accuracy(cfg: SyntheticConfig) -> tuple[float, float, int]:
    frames = generate_market(cfg)
    dcfg = DatasetConfig(window=20, labels=LabelConfig(dead_zone=0.0))
    ds = build_dataset(frames, dcfg)
    fold = next(WalkForward(n_splits=1, test_size=250, lookahead=24).split(ds.times))
    _, card = train_on_dataset(
        ds,
        fold,
        "tiny",
        name="sci",
        registry=None,
        data_cfg=dcfg,
        train_cfg=TrainConfig(epochs=6, batch_size=128, lr=3e-3, patience=3),
    )
    t, b = card.metrics["test"], card.metrics["baselines_test"]
    return t["direction_accuracy"], b["majority_direction_accuracy"], t["n"]


@pytest.mark.slow
def test_finds_a_planted_signal_and_nothing_in_a_random_walk(
    torch_threads: Callable[[int], None],
) -> None:
    torch_threads(2)
    acc, majority, n = _walk_forward_accuracy(
        SyntheticConfig.pure_random_walk(n_symbols=6, n_bars=1500, seed=3, planted_strength=0.3)
    )
    # AR(1) 0.3 makes the next sign right ~59.7 % of the time; require 5 points over the majority class
    assert acc >= majority + 0.05, (acc, majority)
    acc_rw, majority_rw, n_rw = _walk_forward_accuracy(
        SyntheticConfig.pure_random_walk(n_symbols=6, n_bars=1500, seed=3)
    )
    sd = np.sqrt(0.25 / n_rw)
    assert abs(acc_rw - 0.5) <= 3 * sd and acc_rw <= majority_rw + 3 * sd, (acc_rw, majority_rw)


@pytest.mark.slow
def test_train_cli_registers_and_lists(tmp_path) -> None:
    from btml.cli import main
    from feeds.store import ParquetStore

    store = ParquetStore(tmp_path / "s")
    for f in generate_market(SyntheticConfig(n_symbols=2, n_bars=700, seed=9)).values():
        store.write(f)
    run = CliRunner().invoke
    base = ["--store", str(tmp_path / "s")]
    res = run(
        main,
        [
            *base,
            "train",
            "--arch",
            "tiny",
            "--symbols",
            "SYN000,SYN001",
            "--epochs",
            "2",
            "--window",
            "16",
            "--name",
            "demo",
            "--compare-lstm",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "registered demo:1" in res.output and "majority" in res.output
    assert "nn.LSTM twin" in res.output
    card = ModelRegistry(tmp_path / "s" / "models").card("demo:1")
    twin = card.metrics["lstm_test"]
    assert set(card.metrics["test"]) <= set(twin)  # the same metrics for the twin
    assert abs(twin["parameters"] - card.parameters) / card.parameters < 0.05  # equal size
    listed = run(main, [*base, "models", "list"])
    assert "demo:1" in listed.output and "tiny" in listed.output
    shown = run(main, [*base, "models", "show", "demo:1"])
    assert shown.exit_code == 0 and "train" in shown.output and "lstm_test:" in shown.output
    missing = run(main, [*base, "models", "show", "nope"])
    assert missing.exit_code == 2 and "no model called 'nope'" in missing.output
    run_id = res.output.split("recorded as run ")[1].split()[0]
    assert card.training_run == run_id  # the card names the run that trained it ...
    with RunRegistry(tmp_path / "s") as runs:  # ... and that run knows the model needs it
        assert runs.get(run_id).dependents == ("model demo:1",)
    png = tmp_path / "why.png"
    exp = run(
        main,
        [
            *base,
            "models",
            "explain",
            "demo:1",
            "--symbol",
            "SYN001",
            "--date",
            "2016-06-30",
            "--out",
            str(png),
        ],
    )
    assert exp.exit_code == 0, exp.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    early = run(
        main, [*base, "models", "explain", "demo:1", "--symbol", "SYN001", "--date", "2015-01-05"]
    )
    assert early.exit_code == 2 and "no complete 16-bar feature window" in early.output


def test_explanation_parts(small_ds) -> None:
    from mlmodels.explain import explain

    ds, split = small_ds
    model = _tiny(ds)
    i = split.test[:1]
    exp = explain(
        model, torch.from_numpy(ds.x(i)), torch.from_numpy(ds.position[i]), ds.feature_names
    )
    assert exp.attention is not None and exp.attention.shape == (ds.window,)
    assert exp.attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert set(exp.fusion) == {"xlstm", "transformer"} and sum(
        exp.fusion.values()
    ) == pytest.approx(1.0, abs=1e-5)
    assert exp.grad_x_input["return_1"].shape == (len(ds.feature_names),)
    assert np.abs(exp.grad_x_input["return_1"]).sum() > 0


def test_a_training_run_in_a_relative_store_keeps_a_copy_of_the_card(tmp_path, monkeypatch) -> None:
    """``./data_storage`` is the CLI's default: the card is copied into the run's folder, not
    recorded as a path under it."""
    from btml.cli import main
    from feeds.store import ParquetStore
    from workflows.runs import RunRegistry

    monkeypatch.chdir(tmp_path)
    store = ParquetStore("rel")
    for f in generate_market(SyntheticConfig(n_symbols=2, n_bars=500, seed=3)).values():
        store.write(f)
    res = CliRunner().invoke(
        main,
        ["--store", "rel", "train", "--arch", "tiny", "--symbols", "SYN000,SYN001",
         "--epochs", "1", "--window", "16", "--name", "r"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with RunRegistry("rel") as reg:
        run = reg.list("train")[0]
    assert CARD_FILE in run.artifacts
    copied = run.dir / CARD_FILE
    assert copied.is_file()
    assert json.loads(copied.read_text())["name"] == "r"
    assert not (run.dir / "rel").exists()  # no empty tree of the store's path
