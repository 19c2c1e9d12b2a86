"""The canonical OHLCV frame: what every source returns and every consumer reads.

A ``DatetimeIndex`` in UTC named ``datetime``, strictly increasing, no duplicates; float64
columns ``open, high, low, close, volume``; metadata in ``frame.attrs``: ``symbol``, ``source``,
``timeframe``, ``adjustment`` (``raw`` / ``adjusted`` / ``split``), ``asset_class``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError

OHLCV_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
ASSET_CLASSES: tuple[str, ...] = ("stocks", "crypto", "index")
ADJUSTMENTS: tuple[str, ...] = ("raw", "adjusted", "split", "dividend", "all")

_CRYPTO_QUOTES = ("USD", "USDT", "USDC", "BTC", "ETH", "EUR")


def guess_asset_class(symbol: str) -> str:
    """``crypto`` for pair symbols (``BTC/USD``, ``BTC-USD``, ``ETHUSDT``), else ``stocks``."""
    s = symbol.upper()
    if "/" in s:
        return "crypto"
    if "-" in s and s.rsplit("-", 1)[1] in _CRYPTO_QUOTES:
        return "crypto"
    return "stocks"


def make_frame(
    data: pd.DataFrame,
    *,
    symbol: str,
    source: str,
    timeframe: str,
    adjustment: str = "raw",
    asset_class: str | None = None,
    tz: str | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
    keep: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Build a canonical frame from ``data`` indexed by timestamps with OHLCV columns.

    Column names are matched case-insensitively. A naive index is refused unless ``tz`` names
    the zone it is in (it is then localised and converted to UTC). Extra columns named in
    ``keep`` (for example ``dividends``) are carried along after the five OHLCV columns.
    Ordering and duplicates are not repaired here: that is :func:`feeds.validate.validate`'s job.
    """
    if not isinstance(data.index, pd.DatetimeIndex):
        raise DataError(f"{symbol}: the index must be timestamps, got {type(data.index).__name__}")
    out = _float_columns(data, symbol, keep)
    out.index = _utc_index(pd.DatetimeIndex(out.index), symbol, tz)
    out.attrs = {
        "symbol": symbol,
        "source": source,
        "timeframe": timeframe,
        "adjustment": adjustment,
        "asset_class": asset_class or guess_asset_class(symbol),
        **(dict(extra_attrs) if extra_attrs else {}),
    }
    return out


def _float_columns(data: pd.DataFrame, symbol: str, keep: tuple[str, ...]) -> pd.DataFrame:
    """The OHLCV columns (matched case-insensitively) and ``keep``'s, as float64."""
    lower = {str(c).strip().lower(): c for c in data.columns}
    missing = [c for c in OHLCV_COLUMNS if c not in lower]
    if missing:
        raise DataError(
            f"{symbol}: missing column(s) {', '.join(missing)}; "
            f"have {', '.join(map(str, data.columns))}. Rename them to open, high, low, close, volume."
        )
    cols = list(OHLCV_COLUMNS) + [k for k in keep if k in lower]
    values = {
        c: pd.to_numeric(data[lower[c]], errors="coerce").to_numpy(dtype=np.float64) for c in cols
    }
    return pd.DataFrame(values, index=data.index.copy())


def _utc_index(idx: pd.DatetimeIndex, symbol: str, tz: str | None) -> pd.DatetimeIndex:
    """The index in UTC, named ``datetime``, in nanoseconds; a naive one needs ``tz``."""
    if idx.tz is None:
        if tz is None:
            raise DataError(
                f"{symbol}: timestamps have no timezone; say which zone they are in "
                "(for example tz='America/New_York' or --tz UTC)"
            )
        idx = idx.tz_localize(tz)
    return pd.DatetimeIndex(idx.tz_convert("UTC"), name="datetime").as_unit("ns")


def empty_frame(**attrs: Any) -> pd.DataFrame:
    """A canonical frame with no rows (used to say 'nothing' without inventing data)."""
    idx = pd.DatetimeIndex([], tz="UTC", name="datetime").as_unit("ns")
    out = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in OHLCV_COLUMNS}, index=idx)
    out.attrs = dict(attrs)
    return out
