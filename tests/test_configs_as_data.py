"""Every component's config is plain data: ``from_dict(to_dict(c)) == c`` through JSON, and
the live broker's config never writes its keys."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analyzers.backtest import CostConfig
from brokers.alpaca.config import AlpacaConfig
from brokers.alpaca.datastream import HubConfig
from btml.config import SourceSettings
from core.config import DataConfig
from core.errors import ConfigError
from feeds.index import IndexConfig
from feeds.sources.alpaca import AlpacaSettings
from feeds.sources.ccxt_source import CcxtSettings
from feeds.sources.csv_source import CsvOptions
from feeds.sources.synthetic import SyntheticConfig
from mlmodels.dataset import DatasetConfig
from mlmodels.labels import LabelConfig
from mlmodels.losses import Curriculum, LossConfig
from mlmodels.nets.model import ARCHITECTURES
from mlmodels.splits import WalkForward
from mlmodels.trainer import TrainConfig
from serving.archive import ModelServeConfig
from serving.client import RestConfig
from serving.server_config import ServerConfig

CONFIGS: list[DataConfig] = [
    CsvOptions(symbol="AAPL", sep=";", dayfirst=True, asset_class="stocks"),
    SyntheticConfig(n_symbols=3, planted_strength=0.2),
    AlpacaSettings(),
    CcxtSettings(),
    SourceSettings(),
    DatasetConfig(),
    LabelConfig(),
    LossConfig(),
    Curriculum(),
    WalkForward(),
    TrainConfig(),
    *ARCHITECTURES.values(),
    ModelServeConfig(),
    RestConfig(model="tiny"),
    ServerConfig(home=Path("/tmp/serving")),
    CostConfig(),
    HubConfig(),
    IndexConfig(name="EQ", constituents=("AAPL", "IBM"), rebalance="Q", weights={"AAPL": 1.0}),
    IndexConfig(
        name="PIT",
        method="cap",
        membership=pd.DataFrame(
            {
                "date": pd.to_datetime(["2004-01-02", "2004-01-02", "2008-01-02"], utc=True),
                "symbol": ["AAPL", "IBM", "GOOG"],
                "shares": [10.0, 20.0, 30.0],
            }
        ),
        start=pd.Timestamp("2005-01-03", tz="UTC"),
    ),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip_through_json(config: DataConfig) -> None:
    plain = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(plain) == config


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_an_unknown_key_is_refused(config: DataConfig) -> None:
    with pytest.raises(ConfigError, match=rf"^{type(config).__name__}: unknown key 'nope'"):
        type(config).from_dict({**config.to_dict(), "nope": 1})


def test_the_broker_config_never_writes_its_keys() -> None:
    cfg = AlpacaConfig(key_id="PKSECRETKEYID", secret_key="VERYSECRET", paper=True)
    text = json.dumps(cfg.to_dict())
    assert "PKSECRETKEYID" not in text and "VERYSECRET" not in text
    assert cfg.to_dict()["journal"].endswith("journal-paper.sqlite")
