"""Strategy configs are plain data, and strategies take backtrader-style params."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import backtrader as bt
import pandas as pd
import pytest

from analyzers.backtest import CostConfig, run_backtest
from core.config import DataConfig
from core.errors import ConfigError
from feeds.btfeeds import StoreData
from feeds.sample import load_sample
from mlmodels.dataset import DatasetConfig
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelRegistry
from mlmodels.trainer import TrainConfig
from serving.client import InProcessClient
from strategies.baselines import BuyAndHold, BuyAndHoldConfig, SmaCross, SmaCrossConfig
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy
from strategies.plugins import PluginSpec
from strategies.risk import DEFAULT_RULES, RiskConfig
from strategies.sizing import FixedFraction, VolTarget
from strategies.windows import FeatureWindows

CONFIGS: list[DataConfig] = [
    MLSignalConfig(),
    MLSignalConfig(
        entry_prob=0.55,
        min_edge=0.02,
        allow_short=True,
        sizer=FixedFraction(fraction=0.3),
        risk=RiskConfig(max_position=0.2, drawdown_action="reduce"),
        serving_failure="hold",
    ),
    RiskConfig(),
    RiskConfig(rules=("position-limit", {"name": "gross-exposure"}), flatten_on_halt=True),
    SmaCrossConfig(fast=5, slow=20, target_percent=0.5),
    BuyAndHoldConfig(target_percent=0.5),
    PluginSpec(name="vol-target", params={"target_vol": 0.02, "max_weight": 2}),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_strategy_config_round_trips_through_json(config: DataConfig) -> None:
    plain = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(plain) == config
    assert hash(type(config).from_dict(plain)) == hash(config)  # frozen, plain: hashable


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_an_unknown_key_is_refused(config: DataConfig) -> None:
    with pytest.raises(ConfigError, match=rf"^{type(config).__name__}: unknown key 'nope'"):
        type(config).from_dict({**config.to_dict(), "nope": 1})


def test_wrong_types_and_nested_typos_are_refused_by_key() -> None:
    with pytest.raises(ConfigError, match=r"MLSignalConfig\.entry_prob: expected float"):
        MLSignalConfig.from_dict({"entry_prob": "high"})
    with pytest.raises(ConfigError, match=r"risk: unknown key 'max_postion'.*'max_position'"):
        MLSignalConfig.from_dict({"risk": {"max_postion": 0.2}})
    with pytest.raises(ConfigError, match=r"SmaCrossConfig\.fast: expected int"):
        SmaCrossConfig.from_dict({"fast": 5.5})
    with pytest.raises(ConfigError, match="unknown sizer 'fixd'.*did you mean 'fixed'"):
        MLSignalConfig.from_dict({"sizer": "fixd"})


def test_the_config_holds_plain_values_only() -> None:
    """A sizer object becomes its registry spec; runtime objects are not fields."""
    cfg = MLSignalConfig(sizer=VolTarget(target_vol=0.02))
    assert cfg.sizer == PluginSpec(
        name="vol-target", params={"target_vol": 0.02, "max_weight": 1.0}
    )
    assert cfg.to_dict()["sizer"] == {
        "name": "vol-target",
        "params": {"target_vol": 0.02, "max_weight": 1.0},
    }
    fixed = {"name": "fixed", "params": {"fraction": 0.1}}  # every parameter, so specs compare
    assert MLSignalConfig(sizer="fixed").to_dict()["sizer"] == fixed
    assert MLSignalConfig(sizer="fixed") == MLSignalConfig(sizer=FixedFraction())
    assert not {"client", "windows"} & {f.name for f in dataclasses.fields(MLSignalConfig)}

    class Mine:
        def weight(self, signal: Any, realised_vol: float | None = None) -> float:
            return 0.1

    with pytest.raises(ConfigError, match=r"sizer Mine is not a strategies.sizing.SIZERS entry"):
        MLSignalConfig(sizer=Mine())  # type: ignore[arg-type]


# -- a tiny trained model, in a store -----------------------------------------------------------
@pytest.fixture(scope="module")
def model_store(tmp_path_factory) -> tuple[Path, dict[str, pd.DataFrame]]:
    root = tmp_path_factory.mktemp("store")
    s = load_sample(adjusted=True)
    frames = {k: s[k].loc["2006":"2010"] for k in ("AAPL", "IBM")}
    train_model(
        frames, "tiny", name="m", registry=ModelRegistry(root / "models"),
        train_cfg=TrainConfig(epochs=2, batch_size=128, max_batches=5, seed=0, threads=1),
        data_cfg=DatasetConfig(window=16), work_dir=root / "runs",
    )  # fmt: skip
    return root, frames


def plain_cerebro(frames: dict[str, pd.DataFrame], strategy: type, **params: Any) -> Any:
    """What a user writes: a Cerebro, feeds, ``addstrategy`` with params, ``run``."""
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.broker.setcash(100_000.0)
    cerebro.broker.setcommission(commission=0.001)
    for sym, frame in frames.items():
        cerebro.adddata(StoreData(dataname=frame, name=sym))
    cerebro.addstrategy(strategy, **params)
    strat = cerebro.run()[0]
    strat.final_value = cerebro.broker.getvalue()
    return strat


def trail(strat: Any) -> list[tuple[Any, ...]]:
    return [(d.timestamp, d.symbol, d.target, d.reason, d.outcomes) for d in strat.audit]


# the tiny model's P(up) stays near 1/3, so the entry threshold that trades is below 0.55
TRADES = dict(entry_prob=0.3, min_edge=0.0, horizon_agreement=0, allow_short=True)


def test_model_and_params_trade_like_the_config_path(model_store) -> None:
    root, frames = model_store
    by_params = plain_cerebro(
        frames, MLSignalStrategy, model="m:1", store=str(root), sizer="fixed", **TRADES
    )
    card = ModelRegistry(root / "models").card("m:1")
    by_config = plain_cerebro(
        frames, MLSignalStrategy,
        config=MLSignalConfig(sizer=FixedFraction(), **TRADES),  # type: ignore[arg-type]
        client=InProcessClient.from_registry(root / "models", "m:1", threads=1),
        windows=FeatureWindows.build(frames, card.features, card.window),
    )  # fmt: skip
    assert by_params.cfg == by_config.cfg
    assert len(by_params.audit) > 100 and any(d.target for d in by_params.audit)
    assert trail(by_params) == trail(by_config)
    assert by_params.final_value == pytest.approx(by_config.final_value, rel=1e-12)
    assert by_params.final_value != 100_000.0  # it traded
    assert by_params.warmup == 199 + 16


def test_a_param_overrides_the_same_field_of_config(model_store) -> None:
    root, frames = model_store
    strat = plain_cerebro(
        {"AAPL": frames["AAPL"].loc["2010"]}, BuyAndHold,
        config=BuyAndHoldConfig(target_percent=0.9), target_percent=0.5,
    )  # fmt: skip
    assert strat.cfg == BuyAndHoldConfig(target_percent=0.5)
    with pytest.raises(ConfigError, match=r"needs a model: pass model='name:version' and store="):
        plain_cerebro(frames, MLSignalStrategy, entry_prob=0.3)


def test_unknown_or_mistyped_params_are_refused_by_name(model_store) -> None:
    root, frames = model_store
    one = {"AAPL": frames["AAPL"].loc["2010"]}
    with pytest.raises(
        ConfigError, match=r"unknown param 'entry_probability'; did you mean 'entry_prob'"
    ):
        plain_cerebro(one, MLSignalStrategy, model="m:1", store=str(root), entry_probability=0.55)
    with pytest.raises(ConfigError, match=r"MLSignalStrategy\.entry_prob: expected float"):
        plain_cerebro(one, MLSignalStrategy, model="m:1", store=str(root), entry_prob="high")
    with pytest.raises(ConfigError, match=r"SmaCross\.fast: expected int, got '5'"):
        plain_cerebro(one, SmaCross, fast="5")
    with pytest.raises(ConfigError, match=r"slow must be > fast \(40\)"):
        plain_cerebro(one, SmaCross, fast=40)
    with pytest.raises(ConfigError, match=r"unknown param 'period'"):
        plain_cerebro(one, BuyAndHold, period=3)


@pytest.mark.parametrize(("runonce", "preload"), [(True, True), (False, True), (False, False)])
def test_sma_cross_params_equal_its_config(runonce: bool, preload: bool) -> None:
    frames = {"AAPL": load_sample(adjusted=True)["AAPL"].loc["2006":"2008"]}
    kw = dict(costs=CostConfig(), runonce=runonce, preload=preload)
    by_params = run_backtest("p", frames, SmaCross, strategy_kwargs={"fast": 5, "slow": 20}, **kw)
    by_config = run_backtest(
        "c", frames, SmaCross, strategy_kwargs={"config": SmaCrossConfig(fast=5, slow=20)}, **kw
    )
    by_table = run_backtest(
        "t", frames, SmaCross, strategy_kwargs={"config": {"fast": 5, "slow": 20}}, **kw
    )
    default = run_backtest("d", frames, SmaCross, **kw)
    assert by_params.final_value == by_config.final_value == by_table.final_value
    assert by_params.stats.trades == by_config.stats.trades > 0
    assert default.final_value != by_params.final_value  # the params did change the run


def test_the_ml_strategy_takes_a_table_and_risk_fields(model_store) -> None:
    root, frames = model_store
    one = {"AAPL": frames["AAPL"].loc["2009":"2010"]}
    strat = plain_cerebro(
        one, MLSignalStrategy, model="m:1", store=str(root),
        config={"entry_prob": 0.3, "min_edge": 0.0, "risk": {"max_position": 0.1}},
        horizon_agreement=0, risk={"max_position": 0.05, "rules": list(DEFAULT_RULES)},
    )  # fmt: skip
    assert strat.cfg.entry_prob == 0.3 and strat.cfg.horizon_agreement == 0
    assert strat.cfg.risk == RiskConfig(max_position=0.05)  # the param replaced config's risk
    assert all(abs(d.target) <= 0.05 for d in strat.audit)


def test_feeds_the_windows_cannot_be_built_from_are_named(model_store) -> None:
    root, frames = model_store
    cerebro = bt.Cerebro(stdstats=False)
    unnamed = frames["AAPL"].copy()
    unnamed.attrs = {}  # StoreData names a feed by its frame's symbol; this one has none
    cerebro.adddata(StoreData(dataname=unnamed))
    cerebro.addstrategy(MLSignalStrategy, model="m:1", store=str(root))
    with pytest.raises(ConfigError, match=r"name every data feed"):
        cerebro.run()
    cerebro = bt.Cerebro(stdstats=False)
    csv = root / "aapl.csv"
    frames["AAPL"].tz_localize(None).to_csv(csv)
    feed = bt.feeds.GenericCSVData(dataname=str(csv), dtformat="%Y-%m-%d", openinterest=-1)
    cerebro.adddata(feed, name="AAPL")
    cerebro.addstrategy(MLSignalStrategy, model="m:1", store=str(root))
    with pytest.raises(ConfigError, match=r"AAPL: the feed has no OHLCV frame.*pass windows="):
        cerebro.run()
