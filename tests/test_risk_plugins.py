"""Risk rules as plug-ins: the protocol's outcomes, the registry, user rules, and the limits
report read from the structured outcomes."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzers.backtest import CostConfig, run_backtest
from core.errors import ConfigError
from feeds.sample import load_sample
from mlmodels.features import FEATURES
from serving.replay import ReplayClient
from strategies.audit import Decision, limits_held, outcomes_frame
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
from strategies.risk import (
    DEFAULT_RULES,
    RISK_RULES,
    DailyLossState,
    DrawdownState,
    RiskConfig,
    RiskInputs,
    apply_risk,
    gross_exposure_cap,
    max_abs_correlation,
    no_new_entry,
    position_limit,
)
from strategies.risk_rules import RuleOutcome, apply_rules, register_rule
from strategies.sizing import FixedFraction
from strategies.windows import FeatureWindows

DAY = dt.date(2024, 1, 2)


def inputs(desired: float, weights: dict[str, float], **kw) -> RiskInputs:
    base = dict(
        symbol="A", desired=desired, weights=weights, returns=np.zeros(0), held_returns={},
        daily=DailyLossState(DAY, 100.0), drawdown=DrawdownState(100.0, 0.0),
    )  # fmt: skip
    return RiskInputs(**{**base, **kw})


def reference_apply_risk(inp: RiskInputs, cfg: RiskConfig) -> tuple[float, str]:
    """``apply_risk`` as it was before the rules became plug-ins (verbatim logic)."""
    current = inp.weights.get(inp.symbol, 0.0)
    if not inp.signal_ok and inp.serving_policy == "flatten":
        return 0.0, "serving-failure"
    target, reason = (inp.desired, "signal") if inp.signal_ok else (current, "serving-failure")

    def bind(new: float, why: str) -> None:
        nonlocal target, reason
        if new != target:
            target, reason = new, (why if reason == "signal" else reason)

    bind(position_limit(target, cfg), "position-limit")
    if inp.daily.stopped:
        bind(0.0 if cfg.flatten_on_daily_stop else no_new_entry(target, current), "daily-loss-stop")
    if inp.drawdown.drawdown <= -cfg.max_drawdown:
        if cfg.drawdown_action == "halt":
            bind(0.0 if cfg.flatten_on_halt else no_new_entry(target, current), "drawdown-halt")
        else:
            bind(target * cfg.drawdown_reduce, "drawdown-reduce")
    if abs(target) > abs(current) or target * current < 0:
        held = [r for s, r in inp.held_returns.items() if s != inp.symbol and inp.weights.get(s)]
        worst = max_abs_correlation(inp.returns, held, cfg.min_correlation_bars)
        if worst > cfg.max_correlation:
            bind(
                0.0
                if cfg.correlation_action == "refuse" and current == 0
                else no_new_entry(target, current),
                "correlation",
            )
    others = {k: v for k, v in inp.weights.items() if k != inp.symbol}
    capped = gross_exposure_cap(
        {inp.symbol: target}, {**others, inp.symbol: current}, cfg.max_gross
    )
    bind(capped[inp.symbol], "gross-exposure")
    return target, reason


w = st.floats(-1.5, 1.5, allow_nan=False)


@settings(max_examples=400, deadline=None)
@given(
    desired=w, current=w, other=w, dd=st.floats(-0.9, 0), stopped=st.booleans(),
    signal_ok=st.booleans(), policy=st.sampled_from(["hold", "flatten", "abort"]),
    seed=st.integers(0, 2**16), corr=st.floats(0, 1.5),
    cfg=st.builds(
        RiskConfig, max_position=st.floats(0.05, 1), max_gross=st.floats(0.1, 3),
        flatten_on_daily_stop=st.booleans(), drawdown_action=st.sampled_from(["halt", "reduce"]),
        flatten_on_halt=st.booleans(), max_correlation=st.floats(0.1, 1),
        correlation_action=st.sampled_from(["refuse", "cap"]),
    ),
)  # fmt: skip
def test_the_default_rules_decide_exactly_as_before(
    desired, current, other, dd, stopped, signal_ok, policy, seed, corr, cfg
) -> None:
    a = np.random.default_rng(seed).normal(size=40)
    noise = np.random.default_rng(seed + 1).normal(size=40)
    inp = inputs(
        desired, {"A": current, "B": other}, returns=a, held_returns={"B": corr * a + noise},
        daily=DailyLossState(DAY, 100.0, stopped, 95.0), drawdown=DrawdownState(100.0, dd),
        signal_ok=signal_ok, serving_policy=policy,
    )  # fmt: skip
    assert apply_risk(inp, cfg) == reference_apply_risk(inp, cfg)
    target, reason, outcomes = apply_rules(cfg.build_rules(), inp)
    assert (target, reason) == reference_apply_risk(inp, cfg)
    bound = [o.rule for o in outcomes if o.bound]
    assert reason == (bound[0] if bound else "signal")  # the reason is the first that bound


def test_each_rule_reports_rule_limit_value_and_action() -> None:
    cfg = RiskConfig(max_position=0.2, daily_loss_stop=0.03, max_drawdown=0.25)
    stopped = DailyLossState(DAY, 100.0, True, 96.0)
    deep = DrawdownState(100.0, -0.3)
    target, reason, out = apply_rules(
        cfg.build_rules(), inputs(0.5, {"A": 0.1}, daily=stopped, drawdown=deep)
    )
    assert (target, reason) == (0.1, "position-limit")
    by = {o.rule: o for o in out}
    assert list(by) == [
        "position-limit", "daily-loss-stop", "drawdown-halt", "correlation", "gross-exposure",
    ]  # fmt: skip
    assert by["position-limit"] == RuleOutcome(
        rule="position-limit", limit=0.2, value=0.5, action="cap", target=0.2, bound=True
    )
    assert by["daily-loss-stop"] == RuleOutcome(
        rule="daily-loss-stop", limit=0.03, value=pytest.approx(0.04), action="no-entry",
        target=0.1, bound=True,
    )  # fmt: skip
    dd = by["drawdown-halt"]
    assert (dd.limit, dd.value, dd.action, dd.bound) == (
        0.25,
        pytest.approx(0.3),
        "no-entry",
        False,
    )
    assert by["correlation"].action == "pass" and math.isnan(by["correlation"].value)
    assert by["gross-exposure"].action == "pass" and by["gross-exposure"].value == 0.1
    reduce = RiskConfig(drawdown_action="reduce", drawdown_reduce=0.5)
    _, reason, out = apply_rules(reduce.build_rules(), inputs(0.2, {}, drawdown=deep))
    assert reason == "drawdown-reduce" and out[2].action == "scale" and out[2].target == 0.1
    _, reason, out = apply_rules(cfg.build_rules(), inputs(0.1, {"A": 0.1}, signal_ok=False))
    assert reason == "serving-failure" and out[0].rule == "serving-failure"


def test_the_rule_list_is_configurable_and_unknown_names_are_helpful() -> None:
    assert RiskConfig().rules[0].name == "position-limit"
    assert tuple(r.name for r in RiskConfig().rules) == DEFAULT_RULES
    only_daily = RiskConfig(rules=("daily-loss-stop",))
    assert apply_risk(inputs(0.9, {}), only_daily) == (0.9, "signal")  # no cap in the list
    assert apply_risk(inputs(0.9, {}), RiskConfig()) == (0.25, "position-limit")
    with pytest.raises(ConfigError, match="unknown risk rule 'position-limt'.*'position-limit'"):
        RiskConfig(rules=("position-limt",))
    with pytest.raises(ConfigError, match="max_position is a RiskConfig field; set RiskConfig"):
        RiskConfig(rules=({"name": "position-limit", "params": {"max_position": 0.1}},))
    with pytest.raises(ConfigError, match="rules must be a list of rule names"):
        RiskConfig(rules="position-limit")  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class LongOnlyCap:
    """A user's rule: longs at most ``cap`` (its own parameter), shorts refused, and it reads
    ``max_position`` from the RiskConfig like a built-in."""

    cap: float = 0.1
    max_position: float = 0.25

    def check(self, target: float, state: RiskInputs) -> tuple[float, RuleOutcome]:
        allowed = max(0.0, min(self.cap, self.max_position, target))
        return allowed, RuleOutcome(
            rule="long-only-cap", limit=self.cap, value=target, action="cap", target=allowed
        )


class Riskier:
    def check(self, target: float, state: RiskInputs) -> tuple[float, RuleOutcome]:
        return target * 2, RuleOutcome(rule="riskier", limit=0, value=0, action="pass", target=0)


@pytest.fixture
def user_rules():
    register_rule("long-only-cap", LongOnlyCap)
    register_rule("riskier", Riskier)
    yield
    RISK_RULES.pop("long-only-cap")
    RISK_RULES.pop("riskier")


def test_a_user_rule_by_name_with_its_parameters(user_rules) -> None:
    spec = {"name": "long-only-cap", "params": {"cap": 0.05}}
    cfg = RiskConfig(rules=(*DEFAULT_RULES, spec))
    assert RiskConfig.from_dict(cfg.to_dict()) == cfg
    assert apply_risk(inputs(0.3, {}), cfg) == (0.05, "position-limit")  # clipped twice
    assert apply_risk(inputs(0.07, {}), cfg) == (0.05, "long-only-cap")
    assert apply_risk(inputs(-0.1, {}), cfg) == (0.0, "long-only-cap")
    with pytest.raises(ConfigError, match="unknown 'long-only-cap' parameter 'cpa'.*'cap'"):
        RiskConfig(rules=({"name": "long-only-cap", "params": {"cpa": 0.05}},))
    with pytest.raises(ConfigError, match="'long-only-cap' is already registered"):
        register_rule("long-only-cap", Riskier)
    bad = RiskConfig(rules=("riskier",))
    with pytest.raises(ConfigError, match="risk rule 'riskier' turned the target 0.1 into 0.2"):
        apply_risk(inputs(0.1, {}), bad)


# -- the strategy applies the list; the audit keeps the outcomes ----------------------------------
NAMES = [f.name for f in FEATURES[:51]]


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    s = load_sample(adjusted=True)
    return {k: s[k].loc["2008-01-01":"2010-12-31"] for k in ("AAPL", "IBM")}


def always_long(frames: dict[str, pd.DataFrame]) -> ReplayClient:
    heads = dict(ret_1=0.01, ret_4=0.01, ret_24=0.01, p_down=0.1, p_flat=0.3, p_up=0.6,
                 a_sell=0.1, a_hold=0.3, a_buy=0.6, size=1.0, volatility=0.02, risk=0.03,
                 confidence=0.8)  # fmt: skip
    rows = [dict(symbol=sym, timestamp=ts, **heads) for sym, f in frames.items() for ts in f.index]
    return ReplayClient.from_frame(pd.DataFrame(rows))


def ml_run(frames, risk: RiskConfig):
    windows = FeatureWindows.build(frames, NAMES, 16)
    cfg = MLSignalConfig(sizer=FixedFraction(fraction=0.3), entry_prob=0.5, risk=risk)
    return run_backtest(
        "ml", frames, MLSignalStrategy, costs=CostConfig(),
        strategy_kwargs={"config": cfg, "client": always_long(frames), "windows": windows},
    )  # fmt: skip


def test_the_strategy_runs_the_configured_list_and_records_outcomes(frames, user_rules) -> None:
    res = ml_run(frames, RiskConfig(rules=(*DEFAULT_RULES, {"name": "long-only-cap"})))
    audit = res.strategy.audit
    assert audit and all(abs(d.target) <= 0.1 + 1e-12 for d in audit)
    assert {d.reason for d in audit} == {"position-limit"}  # the cap bound first, then ours
    assert all(d.outcomes[-1].rule == "long-only-cap" for d in audit)
    table = outcomes_frame(audit)
    assert list(table.columns) == [
        "timestamp", "symbol", "rule", "limit", "value", "action", "allowed", "bound", "target",
        "weight",
    ]  # fmt: skip
    assert len(table) == 6 * len(audit)
    assert set(table.rule) == {
        "position-limit", "daily-loss-stop", "drawdown-halt", "correlation", "gross-exposure",
        "long-only-cap",
    }  # fmt: skip
    held = limits_held(audit)
    assert held and all(held.values())


def test_limits_held_reads_the_structured_outcomes(frames) -> None:
    res = ml_run(frames, RiskConfig(max_drawdown=0.02))
    audit = res.strategy.audit
    assert any(
        o.rule == "drawdown-halt" and o.action == "no-entry" for d in audit for o in d.outcomes
    )
    held = limits_held(audit)
    assert set(held) == {
        "position-limit", "daily-loss-stop", "drawdown-halt", "correlation", "gross-exposure",
    }  # fmt: skip
    assert all(held.values())
    # judged against a smaller cap than the run used: the position limit did not hold
    tighter = limits_held(audit, RiskConfig(max_position=0.1))
    assert tighter["position-limit"] is False and tighter["drawdown-halt"] is True


def outcome(rule: str, action: str, limit: float = 0.25, target: float = 0.0) -> RuleOutcome:
    return RuleOutcome(rule=rule, limit=limit, value=0.0, action=action, target=target)


def decision(target: float, weight: float, *outcomes: RuleOutcome, state: str = "") -> Decision:
    return Decision(
        timestamp=pd.Timestamp("2021-03-01", tz="UTC"), symbol="X", price=100.0, signal=None,
        position=weight * 1000, target=target, reason="signal", weight=weight,
        risk_state=state, outcomes=outcomes,
    )  # fmt: skip


def test_limits_held_flags_each_kind_of_breach() -> None:
    cap = outcome("position-limit", "cap")
    stop = outcome("daily-loss-stop", "no-entry")
    flat = outcome("drawdown-halt", "flatten")
    scaled = outcome("drawdown-reduce", "scale", target=0.1)
    assert limits_held([]) == {}
    assert limits_held([decision(0.25, 0.0, cap), decision(0.1, 0.2, cap, stop)]) == {
        "position-limit": True, "daily-loss-stop": True,
    }  # fmt: skip
    assert limits_held([decision(0.3, 0.0, cap)]) == {"position-limit": False}
    assert limits_held([decision(0.15, 0.1, stop)]) == {"daily-loss-stop": False}  # added
    assert limits_held([decision(-0.05, 0.1, stop)]) == {"daily-loss-stop": False}  # flipped
    assert limits_held([decision(0.01, 0.1, flat)]) == {"drawdown-halt": False}  # not closed
    assert limits_held([decision(0.12, 0.0, scaled)]) == {"drawdown-reduce": False}
    assert limits_held([decision(0.1, 0.0, scaled)]) == {"drawdown-reduce": True}
    passed = outcome("daily-loss-stop", "pass")
    assert limits_held([decision(0.9, 0.0, passed)]) == {"daily-loss-stop": True}
    # a trail without outcomes (by hand, or older) is read from its risk_state under a config
    legacy = [decision(0.2, 0.1, state="daily-stop,drawdown")]
    assert limits_held(legacy) == {}
    assert limits_held(legacy, RiskConfig()) == {
        "position-limit": True, "daily-loss-stop": False, "drawdown-halt": False,
    }  # fmt: skip
