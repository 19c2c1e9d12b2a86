"""Volume, calendar and index-relative features.

Volume features are bounded or relative quantities (OBV change over traded volume, distance to
a rolling VWAP, Chaikin money flow). A window with no traded volume at all gives 0 (no flow),
and the VWAP falls back to the plain mean of typical prices. Calendar features are sine/cosine
encodings of the bar's UTC timestamp. Index-relative features use the index close already
aligned to the symbol's bars (forward-filled from the past only).
"""

from __future__ import annotations

import numpy as np

from mlmodels.features._bars import Array, Bars, rcov, rmax, rmean, rstd, rsum, safe_div, shift
from mlmodels.features._price import ret

TWO_PI = 2.0 * np.pi


def _volume_sum(bars: Bars, n: int) -> Array:
    """Rolling volume sum, exactly 0 where no bar in the window traded."""

    def make() -> Array:
        return np.where(rmax(bars.volume, n) == 0, 0.0, rsum(bars.volume, n))

    return bars.memo(("volume_sum", n), make)


def obv_change(bars: Bars, n: int) -> Array:
    """OBV change over ``n`` bars divided by the volume traded in them, in -1..1.

    Equals ``(OBV[t] - OBV[t-n]) / sum(volume)`` with ta's OBV (a bar whose close is not below
    the previous close counts as up); 0 when no volume traded in the window.
    """
    signed = np.where(bars.close < shift(bars.close, 1), -bars.volume, bars.volume)
    signed[0] = np.nan
    return safe_div(rsum(signed, n), _volume_sum(bars, n), 0.0)


def vwap_dist(bars: Bars, n: int) -> Array:
    """Close relative to the rolling ``n``-bar VWAP of typical price ``(H+L+C)/3``: ``C/VWAP - 1``.

    A window without volume uses the plain mean of typical prices as its VWAP.
    """
    typical = (bars.high + bars.low + bars.close) / 3.0
    volume = _volume_sum(bars, n)
    vwap = safe_div(rsum(typical * bars.volume, n), volume, 0.0)
    vwap = np.where(volume == 0, rmean(typical, n), vwap)
    return bars.close / vwap - 1.0


def cmf(bars: Bars, n: int) -> Array:
    """Chaikin money flow: sum of ``volume ((C-L) - (H-C)) / (H-L)`` over the volume sum.

    A bar with ``H == L`` contributes 0 (as ta); a window with no volume gives 0 (ta: NaN).
    """
    span = bars.high - bars.low
    multiplier = safe_div((bars.close - bars.low) - (bars.high - bars.close), span, 0.0)
    return safe_div(rsum(multiplier * bars.volume, n), _volume_sum(bars, n), 0.0)


def volume_rel(bars: Bars, n: int) -> Array:
    """Volume relative to its ``n``-bar mean: ``volume / SMA(volume) - 1``; 0 if the mean is 0."""
    return safe_div(bars.volume, _volume_sum(bars, n) / n, 1.0) - 1.0


def _cyclic(position: Array, period: Array | float, use_sin: bool) -> Array:
    angle = TWO_PI * position / period
    return np.sin(angle) if use_sin else np.cos(angle)


def _dow(bars: Bars) -> Array:
    return np.asarray(bars.times.day_of_week, dtype=np.float64)


def _month(bars: Bars) -> Array:
    return np.asarray(bars.times.month, dtype=np.float64) - 1.0


def _dom(bars: Bars) -> tuple[Array, Array]:
    day = np.asarray(bars.times.day, dtype=np.float64) - 1.0
    return day, np.asarray(bars.times.days_in_month, dtype=np.float64)


def dow_sin(bars: Bars, n: int) -> Array:
    """``sin(2 pi weekday / 7)``, Monday = 0, from the UTC timestamp."""
    return _cyclic(_dow(bars), 7.0, use_sin=True)


def dow_cos(bars: Bars, n: int) -> Array:
    """``cos(2 pi weekday / 7)``."""
    return _cyclic(_dow(bars), 7.0, use_sin=False)


def month_sin(bars: Bars, n: int) -> Array:
    """``sin(2 pi (month - 1) / 12)``."""
    return _cyclic(_month(bars), 12.0, use_sin=True)


def month_cos(bars: Bars, n: int) -> Array:
    """``cos(2 pi (month - 1) / 12)``."""
    return _cyclic(_month(bars), 12.0, use_sin=False)


def dom_sin(bars: Bars, n: int) -> Array:
    """``sin(2 pi (day - 1) / days in month)``."""
    return _cyclic(*_dom(bars), use_sin=True)


def dom_cos(bars: Bars, n: int) -> Array:
    """``cos(2 pi (day - 1) / days in month)``."""
    return _cyclic(*_dom(bars), use_sin=False)


def index_ret(bars: Bars, n: int) -> Array:
    """The index's return over ``n`` of the symbol's bars: ``I / I[t-n] - 1``."""
    close = bars.require_index()
    return bars.memo(("index_ret", n), lambda: close / shift(close, n) - 1.0)


def rel_strength(bars: Bars, n: int) -> Array:
    """Symbol's ``n``-bar return minus the index's."""
    return ret(bars, n) - index_ret(bars, n)


def excess_ret(bars: Bars, n: int) -> Array:
    """Symbol's 1-bar return minus the index's (``n`` is 1)."""
    return ret(bars, n) - index_ret(bars, n)


def _moments(bars: Bars, n: int) -> tuple[Array, Array, Array]:
    """Rolling covariance of 1-bar returns (symbol, index) and both standard deviations."""

    def make() -> Array:
        own, market = ret(bars, 1), index_ret(bars, 1)
        own_std, market_std = rstd(own, n, 1), rstd(market, n, 1)
        cov = np.where((own_std == 0) | (market_std == 0), 0.0, rcov(own, market, n))
        return np.stack([cov, own_std, market_std])

    stacked = bars.memo(("moments", n), make)
    return stacked[0], stacked[1], stacked[2]


def beta(bars: Bars, n: int) -> Array:
    """Rolling beta of 1-bar returns on the index's: ``cov / var(index)``; 0 if the index is flat."""
    cov, _, market_std = _moments(bars, n)
    return safe_div(cov, market_std * market_std, 0.0)


def corr(bars: Bars, n: int) -> Array:
    """Rolling correlation of 1-bar returns with the index's, in -1..1; 0 if either is flat."""
    cov, own_std, market_std = _moments(bars, n)
    return np.clip(safe_div(cov, own_std * market_std, 0.0), -1.0, 1.0)
