"""Return and trend features: price changes, moving averages relative to close, MACD, ADX, Aroon.

Each calculator takes the bars and the feature's window and returns one float64 array the length
of the input; the warm-up mask is applied by the caller from the registry.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mlmodels.features._bars import (
    Array,
    Bars,
    ema_span,
    ewm,
    head_nan,
    safe_div,
    shift,
    sma,
    true_range,
    wilder,
)

MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9


def ret(bars: Bars, n: int) -> Array:
    """Simple return over ``n`` bars: ``close / close[t-n] - 1``."""
    return bars.memo(("ret", n), lambda: bars.close / shift(bars.close, n) - 1.0)


def log_ret(bars: Bars, n: int) -> Array:
    """Log return over ``n`` bars: ``log(close / close[t-n])``."""
    return bars.memo(("log_ret", n), lambda: np.log(bars.close / shift(bars.close, n)))


def gap(bars: Bars, n: int) -> Array:
    """Opening gap: ``open / close[t-1] - 1`` (``n`` is 1)."""
    return bars.open / shift(bars.close, n) - 1.0


def sma_rel(bars: Bars, n: int) -> Array:
    """Close relative to its ``n``-bar simple moving average: ``close / SMA - 1``."""
    return bars.close / sma(bars, n) - 1.0


def ema_rel(bars: Bars, n: int) -> Array:
    """Close relative to its ``n``-bar EMA (``alpha = 2/(n+1)``, seeded with the first close)."""
    return bars.close / ema_span(bars, "close", bars.close, n) - 1.0


def _macd(bars: Bars) -> tuple[Array, Array]:
    """MACD line and signal in price units, with ta's masking of the line before the slow EMA."""

    def make_line() -> Array:
        fast = ema_span(bars, "close", bars.close, MACD_FAST)
        slow = ema_span(bars, "close", bars.close, MACD_SLOW)
        return head_nan(fast - slow, MACD_SLOW - 1)

    line = bars.memo(("macd_line",), make_line)
    signal = bars.memo(("macd_signal",), lambda: ewm(line, 2.0 / (MACD_SIGNAL + 1.0)))
    return line, signal


def macd_norm(bars: Bars, n: int) -> Array:
    """MACD line (EMA12 - EMA26) divided by close."""
    return _macd(bars)[0] / bars.close


def macd_signal_norm(bars: Bars, n: int) -> Array:
    """MACD signal line (EMA9 of the MACD line) divided by close."""
    return _macd(bars)[1] / bars.close


def macd_hist_norm(bars: Bars, n: int) -> Array:
    """MACD histogram (line - signal) divided by close."""
    line, signal = _macd(bars)
    return (line - signal) / bars.close


def _adx_system(bars: Bars, n: int) -> tuple[Array, Array, Array]:
    """+DI, -DI and ADX exactly as ta's ``ADXIndicator`` (its loops replaced by ``ewm``).

    TR, +DM and -DM are Wilder-smoothed from a seed at bar ``n`` (the mean of bars 1..n); DX is
    ``100 |+DI - -DI| / (+DI + -DI)``; ADX is DX Wilder-smoothed from a seed at bar ``2n - 1``
    (the mean of DX over bars n..2n-1). A zero denominator gives 0, as in ta.
    """

    def make() -> Array:
        up = bars.high - shift(bars.high, 1)
        down = shift(bars.low, 1) - bars.low
        plus = np.where((up > down) & (up > 0), up, 0.0)
        minus = np.where((down > up) & (down > 0), down, 0.0)
        trs = wilder(true_range(bars), n, n, 1)
        pdi = 100.0 * safe_div(wilder(plus, n, n, 1), trs, 0.0)
        ndi = 100.0 * safe_div(wilder(minus, n, n, 1), trs, 0.0)
        dx = 100.0 * np.abs(safe_div(pdi - ndi, pdi + ndi, 0.0))
        adx = wilder(dx, n, 2 * n - 1, n)
        return np.stack([pdi, ndi, adx])

    stacked = bars.memo(("adx", n), make)
    return stacked[0], stacked[1], stacked[2]


def adx(bars: Bars, n: int) -> Array:
    """Average directional index, 0..100."""
    return _adx_system(bars, n)[2]


def adx_pos(bars: Bars, n: int) -> Array:
    """Plus directional indicator +DI, 0..100."""
    return _adx_system(bars, n)[0]


def adx_neg(bars: Bars, n: int) -> Array:
    """Minus directional indicator -DI, 0..100."""
    return _adx_system(bars, n)[1]


def _aroon(x: Array, n: int, use_max: bool) -> Array:
    """ta's Aroon: position of the extreme in the last ``n + 1`` bars (oldest first), x100/n.

    ``argmax`` returns the first (oldest) of tied extremes, as ta's does.
    """
    out = np.full_like(x, np.nan)
    if len(x) > n:
        windows = sliding_window_view(x, n + 1)
        pos = windows.argmax(axis=1) if use_max else windows.argmin(axis=1)
        out[n:] = pos.astype(np.float64) / n * 100.0
    return out


def aroon_up(bars: Bars, n: int) -> Array:
    """Aroon up: ``100 (n - bars since the n-bar high) / n``."""
    return _aroon(bars.high, n, use_max=True)


def aroon_down(bars: Bars, n: int) -> Array:
    """Aroon down: ``100 (n - bars since the n-bar low) / n``."""
    return _aroon(bars.low, n, use_max=False)
