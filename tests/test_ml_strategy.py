"""MLSignalStrategy in real backtrader runs: golden numbers, engine modes, failures, bad input."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from analyzers.backtest import CostConfig, run_backtest
from core.errors import ConfigError, DataError
from feeds.sample import load_sample
from mlmodels.features import FEATURES
from serving.client import RestClient, RestConfig
from serving.replay import ReplayClient
from serving.signal import Signal
from strategies.audit import decisions_frame
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy, ServingAborted, desired_weight
from strategies.risk import RiskConfig
from strategies.sizing import FixedFraction
from strategies.windows import FeatureWindows
from tests.serving_util import free_ports

NAMES = [f.name for f in FEATURES[:51]]
WINDOW = 16


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    s = load_sample(adjusted=True)
    return {k: s[k].loc["2008-01-01":"2010-12-31"] for k in ("AAPL", "IBM", "MSFT")}


@pytest.fixture(scope="module")
def feature_windows(frames) -> FeatureWindows:
    return FeatureWindows.build(frames, NAMES, WINDOW)


def scripted_signals(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long for 10 bars, out for 10, per symbol with a phase shift: a fixed, known schedule."""
    rows = []
    for k, (sym, f) in enumerate(frames.items()):
        for i, ts in enumerate(f.index):
            up = ((i + 5 * k) // 10) % 2 == 0
            p_up, p_down = (0.6, 0.1) if up else (0.1, 0.6)
            r = 0.01 if up else -0.01
            rows.append(
                dict(symbol=sym, timestamp=ts, ret_1=r, ret_4=r, ret_24=r, p_down=p_down,
                     p_flat=0.3, p_up=p_up, a_sell=p_down, a_hold=0.3, a_buy=p_up, size=1.0,
                     volatility=0.02, risk=0.03, confidence=0.8)
            )  # fmt: skip
    return pd.DataFrame(rows)


def run(frames, windows, client, **kw):
    cfg_kw = dict(sizer=FixedFraction(fraction=0.3), entry_prob=0.5, horizon_agreement=3)
    cerebro_kw = {k: kw.pop(k) for k in ("runonce", "preload") if k in kw}
    cfg = MLSignalConfig(**{**cfg_kw, **kw})
    return run_backtest(
        "ml", frames, MLSignalStrategy, costs=CostConfig(),
        strategy_kwargs={"config": cfg, "client": client, "windows": windows}, **cerebro_kw,
    )  # fmt: skip


def test_golden_numbers_and_every_engine_mode(frames, feature_windows) -> None:
    client = ReplayClient.from_frame(scripted_signals(frames))
    results = [
        run(frames, feature_windows, client, runonce=ro, preload=pl)
        for ro, pl in ((True, True), (False, True), (False, False))
    ]
    first = results[0]
    # Golden numbers: fixed signals -> these exact statistics (0.1 % commission, 10 bps
    # slippage, fills at the next open, 25 % per-symbol cap on a 30 % fixed fraction).
    # About 27 ten-bar long cycles per symbol over the 543 bars after the warm-up: 81 round
    # trips, and 2 positions still open at the end (trades count them: 83).
    assert first.final_value == pytest.approx(111_743.38, abs=0.01)
    assert (first.stats.trades, first.stats.round_trips, first.stats.open_positions) == (83, 81, 2)
    assert first.stats.max_drawdown == pytest.approx(-0.118125, abs=1e-6)
    assert first.stats.sharpe == pytest.approx(0.437825, abs=1e-6)
    for other in results[1:]:
        assert other.final_value == pytest.approx(first.final_value, abs=1e-6)
        assert other.stats.trades == first.stats.trades
        pd.testing.assert_series_equal(other.returns, first.returns)
    audit = decisions_frame(first.strategy.audit)
    assert set(audit.symbol) == set(frames)
    assert (audit.target.abs() <= 0.25 + 1e-12).all()  # the position limit held
    assert audit.timestamp.min() >= max(feature_windows.warmup_end(s) for s in frames)
    assert {"signal", "position-limit"} >= set(audit.reason)


def test_one_batched_request_per_timestamp(frames, feature_windows) -> None:
    class Counting(ReplayClient):
        calls: list[int] = []

        def predict(self, windows, positions=None, *, symbols=None, timestamps=None):
            self.calls.append(len(windows))
            assert windows.shape[1:] == (WINDOW, len(NAMES))
            assert positions.shape == (len(windows), 3)
            return super().predict(windows, positions, symbols=symbols, timestamps=timestamps)

    base = ReplayClient.from_frame(scripted_signals(frames))
    client = Counting(base.signals)
    res = run(frames, feature_windows, client)
    bars = len(pd.DataFrame({"t": [d.timestamp for d in res.strategy.audit]}).t.unique())
    assert len(client.calls) == bars and max(client.calls) == 3


def test_server_down_aborts_by_default_and_holds_by_policy(frames, feature_windows) -> None:
    (port,) = free_ports(1)
    dead = RestClient(RestConfig(url=f"http://127.0.0.1:{port}", model="m", token="t", retries=0))
    with pytest.raises(
        ServingAborted, match="model server failed at .* aborted rather than trading"
    ):
        run(frames, feature_windows, dead)
    dead.breaker.success()
    res = run(frames, feature_windows, dead, serving_failure="hold")
    assert res.stats.trades == 0 and res.final_value == CostConfig().cash
    assert {d.reason for d in res.strategy.audit} == {"serving-failure"}
    assert all(d.signal is None and d.target == 0 for d in res.strategy.audit)


def test_model_features_missing_from_the_data_are_refused_before_the_run(frames) -> None:
    names = NAMES + ["beta_60"]  # an index-relative feature
    with pytest.raises(DataError, match="needs 1 features the data does not give: beta_60.*index"):
        FeatureWindows.build(frames, names, WINDOW)


def test_short_history_is_skipped_with_a_warning(frames, caplog) -> None:
    short = {"AAPL": frames["AAPL"], "NEW": frames["IBM"].iloc[:150]}
    with caplog.at_level(logging.WARNING):
        w = FeatureWindows.build(short, NAMES, WINDOW)
    assert "NEW: 150 bars, the model needs at least 215" in caplog.text
    assert set(w.symbols) == {"AAPL"}
    with pytest.raises(DataError, match="no symbol has the 215 bars"):
        FeatureWindows.build({"NEW": frames["IBM"].iloc[:150]}, NAMES, WINDOW)


def test_windows_are_causal_and_skip_nan(frames) -> None:
    w = FeatureWindows.build({"AAPL": frames["AAPL"]}, NAMES, WINDOW)
    f = w.symbols["AAPL"]
    t = int(f.times[400])
    full = w.symbols["AAPL"].window_at(t, WINDOW)
    cut = FeatureWindows.build({"AAPL": frames["AAPL"].iloc[:401]}, NAMES, WINDOW)
    np.testing.assert_array_equal(cut.symbols["AAPL"].window_at(t, WINDOW), full)
    assert f.window_at(int(f.times[10]), WINDOW) is None  # inside the warm-up
    assert f.window_at(t + 1, WINDOW) is None  # not a bar time


def test_entry_rules() -> None:
    cfg = MLSignalConfig()
    sig = Signal(
        model="m", version=1, returns=(0.01, 0.02, -0.01), horizons=(1, 4, 24),
        direction=(0.2, 0.3, 0.5), action=(0.2, 0.3, 0.5), size=0.5, volatility=0.01,
        risk=0.02, confidence=0.7,
    )  # fmt: skip
    assert desired_weight(sig, 0.0, cfg, 0.2) == 0.2
    bearish = Signal(**{**sig.__dict__, "direction": (0.5, 0.3, 0.2), "returns": (-0.01,) * 3})
    assert desired_weight(bearish, 0.2, cfg, 0.2) == 0.0  # exit
    assert desired_weight(bearish, 0.0, cfg, 0.2) == 0.0  # long-only: no short
    short_cfg = MLSignalConfig(allow_short=True)
    assert desired_weight(bearish, 0.0, short_cfg, 0.2) == -0.2
    unsure = Signal(**{**sig.__dict__, "confidence": 0.1})
    strict = MLSignalConfig(min_confidence=0.5)
    assert desired_weight(unsure, 0.1, strict, 0.2) == 0.1  # held, not entered
    with pytest.raises(ConfigError, match="serving_failure must be one of abort, hold, flatten"):
        MLSignalConfig(serving_failure="ignore")
    with pytest.raises(ConfigError, match="max_position must be in"):
        RiskConfig(max_position=1.5)


def test_the_config_holds_no_runtime_objects(frames, feature_windows) -> None:
    """The client and the windows go to the strategy beside the config, never into it."""
    client = ReplayClient.from_frame(scripted_signals(frames))
    with pytest.raises(TypeError, match="client"):
        MLSignalConfig(client=client)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="windows"):
        MLSignalConfig(windows=feature_windows)  # type: ignore[call-arg]


def test_desired_weight_steps() -> None:
    """The entry rules as named steps: long entry, short entry, exit, hold."""
    from strategies.entry_rules import exit_now, long_entry, short_entry

    sig = Signal(
        model="m", version=1, returns=(0.01, 0.02, -0.01), horizons=(1, 4, 24),
        direction=(0.2, 0.3, 0.5), action=(0.2, 0.3, 0.5), size=0.5, volatility=0.01,
        risk=0.02, confidence=0.7,
    )  # fmt: skip
    bearish = Signal(**{**sig.__dict__, "direction": (0.5, 0.3, 0.2), "returns": (-0.01,) * 3})
    cfg = MLSignalConfig(horizon_agreement=2)
    assert long_entry(sig, cfg) and not long_entry(sig, MLSignalConfig(horizon_agreement=3))
    assert not long_entry(sig, MLSignalConfig(entry_prob=0.6))
    assert not long_entry(sig, MLSignalConfig(min_edge=0.31))
    assert not short_entry(bearish, cfg)  # long-only
    assert short_entry(bearish, MLSignalConfig(allow_short=True))
    assert exit_now(bearish, 0.1) and exit_now(sig, -0.1) and not exit_now(sig, 0.1)
    assert desired_weight(sig, -0.1, cfg, 0.2) == 0.2  # an entry flips a short
    assert desired_weight(bearish, -0.1, cfg, 0.2) == 0.0  # long-only: a short is not kept
    neutral = Signal(**{**sig.__dict__, "direction": (0.3, 0.4, 0.3)})
    assert desired_weight(neutral, -0.1, MLSignalConfig(allow_short=True), 0.2) == -0.1
