"""Risk rules and sizers: unit cases and Hypothesis properties."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from serving.signal import Signal
from strategies.risk import (
    DailyLossState,
    DrawdownState,
    RiskConfig,
    RiskInputs,
    apply_risk,
    gross_exposure_cap,
    no_new_entry,
)
from strategies.sizing import FixedFraction, ModelSizer, VolTarget, get_sizer

weights = st.floats(-2, 2, allow_nan=False)
DAY = dt.date(2024, 1, 2)


def inputs(desired: float, weights_: dict[str, float], **kw) -> RiskInputs:
    base = dict(
        symbol="A", desired=desired, weights=weights_, returns=np.zeros(0), held_returns={},
        daily=DailyLossState(DAY, 100.0), drawdown=DrawdownState(100.0, 0.0),
    )  # fmt: skip
    return RiskInputs(**{**base, **kw})


def test_no_new_entry_allows_only_reductions() -> None:
    assert no_new_entry(0.3, 0.0) == 0.0
    assert no_new_entry(0.3, 0.1) == 0.1
    assert no_new_entry(0.05, 0.1) == 0.05
    assert no_new_entry(-0.2, 0.1) == 0.0
    assert no_new_entry(-0.05, -0.1) == -0.05


def test_each_rule_names_itself() -> None:
    cfg = RiskConfig(max_position=0.2)
    assert apply_risk(inputs(0.5, {}), cfg) == (0.2, "position-limit")
    stopped = DailyLossState(DAY, 100.0, True)
    assert apply_risk(inputs(0.1, {}, daily=stopped), cfg) == (0.0, "daily-loss-stop")
    assert apply_risk(inputs(0.1, {"A": 0.15}, daily=stopped), cfg) == (0.1, "signal")  # reduce ok
    deep = DrawdownState(100.0, -0.3)
    assert apply_risk(inputs(0.1, {}, drawdown=deep), cfg) == (0.0, "drawdown-halt")
    reduce = RiskConfig(max_position=0.2, drawdown_action="reduce", drawdown_reduce=0.5)
    assert apply_risk(inputs(0.1, {}, drawdown=deep), reduce) == (0.05, "drawdown-reduce")
    r = np.random.default_rng(0).normal(size=60)
    corr = inputs(0.1, {"B": 0.1}, returns=r, held_returns={"B": r * 2})
    assert apply_risk(corr, cfg) == (0.0, "correlation")
    assert apply_risk(inputs(0.1, {"A": 0.0}, signal_ok=False), cfg) == (0.0, "serving-failure")
    held = inputs(0.1, {"A": 0.1}, signal_ok=False, serving_policy="flatten")
    assert apply_risk(held, cfg) == (0.0, "serving-failure")
    assert apply_risk(inputs(0.2, {"B": 0.9, "C": 0.0}), cfg) == (
        pytest.approx(0.1),
        "gross-exposure",
    )


def test_daily_stop_fires_and_resets_next_day() -> None:
    cfg = RiskConfig(daily_loss_stop=0.03)
    s = DailyLossState().update(DAY, 100.0, cfg)
    s = s.update(DAY, 97.5, cfg)
    assert not s.stopped
    s = s.update(DAY, 96.9, cfg)
    assert s.stopped
    assert s.update(DAY, 200.0, cfg).stopped  # stays stopped all day
    assert not s.update(DAY + dt.timedelta(days=1), 96.9, cfg).stopped


@settings(max_examples=300, deadline=None)
@given(
    desired=weights, current=weights, other=weights, dd=st.floats(-0.9, 0), stopped=st.booleans()
)
def test_position_never_beyond_its_limit_and_never_nan(
    desired, current, other, dd, stopped
) -> None:
    cfg = RiskConfig(max_position=0.25, max_gross=1.0)
    inp = inputs(
        desired, {"A": current, "B": other},
        daily=DailyLossState(DAY, 100.0, stopped), drawdown=DrawdownState(100.0, dd),
    )  # fmt: skip
    target, _ = apply_risk(inp, cfg)
    assert math.isfinite(target)
    assert abs(target) <= max(0.25, abs(current)) + 1e-12
    if abs(current) <= 0.25:
        assert abs(target) <= 0.25 + 1e-12


@settings(max_examples=300, deadline=None)
@given(desired=weights, current=weights)
def test_after_the_daily_stop_no_new_entry_that_day(desired, current) -> None:
    cfg = RiskConfig(max_position=1.0, max_gross=10.0)
    target, _ = apply_risk(
        inputs(desired, {"A": current}, daily=DailyLossState(DAY, 100.0, True)), cfg
    )
    assert abs(target) <= abs(current) + 1e-12
    assert target * current >= 0  # never flipped


@settings(max_examples=300, deadline=None)
@given(
    targets=st.dictionaries(st.sampled_from("ABCDE"), weights, min_size=1),
    current=st.dictionaries(st.sampled_from("ABCDEFG"), st.floats(-0.3, 0.3), max_size=7),
    cap=st.floats(0.1, 2.0),
)
def test_exposure_never_beyond_the_cap_unless_already_there(targets, current, cap) -> None:
    out = gross_exposure_cap(targets, current, cap)
    before = sum(abs(v) for v in current.values())
    after = sum(abs(v) for k, v in current.items() if k not in out) + sum(
        abs(v) for v in out.values()
    )
    assert after <= max(cap, before) + 1e-9
    for k, v in out.items():
        assert math.isfinite(v) and abs(v) <= abs(targets[k]) + 1e-12


def sig(**kw) -> Signal:
    base = dict(
        model="m", version=1, returns=(0.0, 0.0, 0.0), horizons=(1, 4, 24),
        direction=(0.3, 0.3, 0.4), action=(0.3, 0.3, 0.4), size=0.5, volatility=0.02,
        risk=0.03, confidence=0.8,
    )  # fmt: skip
    return Signal(**{**base, **kw})


def test_sizers() -> None:
    assert FixedFraction(fraction=0.1).weight(sig()) == 0.1
    assert VolTarget(target_vol=0.01).weight(sig(), realised_vol=0.02) == pytest.approx(0.5)
    assert VolTarget().weight(sig(), realised_vol=None) == 0.0
    # size 0.5 x confidence 0.8 x 0.01 / 0.02 = 0.2
    assert ModelSizer(target_vol=0.01).weight(sig()) == pytest.approx(0.2)
    assert ModelSizer().weight(sig(volatility=float("nan")), realised_vol=0.04) == pytest.approx(
        0.1
    )
    assert ModelSizer(max_weight=0.05).weight(sig()) == 0.05
    assert get_sizer("fixed", fraction=0.2).weight(sig()) == 0.2
    with pytest.raises(ConfigError, match="unknown sizer 'fixd'.*did you mean 'fixed'"):
        get_sizer("fixd")
    with pytest.raises(ConfigError, match=r"fraction must be in \(0.0, 1.0\]"):
        FixedFraction(fraction=0)


@settings(max_examples=200, deadline=None)
@given(
    size=st.floats(0, 1), conf=st.floats(0, 1), vol=st.one_of(st.floats(0, 10), st.just(math.nan)),
    realised=st.one_of(st.none(), st.floats(0, 1)),
)  # fmt: skip
def test_model_sizer_is_bounded(size, conf, vol, realised) -> None:
    w = ModelSizer(max_weight=0.5).weight(sig(size=size, confidence=conf, volatility=vol), realised)
    assert 0.0 <= w <= 0.5


def test_bad_risk_config() -> None:
    with pytest.raises(ConfigError, match="drawdown_action must be one of"):
        RiskConfig(drawdown_action="panic")
    with pytest.raises(ConfigError, match="daily_loss_stop must be in"):
        RiskConfig(daily_loss_stop=-0.1)


def test_serving_failure_hold_still_allows_risk_exits() -> None:
    """Without a signal the position is held, but a daily stop with flatten still closes it."""
    from strategies.risk import DailyLossState, DrawdownState, RiskConfig, RiskInputs, apply_risk

    cfg = RiskConfig(flatten_on_daily_stop=True)
    base = dict(symbol="A", desired=0.5, weights={"A": 0.1}, returns=np.zeros(5),
                held_returns={}, drawdown=DrawdownState(), signal_ok=False)  # fmt: skip
    held = apply_risk(RiskInputs(daily=DailyLossState(), **base), cfg)  # type: ignore[arg-type]
    assert held == (0.1, "serving-failure")  # no new entry: the desired 0.5 is ignored
    stopped = DailyLossState(stopped=True)
    assert apply_risk(RiskInputs(daily=stopped, **base), cfg) == (0.0, "serving-failure")  # type: ignore[arg-type]


def test_daily_stop_fires_on_daily_bars() -> None:
    """On daily bars each bar is a new day: its loss is measured from the previous close."""
    cfg = RiskConfig(daily_loss_stop=0.03)
    s = DailyLossState().update(DAY, 100.0, cfg)
    s = s.update(DAY + dt.timedelta(days=1), 96.0, cfg)  # -4 % on the day
    assert s.stopped and s.start_equity == 100.0
    s = s.update(DAY + dt.timedelta(days=2), 95.0, cfg)  # -1 % from 96: a new day, no stop
    assert not s.stopped and s.start_equity == 96.0


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.integers(1, 80), min_size=0, max_size=6),
    st.integers(2, 70),
)
def test_max_abs_correlation_equals_the_pairwise_one(seed: int, lengths: list[int], n: int) -> None:
    from strategies.risk import correlation, max_abs_correlation

    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    others = [rng.normal(size=m) + (0.7 * a[-m:] if m <= n else 0.0) for m in lengths]
    if lengths:
        others[0] = np.zeros(lengths[0])  # a flat series counts as uncorrelated
    want = max((abs(correlation(a, b, 10)) for b in others), default=0.0)
    assert max_abs_correlation(a, others, 10) == pytest.approx(want, abs=1e-9)
