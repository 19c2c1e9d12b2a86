"""The bars of one symbol as float64 arrays, plus the vectorised primitives every feature uses.

Every primitive here is causal by construction: the value at position ``t`` is computed from
positions ``<= t`` only, and in the same order whatever follows, so a truncated input gives a
bit-identical prefix (the truncation test relies on this). Rolling windows and exponential
smoothing run in pandas' compiled kernels; nothing loops in Python over rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from pandas.api.typing import Rolling

Array = np.ndarray


class Bars:
    """One symbol's OHLCV as float64 arrays, the aligned index close, and a memo of intermediates.

    Intermediates shared by several features (moving averages, true range, the ADX system) are
    computed once per call through :meth:`memo`.
    """

    def __init__(self, ohlcv: pd.DataFrame, index_close: Array | None) -> None:
        self.open = _column(ohlcv, "open")
        self.high = _column(ohlcv, "high")
        self.low = _column(ohlcv, "low")
        self.close = _column(ohlcv, "close")
        self.volume = _column(ohlcv, "volume")
        self.times = pd.DatetimeIndex(ohlcv.index)
        self.index_close = index_close
        self._memo: dict[tuple[object, ...], Array] = {}

    def memo(self, key: tuple[object, ...], make: Callable[[], Array]) -> Array:
        """The intermediate stored under ``key``, computed by ``make()`` on first use."""
        found = self._memo.get(key)
        if found is None:
            found = make()
            self._memo[key] = found
        return found

    def require_index(self) -> Array:
        """The index close aligned to these bars (only called for index-relative features)."""
        if self.index_close is None:  # pragma: no cover - guarded by compute_features
            raise RuntimeError("index-relative feature requested without an index frame")
        return self.index_close


def _column(frame: pd.DataFrame, name: str) -> Array:
    return np.asarray(frame[name].to_numpy(dtype=np.float64, copy=False), dtype=np.float64)


def shift(x: Array, k: int) -> Array:
    """``x`` delayed by ``k`` bars; the first ``k`` positions are NaN."""
    out = np.full_like(x, np.nan)
    if k < len(x):
        out[k:] = x[: len(x) - k]
    return out


def head_nan(x: Array, k: int) -> Array:
    """A copy of ``x`` with its first ``k`` positions set to NaN."""
    out = np.array(x, dtype=np.float64, copy=True)
    out[:k] = np.nan
    return out


def safe_div(num: Array, den: Array, fill: float) -> Array:
    """``num / den``, with ``fill`` where ``den == 0`` (NaN in either operand stays NaN)."""
    out = np.full_like(num, fill)
    np.divide(num, den, out=out, where=den != 0)
    out[np.isnan(den)] = np.nan
    return out


def _roll(x: Array, n: int) -> Rolling:
    return pd.Series(x, copy=False).rolling(n, min_periods=n)


def rsum(x: Array, n: int) -> Array:
    """Rolling sum over ``n`` bars (NaN until ``n`` bars are available)."""
    return _roll(x, n).sum().to_numpy()


def rmean(x: Array, n: int) -> Array:
    """Rolling mean over ``n`` bars."""
    return _roll(x, n).mean().to_numpy()


def rmax(x: Array, n: int) -> Array:
    """Rolling maximum over ``n`` bars."""
    return _roll(x, n).max().to_numpy()


def rmin(x: Array, n: int) -> Array:
    """Rolling minimum over ``n`` bars."""
    return _roll(x, n).min().to_numpy()


def rstd(x: Array, n: int, ddof: int) -> Array:
    """Rolling standard deviation over ``n`` bars with ``ddof`` delta degrees of freedom.

    Exactly 0 on a window of identical values (pandas' running variance can leave a residue of
    about 1e-8 relative there after larger values leave the window).
    """
    std = _roll(x, n).std(ddof=ddof).to_numpy()
    return np.where(rmax(x, n) == rmin(x, n), 0.0, std)


def rcov(x: Array, y: Array, n: int) -> Array:
    """Rolling sample covariance of ``x`` and ``y`` over ``n`` bars."""
    return _roll(x, n).cov(pd.Series(y, copy=False)).to_numpy()


def ewm(x: Array, alpha: float) -> Array:
    """Recursive exponential mean ``y[t] = (1 - alpha) y[t-1] + alpha x[t]``.

    Starts at the first non-NaN value of ``x`` (pandas ``ewm(adjust=False)``): leading NaN
    stay NaN, so a seed placed at position ``k`` with NaN before it starts the recursion there.
    """
    return pd.Series(x, copy=False).ewm(alpha=alpha, adjust=False).mean().to_numpy()


def wilder(x: Array, n: int, seed_at: int, seed_from: int = 0) -> Array:
    """Wilder's smoothing (alpha = 1/n) seeded at ``seed_at`` with ``mean(x[seed_from:seed_at+1])``.

    This is the recursion ta runs as a Python loop for ATR and ADX, here handed to the compiled
    ``ewm`` kernel: positions before ``seed_at`` are NaN.
    """
    src = np.full_like(x, np.nan)
    if seed_at < len(x):
        src[seed_at] = x[seed_from : seed_at + 1].mean()
        src[seed_at + 1 :] = x[seed_at + 1 :]
    return ewm(src, 1.0 / n)


def true_range(bars: Bars) -> Array:
    """``max(high, prev close) - min(low, prev close)``; ``high - low`` on the first bar."""

    def make() -> Array:
        prev = shift(bars.close, 1)
        prev[0] = bars.close[0]
        hi = np.maximum(bars.high, prev)
        lo = np.minimum(bars.low, prev)
        tr = hi - lo
        tr[0] = bars.high[0] - bars.low[0]
        return tr

    return bars.memo(("tr",), make)


def ema_span(bars: Bars, x_key: str, x: Array, span: int) -> Array:
    """EMA with ``alpha = 2 / (span + 1)`` of ``x`` (memoised under ``x_key``)."""
    return bars.memo(("ema", x_key, span), lambda: ewm(x, 2.0 / (span + 1.0)))


def sma(bars: Bars, n: int) -> Array:
    """Simple moving average of close over ``n`` bars (memoised)."""
    return bars.memo(("sma", n), lambda: rmean(bars.close, n))
