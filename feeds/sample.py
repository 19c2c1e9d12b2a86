"""The embedded default data: a real public-domain sample shipped inside the package.

AAPL, IBM, MSFT (2000-03-01..2013-03-01), GOOG (from 2004-08-19) and FB (from 2012-05-18),
daily, unadjusted OHLCV plus adjusted close, from the Quandl WIKI set as packaged in
``bokeh-sampledata`` (public domain). It lets ``btml demo`` run offline on a fresh machine.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pandas as pd

from feeds.frame import make_frame

SAMPLE_FILE = "sample_daily_2000_2013.parquet"
SAMPLE_SYMBOLS: tuple[str, ...] = ("AAPL", "IBM", "MSFT", "GOOG", "FB")


def build_sample(csv_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Convert the long CSV (``Ticker,Date,Open,...,Adj Close``) into the packaged Parquet file."""
    raw = pd.read_csv(csv_path, parse_dates=["Date"])
    raw.columns = [c.lower().replace(" ", "_") for c in raw.columns]
    raw = raw.rename(columns={"ticker": "symbol", "date": "datetime"})
    raw["volume"] = raw["volume"].astype("float64")
    path = Path(out)
    raw.to_parquet(path, index=False, compression="zstd")
    return path


def load_sample(adjusted: bool = False) -> dict[str, pd.DataFrame]:
    """The embedded sample as canonical frames keyed by symbol.

    ``adjusted=True`` scales open/high/low/close by ``adj_close / close`` (splits and dividends);
    the default is the raw prices as traded.
    """
    ref = resources.files("feeds") / "data" / SAMPLE_FILE
    with resources.as_file(ref) as p:
        raw = pd.read_parquet(p)
    out: dict[str, pd.DataFrame] = {}
    for sym in SAMPLE_SYMBOLS:
        g = raw[raw["symbol"] == sym].set_index("datetime").sort_index()
        g.index = pd.DatetimeIndex(g.index).tz_localize("UTC")
        data = g[["open", "high", "low", "close", "volume"]].copy()
        if adjusted:
            factor = g["adj_close"] / g["close"]
            for c in ("open", "high", "low", "close"):
                data[c] = data[c] * factor
        out[sym] = make_frame(
            data,
            symbol=sym,
            source="sample",
            timeframe="1Day",
            adjustment="adjusted" if adjusted else "raw",
            asset_class="stocks",
        )
    return out
