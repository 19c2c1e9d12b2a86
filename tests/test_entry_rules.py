"""Entry rules: ``direction`` (today's), ``return`` (the price heads net of costs) and ``auto``
(the better of the two on the model's validation split), in real backtrader runs.

The planted cases use ``ReplayClient`` (recorded signals, the project's own client) holding a
model whose direction head is constant while its price heads know the next 1/4/24-bar returns,
and the mirror image; the workflow cases use a tiny model trained on the sample (with an index).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from analyzers.backtest import CostConfig, run_backtest
from btml.cli import main
from core.errors import ConfigError, DataError
from feeds.index import IndexConfig, build_from_store
from feeds.sample import load_sample
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig
from mlmodels.features import FEATURES
from mlmodels.pipeline import train_model
from mlmodels.registry import ModelRegistry
from mlmodels.trainer import TrainConfig
from serving.replay import ReplayClient
from serving.signal import Signal
from strategies.entry_choice import RULES, choose_entry_rule, net_returns, rule_positions
from strategies.ml_signal import MLSignalConfig, MLSignalStrategy, desired_weight
from strategies.sizing import FixedFraction
from strategies.windows import FeatureWindows
from tests.conftest import ohlcv_frame
from workflows.backtest import BacktestConfig, MLRunConfig, backtest, plan_model
from workflows.runs import RunRegistry

NAMES = [f.name for f in FEATURES[:51]]
WINDOW = 16
VAL = (pd.Timestamp("2009-01-01", tz="UTC"), pd.Timestamp("2009-12-31", tz="UTC"))
TRIP = 2 * (0.001 + 0.001)  # the default commission and slippage, both ways


def sig(returns: tuple[float, ...], p_up: float = 0.3, p_down: float = 0.3) -> Signal:
    return Signal(model="m", version=1, returns=returns, horizons=(1, 4, 24),
                  direction=(p_down, 1 - p_up - p_down, p_up), action=(0.2, 0.6, 0.2), size=1.0,
                  volatility=0.01, risk=0.02, confidence=0.8)  # fmt: skip


def test_the_return_rule_enters_on_the_expected_return_net_of_costs() -> None:
    cfg = MLSignalConfig(entry_rule="return", round_trip_cost=0.004, min_return=0.001)
    assert desired_weight(sig((0.001, 0.003, 0.006)), 0.0, cfg, 0.5) == 0.5  # 0.006-0.004>=0.001
    assert desired_weight(sig((0.001, 0.003, 0.0045)), 0.0, cfg, 0.5) == 0.0  # 0.0005 < 0.001
    assert desired_weight(sig((-0.001, -0.003, 0.006)), 0.0, cfg, 0.5) == 0.0  # 1 horizon of 2
    assert desired_weight(sig((0.001, 0.003, -0.001)), 0.5, cfg, 0.5) == 0.0  # turned: exit
    assert desired_weight(sig((0.001, 0.003, 0.001)), 0.5, cfg, 0.5) == 0.5  # held
    short = MLSignalConfig(entry_rule="return", round_trip_cost=0.004, allow_short=True)
    assert desired_weight(sig((-0.001, -0.003, -0.006)), 0.0, short, 0.5) == -0.5
    # the direction head alone decides under "direction": a constant head never enters
    assert desired_weight(sig((0.001, 0.003, 0.05)), 0.0, MLSignalConfig(), 0.5) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"entry_rule": "price"}, "entry_rule must be one of direction, return, auto, got 'price'"),
        ({"min_return": 1.5}, r"min_return must be in \[0, 1\), got 1.5"),
        ({"round_trip_cost": -0.01}, r"round_trip_cost must be in \[0, 0.2\), got -0.01"),
    ],
)
def test_bad_entry_settings_are_refused_by_name(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        MLSignalConfig(**kwargs)
    if "round_trip_cost" not in kwargs:
        with pytest.raises(ConfigError, match=match):
            MLRunConfig(**kwargs)


def test_positions_and_net_returns_are_the_strategy_rules_replayed() -> None:
    cfg = MLSignalConfig(entry_rule="return", horizon_agreement=1)
    signals = [sig((0.0, 0.0, r)) for r in (0.01, 0.01, -0.01, 0.0, 0.02)]
    pos = rule_positions(signals, cfg, "return")
    assert pos.tolist() == [1, 1, 0, 0, 1]
    closes = np.array([100.0, 101.0, 102.0, 101.0, 103.0])
    net = net_returns(pos, closes, 0.004)
    want = [np.log(1.01) - 0.002, np.log(102 / 101), -0.002, 0.0, -0.002]
    assert net == pytest.approx(want)


# -- planted models: one head informative, the other constant ----------------------------------


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    s = load_sample(adjusted=True)
    return {k: s[k].loc["2007-01-01":"2010-12-31"] for k in ("AAPL", "IBM", "MSFT")}


@pytest.fixture(scope="module")
def windows(frames) -> FeatureWindows:
    return FeatureWindows.build(frames, NAMES, WINDOW)


def planted(frames: dict[str, pd.DataFrame], informative: str) -> ReplayClient:
    """Signals that know the future: the price heads (``informative="return"``, the direction
    head constant at 0.3/0.4/0.3) or the direction head (the price heads all zero)."""
    rows = []
    for sym, f in frames.items():
        logc = np.log(f["close"].to_numpy())
        fwd = {h: np.nan_to_num(np.roll(logc, -h) - logc) * (np.arange(len(f)) < len(f) - h)
               for h in (1, 4, 24)}  # fmt: skip
        for i, ts in enumerate(f.index):
            up = fwd[24][i] > 0
            rets = [fwd[h][i] if informative == "return" else 0.0 for h in (1, 4, 24)]
            p_up, p_down = (
                (0.3, 0.3) if informative == "return" else ((0.7, 0.1) if up else (0.1, 0.7))
            )
            rows.append(dict(symbol=sym, timestamp=ts, ret_1=rets[0], ret_4=rets[1], ret_24=rets[2],
                             p_down=p_down, p_flat=1 - p_up - p_down, p_up=p_up, a_sell=0.2,
                             a_hold=0.6, a_buy=0.2, size=1.0, volatility=0.02, risk=0.03,
                             confidence=0.8))  # fmt: skip
    return ReplayClient.from_frame(pd.DataFrame(rows))


def traded(frames, windows, client, rule: str):
    cfg = MLSignalConfig(entry_rule=rule, sizer=FixedFraction(fraction=0.3), round_trip_cost=TRIP)
    test = {s: f.loc["2010-01-01":] for s, f in frames.items()}
    return run_backtest(
        f"ml {rule}", test, MLSignalStrategy, costs=CostConfig(),
        strategy_kwargs={"config": cfg, "client": client, "windows": windows},
    )  # fmt: skip


def test_auto_picks_the_return_rule_when_only_the_price_heads_know(frames, windows) -> None:
    client = planted(frames, "return")
    cfg = MLSignalConfig(entry_rule="auto", round_trip_cost=TRIP)
    choice = choose_entry_rule(client, windows, frames, cfg, VAL)
    figs = {f.rule: f for f in choice.figures}
    assert choice.chosen == "return"
    assert figs["direction"].trades == 0 and figs["direction"].net_return == 0.0
    assert figs["return"].trades > 10 and figs["return"].net_return > 0.1
    assert choice.metrics()["entry_rule_chosen"] == "return"
    assert "auto chose return on the validation split 2009-01-01 .. 2009-12-31" in choice.line()
    # real backtrader runs of each rule over the later bars agree with the choice
    ret, direc = (traded(frames, windows, client, r) for r in RULES[::-1])
    assert direc.stats.trades == 0 and direc.final_value == CostConfig().cash
    assert ret.stats.trades > 10 and ret.final_value > 1.2 * CostConfig().cash


def test_auto_picks_direction_when_only_the_direction_head_knows(frames, windows) -> None:
    client = planted(frames, "direction")
    cfg = MLSignalConfig(round_trip_cost=TRIP, horizon_agreement=0)  # the price heads say 0
    choice = choose_entry_rule(client, windows, frames, cfg, VAL)
    figs = {f.rule: f for f in choice.figures}
    assert choice.chosen == "direction" and figs["direction"].net_return > 0.1
    assert figs["return"].trades == 0  # price heads at zero: nothing clears the costs


def test_the_strategy_refuses_an_unresolved_auto(frames, windows) -> None:
    with pytest.raises(ConfigError, match="entry_rule='auto' is chosen on the model's validation"):
        traded(frames, windows, planted(frames, "return"), "auto")


# -- a tiny trained model (with an index), through the recorded backtest and the CLI ----------

SYMBOLS = ("AAPL", "IBM")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("entry-store")
    st = ParquetStore(root)
    sample = load_sample(adjusted=True)
    for sym in SYMBOLS:
        st.write(sample[sym].loc["2004":], merge=False)
    index, _ = build_from_store(st, IndexConfig(name="IDX", method="equal", constituents=SYMBOLS))
    train_model(
        {s: st.read(s) for s in SYMBOLS}, "tiny", name="m", registry=ModelRegistry(root / "models"),
        train_cfg=TrainConfig(epochs=1, batch_size=128, max_batches=3),
        data_cfg=DatasetConfig(window=16), index=index.frame, index_name="IDX",
        work_dir=root / "train-work",
    )  # fmt: skip
    return root


def quiet(_: str) -> None:
    pass


def short_end(store: Path) -> str:
    """Four months into the test range: enough bars to trade, a few seconds a run."""
    test = ModelRegistry(store / "models").card("m:1").date_ranges["test"]
    return (pd.Timestamp(test[0]) + pd.Timedelta(days=120)).date().isoformat()


@pytest.mark.slow
def test_each_rule_and_auto_in_a_recorded_backtest(store: Path) -> None:
    def request(rule: str) -> BacktestConfig:
        return BacktestConfig(symbols=SYMBOLS, model="m:1", end=short_end(store),
                              ml=MLRunConfig(entry_rule=rule))  # fmt: skip

    runs = {r: backtest(store, request(r), log=quiet) for r in ("direction", "return")}
    lines: list[str] = []
    auto = backtest(store, request("auto"), log=lines.append)
    with RunRegistry(store) as registry:
        rec = registry.get(auto.run_id)
        for r, res in runs.items():
            assert registry.get(res.run_id).params["ml"]["entry_rule"] == r
            assert "entry_rule_chosen" not in registry.get(res.run_id).metrics
    m = rec.metrics
    assert rec.params["ml"]["entry_rule"] == "auto" and m["entry_rule_chosen"] in RULES
    other = next(r for r in RULES if r != m["entry_rule_chosen"])
    assert m[f"entry_val_return_{m['entry_rule_chosen']}"] >= m[f"entry_val_return_{other}"]
    assert {f"entry_val_{k}_{r}" for k in ("return", "trades", "exposure") for r in RULES} <= set(m)
    assert (
        json.loads((auto.run_dir / "metrics.json").read_text())["entry_rule_chosen"]
        == m["entry_rule_chosen"]
    )
    line = next(x for x in lines if x.startswith("entry rule: auto chose"))
    summary = json.loads((auto.run_dir / "summary.json").read_text())
    assert summary["runs"][0]["notes"] == [line]
    # the run traded the chosen rule: the same returns as a run that names it
    chosen = runs[m["entry_rule_chosen"]]
    pd.testing.assert_series_equal(auto.results[0].returns, chosen.results[0].returns)


@pytest.mark.slow
def test_the_cli_chooses_by_default_and_prints_the_choice(store: Path) -> None:
    res = CliRunner().invoke(main, ["--store", str(store), "backtest", "--model", "m:1",
                                    "--symbols", "AAPL", "--end", short_end(store)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "entry rule: auto chose " in res.output and "round trip" in res.output
    # in the printed summary, under the results table
    assert res.output.rindex("entry rule: auto chose") > res.output.index("final value")


@pytest.mark.slow
def test_auto_without_validation_bars_keeps_direction_and_says_why(store: Path) -> None:
    card = ModelRegistry(store / "models").card("m:1")
    val_end = pd.Timestamp(card.date_ranges["val"][1])
    msft = load_sample(adjusted=True)["MSFT"]
    ParquetStore(store).write(msft.loc[val_end - pd.Timedelta(days=60) :], merge=False)
    base = ["--store", str(store), "backtest", "--model", "m:1", "--symbols", "MSFT"]
    res = CliRunner().invoke(main, [*base, "--end", short_end(store)])
    assert res.exit_code == 0, res.output
    why = (
        f"the data has no bar of m:1's validation range {card.date_ranges['val'][0][:10]} .. "
        f"{val_end.date()} with a full feature window to choose on (give the symbols' full history)"
    )
    assert f"entry rule: auto kept direction: {why}" in res.output.splitlines()
    rid = res.output.split("recorded as run ")[1].split()[0]
    with RunRegistry(store) as registry:
        m = registry.get(rid).metrics
    assert (m["entry_rule_chosen"], m["entry_rule_note"]) == ("direction", why)
    assert not any(k.startswith("entry_val_") for k in m)


@pytest.mark.slow
def test_bars_of_another_size_than_the_model_are_refused(store: Path) -> None:
    """A stored daily index beside hourly bars would be read ahead (the day's close at its
    first hour): the model's timeframe is required, before any run."""
    hourly = ohlcv_frame(2000, symbol="HRLY", timeframe="1h", start="2012-01-02")
    ParquetStore(store).write(hourly)
    with pytest.raises(ConfigError, match="HRLY: 1h bars, but model m:1 was trained on 1Day bars; "
                                          "give --timeframe 1Day"):  # fmt: skip
        plan_model(store, "m:1", {"HRLY": hourly}, start="2012-01-10")
    with RunRegistry(store) as registry:
        before = registry.count()
    with pytest.raises(ConfigError, match="trained on 1Day bars"):
        backtest(store, BacktestConfig(symbols=("HRLY",), model="m:1", timeframe="1h"), log=quiet)
    with RunRegistry(store) as registry:
        assert registry.count() == before


def test_a_missing_validation_range_is_named(frames, windows) -> None:
    from strategies.entry_choice import validation_range

    with pytest.raises(
        DataError, match="model x:1 has no validation range in its card to choose on"
    ):
        validation_range({"train": ["2001", "2002"]}, "x:1")
