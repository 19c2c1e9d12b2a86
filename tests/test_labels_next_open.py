"""Labels aligned with execution: orders made at bar t fill at the next bar's open, so the
trading heads (direction, action, size, confidence) learn ``log(O_{t+1+h} / O_{t+1})`` by
default, while the price heads stay close to close unless asked; old cards load as ``close``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from btml.cli import main
from core.errors import ConfigError
from feeds.sources.synthetic import SyntheticConfig, generate_market
from mlmodels.dataset import DatasetConfig, build_dataset
from mlmodels.features import WARMUP
from mlmodels.labels import LabelConfig, make_labels
from mlmodels.registry import ModelCard
from workflows.train import TrainRunConfig

OPEN = [100.0, 101.0, 103.0, 102.0, 106.0, 104.0, 108.0, 107.0]
CLOSE = [100.5, 102.0, 102.5, 105.0, 105.0, 107.0, 107.5, 110.0]
SMALL = {"horizons": (1, 2, 3), "position_horizon": 2, "risk_horizon": 3, "vol_window": 2,
         "dead_zone": 0.0, "cost": 0.01}  # fmt: skip


def _bars(open_: list[float], close: list[float]) -> pd.DataFrame:
    o, c = np.asarray(open_), np.asarray(close)
    idx = pd.bdate_range("2021-01-04", periods=len(c), tz="UTC", name="datetime")
    return pd.DataFrame(
        {"open": o, "high": np.maximum(o, c) * 1.01, "low": np.minimum(o, c) * 0.99,
         "close": c, "volume": 1.0}, index=idx,
    )  # fmt: skip


def test_a_hand_computed_tiny_frame() -> None:
    bars, ln = _bars(OPEN, CLOSE), np.log
    lab = make_labels(bars, LabelConfig(**SMALL))  # trading heads from the next open
    # lookahead: the 3-bar horizon from the next open reads bar t + 4; the last 4 bars are NaN
    assert LabelConfig(**SMALL).lookahead == 4
    assert lab.iloc[4:].isna().all().all() and lab.iloc[:4].notna().all().all()
    # price heads: close to close
    assert lab["ret_1"].iloc[1] == pytest.approx(ln(102.5 / 102.0))
    assert lab["ret_3"].iloc[3] == pytest.approx(ln(107.5 / 105.0))
    # bar 1: entered at O2 = 103; O3 = 102 is lower: down, where close to close (102 -> 102.5) is up
    assert lab["direction"].iloc[1] == 0
    assert lab["action"].iloc[1] == 2  # log(O4 / O2) = log(106 / 103) = 2.9 % > 1 % cost
    # confidence: of log(O3/O2) < 0, log(O4/O2) > 0, log(O5/O2) > 0 one has the down sign
    assert lab["confidence"].iloc[1] == pytest.approx(1 / 3)
    # bar 3: entered at O4 = 106; O5 = 104: down (close to close 105 -> 105 is flat)
    assert lab["direction"].iloc[3] == 0
    r2 = ln(108.0 / 106.0)  # two bars from the next open: 1.87 % > 1 %: buy
    sigma = np.std([ln(102.5 / 102.0), ln(105.0 / 102.5)], ddof=1)  # causal, 2 bars up to t
    assert lab["action"].iloc[3] == 2
    assert lab["size"].iloc[3] == pytest.approx((r2 - 0.01) / (2 * sigma * np.sqrt(2)))
    # volatility and risk do not depend on the choice: the low of bars 4..6 against C3
    low = np.minimum(OPEN, CLOSE) * 0.99
    assert lab["risk"].iloc[3] == pytest.approx(1 - low[4:7].min() / 105.0)
    # the same frame close to close: bar 1 up, bar 3 flat
    closes = make_labels(bars, LabelConfig(**SMALL, trading_from="close"))
    assert (closes["direction"].iloc[1], closes["direction"].iloc[3]) == (2, 1)
    assert closes.iloc[5:].isna().all().all() and closes.iloc[:5].notna().all().all()  # 3 bars
    pd.testing.assert_frame_equal(closes[["volatility", "risk"]].iloc[:4],
                                  lab[["volatility", "risk"]].iloc[:4])  # fmt: skip


def test_the_default_trading_labels_come_from_the_next_open() -> None:
    """Fails on the code before the option: the default measured close to close."""
    frame = generate_market(SyntheticConfig(n_symbols=1, n_bars=400, seed=5))["SYN000"]
    lab = make_labels(frame)
    o, c = frame["open"].to_numpy(), frame["close"].to_numpy()
    t = np.arange(len(frame) - 25)  # the bars whose exit O_{t+1+24} exists
    want = {h: np.log(o[t + 1 + h] / o[t + 1]) for h in (1, 4, 24)}
    sigma = pd.Series(np.log(c)).diff().rolling(20, min_periods=2).std().to_numpy()[t]
    sigma = np.where(np.isfinite(sigma), sigma, np.nanmedian(sigma))
    band = 0.5 * sigma
    direction = np.where(want[1] > band, 2, np.where(want[1] < -band, 0, 1))
    np.testing.assert_array_equal(lab["direction"].to_numpy()[t], direction)
    action = np.where(want[4] > 0.004, 2, np.where(want[4] < -0.004, 0, 1))
    np.testing.assert_array_equal(lab["action"].to_numpy()[t], action)
    # the price heads stay close to close
    np.testing.assert_allclose(lab["ret_4"].to_numpy()[t], np.log(c[t + 4] / c[t]))
    # and the two definitions really differ on these bars
    closes = make_labels(frame, LabelConfig(trading_from="close"))
    assert (closes["direction"].to_numpy()[t] != direction).mean() > 0.1


def test_unlabelled_bars_are_never_sampled() -> None:
    frame = generate_market(SyntheticConfig(n_symbols=1, n_bars=320, seed=2))["SYN000"]
    ds = build_dataset({"SYN000": frame}, DatasetConfig(window=10))
    lab = make_labels(frame)
    assert lab.iloc[-25:].isna().all().all()  # 24 bars + the entry bar
    assert ds.times[-1] == frame.index[-26] and ds.times[0] == frame.index[WARMUP + 9]
    assert all(np.isfinite(v).all() for v in ds.targets.values())
    np.testing.assert_array_equal(ds.targets["direction"], lab["direction"].iloc[WARMUP + 9 : -25])


def test_forward_returns_refuses_an_unknown_start() -> None:
    from mlmodels.labels import forward_returns

    with pytest.raises(ConfigError, match="'close' or 'next_open'"):
        forward_returns(_bars(OPEN, CLOSE), 1, "midday")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="trading_from must be 'close' or 'next_open'"):
        LabelConfig(trading_from="open")  # type: ignore[arg-type]


def test_old_cards_load_as_close_and_new_ones_keep_their_choice() -> None:
    old = {"horizons": [1, 4, 24], "direction_horizon": 1, "position_horizon": 4,
           "dead_zone": 0.5, "cost": 0.004, "vol_window": 20, "risk_horizon": 24}  # fmt: skip
    card = ModelCard(name="m", arch="tiny", model_config={}, features=[], scaler={}, window=8,
                     labels=old)  # fmt: skip
    cfg = card.label_cfg()
    assert (cfg.trading_from, cfg.price_from, cfg.lookahead) == ("close", "close", 24)
    new = json.loads(json.dumps(dataclasses.asdict(LabelConfig())))
    assert new["trading_from"] == "next_open" and new["price_from"] == "close"
    assert dataclasses.replace(card, labels=new).label_cfg() == LabelConfig()


def test_train_request_takes_the_labels_choice() -> None:
    base = {"symbols": ("A",), "epochs": 1}
    assert TrainRunConfig(**base).label_config() == LabelConfig()  # type: ignore[arg-type]
    both = TrainRunConfig(**base, labels_from="close", price_labels_from="next_open")  # type: ignore[arg-type]
    assert both.label_config() == LabelConfig(trading_from="close", price_from="next_open")
    with pytest.raises(ConfigError, match="--labels-from must be close or next-open"):
        TrainRunConfig(**base, labels_from="next-open")  # type: ignore[arg-type]


def test_train_cli_refuses_an_unknown_choice_and_stores_nothing(tmp_path) -> None:
    store = tmp_path / "s"
    res = CliRunner().invoke(
        main, ["--store", str(store), "train", "--symbols", "A", "--labels-from", "open"]
    )
    assert res.exit_code == 2
    assert "Invalid value for '--labels-from': 'open' is not one of 'next-open', 'close'" in (
        res.output
    )
    assert not store.exists() or not any(store.rglob("*"))
