"""btml walkforward and btml stress: the deflated Sharpe, real walk-forward runs on a synthetic
market, the shocks, the risk-limit check from the audit trail, and both CLI commands."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from statistics import NormalDist
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from analyzers.backtest import CostConfig, run_backtest
from analyzers.performance import deflated_sharpe
from btml.cli import main
from core.errors import ConfigError, DataError, ModelNotFound
from feeds.sources.synthetic import SyntheticConfig, generate_market
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig, build_dataset
from mlmodels.labels import LabelConfig
from mlmodels.pipeline import register_untrained
from mlmodels.registry import ModelRegistry
from mlmodels.splits import WalkForward
from mlmodels.trainer import TrainConfig
from serving.client import InProcessClient
from strategies.audit import Decision, decisions_frame
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
from strategies.risk import RiskConfig
from strategies.sizing import FixedFraction
from strategies.windows import FeatureWindows
from workflows.backtest import MLRunConfig
from workflows.stress import gap_shock, limits_held, stress, vol_shock
from workflows.walkforward import walk_forward

SYMBOLS = ("SYN000", "SYN001")
WINDOW = 16
TEST_BARS = 150
# the default labels' lookahead: the 24-bar horizon from the next open (trading heads) reads 25
LOOKAHEAD = LabelConfig().lookahead
# The untrained-ish tiny model's heads are timid; these entry rules let it trade.
TRADING = MLRunConfig(min_edge=0.0, horizon_agreement=0)
PRICES = ["open", "high", "low", "close"]


# -- the deflated Sharpe ratio ------------------------------------------------------------------
def dsr_reference(r: np.ndarray, trial_sharpes: list[float], n: int) -> float:
    """Bailey & Lopez de Prado (2014), eqs. for SR0 and the PSR, from scratch (no scipy)."""
    z = NormalDist()
    t = len(r)
    sr = r.mean() / r.std(ddof=1)
    m = r.mean()
    m2, m3, m4 = (np.mean((r - m) ** k) for k in (2, 3, 4))
    skew, kurt = m3 / m2**1.5, m4 / m2**2  # sample moments; kurt is 3 for a normal
    sr0 = 0.0
    if n > 1:
        v = np.var(trial_sharpes, ddof=1)
        g = 0.5772156649015329
        sr0 = math.sqrt(v) * ((1 - g) * z.inv_cdf(1 - 1 / n) + g * z.inv_cdf(1 - 1 / (n * math.e)))
    return z.cdf((sr - sr0) * math.sqrt(t - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))


def skewed_returns(seed: int, n: int = 500) -> pd.Series:
    """Daily returns with a positive drift, fat tails and negative skew (occasional crashes)."""
    rng = np.random.default_rng(seed)
    r = rng.standard_t(5, n) * 0.01 + 0.0008 - 0.04 * (rng.random(n) < 0.01)
    return pd.Series(r, index=pd.bdate_range("2015-01-02", periods=n, tz="UTC"))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 2, 10, 250])
def test_deflated_sharpe_matches_the_paper(seed: int, n: int) -> None:
    r = skewed_returns(seed)
    trials = list(np.random.default_rng(100 + seed).normal(0.02, 0.03, max(n, 2)))
    got = deflated_sharpe(r, trials, n_trials=n)
    assert got["dsr"] == pytest.approx(dsr_reference(r.to_numpy(), trials, n), rel=1e-9, abs=1e-12)
    assert got["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1), rel=1e-12)
    assert got["trials"] == n and got["periods"] == len(r)
    assert (got["sr0"] == 0.0) == (n == 1)


def test_one_trial_is_the_probabilistic_sharpe_against_zero() -> None:
    r = skewed_returns(4, 300)
    x = r.to_numpy()
    sr = x.mean() / x.std(ddof=1)
    g3 = np.mean((x - x.mean()) ** 3) / x.std() ** 3
    g4 = np.mean((x - x.mean()) ** 4) / x.std() ** 4
    psr = NormalDist().cdf(
        sr * math.sqrt(len(x) - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
    )
    assert 0.01 < psr < 0.99  # neither certain skill nor certain luck: the test has teeth
    for got in (
        deflated_sharpe(r, []),
        deflated_sharpe(r, [sr]),
        deflated_sharpe(r, [0.5, -0.5, 0.0], n_trials=1),
    ):
        assert got["sr0"] == 0.0 and got["dsr"] == pytest.approx(psr, rel=1e-9)


def test_more_trials_deflate_the_same_returns() -> None:
    r = skewed_returns(5)
    trials = [0.01, 0.05, 0.03, 0.08, 0.02]
    dsr = [deflated_sharpe(r, trials, n_trials=n)["dsr"] for n in (1, 2, 5, 10, 100, 1000)]
    sr0 = [deflated_sharpe(r, trials, n_trials=n)["sr0"] for n in (1, 2, 5, 10, 100, 1000)]
    assert all(a > b for a, b in zip(dsr, dsr[1:], strict=False)), dsr
    assert all(a < b for a, b in zip(sr0, sr0[1:], strict=False)), sr0
    # the same trial count with a wider spread of trial Sharpes deflates more
    wide = [4 * s for s in trials]
    assert deflated_sharpe(r, wide, n_trials=10)["dsr"] < dsr[3]


@pytest.mark.parametrize(
    "values",
    [[0.0] * 50, [0.001] * 50, [1 / 3] * 400, [], [0.01], [0.01, -0.02], [np.nan, 0.01, np.nan]],
    ids=["zeros", "constant", "constant-third", "empty", "one", "two", "two-after-nan"],
)
def test_degenerate_returns_give_zero_without_nan(values: list[float]) -> None:
    r = pd.Series(values, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no precision-loss or invalid-value warnings either
        got = deflated_sharpe(r, [0.1, 0.2, 0.3])
    assert got["dsr"] == 0.0 and got["sharpe"] == 0.0 and got["sr0"] == 0.0
    assert all(math.isfinite(v) for v in got.values())


def test_deflated_sharpe_refuses_what_it_cannot_deflate() -> None:
    r = skewed_returns(6)
    with pytest.raises(ConfigError, match="5 trials need the Sharpe ratios of at least 2"):
        deflated_sharpe(r, [0.1], n_trials=5)
    with pytest.raises(ConfigError, match="at least 2 of them.*got 1 finite"):
        deflated_sharpe(r, [0.1, np.nan], n_trials=2)
    with pytest.raises(ConfigError, match="n_trials must be >= 1"):
        deflated_sharpe(r, [0.1, 0.2], n_trials=0)
    bad = r.copy()
    bad.iloc[3] = np.inf
    with pytest.raises(DataError, match="1 infinite returns"):
        deflated_sharpe(bad, [0.1, 0.2])


# -- a small synthetic market in a store and one walk-forward over it ---------------------------
@pytest.fixture(scope="module")
def market(tmp_path_factory) -> tuple[Path, dict[str, pd.DataFrame]]:
    """Two symbols, 1200 daily bars from 2006 (so the GFC window is covered), stored."""
    root = tmp_path_factory.mktemp("research")
    store = ParquetStore(root)
    cfg = SyntheticConfig(n_symbols=2, n_bars=1200, seed=3, start="2006-01-02")
    for frame in generate_market(cfg).values():
        store.write(frame, merge=False)
    return root, {s: store.read(s, "1Day") for s in SYMBOLS}


@pytest.fixture(scope="module")
def wf(market):
    root, frames = market
    # lookahead=1 on purpose: walk_forward must purge with the labels' 25 bars regardless
    folds = WalkForward(n_splits=2, test_size=TEST_BARS, lookahead=1)
    return walk_forward(
        root, frames, name="wf", folds=folds,
        train_cfg=TrainConfig(epochs=3, batch_size=64, lr=3e-3, patience=2),
        data_cfg=DatasetConfig(window=WINDOW), ml=TRADING, log=lambda _: None,
    )  # fmt: skip


def calendar(frames: dict[str, pd.DataFrame]) -> pd.DatetimeIndex:
    return frames[SYMBOLS[0]].index


def test_walk_forward_test_segments_follow_each_other(market, wf) -> None:
    _, frames = market
    cal = calendar(frames)
    pos = [
        (cal.get_loc(a), cal.get_loc(b))
        for a, b in zip(wf.folds.test_start, wf.folds.test_end, strict=True)
    ]
    assert [b - a + 1 for a, b in pos] == [TEST_BARS, TEST_BARS]
    assert pos[1][0] == pos[0][1] + 1  # no gap, no overlap
    # the last test bar is the last one with labels: the data's end less the lookahead
    assert pos[-1][1] == len(cal) - 1 - LOOKAHEAD


def test_every_fold_is_trained_before_its_test_segment(market, wf) -> None:
    _, frames = market
    cal = calendar(frames)
    for card, (_, row) in zip(wf.cards, wf.folds.iterrows(), strict=True):
        dr = {k: [pd.Timestamp(x) for x in v] for k, v in card.date_ranges.items()}
        start = row["test_start"]
        assert dr["train"][1] < dr["val"][0] <= dr["val"][1] < start
        assert dr["test"] == [start, row["test_end"]]
        # purged by the labels' lookahead: no training or validation label reads a test bar
        assert cal.get_loc(dr["val"][1]) + LOOKAHEAD < cal.get_loc(start)
        assert cal.get_loc(dr["train"][1]) + LOOKAHEAD < cal.get_loc(dr["val"][0])
    # expanding: the second fold trains on more history, including the first test segment
    assert pd.Timestamp(wf.cards[1].date_ranges["train"][1]) > wf.folds.test_start.iloc[0]


def test_each_fold_scales_with_its_own_training_rows(market, wf) -> None:
    _, frames = market
    folds = WalkForward(n_splits=2, test_size=TEST_BARS, lookahead=LOOKAHEAD)
    for k, card in enumerate(wf.cards):
        ds = build_dataset(frames, DatasetConfig(window=WINDOW))
        split = list(folds.split(ds.times))[k]
        scaler = ds.fit_scaler(split.train)
        np.testing.assert_allclose(card.scaler["mean"], scaler.mean, rtol=1e-12)
        np.testing.assert_allclose(card.scaler["std"], scaler.std, rtol=1e-12)
    assert wf.cards[0].scaler["mean"] != wf.cards[1].scaler["mean"]


def test_stitched_returns_cover_exactly_the_test_bars(market, wf) -> None:
    _, frames = market
    cal = calendar(frames)
    expected = cal[0:0]
    for a, b in zip(wf.folds.test_start, wf.folds.test_end, strict=True):
        expected = expected.append(cal[(cal >= a) & (cal <= b)])
    pd.testing.assert_index_equal(wf.returns.index.as_unit("ns"), expected, check_names=False)
    pd.testing.assert_series_equal(wf.returns, pd.concat([r.returns for r in wf.results]))
    assert np.isfinite(wf.returns).all() and (wf.returns != 0).any()  # it traded


def test_folds_are_registered_and_tabled(market, wf) -> None:
    root, _ = market
    reg = ModelRegistry(root / "models")
    assert {"wf-f1", "wf-f2"} <= set(reg.names())
    assert [c.ref for c in wf.cards] == ["wf-f1:1", "wf-f2:1"]
    assert [reg.card(c.ref).date_ranges for c in wf.cards] == [c.date_ranges for c in wf.cards]
    table = wf.folds
    assert table.index.name == "fold" and list(table.index) == [1, 2]
    assert list(table.columns) == [
        "model", "test_start", "test_end", "return", "sharpe", "max_drawdown", "trades", "seconds",
    ]  # fmt: skip
    assert list(table["model"]) == ["wf-f1:1", "wf-f2:1"]
    for res, (_, row) in zip(wf.results, table.iterrows(), strict=True):
        assert row["return"] == res.stats.total_return and row["trades"] == res.stats.trades
    # the folds are one configuration, not two trials: alone, the walk-forward's deflated
    # Sharpe is the probabilistic Sharpe ratio of the stitched returns against 0
    assert wf.dsr == deflated_sharpe(wf.returns, [])
    assert wf.dsr["trials"] == 1 and wf.dsr["sr0"] == 0 and wf.dsr["periods"] == 2 * TEST_BARS
    assert 0 <= wf.dsr["dsr"] <= 1


def test_walk_forward_refuses_a_bad_name_before_training(market) -> None:
    root, frames = market
    with pytest.raises(ConfigError, match="--name must be non-empty without '/' or ':'"):
        walk_forward(
            root, frames, name="a:b", folds=WalkForward(n_splits=2, test_size=TEST_BARS),
            train_cfg=TrainConfig(epochs=1), data_cfg=DatasetConfig(window=WINDOW),
        )  # fmt: skip
    assert "a" not in ModelRegistry(root / "models").names()


# -- the shocks are pure functions ---------------------------------------------------------------
@pytest.fixture(scope="module")
def one_frame(market) -> pd.DataFrame:
    return market[1][SYMBOLS[0]].iloc[:300]


def test_gap_shock_is_minus_twenty_percent_from_the_bar_on(one_frame) -> None:
    f = one_frame
    before = f.copy()
    at = f.index[120]
    out = gap_shock(f, at)
    pd.testing.assert_frame_equal(f, before)  # the input is untouched
    pd.testing.assert_frame_equal(out.iloc[:120], f.iloc[:120])
    np.testing.assert_array_equal(out[PRICES].iloc[120:], f[PRICES].iloc[120:] * 0.8)
    np.testing.assert_array_equal(out["volume"], f["volume"])
    jump = out["open"].iloc[120] / out["close"].iloc[119]
    assert jump == pytest.approx(0.8 * f["open"].iloc[120] / f["close"].iloc[119], rel=1e-14)
    # a time between bars (or a naive one) starts the gap at the next bar
    mid = f.index[120] - pd.Timedelta(hours=12)
    pd.testing.assert_frame_equal(gap_shock(f, mid), out)
    pd.testing.assert_frame_equal(gap_shock(f, str(f.index[120].date())), out)
    with pytest.raises(ConfigError, match="gap size must be > -1"):
        gap_shock(f, at, size=-1.0)


def log_returns(f: pd.DataFrame) -> np.ndarray:
    return np.diff(np.log(f["close"].to_numpy()))


@pytest.mark.parametrize(("i", "bars", "factor"), [(120, 60, 3.0), (260, 60, 3.0), (0, 10, 8.0)])
def test_vol_shock_scales_the_return_deviations_of_the_segment(one_frame, i, bars, factor) -> None:
    f = one_frame
    before = f.copy()
    out = vol_shock(f, f.index[i], bars=bars, factor=factor)
    pd.testing.assert_frame_equal(f, before)
    first = max(i, 1)  # bar 0 has no return of its own
    pd.testing.assert_frame_equal(out.iloc[:first], f.iloc[:first])  # exactly unchanged
    r, r_out = log_returns(f), log_returns(out)
    seg = slice(first - 1, min(first - 1 + bars, len(r)))  # returns of bars first .. first+bars-1
    want = r[seg].mean() + factor * (r[seg] - r[seg].mean())
    np.testing.assert_allclose(r_out[seg], want, rtol=1e-9, atol=1e-12)
    assert r_out[seg].std() == pytest.approx(factor * r[seg].std(), rel=1e-9)
    np.testing.assert_allclose(r_out[seg.stop :], r[seg.stop :], atol=1e-12)  # then as before
    assert (out[PRICES] > 0).all().all()
    # each bar keeps its shape relative to its close, so OHLC stays consistent
    np.testing.assert_allclose(
        out[PRICES].div(out["close"], axis=0), f[PRICES].div(f["close"], axis=0), rtol=1e-12
    )
    assert (out["low"] <= out[["open", "close"]].min(axis=1)).all()
    assert (out["high"] >= out[["open", "close"]].max(axis=1)).all()
    np.testing.assert_array_equal(out["volume"], f["volume"])


def test_vol_shock_keeps_prices_positive_under_a_huge_factor(one_frame) -> None:
    out = vol_shock(one_frame, one_frame.index[50], bars=200, factor=50.0)
    assert (out[PRICES] > 0).all().all() and np.isfinite(out[PRICES]).all().all()
    after_end = vol_shock(one_frame, one_frame.index[-1] + pd.Timedelta(days=5))
    pd.testing.assert_frame_equal(after_end, one_frame)
    with pytest.raises(ConfigError, match="bars >= 1"):
        vol_shock(one_frame, one_frame.index[50], bars=0)


# -- risk limits from the audit trail -------------------------------------------------------------
def ml_run(root: Path, frames, card_ref: str, risk: RiskConfig):
    """A real backtest of a fold model on its test range, sized to hit the position cap."""
    card = ModelRegistry(root / "models").card(card_ref)
    windows = FeatureWindows.build(frames, card.features, card.window)
    t0, t1 = (pd.Timestamp(x) for x in card.date_ranges["test"])
    traded = {s: f.loc[t0:t1] for s, f in frames.items()}
    cfg = MLSignalConfig(
        sizer=FixedFraction(fraction=0.6), min_edge=0.0, horizon_agreement=0, risk=risk
    )
    client = InProcessClient.from_registry(root / "models", card_ref)
    res = run_backtest(
        "ml", traded, MLSignalStrategy, costs=CostConfig(),
        strategy_kwargs={"config": cfg, "client": client, "windows": windows},
    )  # fmt: skip
    return res, decisions_frame(res.strategy.audit)


def test_limits_held_on_real_runs(market, wf) -> None:
    root, frames = market
    res, audit = ml_run(root, frames, "wf-f1:1", RiskConfig())
    assert "position-limit" in set(audit.reason)  # the cap did bind, so the check means something
    assert limits_held(res, MLRunConfig()) == {
        "position": True, "daily_stop": True, "drawdown_halt": True,
    }  # fmt: skip
    tight = RiskConfig(max_drawdown=0.01)
    res, audit = ml_run(root, frames, "wf-f1:1", tight)
    assert audit.risk_state.str.contains("drawdown").any()  # the halt was in force at some bar
    assert all(limits_held(res, MLRunConfig(risk=tight)).values())
    # the same trail judged against a smaller cap than the run used: a breach
    assert not limits_held(res, MLRunConfig(risk=RiskConfig(max_position=0.1)))["position"]


def decision(target: float, weight: float = 0.0, state: str = "") -> Decision:
    return Decision(
        timestamp=pd.Timestamp("2021-03-01", tz="UTC"), symbol="X", price=100.0, signal=None,
        position=weight * 1000, target=target, reason="signal", weight=weight, risk_state=state,
    )  # fmt: skip


def held(decisions: list[Decision], risk: RiskConfig | None = None) -> dict[str, bool]:
    result = SimpleNamespace(strategy=SimpleNamespace(audit=decisions))
    return limits_held(result, MLRunConfig(risk=risk or RiskConfig()))  # type: ignore[arg-type]


def test_limits_held_flags_hand_built_breaches() -> None:
    ok = {"position": True, "daily_stop": True, "drawdown_halt": True}
    assert held([]) == ok
    assert held([decision(0.25), decision(-0.25), decision(0.1, 0.2, "daily-stop")]) == ok
    assert held([decision(0.3)]) == {**ok, "position": False}
    assert held([decision(-0.26)]) == {**ok, "position": False}
    assert held([decision(0.3)], RiskConfig(max_position=0.5)) == ok
    assert held([decision(0.15, 0.1, "daily-stop")]) == {**ok, "daily_stop": False}  # added
    assert held([decision(-0.05, 0.1, "daily-stop")]) == {**ok, "daily_stop": False}  # flipped
    assert held([decision(0.1, 0.0, "drawdown")]) == {**ok, "drawdown_halt": False}  # new entry
    assert held([decision(0.1, 0.0, "drawdown")], RiskConfig(drawdown_action="reduce")) == ok
    both = held([decision(0.2, 0.1, "daily-stop,drawdown")])
    assert both == {**ok, "daily_stop": False, "drawdown_halt": False}


# -- stress through the API -------------------------------------------------------------------------
def test_stress_covers_the_gfc_and_skips_what_the_data_does_not_cover(market, wf) -> None:
    root, frames = market
    lines: list[str] = []
    table = stress(root, "wf-f2", frames, ml=TRADING, log=lines.append)
    assert list(table.scenario) == [
        "GFC 2008-2009", "gap -20 % (all symbols)", "volatility x3 for 60 bars",
    ]  # fmt: skip
    skipped = [ln for ln in lines if "not covered by the data" in ln]
    assert len(skipped) == 2
    assert "dot-com 2000-2002" in skipped[0] and "COVID March 2020" in skipped[1]
    gfc = table.iloc[0]
    assert (gfc.start, gfc.end) == ("2008-09-01", "2009-03-31")
    assert bool(gfc.in_training_range)  # wf-f2 trained on 2006-2009: the GFC is in-sample
    test = wf.cards[1].date_ranges["test"]
    assert list(table.start[1:]) == [test[0][:10]] * 2 and not table.in_training_range[1:].any()
    assert table.filter(like="limit_").all().all()
    assert np.isfinite(table[["return", "max_drawdown"]].to_numpy(dtype=float)).all()


def test_stress_skips_a_crash_inside_the_feature_warm_up(market, wf) -> None:
    root, frames = market
    late = {s: f.loc["2008-06-01":] for s, f in frames.items()}  # GFC bars, but no signals yet
    lines: list[str] = []
    table = stress(root, "wf-f2", late, log=lines.append)
    assert "GFC 2008-2009" not in set(table.scenario)
    assert any(ln.strip().startswith("GFC 2008-2009: not covered") for ln in lines)


def test_stress_without_any_scenario_or_model_is_an_error(market, tmp_path) -> None:
    _, frames = market
    card = register_untrained(
        ModelRegistry(tmp_path / "models"), "tiny", "raw",
        features=["ret_1", "ret_5"], window=WINDOW,
    )  # fmt: skip
    late = {s: f.loc["2009-06-01":] for s, f in frames.items()}
    with pytest.raises(DataError, match="no stress scenario could run.*no test range"):
        stress(tmp_path, card.ref, late, log=lambda _: None)
    with pytest.raises(ModelNotFound, match="no model called 'nope'"):
        stress(tmp_path, "nope", late)


# -- the CLI --------------------------------------------------------------------------------------------
def test_walkforward_cli(market, wf) -> None:
    root, _ = market
    res = CliRunner().invoke(main, [
        "--store", str(root), "walkforward", "--symbols", ",".join(SYMBOLS), "--name", "cli",
        "--folds", "2", "--test-bars", str(TEST_BARS), "--epochs", "1", "--window", str(WINDOW),
        "--tearsheet", str(root / "wf.html"),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "fold 1/2" in out and "fold 2/2" in out
    header = next(ln for ln in out.splitlines() if "test_start" in ln)
    assert header.split() == [
        "model",
        "test_start",
        "test_end",
        "return",
        "sharpe",
        "max_drawdown",
        "trades",
        "entry_rule_chosen",  # --entry-rule auto (the default) chose per fold
    ]
    assert "cli-f1:1" in out and "cli-f2:1" in out
    oos = [ln for ln in out.splitlines() if ln.startswith("out-of-sample: return ")]
    # the folds are one configuration: the first on this data (stress runs try none)
    assert len(oos) == 1 and "deflated Sharpe" in oos[0] and "P[true Sharpe > 0]" in oos[0]
    assert "the only configuration tried on this data" in oos[0]
    saved = [ln for ln in out.splitlines() if ln.startswith("recorded as run ")]
    assert len(saved) == 1
    run_id, run_dir = saved[0].split()[3], Path(saved[0].split(" in ", 1)[1])
    assert run_dir == root / "runs" / run_id
    folds = pd.read_csv(run_dir / "folds.csv", index_col="fold")
    assert list(folds["model"]) == ["cli-f1:1", "cli-f2:1"]
    saved = pd.read_parquet(run_dir / "returns.parquet").iloc[:, 0]
    assert len(saved) == 2 * TEST_BARS
    summary = json.loads((run_dir / "summary.json").read_text(), parse_constant=_no_nan)
    run, bench = summary["runs"]  # the stitched walk-forward, then its buy-and-hold benchmark
    assert bench["name"] == "buy-and-hold" and run["name"] == "walk-forward cli"
    for r in (run, bench):
        assert r["final_value"] == pytest.approx(CostConfig().cash * (1 + r["total_return"]))
    assert summary["model_card"]["name"] == "cli-f2"
    assert "Sharpe" in (root / "wf.html").read_text()


def _no_nan(token: str) -> float:
    raise AssertionError(f"summary.json holds {token}, which is not JSON")


def test_stress_cli(market, wf) -> None:
    root, _ = market
    res = CliRunner().invoke(
        main, ["--store", str(root), "stress", "--model", "wf-f2:1", "--symbols", ",".join(SYMBOLS)]
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    header = next(ln for ln in lines if ln.split()[:1] == ["scenario"])
    assert header.split() == [
        "scenario", "start", "end", "in_training_range", "return", "max_drawdown", "trades",
        "limit_position", "limit_daily_stop", "limit_drawdown_halt",
    ]  # fmt: skip
    *body, recorded = lines[lines.index(header) + 1 :]
    assert [ln.split()[0] for ln in body] == ["GFC", "gap", "volatility"]
    assert recorded.startswith("recorded as run ")
    assert "dot-com 2000-2002: not covered by the data" in res.stdout


def snapshot(root: Path) -> dict[str, str]:
    """A hash of every stored file (data and models)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for sub in ("raw", "models")
        for p in sorted((root / sub).rglob("*"))
        if p.is_file()
    }


def test_cli_bad_inputs_fail_with_one_line_and_leave_the_store_alone(market, wf) -> None:
    root, frames = market
    before = snapshot(root)
    assert any(k.startswith("models/wf-f1/") for k in before)
    runner = CliRunner()
    base = ["--store", str(root)]
    wfo = ["walkforward", "--window", str(WINDOW), "--epochs", "1"]
    cases = [
        ([*wfo, "--symbols", "SYN000,NOPE"], "NOPE (1Day) is not in the store"),
        ([*wfo, "--symbols", "SYN000", "--folds", "5", "--test-bars", "500"],
         "too few bars for 5 folds of 500: 961 bars, need at least 2625 (the folds count the "
         "bars that have features and labels: 1200 stored bars"),
        ([*wfo, "--symbols", "SYN000", "--folds", "0"], "n_splits must be >= 1, got 0"),
        ([*wfo, "--symbols", "SYN000", "--name", "x/y"], "--name must be non-empty"),
        (["stress", "--model", "nope", "--symbols", "SYN000"], "no model called 'nope'"),
        (["stress", "--model", "wf-f1:7", "--symbols", "SYN000"], "model wf-f1 has no version 7"),
        (["stress", "--model", "wf-f1", "--symbols", "NOPE"], "NOPE (1Day) is not in the store"),
    ]  # fmt: skip
    for args, message in cases:
        res = runner.invoke(main, [*base, *args])
        assert res.exit_code == 2, (args, res.output)
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert res.exception is None or isinstance(res.exception, SystemExit)
    res = runner.invoke(main, [*base, *wfo, "--symbols", "SYN000", "--rolling", "0"])
    assert res.exit_code == 2 and "--rolling" in res.stderr
    assert snapshot(root) == before  # nothing deleted, rewritten or added
    store = ParquetStore(root)
    for sym, frame in frames.items():
        pd.testing.assert_frame_equal(store.read(sym, "1Day"), frame)
    reg = ModelRegistry(root / "models")
    for card in wf.cards:
        assert reg.versions(card.name) == [1] and reg.card(card.ref).to_json() == card.to_json()
        reg.load(card.ref)
