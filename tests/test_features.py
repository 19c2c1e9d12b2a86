"""Tests for mlmodels.features: registry, ta parity, causality, warm-up, degenerate data, errors."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ta.momentum import ROCIndicator, RSIIndicator, StochasticOscillator, WilliamsRIndicator
from ta.others import DailyLogReturnIndicator
from ta.trend import MACD, ADXIndicator, AroonIndicator, EMAIndicator, SMAIndicator
from ta.volatility import AverageTrueRange, BollingerBands, DonchianChannel, KeltnerChannel
from ta.volume import (
    ChaikinMoneyFlowIndicator,
    OnBalanceVolumeIndicator,
    VolumeWeightedAveragePrice,
)

from core.errors import DataError
from feeds.frame import make_frame
from feeds.sample import load_sample
from mlmodels.features import (
    FAMILIES,
    FEATURE_NAMES,
    FEATURES,
    INDEX_FEATURE_NAMES,
    SETTLE_TOL,
    WARMUP,
    align_index,
    compute_features,
    feature_names,
    feature_table,
)
from mlmodels.features._bars import Bars
from mlmodels.features._registry import KINDS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "FEATURES.md"
SETTLING_KINDS = {"ema_rel", "macd", "macd_signal", "macd_hist", "rsi"}
SPEC = {s.name: s for s in FEATURES}


def synthetic(
    n: int,
    *,
    seed: int = 0,
    vol: float = 0.02,
    start: str = "2001-01-01",
    flat: tuple[int, int] = (0, 0),
    no_volume: tuple[int, int] = (0, 0),
    gaps: bool = False,
    symbol: str = "SYN",
) -> pd.DataFrame:
    """A canonical daily frame: a random walk with valid OHLC (low <= open, close <= high).

    ``flat = (start, length)`` freezes all four prices; ``no_volume`` zeroes the volume;
    ``gaps`` drops random business days so the bars are irregular.
    """
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0.0, vol / 2, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, vol / 2, n)))
    volume = rng.integers(1_000, 1_000_000, n).astype(np.float64)
    f0, fn = flat
    for arr in (open_, high, low, close):
        arr[f0 : f0 + fn] = close[max(f0 - 1, 0)]
    volume[no_volume[0] : no_volume[0] + no_volume[1]] = 0.0
    days = pd.bdate_range(start, periods=2 * n if gaps else n, tz="UTC")
    if gaps:
        days = days[np.sort(rng.choice(len(days), n, replace=False))]
    raw = pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=days
    )
    return make_frame(raw, symbol=symbol, source="test", timeframe="1Day")


def index_for(frame: pd.DataFrame, seed: int = 99) -> pd.DataFrame:
    """An index frame on every calendar day from 10 days before to 10 days after ``frame``."""
    days = pd.date_range(
        frame.index[0] - pd.Timedelta(days=10), frame.index[-1] + pd.Timedelta(days=10), tz="UTC"
    )
    out = synthetic(len(days), seed=seed, vol=0.01, symbol="IDX")
    out.index = pd.DatetimeIndex(days, name="datetime")
    return out


@pytest.fixture(scope="module")
def sample() -> dict[str, pd.DataFrame]:
    return load_sample(adjusted=True)


# --- the registry ---------------------------------------------------------------------------


def test_registry_counts_and_names() -> None:
    assert 55 <= len(FEATURES) <= 65
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert FAMILIES == (
        "returns",
        "trend",
        "momentum",
        "volatility",
        "volume",
        "temporal",
        "index",
    )
    assert set(INDEX_FEATURE_NAMES) < set(FEATURE_NAMES)
    assert feature_names(True) == FEATURE_NAMES
    assert feature_names(False) == tuple(n for n in FEATURE_NAMES if n not in INDEX_FEATURE_NAMES)
    assert WARMUP == max(s.warmup for s in FEATURES) == 199
    assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in FEATURE_NAMES)


def test_docs_table_is_the_registry() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert feature_table() in text
    for family in FAMILIES:  # the family summary's counts
        count = sum(s.family == family for s in FEATURES)
        assert re.search(rf"^\| {family} \| {count} \|", text, re.MULTILINE), family
    assert f"{len(FEATURES)} float64 columns" in text and f"WARMUP = {WARMUP}" in text


def test_settling_warmups_follow_the_stated_rule() -> None:
    for spec in FEATURES:
        if spec.kind in ("ema_rel", "rsi"):
            alpha = 2.0 / (spec.window + 1.0) if spec.kind == "ema_rel" else 1.0 / spec.window
            assert (1 - alpha) ** spec.warmup < SETTLE_TOL <= (1 - alpha) ** (spec.warmup - 1)
            assert spec.warmup >= spec.window - 1  # never earlier than ta's own first value


# --- output shape ---------------------------------------------------------------------------


def test_columns_dtype_rows_and_input_untouched(sample: dict[str, pd.DataFrame]) -> None:
    aapl, ibm = sample["AAPL"], sample["IBM"]
    before = aapl.copy()
    alone, full = compute_features(aapl), compute_features(aapl, ibm)
    assert tuple(alone.columns) == feature_names(False)
    assert tuple(full.columns) == FEATURE_NAMES
    assert full.index.equals(aapl.index)
    assert set(full.dtypes) == {np.dtype("float64")}
    assert full.attrs["symbol"] == "AAPL" and full.attrs["warmup"] == WARMUP
    pd.testing.assert_frame_equal(aapl, before)
    pd.testing.assert_frame_equal(alone, full[list(alone.columns)])


def test_warmup_row_is_complete_and_each_feature_starts_at_its_warmup(
    sample: dict[str, pd.DataFrame],
) -> None:
    out = compute_features(sample["MSFT"], sample["IBM"])
    assert not out.iloc[WARMUP].isna().any()
    assert out.iloc[WARMUP - 1].isna().any()
    for spec in FEATURES:
        first = int(np.argmax(out[spec.name].notna().to_numpy()))
        assert first == spec.warmup, spec.name


@pytest.mark.parametrize("name", [s.name for s in FEATURES if s.kind not in SETTLING_KINDS])
def test_window_warmup_is_not_larger_than_needed(name: str) -> None:
    """The calculator itself (before masking) has no value one bar before the stated warm-up."""
    frame = synthetic(WARMUP + 30, seed=3)
    idx = align_index(frame, index_for(frame), "SYN")
    s = SPEC[name]
    raw = KINDS[s.kind].calc(Bars(frame, idx), s.window)
    assert np.isfinite(raw[s.warmup :]).all()
    if s.warmup > 0:
        assert np.isnan(raw[s.warmup - 1])


# --- parity with ta -------------------------------------------------------------------------


def ta_expected(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Each feature that ta also computes, from ta's own classes, in our units."""
    c, h, low, v = df["close"], df["high"], df["low"], df["volume"]
    out: dict[str, pd.Series] = {}
    for n in (1, 2, 5, 10, 20):
        out[f"ret_{n}"] = ROCIndicator(c, n).roc() / 100
    out["log_ret_1"] = DailyLogReturnIndicator(c).daily_log_return() / 100
    for n in (5, 10, 20, 50, 200):
        out[f"sma_{n}_rel"] = c / SMAIndicator(c, n).sma_indicator() - 1
    for n in (9, 12, 21, 26, 50):
        out[f"ema_{n}_rel"] = c / EMAIndicator(c, n).ema_indicator() - 1
    macd = MACD(c, 26, 12, 9)
    out["macd_norm"] = macd.macd() / c
    out["macd_signal_norm"] = macd.macd_signal() / c
    out["macd_hist_norm"] = macd.macd_diff() / c
    adx = ADXIndicator(h, low, c, 14)
    out["adx_14"], out["adx_pos_14"], out["adx_neg_14"] = adx.adx(), adx.adx_pos(), adx.adx_neg()
    aroon = AroonIndicator(h, low, 25)
    out["aroon_up_25"], out["aroon_down_25"] = aroon.aroon_up(), aroon.aroon_down()
    for n in (7, 14, 21):
        out[f"rsi_{n}"] = RSIIndicator(c, n).rsi()
    stoch = StochasticOscillator(h, low, c, 14, 3)
    out["stoch_k_14"], out["stoch_d_14"] = stoch.stoch(), stoch.stoch_signal()
    out["williams_r_14"] = WilliamsRIndicator(h, low, c, 14).williams_r()
    out["roc_12"] = ROCIndicator(c, 12).roc()
    out["atr_14_norm"] = AverageTrueRange(h, low, c, 14).average_true_range() / c
    bb = BollingerBands(c, 20, 2)
    out["bb_pband_20"], out["bb_width_20"] = bb.bollinger_pband(), bb.bollinger_wband()
    kc = KeltnerChannel(h, low, c, 20, original_version=True)
    out["kc_pband_20"] = kc.keltner_channel_pband()
    dc = DonchianChannel(h, low, c, 20)
    out["dc_pband_20"], out["dc_width_20"] = (
        dc.donchian_channel_pband(),
        dc.donchian_channel_wband(),
    )
    obv = OnBalanceVolumeIndicator(c, v).on_balance_volume()
    out["obv_change_20"] = obv.diff(20) / v.rolling(20).sum()
    vwap = VolumeWeightedAveragePrice(h, low, c, v, 20).volume_weighted_average_price()
    out["vwap_dist_20"] = c / vwap - 1
    out["cmf_20"] = ChaikinMoneyFlowIndicator(h, low, c, v, 20).chaikin_money_flow()
    return out


@pytest.fixture(scope="module")
def parity_cases(sample: dict[str, pd.DataFrame]) -> list[tuple[str, pd.DataFrame, dict]]:
    frames = {"AAPL": sample["AAPL"], "GOOG": sample["GOOG"], "SYN": synthetic(900, seed=7)}
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for sym, frame in frames.items():
            cases.append((sym, compute_features(frame), ta_expected(frame)))
    return cases


def test_parity_covers_every_feature_with_a_ta_reference() -> None:
    assert set(ta_expected(synthetic(WARMUP + 5))) == {s.name for s in FEATURES if s.ta}


@pytest.mark.parametrize("name", [s.name for s in FEATURES if s.ta])
def test_matches_ta(name: str, parity_cases: list[tuple[str, pd.DataFrame, dict]]) -> None:
    for sym, ours, expected in parity_cases:
        got = ours[name].to_numpy()[WARMUP:]
        want = expected[name].to_numpy(dtype=np.float64)[WARMUP:]
        assert np.isfinite(want).all(), f"{sym}: ta has gaps"
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=f"{sym} {name}")


# --- causality --------------------------------------------------------------------------------


@st.composite
def truncation_cases(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    n = draw(st.integers(WARMUP + 50, WARMUP + 150))
    frame = synthetic(
        n,
        seed=draw(st.integers(0, 2**32 - 1)),
        vol=draw(st.floats(0.001, 0.08)),
        flat=(draw(st.integers(0, n)), draw(st.integers(0, 40))),
        no_volume=(draw(st.integers(0, n)), draw(st.integers(0, 40))),
        gaps=draw(st.booleans()),
    )
    return (
        frame,
        index_for(frame, seed=draw(st.integers(0, 1000))),
        draw(st.integers(WARMUP + 1, n)),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(truncation_cases())
def test_truncation_changes_no_earlier_value(case: tuple[pd.DataFrame, pd.DataFrame, int]) -> None:
    """Features on a prefix equal the prefix of the features, index-relative ones included."""
    frame, index, cut = case
    head = frame.iloc[:cut]
    full = compute_features(frame, index)
    assert tuple(full.columns) == FEATURE_NAMES
    expect = full.iloc[:cut].to_numpy()
    variants = {
        "whole index": compute_features(head, index),
        "index cut too": compute_features(head, index.loc[: head.index[-1]]),
    }
    for label, got in variants.items():
        np.testing.assert_allclose(got.to_numpy(), expect, rtol=1e-12, atol=0, err_msg=label)
    alone = compute_features(head)
    np.testing.assert_allclose(
        alone.to_numpy(), full.iloc[:cut][list(alone.columns)].to_numpy(), rtol=1e-12, atol=0
    )


def test_index_is_aligned_from_the_past_only() -> None:
    frame = synthetic(WARMUP + 20)
    index = synthetic(WARMUP + 20, seed=5, symbol="IDX")
    later = index.copy()
    later.index = later.index + pd.Timedelta(hours=1)  # each index bar 1 h after the symbol's
    aligned = align_index(frame, later, "SYN")
    assert np.isnan(aligned[0])
    np.testing.assert_array_equal(aligned[1:], index["close"].to_numpy()[:-1])
    out = compute_features(frame, index)
    want = index["close"] / index["close"].shift(5) - 1
    np.testing.assert_allclose(out["index_ret_5"][5:], want[5:], rtol=1e-12)


# --- degenerate data --------------------------------------------------------------------------


def test_flat_prices_and_zero_volume_give_defined_values() -> None:
    n = WARMUP + 120
    frame = synthetic(n, seed=11, flat=(WARMUP + 20, 60), no_volume=(WARMUP + 30, 50))
    index = index_for(frame)
    index.loc[frame.index[WARMUP + 20] : frame.index[WARMUP + 90], "close"] = 500.0
    out = compute_features(frame, index)  # strict: no NaN or inf anywhere after the warm-up
    quiet = out.iloc[WARMUP + 60 : WARMUP + 80]  # 20+ bars into both stretches
    assert (quiet["stoch_k_14"] == 50).all() and (quiet["williams_r_14"] == -50).all()
    for name in ("bb_pband_20", "kc_pband_20", "dc_pband_20", "close_loc"):
        assert (quiet[name] == 0.5).all(), name
    for name in ("cmf_20", "obv_change_20", "bb_width_20", "realized_vol_20"):
        assert (quiet[name] == 0).all(), name
    assert (quiet["volume_rel_20"] == 0).all()
    assert (quiet["vwap_dist_20"].abs() < 1e-12).all()  # VWAP falls back to the mean price
    flat_index = out.iloc[WARMUP + 80 : WARMUP + 90]  # 60 bars of a constant index close
    assert (flat_index[["beta_60", "corr_60"]] == 0).to_numpy().all()


def test_prices_flat_from_the_start() -> None:
    """No move at all: RSI is 50 (ta says 100), ADX and both DI are 0 (as ta)."""
    out = compute_features(synthetic(WARMUP + 20, flat=(0, WARMUP + 20)))
    row = out.iloc[WARMUP]
    assert row["rsi_7"] == row["rsi_14"] == row["rsi_21"] == 50
    assert row["adx_14"] == row["adx_pos_14"] == row["adx_neg_14"] == 0
    assert row["ret_20"] == row["sma_200_rel"] == row["macd_norm"] == 0


def test_temporal_encoding_of_a_known_date() -> None:
    frame = synthetic(WARMUP + 1, start="2023-06-01")
    out = compute_features(frame)
    monday = out.loc[pd.Timestamp("2024-01-01", tz="UTC")]  # a Monday, January, the 1st
    assert monday["dow_sin"] == 0 and monday["dow_cos"] == 1
    assert monday["month_sin"] == 0 and monday["month_cos"] == 1
    assert monday["dom_sin"] == 0 and monday["dom_cos"] == 1
    friday = out.loc[pd.Timestamp("2024-01-05", tz="UTC")]
    assert math.isclose(friday["dow_sin"], math.sin(2 * math.pi * 4 / 7))


# --- errors -----------------------------------------------------------------------------------


def test_short_history_names_symbol_and_bars_needed(sample: dict[str, pd.DataFrame]) -> None:
    with pytest.raises(DataError, match=rf"FB: 196 bars; .* at least {WARMUP + 1}"):
        compute_features(sample["FB"])
    with pytest.raises(DataError, match=r"SYN: 150 bars"):
        compute_features(synthetic(150), strict=False)


def test_nan_after_warmup_names_feature_symbol_and_date() -> None:
    frame = synthetic(WARMUP + 60)
    frame.iloc[WARMUP + 10, frame.columns.get_loc("close")] = np.nan
    when = str(frame.index[WARMUP + 10])
    with pytest.raises(DataError) as err:
        compute_features(frame)
    msg = str(err.value)
    assert msg.startswith("SYN: feature ret_1 is NaN at " + when) and "missing values" in msg
    loose = compute_features(frame, strict=False)
    assert loose["ret_1"].isna().sum() > 1


def test_non_positive_price_is_reported() -> None:
    frame = synthetic(WARMUP + 60)
    frame.iloc[WARMUP + 5, frame.columns.get_loc("close")] = 0.0
    with pytest.raises(DataError, match=r"SYN: feature \w+ is (NaN|infinite) at .*non-positive"):
        compute_features(frame)


def test_index_starting_late_is_reported() -> None:
    frame = synthetic(WARMUP + 60)
    index = index_for(frame).loc[frame.index[WARMUP + 10] :]
    with pytest.raises(
        DataError, match=r"SYN: feature index_ret_5 is NaN .*index frame has no bar"
    ):
        compute_features(frame, index)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda f: f.drop(columns="volume"), "missing column"),
        (lambda f: f.reset_index(drop=True), "DatetimeIndex"),
    ],
)
def test_bad_frames_are_refused(
    mutate: Callable[[pd.DataFrame], pd.DataFrame], pattern: str
) -> None:
    with pytest.raises(DataError, match=pattern):
        compute_features(mutate(synthetic(WARMUP + 5)))


def test_unsorted_index_frame_is_refused() -> None:
    frame = synthetic(WARMUP + 5)
    with pytest.raises(DataError, match="strictly increasing"):
        compute_features(frame, index_for(frame).iloc[::-1])
