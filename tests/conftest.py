"""Shared fixtures: a small canonical frame factory, a temporary store, the recorded fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feeds.frame import make_frame
from feeds.store import ParquetStore

FIXTURES = Path(__file__).parent / "fixtures"
YF_REPAIR = FIXTURES / "yfinance_repair"

# Real rows from the Quandl WIKI sample (bokeh-sampledata), long layout, interleaved tickers.
LONG_CSV = """\
Ticker,Date,Open,High,Low,Close,Volume,Adj Close
AAPL,2000-03-01,118.56,132.06,118.5,130.31,9616100,4.186662803811
IBM,2000-03-01,102.0,105.5,100.06,100.25,10807800,73.667718762847
AAPL,2000-03-02,127.0,127.94,120.69,122.0,2779100,3.9196750983419
IBM,2000-03-02,100.5,105.44,99.5,103.12,11192900,75.776709813713
AAPL,2000-03-03,124.87,128.23,120.0,128.0,2887200,4.1124460048178
IBM,2000-03-03,107.25,110.0,106.06,108.0,10162800,79.362729440274
"""

FrameFactory = Callable[..., pd.DataFrame]


def ohlcv_frame(
    n: int = 60,
    *,
    symbol: str = "TEST",
    start: str = "2020-01-01",
    timeframe: str = "1Day",
    freq: str | None = None,
    seed: int = 0,
    source: str = "test",
    asset_class: str | None = None,
    price: float = 100.0,
) -> pd.DataFrame:
    """A valid canonical frame: a seeded random walk with consistent OHLC and positive volume.

    Daily bars fall on business days at 00:00 UTC unless ``freq`` says otherwise.
    """
    rng = np.random.default_rng(seed)
    if freq is None:
        freq = "B" if timeframe == "1Day" else {"1h": "1h", "15m": "15min", "1m": "1min"}[timeframe]
    idx = pd.date_range(start, periods=n, freq=freq, tz="UTC")
    close = price * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate([[price], close[:-1]]) * np.exp(rng.normal(0.0, 0.002, n))
    high = np.maximum(open_, close) * (1.0 + rng.uniform(0.0, 0.01, n))
    low = np.minimum(open_, close) * (1.0 - rng.uniform(0.0, 0.01, n))
    volume = rng.integers(1_000, 100_000, n).astype(np.float64)
    raw = pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=idx
    )
    return make_frame(
        raw, symbol=symbol, source=source, timeframe=timeframe, asset_class=asset_class
    )


@pytest.fixture
def make_ohlcv() -> FrameFactory:
    """Factory for valid canonical frames (see :func:`ohlcv_frame`)."""
    return ohlcv_frame


@pytest.fixture
def store(tmp_path: Path) -> ParquetStore:
    """An empty store in a temporary folder."""
    return ParquetStore(tmp_path / "store")


@pytest.fixture
def yf_repair() -> Path:
    """The folder of yfinance's recorded repair cases."""
    assert YF_REPAIR.is_dir(), f"missing fixtures at {YF_REPAIR}"
    return YF_REPAIR


def parquet_files(root: Path) -> list[Path]:
    """Every stored Parquet file under ``root``."""
    return sorted(root.rglob("*.parquet"))


def temp_files(root: Path) -> list[Path]:
    """Leftover temp files of atomic writes under ``root``."""
    return sorted(root.rglob("*.tmp"))
