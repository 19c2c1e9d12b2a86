"""Momentum and volatility features: RSI, stochastic, Williams %R, ROC, ATR, bands and channels.

Oscillators keep ta's units (RSI, %K, %D and Williams %R on 0..100 or -100..0, ROC and band
widths in percent); price-unit quantities (ATR) are divided by close. Where ta would divide by
zero on a flat stretch, the neutral value of the oscillator is used instead (documented per
function and in docs/FEATURES.md).
"""

from __future__ import annotations

import numpy as np

from mlmodels.features._bars import (
    Array,
    Bars,
    ewm,
    rmax,
    rmean,
    rmin,
    rstd,
    safe_div,
    shift,
    sma,
    true_range,
    wilder,
)
from mlmodels.features._price import log_ret

STOCH_SMOOTH = 3
BAND_DEVS = 2.0


def rsi(bars: Bars, n: int) -> Array:
    """ta's RSI: Wilder means (``ewm(alpha=1/n, adjust=False)`` from bar 0) of up and down moves.

    ``100 - 100 / (1 + up / down)``; 100 when ``down == 0`` (as ta), 50 when both are 0 (ta: 100).
    """
    diff = bars.close - shift(bars.close, 1)
    up = np.where(diff > 0, diff, 0.0)
    down = np.where(diff < 0, -diff, 0.0)
    mean_up, mean_down = ewm(up, 1.0 / n), ewm(down, 1.0 / n)
    value = 100.0 - 100.0 / (1.0 + safe_div(mean_up, mean_down, 0.0))
    flat = np.where(mean_up == 0, 50.0, 100.0)
    return np.where(mean_down == 0, flat, value)


def _lowest(bars: Bars, n: int) -> Array:
    return bars.memo(("lowest", n), lambda: rmin(bars.low, n))


def _highest(bars: Bars, n: int) -> Array:
    return bars.memo(("highest", n), lambda: rmax(bars.high, n))


def stoch_k(bars: Bars, n: int) -> Array:
    """Stochastic %K: ``100 (close - lowest low) / (highest high - lowest low)``; 50 if flat."""

    def make() -> Array:
        low = _lowest(bars, n)
        return safe_div(100.0 * (bars.close - low), _highest(bars, n) - low, 50.0)

    return bars.memo(("stoch_k", n), make)


def stoch_d(bars: Bars, n: int) -> Array:
    """Stochastic %D: 3-bar simple mean of %K."""
    return rmean(stoch_k(bars, n), STOCH_SMOOTH)


def williams_r(bars: Bars, n: int) -> Array:
    """Williams %R: ``-100 (highest high - close) / (highest high - lowest low)``; -50 if flat."""
    high = _highest(bars, n)
    return safe_div(-100.0 * (high - bars.close), high - _lowest(bars, n), -50.0)


def roc(bars: Bars, n: int) -> Array:
    """Rate of change in percent: ``100 (close - close[t-n]) / close[t-n]``."""
    prev = shift(bars.close, n)
    return ((bars.close - prev) / prev) * 100.0


def atr_norm(bars: Bars, n: int) -> Array:
    """ta's ATR (Wilder, seeded at bar n-1 with the mean of the first n true ranges) / close."""
    return wilder(true_range(bars), n, n - 1, 0) / bars.close


def _bollinger(bars: Bars, n: int) -> tuple[Array, Array]:
    """Lower band and band span (upper - lower) of Bollinger bands (population std, 2 devs)."""

    def make() -> Array:
        mid = sma(bars, n)
        dev = rstd(bars.close, n, 0)
        upper, lower = mid + BAND_DEVS * dev, mid - BAND_DEVS * dev
        return np.stack([lower, upper - lower])

    stacked = bars.memo(("bollinger", n), make)
    return stacked[0], stacked[1]


def bb_pband(bars: Bars, n: int) -> Array:
    """Bollinger %B: ``(close - lower) / (upper - lower)``; 0.5 when the bands meet (ta: NaN)."""
    lower, span = _bollinger(bars, n)
    return safe_div(bars.close - lower, span, 0.5)


def bb_width(bars: Bars, n: int) -> Array:
    """Bollinger band width in percent of the middle band: ``100 (upper - lower) / SMA``."""
    return (_bollinger(bars, n)[1] / sma(bars, n)) * 100.0


def kc_pband(bars: Bars, n: int) -> Array:
    """Keltner position, ta's original version: bands are n-bar SMAs of (4H-2L+C)/3, (-2H+4L+C)/3.

    ``(close - lower) / (upper - lower)``; 0.5 when the bands meet (ta: NaN or inf).
    """
    upper = rmean((4.0 * bars.high - 2.0 * bars.low + bars.close) / 3.0, n)
    lower = rmean((-2.0 * bars.high + 4.0 * bars.low + bars.close) / 3.0, n)
    span = np.where(rmax(bars.high - bars.low, n) == 0, 0.0, upper - lower)
    return safe_div(bars.close - lower, span, 0.5)


def dc_pband(bars: Bars, n: int) -> Array:
    """Donchian position: ``(close - lowest low) / (highest high - lowest low)``; 0.5 if flat."""
    low = _lowest(bars, n)
    return safe_div(bars.close - low, _highest(bars, n) - low, 0.5)


def dc_width(bars: Bars, n: int) -> Array:
    """Donchian width in percent of the n-bar SMA: ``100 (highest high - lowest low) / SMA``."""
    return ((_highest(bars, n) - _lowest(bars, n)) / sma(bars, n)) * 100.0


def hl_range(bars: Bars, n: int) -> Array:
    """The bar's range relative to close: ``(high - low) / close``."""
    return (bars.high - bars.low) / bars.close


def close_loc(bars: Bars, n: int) -> Array:
    """Where close sits in the bar's range: ``(close - low) / (high - low)``; 0.5 if high == low."""
    return safe_div(bars.close - bars.low, bars.high - bars.low, 0.5)


def realized_vol(bars: Bars, n: int) -> Array:
    """Sample standard deviation (ddof 1) of 1-bar log returns over ``n`` bars."""
    return rstd(log_ret(bars, 1), n, 1)
