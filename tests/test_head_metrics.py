"""Out-of-sample head metrics (mlmodels.head_metrics): each figure against a reference
implementation, the block bootstrap's resamples and intervals, the edge decision, the
comparison rows, the flat run metrics and the printed report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, balanced_accuracy_score, log_loss

from mlmodels.head_metrics import (
    BlockBootstrap,
    Truth,
    describe,
    ece,
    head_report,
    hit_rate,
    pearson,
)

N_SYM, N_DATES = 4, 300


def _times(n_sym: int = N_SYM, n_dates: int = N_DATES) -> pd.DatetimeIndex:
    dates = pd.bdate_range("2020-01-01", periods=n_dates, tz="UTC")
    return pd.DatetimeIndex(np.concatenate([dates.asi8] * n_sym)).tz_localize("UTC")


def _market(signal: float, seed: int = 0) -> tuple[dict[str, Any], Truth]:
    """Predictions whose 1-bar return forecast carries ``signal`` of the realised return."""
    rng = np.random.default_rng(seed)
    n = N_SYM * N_DATES
    x = rng.normal(size=n)
    real = {h: signal * x + rng.normal(size=n) for h in (1, 4, 24)}
    y = np.digitize(real[1], [-0.5, 0.5])
    logits = np.stack([-signal * x, np.zeros(n), signal * x], axis=1) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    vol = np.abs(rng.normal(1, 0.2, n))
    net = {
        "direction": probs,
        "price": np.stack([x, x, x], axis=1),
        "volatility": vol + rng.normal(0, 0.05, n),
        "confidence": rng.uniform(0.3, 0.9, n),
    }
    truth = Truth(
        direction=y,
        returns=real,
        mean_returns={1: 0.0, 4: 0.0, 24: 0.0},
        volatility=vol,
        trailing_volatility=np.where(np.arange(n) % N_DATES < 24, np.nan, vol * 1.3),
        prior=np.bincount(y, minlength=3) / n,
        confidence_base_rate=0.4,
    )
    return net, truth


@pytest.fixture(scope="module")
def planted() -> tuple[dict[str, Any], Truth, dict[str, Any]]:
    net, truth = _market(0.5)
    noise = {"direction": np.full((len(truth.direction), 3), 1 / 3), "price": net["price"] * 0}
    return net, truth, head_report({"network": net, "linear": noise}, truth, _times(), reps=200)


def test_every_point_figure_matches_a_reference_implementation(planted) -> None:
    net, truth, rep = planted
    d = rep["heads"]["direction"]["models"]["network"]
    y, probs = truth.direction, net["direction"]
    assert d["accuracy"]["value"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    assert d["balanced_accuracy"]["value"] == pytest.approx(
        balanced_accuracy_score(y, probs.argmax(1))
    )
    assert d["logloss"]["value"] == pytest.approx(log_loss(y, probs), rel=1e-6)
    p1 = rep["heads"]["price_1"]["models"]["network"]
    assert p1["ic"]["value"] == pytest.approx(pearsonr(net["price"][:, 0], truth.returns[1])[0])
    assert p1["rank_ic"]["value"] == pytest.approx(
        spearmanr(net["price"][:, 0], truth.returns[1]).statistic
    )
    assert p1["hit_rate"]["value"] == pytest.approx(
        np.mean(np.sign(net["price"][:, 0]) == np.sign(truth.returns[1]))
    )
    vol = rep["heads"]["volatility"]
    ok = np.isfinite(truth.trailing_volatility)
    assert vol["n"] == ok.sum()
    assert vol["models"]["network"]["mae"]["value"] == pytest.approx(
        np.abs(net["volatility"] - truth.volatility)[ok].mean()
    )
    correct = (probs.argmax(1) == y).astype(float)
    conf = rep["heads"]["confidence"]["models"]
    assert conf["network"]["ece"]["value"] == pytest.approx(ece(net["confidence"], correct))
    assert conf["constant"]["brier"]["value"] == pytest.approx(np.mean((0.4 - correct) ** 2))


def test_small_reference_functions() -> None:
    assert hit_rate(np.array([1.0, -1, 0, 2]), np.array([2.0, 1, 5, 0])) == pytest.approx(0.5)
    assert pearson(np.ones(5), np.arange(5.0)) == 0.0  # constant side: no correlation
    # two bins: confidence 0.2 (hit rate 0.5) and 0.9 (hit rate 1): 0.5*0.3 + 0.5*0.1
    conf, hits = np.array([0.2, 0.2, 0.9, 0.9]), np.array([1.0, 0, 1, 1])
    assert ece(conf, hits) == pytest.approx(0.2)


def test_resamples_keep_dates_whole_and_blocks_consecutive() -> None:
    times = _times(3, 100)
    boot = BlockBootstrap(times, reps=50, seed=1)
    assert boot.block(1) == 5 and boot.block(24) == 24  # ceil(100 ** (1/3)); the horizon
    codes = pd.factorize(times, sort=True)[0]
    for r in boot.resamples(4):
        assert len(r) == len(times)  # as many dates as the test split, each with 3 symbols
        per_date = np.bincount(codes[r], minlength=100)
        assert set(per_date[per_date > 0] % 3) == {0}
        d = codes[r][::3]  # dates in drawn order: runs of consecutive dates (wrapping)
        steps = np.diff(d) % 100
        assert (steps == 1).sum() >= len(d) - 1 - len(d) // boot.block(4)
    again = BlockBootstrap(times, reps=50, seed=1).resamples(4)
    assert all(np.array_equal(a, b) for a, b in zip(boot.resamples(4), again, strict=True))


def test_blocks_widen_intervals_for_overlapping_labels() -> None:
    """24-bar sums of i.i.d. noise overlap: the IC of two independent such series spreads
    about 4x wider than i.i.d. samples' 1/sqrt(n); 24-date blocks see most of that."""
    rng = np.random.default_rng(3)
    n = 600
    g = rng.normal(size=n + 24)
    real = np.convolve(g, np.ones(24), "valid")[:n]
    pred = np.convolve(rng.normal(size=n + 24), np.ones(24), "valid")[:n]
    times = pd.bdate_range("2020-01-01", periods=n, tz="UTC")

    def width(boot: BlockBootstrap, h: int) -> float:
        ics = [pearson(pred[r], real[r]) for r in boot.resamples(h)]
        return float(np.subtract(*np.quantile(ics, [0.975, 0.025])))

    boot = BlockBootstrap(times, reps=300)
    iid = 2 * 1.96 / np.sqrt(n)
    assert width(boot, 24) > 2.5 * iid and width(boot, 24) > width(boot, 1)


def test_edge_leads_with_the_strongest_metric_and_its_interval(planted) -> None:
    _, _, rep = planted
    e = rep["edge"]
    assert e["summary"].startswith("edge: ") and e["lead"] is not None
    lead = e["lead"]
    assert lead["head"] in ("direction", "price_1", "price_4")  # price_24: too few blocks
    assert e["summary"].startswith(f"edge: {describe(lead)}")  # the metric and its interval
    assert lead["lo"] <= lead["value"] <= lead["hi"]
    assert "price_24" in e["not_judged"] and "not judged" in e["summary"]
    assert all(c.split(".")[0] != "price_24" for c in e["edges"])


def test_no_edge_without_a_signal() -> None:
    net, truth = _market(0.0, seed=4)
    rep = head_report({"network": net}, truth, _times(), reps=200)
    assert rep["edge"]["lead"] is None and rep["edge"]["summary"].startswith("no edge: ")
    assert "closest: " in rep["edge"]["summary"]


def test_comparison_rows_say_which_baseline_the_network_beat(planted) -> None:
    _, _, rep = planted
    rows = {(r["head"], r["metric"]): r for r in rep["comparison"]}
    acc = rows[("direction", "accuracy")]
    assert set(acc["baselines"]) == {"majority", "logistic"}
    assert acc["beat"] == {k: acc["network"] > v for k, v in acc["baselines"].items()} and acc[
        "beat_all"
    ] == all(acc["beat"].values())
    loss = rows[("direction", "logloss")]  # lower is better
    assert loss["beat"]["logistic"] == (loss["network"] < loss["baselines"]["logistic"])
    diff = loss["difference"]["logistic"]
    assert diff["value"] == pytest.approx(loss["baselines"]["logistic"] - loss["network"])
    assert diff["lo"] <= diff["value"] <= diff["hi"]
    assert set(rows[("price_1", "rank_ic")]["baselines"]) == {"mean", "ridge"}
    assert rows[("volatility", "mae")]["baselines"].keys() == {"trailing"}
    assert rows[("confidence", "brier")]["baselines"].keys() == {"constant"}


def test_flat_run_metrics_and_printed_lines(planted) -> None:
    from btml.models_cli import report_lines
    from workflows.train import flat_report

    _, _, rep = planted
    flat = flat_report(rep)
    assert flat["oos_edge"] == rep["edge"]["summary"]
    net_acc = rep["heads"]["direction"]["models"]["network"]["accuracy"]
    assert flat["oos_direction_network_accuracy"] == net_acc["value"]
    assert flat["oos_direction_network_accuracy_lo"] == net_acc["lo"]
    assert flat["oos_direction_logistic_accuracy"] is not None
    assert isinstance(flat["oos_beat_direction_accuracy_logistic"], bool)
    assert all(not isinstance(v, dict | list) for v in flat.values())
    lines = report_lines(rep)
    assert lines[0] == rep["edge"]["summary"]
    assert "moving-block bootstrap over dates" in lines[1]
    assert any(line.strip().startswith("direction") and "majority" in line for line in lines)
    assert lines[-1].startswith("  network beat: direction accuracy: ")


def test_a_card_written_before_the_report_still_loads_and_shows(tmp_path) -> None:
    """Old cards have ``val`` / ``test`` / ``baselines_test`` and no ``report``."""
    import json

    from click.testing import CliRunner

    from btml.cli import main
    from mlmodels.pipeline import register_untrained
    from mlmodels.registry import CARD_FILE, ModelRegistry
    from workflows.train import card_metrics

    reg = ModelRegistry(tmp_path / "models")
    card = register_untrained(reg, "tiny", "old", features=["a", "b"], window=8)
    path = reg.path(card.ref) / CARD_FILE
    data = json.loads(path.read_text())
    data["metrics"] = {
        "test": {"direction_accuracy": 0.41, "price_1_ic": 0.05, "n": 100},
        "baselines_test": {"majority_direction_accuracy": 0.38},
    }
    data["training"] = {"best_epoch": 3, "epochs_run": 5}
    path.write_text(json.dumps(data))
    old = reg.card("old:1")
    assert old.report is None and old.edge is None
    assert card_metrics(old)["test_direction_accuracy"] == 0.41
    assert not any(k.startswith("oos_") for k in card_metrics(old))
    res = CliRunner().invoke(main, ["--store", str(tmp_path), "models", "show", "old:1"])
    assert res.exit_code == 0, res.output
    assert "direction_accuracy 0.4100" in res.output and "edge" not in res.output


def test_baselines_share_the_split_and_the_trailing_volatility_is_causal() -> None:
    from feeds.sources.synthetic import SyntheticConfig, generate_market
    from mlmodels.baselines import fit_baselines, trailing_volatility
    from mlmodels.dataset import DatasetConfig, build_dataset
    from mlmodels.splits import chronological_split

    frames = generate_market(SyntheticConfig(n_symbols=2, n_bars=700, seed=5))
    ds = build_dataset(frames, DatasetConfig(window=16))
    split = chronological_split(ds.times, lookahead=24)
    ds.fit_scaler(split.train)
    preds = fit_baselines(ds, split.train, split.val, split.test)
    for p in preds.values():
        assert p["direction"].shape == (len(split.test), 3) and p["price"].shape[1] == 3
        np.testing.assert_allclose(p["direction"].sum(axis=1), 1.0, atol=1e-9)
    idx = np.arange(len(ds))
    trailing = trailing_volatility(ds, idx)
    first = np.flatnonzero(np.diff(ds.sample_symbol, prepend=-1))  # each symbol's first sample
    for f in first:
        assert np.isnan(trailing[f : f + 24]).all() and np.isfinite(trailing[f + 24])
    i = first[1] + 100  # the std of the 24 one-bar log returns up to and including the bar
    close = frames[ds.symbols[1]]["close"].to_numpy()
    t = frames[ds.symbols[1]].index.get_loc(ds.times[i])
    g = np.diff(np.log(close[t - 24 : t + 1]))
    assert trailing[i] == pytest.approx(np.std(g, ddof=1), rel=1e-5)


def test_the_report_records_the_naive_forecasts_it_scored_against(planted) -> None:
    """A card's report keeps the prior, the mean returns and the confidence's base rate, so a
    later backtest of the model scores against the very same naive forecasts."""
    _, truth, rep = planted
    assert rep["split"] == "test"
    assert rep["naive"] == {
        "prior": pytest.approx(list(truth.prior)),
        "mean_returns": {"1": 0.0, "4": 0.0, "24": 0.0},
        "confidence_base_rate": 0.4,
    }
