"""Datasets on views, scaling fit on training rows only, feature selection, leakage checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from btml.cli import main
from core.errors import DataError
from feeds.index import IndexConfig, build_index
from feeds.sample import load_sample
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig, build_dataset
from mlmodels.features import WARMUP, compute_features
from mlmodels.leakage import future_information_check, truncation_check
from mlmodels.selection import Selection, correlation_filter, holdout_by_time, select_features
from mlmodels.splits import chronological_split


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    s = load_sample(adjusted=True)
    return {k: s[k] for k in ("AAPL", "IBM", "MSFT")}


@pytest.fixture(scope="module")
def index(frames) -> pd.DataFrame:
    return build_index(
        frames, IndexConfig(name="IDX", method="equal", constituents=tuple(frames))
    ).frame


def test_windows_are_views_and_match_the_features(frames, index) -> None:
    ds = build_dataset(frames, DatasetConfig(window=60), index)
    assert ds.rows.dtype == np.float32 and ds.rows.shape == (
        sum(len(f) for f in frames.values()),
        58,
    )
    w = ds.window_view(5)
    assert np.shares_memory(w, ds.rows) and w.shape == (60, 58)
    feats = compute_features(frames["AAPL"], index)
    t = int(ds.sample_row[0])
    np.testing.assert_allclose(
        ds.x([0])[0], feats.iloc[t - 59 : t + 1].to_numpy(np.float32), rtol=1e-6
    )
    assert ds.times[0] == frames["AAPL"].index[WARMUP + 59]
    # the last sample leaves room for the label lookahead: 24 bars, + 1 for the next open
    assert ds.times[len(frames["AAPL"]) - WARMUP - 59 - 25 - 1] == frames["AAPL"].index[-26]


def test_scaler_is_fit_on_training_rows_only(frames, index) -> None:
    ds = build_dataset(frames, DatasetConfig(), index)
    split = chronological_split(ds.times, lookahead=24)
    scaler = ds.fit_scaler(split.train)
    # changing every row after the training period must not change the statistics
    cut = ds.times[split.train].max()
    future = {k: f.copy() for k, f in frames.items()}
    for f in future.values():
        f.loc[f.index > cut, ["open", "high", "low", "close"]] *= 3.0
    ds2 = build_dataset(future, DatasetConfig(), index)
    scaler2 = ds2.fit_scaler(chronological_split(ds2.times, lookahead=24).train)
    np.testing.assert_allclose(scaler.mean, scaler2.mean, rtol=1e-6)
    np.testing.assert_allclose(scaler.std, scaler2.std, rtol=1e-6)
    assert not set(split.test) & set(split.train)
    assert ds.times[split.train].max() < ds.times[split.test].min()


def test_short_history_names_symbol_and_bars(frames) -> None:
    short = {"AAPL": frames["AAPL"].iloc[:250]}
    with pytest.raises(DataError, match=r"AAPL: 250 bars, needs at least 284"):
        build_dataset(short)
    with pytest.warns(UserWarning, match="AAPL: 250 bars"):
        ds = build_dataset({**short, "IBM": frames["IBM"]}, DatasetConfig(skip_short=True))
    assert ds.symbols == ("IBM",) and "AAPL" in ds.skipped


def test_selection_methods_fit_on_training_rows(frames, index, tmp_path) -> None:
    ds = build_dataset(frames, DatasetConfig(window=2), index)
    split = chronological_split(ds.times, lookahead=24)
    x = pd.DataFrame(ds.rows[ds.sample_row[split.train]], columns=list(ds.feature_names))
    corr = select_features(x, method="corr", threshold=0.8)
    assert 25 <= len(corr.outputs) <= 45
    kept = x[list(corr.outputs)].corr().abs().to_numpy()
    assert (kept[~np.eye(len(kept), dtype=bool)] <= 0.8 + 1e-9).all()
    dropped = [r for r in corr.report if not r["kept"]]
    assert dropped and all("corr" in str(r["why"]) for r in dropped)
    pca = select_features(x, method="pca", variance=0.9)
    z = pca.transform(x)
    assert z.shape[1] == len(pca.outputs) < x.shape[1]
    np.testing.assert_allclose(z.mean().to_numpy(), 0, atol=1e-6)  # centred on the training rows
    path = pca.save(tmp_path / "sel.json")
    np.testing.assert_allclose(Selection.load(path).transform(x).to_numpy(), z.to_numpy())


def test_importance_selection_ranks_a_planted_predictor_first() -> None:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(600, 6)), columns=[f"f{i}" for i in range(6)])
    y = np.digitize(x["f3"] + 0.3 * rng.normal(size=600), [-0.5, 0.5])
    sel = select_features(x, y, method="importance", top_k=3)
    assert sel.outputs[0] == "f3"
    assert any(r["feature"] == "f3" and r["importance"] > 0.1 for r in sel.report)


def test_correlation_filter_keeps_the_first_of_a_correlated_pair() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=300)
    x = pd.DataFrame({"a": a, "b": a + 0.01 * rng.normal(size=300), "c": rng.normal(size=300)})
    kept, report = correlation_filter(x, 0.8)
    assert kept == ["a", "c"] and "with a" in str(report[1]["why"])


def test_truncation_check_passes_ours_and_catches_a_peeking_feature(frames) -> None:
    assert truncation_check(frames["IBM"].iloc[:600], compute_features) == []

    def peeking(ohlcv: pd.DataFrame, index: pd.DataFrame | None = None) -> pd.DataFrame:
        f = compute_features(ohlcv, index)
        f["tomorrow"] = ohlcv["close"].pct_change().shift(-1)
        return f

    found = truncation_check(frames["IBM"].iloc[:600], peeking)
    assert [f.feature for f in found] == ["tomorrow"]


def test_check_leakage_cli_finds_a_planted_leak(frames, tmp_path) -> None:
    store = ParquetStore(tmp_path / "store")
    store.write(frames["IBM"])
    feats = compute_features(frames["IBM"]).iloc[WARMUP:]
    close = frames["IBM"]["close"].iloc[WARMUP:]
    table = feats.assign(close=close, leak=np.log(close).diff().shift(-1).fillna(0.0))
    path = tmp_path / "features.parquet"
    table.to_parquet(path)
    res = CliRunner().invoke(
        main,
        [
            "--store",
            str(tmp_path / "store"),
            "features",
            "check-leakage",
            "IBM",
            "--file",
            str(path),
        ],
    )
    assert res.exit_code == 1, res.output
    assert "LEAK features.parquet: leak (future-information)" in res.output
    assert res.output.count("LEAK") == 1  # the honest features pass
    clean = CliRunner().invoke(
        main, ["--store", str(tmp_path / "store"), "features", "check-leakage", "IBM"]
    )
    assert clean.exit_code == 0 and "no leakage found" in clean.output


def test_future_information_ignores_honest_features(frames) -> None:
    feats = compute_features(frames["MSFT"]).iloc[WARMUP:]
    assert future_information_check(feats, frames["MSFT"]) == []


def test_importance_holdout_is_later_in_time_for_every_symbol() -> None:
    """Rows come symbol after symbol; the holdout is the last 20 % of the period, not of rows."""
    cal = pd.bdate_range("2010-01-01", periods=500, tz="UTC")
    times = cal.append(cal[100:])
    fit, hold = holdout_by_time(times, 0.8, gap=2)
    assert times[fit].max() < times[hold].min()
    assert (fit < 500).any() and (fit >= 500).any() and (hold < 500).any() and (hold >= 500).any()
    assert times[hold].min() == cal[400] and times[fit].max() == cal[397]  # 2 bars of gap


def test_importance_selection_on_stacked_symbols_split_by_time() -> None:
    rng = np.random.default_rng(3)
    cal = pd.bdate_range("2010-01-01", periods=400, tz="UTC")
    times = cal.append(cal)
    x = pd.DataFrame(rng.normal(size=(800, 4)), columns=[f"f{i}" for i in range(4)])
    y = np.digitize(x["f0"] + 0.3 * rng.normal(size=800), [-0.5, 0.5])
    sel = select_features(x, y, method="importance", top_k=2, times=times)
    assert sel.outputs[0] == "f0"
    with pytest.raises(DataError, match="one value per row"):
        select_features(x, y[:-1], method="importance", times=times)


def test_features_select_cli_writes_a_file_training_can_read(frames, tmp_path) -> None:
    store = ParquetStore(tmp_path / "store")
    for f in frames.values():
        store.write(f)
    out = tmp_path / "sel.json"
    res = CliRunner().invoke(
        main,
        [
            "--store",
            str(tmp_path / "store"),
            "features",
            "select",
            "AAPL",
            "IBM",
            "MSFT",
            "--method",
            "corr",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    sel = Selection.load(out)
    ds = build_dataset(frames, DatasetConfig(selection=sel))
    assert ds.feature_names == sel.outputs
    assert "corr: 51 ->" in res.output
