"""Labels (exact values on a hand-made series) and leak-proof splits (purge, embargo, no overlap)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError, DataError
from mlmodels.labels import LabelConfig, make_labels
from mlmodels.splits import WalkForward, chronological_split


def _ohlcv(close: np.ndarray) -> pd.DataFrame:
    idx = pd.bdate_range("2020-01-01", periods=len(close), tz="UTC", name="datetime")
    return pd.DataFrame(
        {"open": close, "high": close * 1.01, "low": close * 0.98, "close": close, "volume": 1.0},
        index=idx,
    )


def test_forward_returns_volatility_and_risk_are_exact() -> None:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 200)))
    lab = make_labels(_ohlcv(close))
    t = 50
    for h in (1, 4, 24):
        assert lab[f"ret_{h}"].iloc[t] == pytest.approx(np.log(close[t + h] / close[t]))
    g = np.diff(np.log(close))
    assert lab["volatility"].iloc[t] == pytest.approx(np.std(g[t : t + 24], ddof=1))
    assert lab["risk"].iloc[t] == pytest.approx(
        max(0.0, 1 - (close[t + 1 : t + 25] * 0.98).min() / close[t])
    )
    # the trading heads enter at the next open by default: one bar more than the 24 of close
    assert lab.iloc[-25:].isna().all().all() and lab.iloc[:-25].notna().all().all()
    closes = make_labels(_ohlcv(close), LabelConfig(trading_from="close"))
    assert closes.iloc[-24:].isna().all().all() and closes.iloc[:-24].notna().all().all()


def test_direction_dead_zone_and_action_net_of_costs() -> None:
    g = np.tile([0.01, -0.01], 60)  # per-bar sigma ~ 0.0103 (20-bar std)
    g[40], g[50], g[60] = 0.003, 0.008, -0.008  # next-bar moves: inside, above, below 0.5 sigma
    close = 100 * np.exp(np.concatenate([[0.0], np.cumsum(g)]))
    cfg = LabelConfig(cost=0.004, dead_zone=0.5, trading_from="close")  # close to close here
    lab = make_labels(_ohlcv(close), cfg)
    assert lab["direction"].iloc[40] == 1  # |0.3 %| < 0.5 sigma: flat
    assert lab["direction"].iloc[50] == 2 and lab["direction"].iloc[60] == 0
    # action uses the 4-bar return net of the 0.4 % round trip
    r4 = lab["ret_4"].iloc[40:90].to_numpy()
    act = lab["action"].iloc[40:90].to_numpy()
    np.testing.assert_array_equal(act, np.where(r4 > 0.004, 2, np.where(r4 < -0.004, 0, 1)))
    assert (lab["size"][lab["action"] == 1] == 0).all() and lab["size"].max() <= 1
    assert lab["confidence"].min() >= 0 and lab["confidence"].max() <= 1


def test_labels_depend_only_on_the_future_not_the_past_features() -> None:
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    full = make_labels(_ohlcv(close))
    changed = close.copy()
    changed[200:] *= 1.3  # change the future after bar 199
    other = make_labels(_ohlcv(changed))
    # labels up to t = 199 - 24 only read bars <= 199: identical
    pd.testing.assert_frame_equal(full.iloc[:175], other.iloc[:175])


def test_label_config_validation() -> None:
    with pytest.raises(ConfigError, match="direction_horizon"):
        LabelConfig(direction_horizon=2)


def _times(n_bars: int, n_symbols: int) -> pd.DatetimeIndex:
    cal = pd.bdate_range("2010-01-01", periods=n_bars, tz="UTC")
    return pd.DatetimeIndex(np.concatenate([cal.asi8] * n_symbols)).tz_localize("UTC")


def test_chronological_split_is_purged_and_disjoint_in_time() -> None:
    times = _times(1000, 3)
    s = chronological_split(times, lookahead=24)
    cal = pd.DatetimeIndex(np.unique(times.asi8)).tz_localize("UTC")
    pos = np.searchsorted(cal.asi8, times.asi8)
    assert pos[s.train].max() + 24 < pos[s.val].min()
    assert pos[s.val].max() + 24 < pos[s.test].min()
    assert set(s.train).isdisjoint(s.test) and set(s.val).isdisjoint(s.test)
    assert len(s.test) == 3 * 150


def test_too_few_samples_for_a_split() -> None:
    with pytest.raises(DataError, match="too few samples for the"):
        chronological_split(_times(30, 1), lookahead=24)


@settings(max_examples=40, deadline=None)
@given(
    n_bars=st.integers(600, 1500),
    n_splits=st.integers(1, 4),
    test_size=st.integers(20, 100),
    embargo=st.integers(0, 10),
    rolling=st.booleans(),
    lookahead=st.integers(1, 30),
)
def test_walk_forward_never_trains_on_or_across_the_test(
    n_bars, n_splits, test_size, embargo, rolling, lookahead
) -> None:
    times = _times(n_bars, 2)
    wf = WalkForward(
        n_splits=n_splits,
        test_size=test_size,
        lookahead=lookahead,
        embargo=embargo,
        train="rolling" if rolling else "expanding",
        train_size=300 if rolling else None,
    )
    cal = pd.DatetimeIndex(np.unique(times.asi8)).tz_localize("UTC")
    pos = np.searchsorted(cal.asi8, times.asi8)
    folds = list(wf.split(times))
    assert len(folds) == n_splits
    for f in folds:
        test_lo, test_hi = pos[f.test].min(), pos[f.test].max()
        assert test_hi - test_lo + 1 == test_size
        # purge: every training and validation label ends before the test starts
        assert (pos[f.train] + lookahead < test_lo).all()
        assert (pos[f.val] + lookahead < test_lo).all()
        assert (pos[f.train] + lookahead < pos[f.val].min()).all()
        assert set(f.train).isdisjoint(f.test)
    tests = [set(f.test) for f in folds]
    assert all(a.isdisjoint(b) for i, a in enumerate(tests) for b in tests[i + 1 :])


def test_embargo_drops_training_after_the_test() -> None:
    from mlmodels.splits import _purge

    pos = np.arange(100)
    kept = _purge(np.arange(100), pos, lookahead=5, eval_start_pos=40, eval_end_pos=49, embargo=10)
    assert kept.max() > 49 and not ((kept >= 35) & (kept <= 59)).any()


def test_walk_forward_refuses_a_negative_rolling_window() -> None:
    from core.errors import ConfigError
    from mlmodels.splits import WalkForward

    with pytest.raises(ConfigError, match="train_size must be >= 1 bar, got -5"):
        WalkForward(n_splits=2, test_size=10, train="rolling", train_size=-5)
