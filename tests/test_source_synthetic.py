"""Tests for the synthetic market (feeds/sources/synthetic.py).

Statistical checks use fixed seeds and state their tolerance in standard errors (SE). Sample
statistics are measured on the frames a user gets (log close-to-close returns), not on internals.
Spread across 20 seeds, measured while writing these tests: a plain factor market (no GARCH,
jumps or regimes; 30 symbols x 2520 bars) has mean annual vol 0.2499 (sd 0.0017) and mean
correlations within 0.008 sd of target; its planted lag-1 autocorrelation sits within 0.007 sd of
the plant (0.014 sd with GARCH, jumps and regimes on, 0.004 sd in a pure random walk).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError, SymbolNotFound
from feeds.frame import OHLCV_COLUMNS
from feeds.sources import synthetic
from feeds.sources.base import Source
from feeds.sources.synthetic import (
    GarchConfig,
    RegimeConfig,
    SyntheticConfig,
    SyntheticSource,
    generate_market,
    simulate_paths,
)
from feeds.validate import validate

# A factor market with nothing but factors: the "plain" setting for correlation and vol checks.
PLAIN: dict[str, Any] = {
    "garch": None,
    "jump_prob": 0.0,
    "regimes": None,
    "n_symbols": 30,
    "n_sectors": 3,
}


@cache
def market(config: SyntheticConfig) -> dict[str, pd.DataFrame]:
    """Generated markets, shared between tests (configs are frozen, hence hashable)."""
    return generate_market(config)


def returns(config: SyntheticConfig) -> np.ndarray:
    """Log close-to-close returns, (bars - 1, symbols); the first bar's return is not observable."""
    frames = market(config).values()
    return np.column_stack([np.diff(np.log(f["close"].to_numpy())) for f in frames])


def acf1(x: np.ndarray) -> np.ndarray:
    """Lag-1 sample autocorrelation of each column."""
    x = x - x.mean(axis=0)
    return (x[1:] * x[:-1]).sum(axis=0) / (x * x).sum(axis=0)


def mean_corr(r: np.ndarray, sectors: np.ndarray) -> tuple[float, float]:
    """Mean pairwise return correlation within sectors and across sectors."""
    c = np.corrcoef(r.T)
    same = sectors[:, None] == sectors[None, :]
    off_diag = ~np.eye(len(sectors), dtype=bool)
    return float(c[same & off_diag].mean()), float(c[~same].mean())


# --- determinism and the frame contract -------------------------------------------------------


def test_same_seed_gives_identical_frames() -> None:
    cfg = SyntheticConfig(n_symbols=4, n_bars=300, seed=7, delist_prob=0.5)
    a, b = generate_market(cfg), generate_market(SyntheticConfig(**vars(cfg)))
    assert list(a) == list(b)
    for sym in a:
        pd.testing.assert_frame_equal(a[sym], b[sym])
        assert a[sym].attrs == b[sym].attrs


def test_different_seed_gives_different_frames() -> None:
    a = generate_market(SyntheticConfig(n_symbols=3, n_bars=100, seed=1))
    b = generate_market(SyntheticConfig(n_symbols=3, n_bars=100, seed=2))
    for sym in a:
        assert not np.allclose(a[sym]["close"], b[sym]["close"])


def test_frames_follow_the_ohlcv_contract() -> None:
    cfg = SyntheticConfig(n_symbols=6, n_bars=500, n_sectors=2, seed=3)
    for i, (sym, frame) in enumerate(market(cfg).items()):
        assert sym == f"SYN{i:03d}"
        assert list(frame.columns) == list(OHLCV_COLUMNS)
        assert all(frame[c].dtype == np.float64 for c in OHLCV_COLUMNS)
        assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.name == "datetime"
        assert str(frame.index.tz) == "UTC"
        assert frame.index.is_monotonic_increasing and frame.index.is_unique
        assert frame.attrs["symbol"] == sym and frame.attrs["source"] == "synthetic"
        assert frame.attrs["timeframe"] == "1Day" and frame.attrs["asset_class"] == "stocks"
        assert frame.attrs["sector"] == i % 2 and frame.attrs["delisted_at"] is None
        validate(frame)  # raises on any broken hard rule


def test_symbol_names_widen_past_a_thousand() -> None:
    assert SyntheticConfig(n_symbols=3, n_bars=2).symbols == ("SYN000", "SYN001", "SYN002")
    assert SyntheticConfig(n_symbols=1001, n_bars=2).symbols[-1] == "SYN1000"


def test_daily_bars_are_business_days_and_intraday_bars_continuous() -> None:
    daily = SyntheticConfig(n_bars=30, start="2024-01-05").index()  # a Friday
    assert daily[0] == pd.Timestamp("2024-01-05", tz="UTC") and (daily.day_of_week < 5).all()
    assert daily[1] == pd.Timestamp("2024-01-08", tz="UTC")
    hourly = SyntheticConfig(n_bars=200, timeframe="1h", start="2024-01-05").index()
    assert (np.diff(hourly.asi8) == pd.Timedelta("1h").value).all()
    assert (hourly.day_of_week >= 5).any()  # weekends too
    assert SyntheticConfig(timeframe="1d").timeframe == "1Day"  # aliases are normalised


# --- OHLC invariants (property-based) --------------------------------------------------------

small_configs = st.builds(
    SyntheticConfig,
    n_symbols=st.integers(1, 4),
    n_bars=st.integers(2, 80),
    seed=st.integers(0, 2**32),
    n_sectors=st.integers(1, 3),
    timeframe=st.sampled_from(["1Day", "1h", "5m"]),
    annual_vol=st.floats(0.01, 3.0),
    drift=st.floats(-2.0, 2.0),
    garch=st.one_of(
        st.none(), st.builds(GarchConfig, alpha=st.floats(0, 0.3), beta=st.floats(0, 0.69))
    ),
    regimes=st.one_of(st.none(), st.builds(RegimeConfig, p_enter_stress=st.floats(0.01, 1.0))),
    jump_prob=st.floats(0.0, 0.04),
    delist_prob=st.floats(0.0, 1.0),
    planted_strength=st.floats(-0.9, 0.9),
    gap_share=st.floats(0.0, 0.99),
    intrabar_steps=st.integers(1, 20),
    volume_sensitivity=st.floats(0.0, 1.0),
    volume_noise=st.floats(0.0, 3.0),
)


@settings(max_examples=60, deadline=None)
@given(small_configs)
def test_ohlc_invariants_hold_on_every_row(cfg: SyntheticConfig) -> None:
    for frame in generate_market(cfg).values():
        o, h, lo, c, v = (frame[col].to_numpy() for col in OHLCV_COLUMNS)
        assert 1 <= len(frame) <= cfg.n_bars
        assert np.isfinite(frame.to_numpy()).all()
        assert (lo > 0).all() and (v >= 1).all()
        assert (lo <= np.minimum(o, c)).all() and (h >= np.maximum(o, c)).all()
        assert frame.index.is_monotonic_increasing and frame.index.is_unique


def test_one_intrabar_step_means_high_low_from_open_and_close() -> None:
    frame = generate_market(SyntheticConfig(n_symbols=1, n_bars=200, intrabar_steps=1))["SYN000"]
    np.testing.assert_array_equal(frame["high"], np.maximum(frame["open"], frame["close"]))
    np.testing.assert_array_equal(frame["low"], np.minimum(frame["open"], frame["close"]))


def test_open_is_previous_close_times_a_gap() -> None:
    no_gap = SyntheticConfig.pure_random_walk(n_symbols=2, n_bars=300, gap_share=0.0)
    for frame in generate_market(no_gap).values():
        np.testing.assert_allclose(frame["open"].to_numpy()[1:], frame["close"].to_numpy()[:-1])
    gapped = generate_market(SyntheticConfig.pure_random_walk(n_symbols=2, n_bars=300))
    for frame in gapped.values():
        gap = np.log(frame["open"].to_numpy()[1:] / frame["close"].to_numpy()[:-1])
        day = np.log((frame["close"] / frame["open"]).to_numpy())[1:]
        assert 0.1 * day.std() < gap.std() < day.std()  # gap_share 0.1 of variance: ~ 1/3 of sd


# --- volatility ------------------------------------------------------------------------------


def test_configured_annual_vol_is_recovered_within_10_percent() -> None:
    cfg = SyntheticConfig(**PLAIN, annual_vol=0.3, seed=11)
    vol = returns(cfg).std(axis=0) * np.sqrt(252)
    assert vol.mean() == pytest.approx(0.3, rel=0.10)  # measured sd over seeds: 0.7%
    assert np.all(np.abs(vol / 0.3 - 1) < 0.10)  # each symbol: SE ~1.4%, so > 7 SE


def test_vol_dispersion_gives_each_symbol_its_recorded_vol() -> None:
    cfg = SyntheticConfig(**PLAIN, vol_dispersion=0.5, seed=12)
    vol = returns(cfg).std(axis=0) * np.sqrt(252)
    target = np.array([f.attrs["annual_vol"] for f in market(cfg).values()])
    assert target.std() > 0.05  # the dispersion is real
    np.testing.assert_allclose(vol, target, rtol=0.10)


@pytest.mark.parametrize("strength", [0.5, -0.5])
def test_a_strong_plant_keeps_the_configured_vol(strength: float) -> None:
    # Unscaled AR(1) innovations would inflate vol by 1/sqrt(1 - 0.25) = +15%.
    cfg = SyntheticConfig.pure_random_walk(n_symbols=20, planted_strength=strength, seed=14)
    vol = returns(cfg).std(axis=0) * np.sqrt(252)
    assert vol.mean() == pytest.approx(0.25, rel=0.05)  # pooled SE ~0.5%


def test_annual_vol_holds_with_garch_jumps_regimes_and_plant_on() -> None:
    cfg = SyntheticConfig(n_symbols=30, annual_vol=0.2, planted_strength=0.1, seed=13)
    vol = returns(cfg).std(axis=0) * np.sqrt(252)
    assert vol.mean() == pytest.approx(0.2, rel=0.20)  # regime luck: sd over seeds ~6.7%


def test_garch_on_shows_volatility_clustering_and_off_does_not() -> None:
    # Independent symbols, so the pooled mean of N lag-1 autocorrelations has SE 1/sqrt(N*T).
    on = SyntheticConfig.pure_random_walk(n_symbols=20, garch=GarchConfig(alpha=0.1, beta=0.85))
    off = SyntheticConfig.pure_random_walk(n_symbols=20, seed=1)
    r_on, r_off = returns(on), returns(off)
    se = 1 / np.sqrt(r_on.size)
    assert acf1(r_on**2).mean() > 10 * se  # measured ~0.18 against se ~0.0045
    assert abs(acf1(r_off**2).mean()) < 3 * se


def test_regimes_switch_volatility_at_the_configured_rates() -> None:
    rc = RegimeConfig(stressed_vol_mult=3.0, p_enter_stress=0.02, p_exit_stress=0.1)
    cfg = SyntheticConfig.pure_random_walk(n_symbols=10, n_bars=20_000, regimes=rc)
    paths = simulate_paths(cfg)
    stressed = paths.regime == 1
    assert stressed.mean() == pytest.approx(rc.stressed_share, abs=0.04)  # ~110 episodes
    ratio = paths.log_returns[stressed].std() / paths.log_returns[~stressed].std()
    assert ratio == pytest.approx(3.0, rel=0.05)
    assert np.sqrt((paths.log_returns**2).mean() * 252) == pytest.approx(0.25, rel=0.10)


# --- correlations ----------------------------------------------------------------------------


def test_within_and_cross_sector_correlations_match_the_config() -> None:
    cfg = SyntheticConfig(**PLAIN, market_corr=0.3, sector_corr=0.2, seed=21)
    same, cross = mean_corr(returns(cfg), np.arange(30) % 3)
    assert same == pytest.approx(0.5, abs=0.05)  # sd over seeds 0.006
    assert cross == pytest.approx(0.3, abs=0.05)  # sd over seeds 0.008


def test_correlations_survive_garch_and_regimes_and_jumps_shrink_them() -> None:
    cfg = SyntheticConfig(n_symbols=30, n_sectors=3, market_corr=0.3, sector_corr=0.2, seed=22)
    shrink = 1 - cfg.jump_prob * cfg.jump_scale**2  # jumps are each symbol's own
    same, cross = mean_corr(returns(cfg), np.arange(30) % 3)
    assert same == pytest.approx(0.5 * shrink, abs=0.12)  # sd over seeds ~0.04
    assert cross == pytest.approx(0.3 * shrink, abs=0.15)  # sd over seeds ~0.05
    assert same > cross + 0.1


def test_pure_random_walk_symbols_are_uncorrelated() -> None:
    r = returns(SyntheticConfig.pure_random_walk(n_symbols=20))
    c = np.corrcoef(r.T)[~np.eye(20, dtype=bool)]
    assert np.abs(c).max() < 4 / np.sqrt(len(r))  # 190 pairs, each SE 1/sqrt(T)


# --- the plant, and nothing in a random walk -------------------------------------------------


@pytest.mark.parametrize("strength", [0.05, 0.1, -0.1, 0.3])
def test_planted_autocorrelation_is_recovered_in_a_random_walk(strength: float) -> None:
    cfg = SyntheticConfig.pure_random_walk(n_symbols=20, planted_strength=strength, seed=31)
    assert acf1(returns(cfg)).mean() == pytest.approx(strength, abs=0.015)  # sd 0.0043


def test_planted_autocorrelation_is_recovered_in_a_factor_market() -> None:
    cfg = SyntheticConfig(**PLAIN, planted_strength=0.1, seed=32)
    assert acf1(returns(cfg)).mean() == pytest.approx(0.1, abs=0.025)  # sd over seeds 0.007


def test_planted_autocorrelation_is_recovered_with_everything_on() -> None:
    cfg = SyntheticConfig(n_symbols=30, n_sectors=3, planted_strength=0.1, seed=33)
    assert acf1(returns(cfg)).mean() == pytest.approx(0.1, abs=0.045)  # sd over seeds 0.014


def test_plant_predicts_the_next_return_by_regression() -> None:
    cfg = SyntheticConfig.pure_random_walk(n_symbols=20, planted_strength=0.1, seed=34)
    r = returns(cfg)
    x, y = r[:-1].ravel(), r[1:].ravel()
    slope = np.polyfit(x, y, 1)[0]  # what a model would learn: E[r_t+1 | r_t] = 0.1 r_t
    assert slope == pytest.approx(0.1, abs=0.015)


def test_pure_random_walk_has_no_autocorrelation() -> None:
    r = returns(SyntheticConfig.pure_random_walk(n_symbols=20, seed=35))
    se = 1 / np.sqrt(r.size)  # independent symbols: pooled SE of the mean lag-1 autocorrelation
    assert abs(acf1(r).mean()) < 3 * se
    assert abs(acf1(np.abs(r)).mean()) < 3 * se  # no volatility clustering either


def test_pure_random_walk_preset_switches_everything_off() -> None:
    cfg = SyntheticConfig.pure_random_walk(n_symbols=3)
    assert (cfg.market_corr, cfg.sector_corr, cfg.drift, cfg.jump_prob) == (0, 0, 0, 0)
    assert cfg.garch is None and cfg.regimes is None and cfg.planted_strength == 0
    assert SyntheticConfig.pure_random_walk(planted_strength=0.2).planted_strength == 0.2


# --- volume and delisting --------------------------------------------------------------------


def test_volume_rises_with_the_size_of_the_move() -> None:
    cfg = SyntheticConfig(n_symbols=10, seed=41)
    for frame in market(cfg).values():
        move = np.abs(np.log(frame["close"]).diff()).iloc[1:]
        rank_corr = move.rank().corr(frame["volume"].iloc[1:].rank())
        assert rank_corr > 0.3


def test_delisting_truncates_frames_and_records_when() -> None:
    full = market(SyntheticConfig(n_symbols=8, n_bars=400, seed=51))
    cut = market(SyntheticConfig(n_symbols=8, n_bars=400, seed=51, delist_prob=1.0))
    index = SyntheticConfig(n_bars=400).index()
    for sym, frame in cut.items():
        n = len(frame)
        assert 40 <= n < 400  # at least a tenth of the sample survives
        assert frame.attrs["delisted_at"] == index[n].isoformat()
        pd.testing.assert_frame_equal(frame, full[sym].iloc[:n])  # same history until then
        assert full[sym].attrs["delisted_at"] is None


def test_delist_prob_delists_about_that_share() -> None:
    paths = simulate_paths(SyntheticConfig(n_symbols=400, n_bars=50, delist_prob=0.25))
    assert (paths.n_live < 50).mean() == pytest.approx(0.25, abs=0.07)  # SE 0.022


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("n_symbols", 0, r"n_symbols must be an integer in \[1, 100000\]"),
        ("n_symbols", 2.5, "n_symbols must be an integer"),
        ("n_bars", 1, r"n_bars must be an integer in \[2, "),
        ("n_sectors", 0, "n_sectors"),
        ("seed", -1, "seed"),
        ("market_corr", 1.0, r"market_corr must be a number in \[0, 1\)"),
        ("sector_corr", -0.1, "sector_corr"),
        ("market_corr", float("nan"), "market_corr"),
        ("annual_vol", 0.0, r"annual_vol must be a number in \(0, 5\]"),
        ("planted_strength", 1.0, r"planted_strength must be a number in \(-1, 1\)"),
        ("jump_prob", 1.5, "jump_prob"),
        ("delist_prob", True, "delist_prob"),
        ("gap_share", 1.0, "gap_share"),
        ("intrabar_steps", 0, "intrabar_steps"),
        ("volume_sensitivity", 2.0, "volume_sensitivity"),
        ("bars_per_year", 0.0, "bars_per_year"),
        ("start", "not a date", "start"),
        ("timeframe", "3 weeks", "timeframe"),
        ("garch", "yes", "garch must be a GarchConfig"),
        ("regimes", 1, "regimes must be a RegimeConfig"),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        SyntheticConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: SyntheticConfig(market_corr=0.6, sector_corr=0.4), "market_corr \\+ sector_corr"),
        (lambda: SyntheticConfig(jump_prob=0.1, jump_scale=5.0), "jump_prob \\* jump_scale"),
        (lambda: SyntheticConfig(n_symbols=10_000, n_bars=10_000), "n_symbols \\* n_bars"),
        (lambda: GarchConfig(alpha=0.5, beta=0.6), "alpha \\+ GarchConfig.beta must be < 1"),
        (lambda: GarchConfig(alpha=-0.1), r"GarchConfig.alpha must be a number in \[0, 1\)"),
        (lambda: RegimeConfig(p_exit_stress=0.0), r"RegimeConfig.p_exit_stress .* \(0, 1\]"),
        (lambda: RegimeConfig(stressed_vol_mult=0.5), "stressed_vol_mult"),
        (lambda: SyntheticConfig(start="2260-01-01", n_bars=5000), "start must be a date"),
    ],
)
def test_invalid_combinations_are_refused(make: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        make()  # type: ignore[operator]


def test_garch_omega_targets_unit_variance() -> None:
    g = GarchConfig(alpha=0.05, beta=0.9)
    assert g.omega == pytest.approx(0.05)
    assert g.omega / (1 - g.alpha - g.beta) == pytest.approx(1.0)


# --- the source ------------------------------------------------------------------------------


def test_source_implements_the_protocol_and_serves_the_market() -> None:
    cfg = SyntheticConfig(n_symbols=3, n_bars=120, seed=61)
    src = SyntheticSource(config=cfg)
    assert isinstance(src, Source) and src.name == "synthetic"
    pd.testing.assert_frame_equal(src.fetch("SYN002"), market(cfg)["SYN002"])


def test_fetch_slices_half_open_and_returns_copies() -> None:
    src = SyntheticSource(config=SyntheticConfig(n_symbols=2, n_bars=60, start="2024-01-01"))
    frame = src.fetch("SYN000", start=pd.Timestamp("2024-01-10"), end=pd.Timestamp("2024-01-17"))
    assert frame.index[0] == pd.Timestamp("2024-01-10", tz="UTC")
    assert frame.index[-1] == pd.Timestamp("2024-01-16", tz="UTC")  # end is excluded
    assert len(frame) == 5 and frame.attrs["symbol"] == "SYN000"
    frame.iloc[:, :] = 0.0
    assert (src.fetch("SYN000")["close"] > 0).all()  # the cache was not touched


def test_fetch_generates_the_market_once_per_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[SyntheticConfig] = []

    def counting(config: SyntheticConfig) -> dict[str, pd.DataFrame]:
        calls.append(config)
        return generate_market(config)

    monkeypatch.setattr(synthetic, "generate_market", counting)
    src = SyntheticSource(n_symbols=3, n_bars=50)
    src.fetch("SYN000")
    src.fetch("SYN001")
    src.fetch("SYN000", start=pd.Timestamp("2015-02-01"))
    assert len(calls) == 1


def test_unknown_symbol_lists_the_valid_range() -> None:
    src = SyntheticSource(n_symbols=5, n_bars=10)
    with pytest.raises(SymbolNotFound, match="SYN000 to SYN004"):
        src.fetch("AAPL")


def test_empty_range_is_symbol_not_found_not_an_empty_frame() -> None:
    src = SyntheticSource(n_symbols=1, n_bars=10, start="2024-01-01")
    with pytest.raises(SymbolNotFound, match="no bars in"):
        src.fetch("SYN000", start=pd.Timestamp("2030-01-01"))


def test_overrides_and_their_errors() -> None:
    assert SyntheticSource(n_symbols=2, seed=5).config == SyntheticConfig(n_symbols=2, seed=5)
    with pytest.raises(ConfigError, match="did you mean 'n_symbols'"):
        SyntheticSource(n_symbol=2)
    with pytest.raises(ConfigError, match="must be a SyntheticConfig"):
        SyntheticSource(config={"n_symbols": 2})  # type: ignore[arg-type]


def test_fetch_resamples_to_coarser_and_refuses_finer_timeframes() -> None:
    hourly = SyntheticSource(n_symbols=1, n_bars=72, timeframe="1h", start="2024-01-01")
    daily = hourly.fetch("SYN000", timeframe="1Day")
    raw = hourly.fetch("SYN000", timeframe="1h")
    assert len(daily) == 3 and daily.attrs["timeframe"] == "1Day"
    assert daily["high"].iloc[0] == raw["high"].iloc[:24].max()
    assert daily["volume"].iloc[0] == raw["volume"].iloc[:24].sum()
    with pytest.raises(ConfigError, match="SyntheticConfig\\(timeframe='1h'\\)"):
        SyntheticSource(n_symbols=1, n_bars=10).fetch("SYN000", timeframe="1h")
