"""Users' own features through training, the model card, backtests and serving: a module of
two causal features trained into a tiny model (real store, real run registry), backtested in a
real backtrader run whose windows equal the dataset's rows, archived with the module, and
refused when the module leaks or its stored copy is missing or altered.

Note: ``btml backtest``, ``btml trade`` and ``MLSignalStrategy(model=...)`` build their
windows from the card's feature names (``FeatureWindows.build`` / ``LiveFeatureWindows(...)``
in workflows/backtest.py, workflows/trading.py and strategies/ml_signal.py); until they call
``FeatureWindows.from_card`` / ``LiveFeatureWindows.from_card`` such a model is refused there
in one line, which a test below pins."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import textwrap
import zipfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from analyzers.backtest import CostConfig, run_backtest
from btml.cli import main
from core.errors import ConfigError, DataError
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig, build_dataset
from mlmodels.features import FEATURE_NAMES
from mlmodels.registry import ModelRegistry
from mlmodels.user_features import MODULE_FILE
from serving.archive import build_archive
from serving.client import InProcessClient
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
from strategies.sizing import FixedFraction
from strategies.windows import FeatureWindows, LiveFeatureWindows
from workflows.runs import RunRegistry
from workflows.train import TrainRunConfig, model_inputs, train

pytestmark = pytest.mark.timeout(600)
SYMBOLS = ("SYN000", "SYN001")
TRAIN = ["--symbols", ",".join(SYMBOLS), "--epochs", "2", "--window", "16", "--threads", "1",
         "--batch-size", "128"]  # fmt: skip

MINE = """
import numpy as np


def overnight_gap(bars, **kwargs):
    return np.log(bars["open"] / bars["close"].shift(1))


def range_5(bars):
    return ((bars["high"] - bars["low"]) / bars["close"]).rolling(5).mean()


FEATURES = {"overnight_gap": overnight_gap, "range_5": range_5}
WARMUP = 4
"""

LEAKY = """
def tomorrow(bars):
    return bars["close"].pct_change().shift(-1)


FEATURES = {"calm": lambda bars: bars["close"].pct_change(), "tomorrow": tomorrow}
"""


def _market(root: Path) -> Path:
    store = ParquetStore(root)
    for frame in generate_market(SyntheticConfig(n_symbols=2, n_bars=700, seed=9)).values():
        store.write(frame)
    return root


def _btml(store: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--store", str(store), *args])


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and the run database's rows, as they are now."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and p.suffix != ".sqlite"}  # fmt: skip
    if (root / "runs.sqlite").exists():
        with closing(sqlite3.connect(root / "runs.sqlite")) as db:
            files["<db>"] = "\n".join(db.iterdump()).encode()
    return files


def _frames(store: Path) -> dict[str, pd.DataFrame]:
    return {s: ParquetStore(store).read(s, "1Day") for s in SYMBOLS}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """``btml train --features-module mine.py`` once: the store, the module, the run id."""
    root = tmp_path_factory.mktemp("user-features")
    module = root / "mine.py"
    module.write_text(textwrap.dedent(MINE))
    store = _market(root / "store")
    res = _btml(store, "train", *TRAIN, "--name", "u", "--features-module", str(module))
    assert res.exit_code == 0, res.output
    yield store, module, res.output.split("recorded as run ")[1].split()[0]


def test_the_card_and_the_run_record_the_module_and_the_labels(trained) -> None:
    store, module, run_id = trained
    reg = ModelRegistry(store / "models")
    card = reg.card("u:1")
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    assert card.features == [*FEATURE_NAMES[:51], "overnight_gap", "range_5"]  # no index
    assert card.feature_module == {
        "source": str(module), "file": MODULE_FILE, "sha256": digest,
        "names": ["overnight_gap", "range_5"], "warmup": 4, "builtin": True,
    }  # fmt: skip
    copy = reg.path("u:1") / MODULE_FILE
    assert copy.read_bytes() == module.read_bytes()  # the source, stored beside the weights
    assert card.labels["trading_from"] == "next_open" and card.labels["price_from"] == "close"
    with RunRegistry(store) as runs:
        rec = runs.get(run_id)
    assert rec.params["features_module"] == str(module) and not rec.params["own_features_only"]
    assert (rec.params["labels_from"], rec.params["price_labels_from"]) == ("next_open", "close")
    assert rec.inputs["mine.py"] == digest
    # a run that uses the model (backtest, session) records the copy among its inputs
    assert model_inputs(store, card)["models/u/v1/features_module.py"] == digest
    shown = _btml(store, "models", "show", "u:1")
    assert "labels: trading heads from next_open, price heads from close" in shown.output
    assert f"features module {module} (overnight_gap, range_5; warm-up 4" in shown.output


def test_a_backtest_computes_the_same_windows_as_the_dataset(trained) -> None:
    """A real backtrader run of the model in-process over the last 120 bars (the windows are
    built on the full history, as a backtest does): every window the strategy sends is the
    dataset's window for that symbol and bar, and a signal comes back for each."""
    store, _, _ = trained
    reg = ModelRegistry(store / "models")
    card, frames = reg.card("u:1"), _frames(store)
    user = reg.user_features("u:1")
    assert user is not None
    ds = build_dataset(
        frames, DatasetConfig(window=16), compute=user.table, warmup=user.total_warmup
    )
    windows = FeatureWindows.from_card(frames, card, store / "models")
    sent: list[tuple[np.ndarray, list[str], list[str]]] = []

    class Recording(InProcessClient):  # the real handler; only remembers what it was asked
        def predict(self, wins, positions=None, *, symbols=None, timestamps=None):  # type: ignore[no-untyped-def]
            sent.append((np.array(wins), list(symbols), list(timestamps)))
            return super().predict(wins, positions, symbols=symbols, timestamps=timestamps)

    traded = {s: f.iloc[-120:] for s, f in frames.items()}
    cfg = MLSignalConfig(sizer=FixedFraction(fraction=0.2), entry_prob=0.34)
    res = run_backtest("user", traded, MLSignalStrategy, costs=CostConfig(),
                       strategy_kwargs={"config": cfg, "client": Recording(reg.path("u:1")),
                                        "windows": windows})  # fmt: skip
    decided = [d for d in res.strategy.audit if d.signal is not None]
    assert len(decided) == 2 * 120 == sum(len(w) for w, _, _ in sent)
    at = {
        (ds.symbols[s], t.value): i
        for i, (s, t) in enumerate(zip(ds.sample_symbol, ds.times, strict=True))
    }
    checked = 0
    for wins, syms, stamps in sent:
        for w, sym, ts in zip(wins, syms, stamps, strict=True):
            i = at.get((sym, pd.Timestamp(ts).value))
            if i is not None:  # the last 25 bars have no labels, hence no dataset row
                np.testing.assert_array_equal(w, ds.x([i])[0])
                checked += 1
    assert checked == 2 * (120 - 25)


def test_live_windows_from_the_card_use_the_module(trained) -> None:
    store, _, _ = trained
    card = ModelRegistry(store / "models").card("u:1")
    live = LiveFeatureWindows.from_card(card, store / "models")
    assert live.need == 199 + 16 and live.compute.__self__.names == ("overnight_gap", "range_5")


def test_btml_backtest_uses_the_models_features_module(trained) -> None:
    """``btml backtest`` builds the windows from the card with its module (it refused such a
    model before: "the model needs 2 features the data does not give"); the run records the
    module's copy among its inputs."""
    store, _, _ = trained
    res = _btml(store, "backtest", "--model", "u:1", "--symbols", ",".join(SYMBOLS),
                "--entry-rule", "direction")  # fmt: skip
    assert res.exit_code == 0, res.output
    with RunRegistry(store) as runs:
        rec = [r for r in runs.list() if r.kind == "backtest"][-1]
    folder = ModelRegistry(store / "models").path("u:1")
    copy = (folder / MODULE_FILE).relative_to(store).as_posix()
    assert rec.inputs[copy] == hashlib.sha256((folder / MODULE_FILE).read_bytes()).hexdigest()


def _altered(store: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the store's registry whose u:1 module copy is missing or altered."""
    models = tmp_path / "models"
    shutil.copytree(store / "models", models)
    copy = models / "u" / "v1" / MODULE_FILE
    if how == "missing":
        copy.unlink()
    else:
        copy.write_text(copy.read_text().replace("rolling(5)", "rolling(6)"))
    return models


@pytest.mark.parametrize(("how", "says"), [("missing", "is missing"), ("altered", "was altered")])
def test_a_missing_or_altered_module_copy_is_refused(trained, tmp_path, how, says) -> None:
    store, _, _ = trained
    models = _altered(store, tmp_path, how)
    reg = ModelRegistry(models)
    card = reg.card("u:1")
    for load in (
        lambda: reg.user_features("u:1"),
        lambda: FeatureWindows.from_card(_frames(store), card, models),
        lambda: LiveFeatureWindows.from_card(card, models),
        lambda: InProcessClient.from_registry(models, "u:1"),  # the served handler's check
    ):
        with pytest.raises(DataError, match=f"model u:1.* {says}") as err:
            load()
        assert "\n" not in str(err.value)
    before = _snapshot(models)
    res = CliRunner().invoke(main, ["--store", str(tmp_path), "serve", "archive", "u:1"])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and says in res.stderr and "u:1" in res.stderr
    assert _snapshot(models) == before and not (tmp_path / "serving").exists()


def test_the_archive_carries_the_module_and_the_card_pins_it(trained, tmp_path) -> None:
    store, module, _ = trained
    models = tmp_path / "models"
    shutil.copytree(store / "models", models)  # archiving pins the .mar in the card: a copy
    mar = build_archive(ModelRegistry(models), "u:1", tmp_path / "archives")
    with zipfile.ZipFile(mar) as z:
        assert z.read(MODULE_FILE) == module.read_bytes()
        card = json.loads(z.read("model_card.json"))
    assert card["feature_module"]["sha256"] == hashlib.sha256(module.read_bytes()).hexdigest()


def test_a_leaky_module_refuses_training_and_records_nothing(tmp_path) -> None:
    store = _market(tmp_path / "store")
    leaky = tmp_path / "leaky.py"
    leaky.write_text(textwrap.dedent(LEAKY))
    before = _snapshot(store)
    res = _btml(store, "train", *TRAIN, "--name", "x", "--features-module", str(leaky))
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {leaky}: feature tomorrow reads the")
    assert "row " in lines[0] and "calm" not in lines[0]  # the function, its first bad row
    assert _snapshot(store) == before  # no model, no run, no checkpoint
    assert not (store / "models").exists() and not (store / "training").exists()


def test_bad_combinations_are_refused_before_anything_runs(tmp_path) -> None:
    store = _market(tmp_path / "store")
    before = _snapshot(store)
    sel = tmp_path / "sel.json"
    sel.write_text("{}")
    for args, says in (
        (["--own-features-only"], "--own-features-only needs --features-module"),
        (["--features-module", "m.py", "--features", str(sel)], "not both"),
        (["--features-module", str(tmp_path / "none.py")], "none.py: no such file"),
    ):
        res = _btml(store, "train", *TRAIN, *args)
        assert res.exit_code == 2 and says in res.stderr, res.output
        assert res.stderr.count("\n") == 1
    assert _snapshot(store) == before
    with pytest.raises(ConfigError, match="--own-features-only"):
        TrainRunConfig(symbols=SYMBOLS, own_features_only=True)


def test_own_features_only_trains_on_the_module_alone(tmp_path) -> None:
    store = _market(tmp_path / "store")
    module = tmp_path / "mine.py"
    module.write_text(textwrap.dedent(MINE))
    cfg = TrainRunConfig(symbols=SYMBOLS, epochs=1, window=8, threads=1, batch_size=256,
                         features_module=str(module), own_features_only=True, name="own")  # fmt: skip
    card = train(store, cfg, log=lambda _: None).card
    assert card.features == ["overnight_gap", "range_5"] and not card.feature_module["builtin"]
    frames = _frames(store)
    windows = FeatureWindows.from_card(frames, card, store / "models")
    first = windows.warmup_end("SYN000")
    assert first == frames["SYN000"].index[4 + 8 - 1]  # the module's warm-up, not 199 bars
    user = ModelRegistry(store / "models").user_features("own:1")
    assert user is not None and not user.builtin
    ds = build_dataset(
        frames, DatasetConfig(window=8), compute=user.table, warmup=user.total_warmup
    )
    ts = ds.times[0]
    assert ts == first
    np.testing.assert_array_equal(windows.symbols["SYN000"].window_at(ts.value, 8), ds.x([0])[0])


@pytest.mark.slow
def test_served_through_torchserve_the_signals_equal_the_in_process_ones(trained, tmp_path) -> None:
    """The archive (with the module's copy, checked by the handler on load) served by a real
    TorchServe answers the backtest's windows with the in-process client's numbers."""
    from serving.client import RestClient, RestConfig
    from serving.server import group_pids, start, stop
    from tests.serving_util import server_config

    store, _, _ = trained
    shutil.copytree(store / "models", tmp_path / "models")  # the archive's pin goes in a copy
    reg = ModelRegistry(tmp_path / "models")
    card, frames = reg.card("u:1"), _frames(store)
    feats = FeatureWindows.from_card(frames, card, reg.root)
    wins = np.stack([feats.symbols[s].values[i - 15 : i + 1] for s in SYMBOLS
                     for i in range(len(frames[s]) - 20, len(frames[s]))])  # fmt: skip
    pos = np.tile(np.array([[0, 0, 0], [1, 0.01, 3]], dtype=np.float32), (len(wins) // 2, 1))
    local = InProcessClient.from_registry(reg.root, "u:1").predict(wins, pos)
    cfg = server_config(tmp_path / "serving")
    state = start(cfg, [build_archive(reg, "u:1", cfg.model_store)])
    try:
        with RestClient(RestConfig(url=cfg.inference_url, model="u", key_file=cfg.key_file)) as c:
            served = c.predict(wins, pos)
    finally:
        stop(cfg)
    assert group_pids(state.pgid) == []
    for a, b in zip(served, local, strict=True):
        assert (a.model, a.version) == (b.model, b.version) == ("u", 1)
        fa = [*a.returns, *a.direction, *a.action, a.size, a.volatility, a.risk, a.confidence]
        fb = [*b.returns, *b.direction, *b.action, b.size, b.volatility, b.risk, b.confidence]
        np.testing.assert_allclose(fa, fb, atol=1e-5)
