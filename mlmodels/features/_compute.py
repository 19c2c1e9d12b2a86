"""``compute_features``: input checks, index alignment, the registry loop and the NaN check."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import DataError
from feeds.frame import OHLCV_COLUMNS
from feeds.timeframes import period_ends
from mlmodels.features._bars import Array, Bars, head_nan
from mlmodels.features._registry import (
    INDEX_FEATURE_NAMES,
    KINDS,
    WARMUP,
    FeatureSpec,
    feature_specs,
)


def compute_features(
    ohlcv: pd.DataFrame, index: pd.DataFrame | None = None, *, strict: bool = True
) -> pd.DataFrame:
    """Every registered feature for one symbol, one float64 column each, on the input's rows.

    ``ohlcv`` is a canonical OHLCV frame (``feeds.frame``); ``index`` an OHLCV frame (only
    ``close`` is read) of the market index on the same timestamps or a superset. It is aligned to
    the symbol's bars by taking, for each bar, the last index close at or before it (never a
    later one). Without ``index`` the index-relative family is left out: the columns are then
    ``feature_names(with_index=False)``.

    The row at ``t`` depends on rows ``<= t`` only. The first ``WARMUP`` rows hold NaN where a
    feature's own warm-up (``FeatureSpec.warmup``) is not over; row ``WARMUP`` onwards is complete.

    Raises:
        DataError: the frame lacks a column or a ``DatetimeIndex``; it has fewer than
            ``WARMUP + 1`` rows (message names the symbol and the bars needed); the index frame
            cannot be aligned; or, when ``strict``, a value after the warm-up is NaN or infinite
            (message names the feature, the symbol and the date).
    """
    symbol = str(getattr(ohlcv, "attrs", {}).get("symbol", "<unnamed>"))
    _check_input(ohlcv, symbol)
    index_close = None if index is None else align_index(ohlcv, index, symbol)
    bars = Bars(ohlcv, index_close)
    specs = feature_specs(with_index=index is not None)
    with np.errstate(divide="ignore", invalid="ignore"):  # bad inputs are reported below
        columns = {spec.name: _one(bars, spec) for spec in specs}
    out = pd.DataFrame(columns, index=ohlcv.index, copy=False)
    out.attrs = {**ohlcv.attrs, "warmup": WARMUP}
    if strict:
        check_complete(out, ohlcv, index_close, symbol)
    return out


def _one(bars: Bars, spec: FeatureSpec) -> Array:
    """One feature's values, NaN before its warm-up."""
    return head_nan(KINDS[spec.kind].calc(bars, spec.window), spec.warmup)


def _check_input(ohlcv: pd.DataFrame, symbol: str) -> None:
    """Refuse frames the features cannot be computed from, saying what to fix."""
    if not isinstance(ohlcv, pd.DataFrame) or not isinstance(ohlcv.index, pd.DatetimeIndex):
        raise DataError(
            f"{symbol}: compute_features needs a canonical OHLCV frame with a DatetimeIndex; "
            "build one with feeds.frame.make_frame"
        )
    missing = [c for c in OHLCV_COLUMNS if c not in ohlcv.columns]
    if missing:
        raise DataError(f"{symbol}: missing column(s) {', '.join(missing)} for the features")
    if len(ohlcv) < WARMUP + 1:
        raise DataError(
            f"{symbol}: {len(ohlcv)} bars; compute_features needs at least {WARMUP + 1} "
            f"({WARMUP} warm-up bars before the first complete row); "
            f"load {WARMUP + 1 - len(ohlcv)} more bars of history"
        )


def _coarser(index: pd.Index, bars: pd.Index) -> bool:
    """Whether the index's bars are longer than the symbol's (median spacing, 1.5x)."""
    if len(index) < 2 or len(bars) < 2:
        return False
    gap = pd.Series(index[1:] - index[:-1]).median()
    own = pd.Series(bars[1:] - bars[:-1]).median()
    return bool(gap > 1.5 * own)


def align_index(ohlcv: pd.DataFrame, index: pd.DataFrame, symbol: str) -> Array:
    """The index close at each of the symbol's bars: the last index bar at or before it when
    both have the same bar size (they close together); for a coarser index, the last index
    bar whose period has closed by the end of the symbol's bar (bars are stamped at their
    start: a weekly bar stamped Monday holds Friday's close and is not seen before then)."""
    name = str(index.attrs.get("symbol", "index"))
    if not isinstance(index.index, pd.DatetimeIndex) or "close" not in index.columns:
        raise DataError(f"{symbol}: index frame {name} needs a DatetimeIndex and a close column")
    if not index.index.is_monotonic_increasing or index.index.has_duplicates:
        raise DataError(
            f"{symbol}: index frame {name} must be strictly increasing in time; "
            "sort it and drop duplicate timestamps (feeds.validate.validate does both)"
        )
    try:
        if _coarser(index.index, ohlcv.index):  # by period ends: never a running period
            ends = period_ends(index.index, index.attrs.get("timeframe"))
            closes = pd.Series(index["close"].to_numpy(), index=ends)
            mine = period_ends(ohlcv.index, ohlcv.attrs.get("timeframe"))
            aligned = closes.reindex(mine, method="ffill")
        else:
            aligned = index["close"].reindex(ohlcv.index, method="ffill")
    except (TypeError, ValueError) as err:
        raise DataError(f"{symbol}: cannot align index frame {name} to its bars: {err}") from err
    return np.asarray(aligned.to_numpy(dtype=np.float64), dtype=np.float64)


def check_complete(
    out: pd.DataFrame, ohlcv: pd.DataFrame, index_close: Array | None, symbol: str
) -> None:
    """Raise :class:`DataError` at the first NaN or infinite value after the warm-up."""
    values = out.to_numpy()[WARMUP:]
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    row, col = np.argwhere(bad)[0]
    at = WARMUP + int(row)
    name = str(out.columns[col])
    what = "NaN" if np.isnan(values[row, col]) else "infinite"
    raise DataError(
        f"{symbol}: feature {name} is {what} at {out.index[at]} (bar {at}, after the "
        f"{WARMUP}-bar warm-up; {int(bad.sum())} bad value(s) in all); "
        f"{_hint(ohlcv, index_close, at, name)}"
    )


def _hint(ohlcv: pd.DataFrame, index_close: Array | None, at: int, name: str) -> str:
    """What in the input most likely caused a bad value at bar ``at``."""
    start = max(at - WARMUP, 0)
    window = ohlcv.iloc[start : at + 1][list(OHLCV_COLUMNS)].to_numpy()
    if index_close is not None and name in INDEX_FEATURE_NAMES and np.isnan(index_close[at]):
        return "the index frame has no bar at or before this date; extend the index history"
    if np.isnan(window).any():
        return "the input has missing values in the bars leading up to it; fill or drop them"
    if (window[:, :4] <= 0).any():
        return "the input has non-positive prices in the bars leading up to it"
    return "check the input bars leading up to this date (feeds.validate.validate)"
