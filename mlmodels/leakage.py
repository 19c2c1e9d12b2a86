"""Leakage checks: a feature must not know the future.

Three checks, from exact to statistical:

* :func:`truncation_check` (exact, needs the feature *function*): recompute the features on the
  data cut at several points; a feature whose value at a bar changes when later bars are removed
  reads the future. It catches every look-ahead in the code (``shift(-k)``, centred windows,
  statistics over the whole sample), whatever its size.
* :func:`future_information_check` (statistical, needs only the feature *values* and the
  prices): the weak-leak test, see its docstring. It also catches leaks the truncation test
  cannot see, such as a join with an outside file of future data.
* :func:`whole_sample_check`: a column whose mean and standard deviation over the whole table
  are exactly 0 and 1 is a z-score fit on every row, the future's included.

:func:`scan_table` runs the last two on a feature table with price columns (what
``btml features check-leakage --file table.parquet`` reads, see :func:`read_table`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import DataConfig
from core.errors import ConfigError, DataError

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
TIME_COLUMNS: tuple[str, ...] = ("datetime", "date", "timestamp", "time")
SYMBOL_COLUMN = "symbol"
_VOL_WINDOWS = (5, 20, 60)


class FeatureLeakError(DataError):
    """A feature reads bars after its own; the message names it and the first differing row."""


@dataclass(frozen=True)
class LeakFinding:
    """One suspicious feature and the evidence."""

    feature: str
    check: str
    detail: str


# -- the truncation test ---------------------------------------------------------------------------


def truncation_check(
    ohlcv: pd.DataFrame,
    compute: Callable[..., pd.DataFrame],
    *,
    index: pd.DataFrame | None = None,
    cuts: Sequence[int] | None = None,
    rtol: float = 1e-9,
) -> list[LeakFinding]:
    """Features whose rows before a cut change when the bars after it are removed.

    ``compute(ohlcv, index)`` returns one column per feature on ``ohlcv``'s rows. The data is cut
    after half, three quarters and all but 30 of its bars (or at ``cuts``); a finding names the
    earliest row whose value differs, with both values and the cut.
    """
    n = len(ohlcv)
    full = compute(ohlcv, index)
    cuts = sorted({c for c in (cuts or (n // 2, (3 * n) // 4, n - 30)) if 0 < c < n})
    first: dict[str, tuple[int, float, float, int]] = {}
    for cut in cuts:
        sub_index = index.loc[: ohlcv.index[cut - 1]] if index is not None else None
        part = compute(ohlcv.iloc[:cut], sub_index)
        a = full.iloc[:cut].to_numpy(dtype=np.float64)
        b = part.reindex(columns=full.columns).to_numpy(dtype=np.float64)
        differs = ~np.isclose(a, b, rtol=rtol, atol=1e-12, equal_nan=True)
        for j in np.flatnonzero(differs.any(axis=0)):
            i = int(np.argmax(differs[:, j]))
            name = str(full.columns[j])
            if name not in first or i < first[name][0]:
                first[name] = (i, a[i, j], b[i, j], cut)
    return [
        LeakFinding(
            name,
            "truncation",
            f"row {i} ({ohlcv.index[i]}) is {x:.6g} with all {n} bars but {y:.6g} when the data "
            f"ends at row {cut - 1} ({ohlcv.index[cut - 1]})",
        )
        for name, (i, x, y, cut) in first.items()
    ]


# -- the weak-leak test ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LeakTestConfig(DataConfig):
    """Settings of :func:`future_information_check` (see its docstring for the method)."""

    horizons: int = 5
    lags: int = 3
    rho0: float = 0.1
    alpha: float = 0.01
    min_rows: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.horizons <= 60:
            raise ConfigError(f"horizons must be in [1, 60] bars, got {self.horizons}")
        if not 1 <= self.lags <= 20:
            raise ConfigError(f"lags must be in [1, 20], got {self.lags}")
        if not 0 <= self.rho0 < 1:
            raise ConfigError(f"rho0 must be in [0, 1), got {self.rho0}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_rows < 30:
            raise ConfigError(f"min_rows must be >= 30, got {self.min_rows}")


def price_controls(prices: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """What bar ``t`` and the bars before it show of the market, and the log returns.

    Columns: the last five log returns and their absolute values, the mean and standard
    deviation of returns over 5, 20 and 60 bars; with ``high`` and ``low`` the bar's log range
    and its 5- and 20-bar means; with ``volume`` the log volume against its 20-bar mean, now and
    one bar ago. Every column at ``t`` reads bars ``<= t`` only.
    """
    if not prices.index.is_monotonic_increasing or prices.index.has_duplicates:
        raise DataError("the prices must be in time order with one row per bar; sort them")
    close = pd.to_numeric(prices["close"], errors="coerce").astype(float)
    if (close <= 0).any():
        raise DataError("the close column holds a price <= 0; log returns need positive prices")
    r = np.log(close).diff()
    z = {f"{k}{lag}": s.shift(lag) for lag in range(5) for k, s in (("r", r), ("abs", r.abs()))}
    for w in _VOL_WINDOWS:
        z[f"mean{w}"], z[f"std{w}"] = r.rolling(w).mean(), r.rolling(w).std()
    if {"high", "low"} <= set(prices.columns):
        hl = np.log(prices["high"].astype(float) / prices["low"].astype(float))
        z["range"], z["range5"], z["range20"] = hl, hl.rolling(5).mean(), hl.rolling(20).mean()
    if "volume" in prices.columns:
        lv = np.log1p(prices["volume"].astype(float).clip(lower=0))
        z["vol_rel"] = lv - lv.rolling(20).mean()
        z["vol_rel1"] = z["vol_rel"].shift(1)
    return pd.DataFrame(z, index=prices.index), r


def future_targets(r: pd.Series, horizons: int) -> pd.DataFrame:
    """The returns after ``t``: ``r[t+h]`` and ``|r[t+h]|`` for h = 1..H, their sum and root mean
    square over the H bars (the names say which)."""
    ahead = {h: r.shift(-h) for h in range(1, horizons + 1)}
    y = {f"r[t+{h}]": s for h, s in ahead.items()} | {
        f"|r[t+{h}]|": s.abs() for h, s in ahead.items()
    }
    y[f"sum r[t+1..t+{horizons}]"] = sum(ahead.values())
    y[f"rms r[t+1..t+{horizons}]"] = np.sqrt(sum(s * s for s in ahead.values()) / horizons)
    return pd.DataFrame(y, index=r.index)


def partial_test(
    f: np.ndarray, y: np.ndarray, controls: np.ndarray, hac_lag: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Partial correlation of ``f`` with each column of ``y`` given ``controls``, and the
    Newey-West (Bartlett, ``hac_lag``) z statistic of the OLS slope; None when the controls
    explain ``f`` entirely (it then carries nothing they do not)."""
    x = np.column_stack([np.ones(len(f)), controls])
    q, _ = np.linalg.qr(x)
    fs = (f - f.mean()) / (f.std() or 1.0)
    fr = fs - q @ (q.T @ fs)
    ss = float(fr @ fr)
    if ss < 1e-10 * len(fr):
        return None
    yr = y - q @ (q.T @ y)
    b = (fr @ yr) / ss
    u = fr[:, None] * (yr - np.outer(fr, b))
    s = (u * u).sum(axis=0)
    for lag in range(1, hac_lag + 1):
        s += 2.0 * (1.0 - lag / (hac_lag + 1)) * (u[lag:] * u[:-lag]).sum(axis=0)
    z = b / (np.sqrt(np.maximum(s, 1e-300)) / ss)
    y_ss = (yr * yr).sum(axis=0)
    rho = (fr @ yr) / np.sqrt(ss * np.maximum(y_ss, 1e-300))
    # a target the controls explain entirely (a leak's own lag can) leaves only rounding noise
    explained = y_ss <= 1e-10 * ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return np.where(explained, 0.0, rho), np.where(explained, 0.0, z)


def _feature_evidence(
    f: pd.Series, controls: pd.DataFrame, y: pd.DataFrame, cfg: LeakTestConfig
) -> list[tuple[float, str, float, float, int]]:
    """(z against |rho| <= rho0, target, rho, z, rows) of both variants of one feature."""
    lagged = pd.concat([f.shift(k).rename(f"f{k}") for k in range(1, cfg.lags + 1)], axis=1)
    variants = (
        ("given the past", controls),
        ("given its own past", pd.concat([controls, lagged], axis=1)),
    )
    out = []
    for label, zc in variants:
        ok = np.isfinite(f.to_numpy()) & np.isfinite(zc.to_numpy()).all(axis=1)
        ok &= np.isfinite(y.to_numpy()).all(axis=1)
        rows = int(ok.sum())
        if rows < cfg.min_rows:
            raise DataError(
                f"feature {f.name}: {rows} rows with a value, prices and {cfg.horizons} bars "
                f"after them; the leak test needs {cfg.min_rows}: give more rows or drop it"
            )
        res = partial_test(f.to_numpy()[ok], y.to_numpy()[ok], zc.to_numpy()[ok], cfg.horizons)
        if res is None:
            continue
        rho, z = res
        shifted = (
            np.maximum(np.abs(rho) - cfg.rho0, 0.0) * np.abs(z) / np.maximum(np.abs(rho), 1e-12)
        )
        j = int(np.argmax(shifted))
        out.append((float(shifted[j]), f"{y.columns[j]} {label}", float(rho[j]), float(z[j]), rows))
    return out


def future_information_check(
    features: pd.DataFrame, prices: pd.DataFrame, cfg: LeakTestConfig | None = None
) -> list[LeakFinding]:
    """Columns of ``features`` that know the returns after their bar: the weak-leak test.

    A causal feature ``f[t]`` is built from bars ``<= t``. It may predict later returns, but only
    through what it shares with the past; a leaky one also carries the future's surprises. So,
    for each feature and each return after ``t`` (``r[t+h]`` and ``|r[t+h]|`` for h = 1..5, and
    their sum and root mean square over the 5 bars: signed moves and volatility), regress the
    target on ``f[t]`` *beside its past* and test the slope:

    1. *given the past*: the controls of :func:`price_controls` (last returns, trailing means,
       volatilities, ranges, volume), which absorb what honest features know;
    2. *given its own past*: those controls plus ``f[t-1..t-3]``, which leaves only the news in
       ``f[t]``; a one-bar leak is sharpest here, a leak spread over many future bars (centred
       averages, forward volatility) in variant 1, where its lags cannot absorb it.

    By Frisch-Waugh, the slope's test is that of the partial correlation ``rho`` of ``f[t]`` and
    the target with the controls removed; standard errors are Newey-West (Bartlett kernel, lag 5)
    so overlapping and heteroskedastic targets are fair. Honest features do predict a little
    (volume and range predict volatility), and in a long sample a zero null would flag them;
    the null is therefore ``|rho| <= rho0`` (0.1), tested one-sided by
    ``z0 = (|rho| - rho0) / se(rho)`` with ``se(rho) = |rho| / |z|``. A feature is flagged when
    ``z0`` exceeds the Bonferroni bound for family-wise level ``alpha`` (0.01) over every
    feature x target x variant of the call (about 4.4 for 60 features). On 3,000 daily bars
    this catches a feature whose correlation with the next return is 0.1 or less when that
    comes from the future (its news then correlates far above 0.1), while the project's ~60
    features stay below ``z0`` of 3 on the sample stocks.
    """
    from scipy.stats import norm

    cfg = cfg or LeakTestConfig()
    evidence, n_targets = _evidence(features, prices, cfg)
    n_tests = max(1, sum(len(v) for v in evidence.values()) * n_targets)
    bound = float(norm.isf(cfg.alpha / n_tests))
    out = []
    for name, ev in evidence.items():
        if ev and (best := max(ev))[0] > bound:
            z0, target, rho, z, rows = best
            p = min(1.0, float(norm.sf(z0)) * n_tests)
            detail = (
                f"partial corr {rho:+.3f} with {target} (z {z:+.3g}, {rows} rows; "
                f"|rho| > {cfg.rho0} at p {p:.1e} after {n_tests} tests)"
            )
            out.append(LeakFinding(name, "future-information", detail))
    return out


def _evidence(
    features: pd.DataFrame, prices: pd.DataFrame, cfg: LeakTestConfig
) -> tuple[dict[str, list[tuple[float, str, float, float, int]]], int]:
    """:func:`_feature_evidence` of every column, and the number of targets."""
    from threadpoolctl import threadpool_limits

    controls, r = price_controls(prices)
    y = future_targets(r, cfg.horizons).reindex(features.index)
    controls = controls.reindex(features.index)
    evidence = {}
    # tall, thin products: BLAS threads only contend (20x slower on a busy 2-core machine)
    with threadpool_limits(limits=1, user_api="blas"):
        for name in features.columns:
            f = pd.to_numeric(features[name], errors="coerce").astype(float).rename(str(name))
            evidence[str(name)] = _feature_evidence(f, controls, y, cfg)
    return evidence, y.shape[1]


def whole_sample_check(features: pd.DataFrame, tol: float = 1e-6) -> list[LeakFinding]:
    """Columns whose mean and standard deviation over all their rows are exactly 0 and 1.

    That is the fingerprint of a z-score fit on the whole sample (``(x - x.mean()) / x.std()``,
    a scaler fit on every row): each value is scaled with statistics of bars after it. Columns
    rescaled after rows were dropped escape this check; the truncation test of the function
    catches them.
    """
    out = []
    for name in features.columns:
        v = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v) < 30:
            continue
        sd0, sd1 = v.std(), v.std(ddof=1)
        if abs(v.mean()) < tol and min(abs(sd0 - 1.0), abs(sd1 - 1.0)) < tol:
            out.append(
                LeakFinding(
                    str(name),
                    "whole-sample",
                    f"mean {v.mean():.1e} and std {sd1:.9f} over all {len(v)} rows: a z-score "
                    "fit on the whole sample; scale with a trailing or expanding window",
                )
            )
    return out


# -- feature tables ----------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A feature table from Parquet or CSV: a datetime index (or a ``datetime``/``date``/
    ``timestamp``/``time`` column), a ``close`` column, optionally ``open``, ``high``, ``low``,
    ``volume`` and ``symbol`` (for several symbols in one long table), and the features."""
    p = Path(path)
    try:
        tab = pd.read_parquet(p) if p.suffix.lower() == ".parquet" else pd.read_csv(p)
    except (OSError, ValueError) as err:
        raise DataError(f"{p}: cannot read the feature table ({err})") from err
    if not isinstance(tab.index, pd.DatetimeIndex):
        col = next((c for c in tab.columns if str(c).lower() in TIME_COLUMNS), None)
        if col is None:
            raise DataError(
                f"{p}: no time index and no column named {', '.join(TIME_COLUMNS)}; "
                "add the bar time as one"
            )
        tab = tab.set_index(pd.DatetimeIndex(pd.to_datetime(tab.pop(col), utc=True)))
    if "close" not in tab.columns:
        raise DataError(f"{p}: needs a close column to compare the features with returns")
    return tab


def scan_table(
    table: pd.DataFrame, cfg: LeakTestConfig | None = None
) -> list[tuple[str, LeakFinding]]:
    """Run the weak-leak and whole-sample checks on a table from :func:`read_table`.

    Returns ``(symbol or "", finding)`` pairs. Features are the numeric columns other than the
    prices; a ``symbol`` column splits the table into one series per symbol.
    """
    price_cols = [c for c in PRICE_COLUMNS if c in table.columns]
    feats = [c for c in table.columns if c not in price_cols and c != SYMBOL_COLUMN]
    bad = [c for c in feats if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise DataError(f"feature column(s) {', '.join(map(str, bad))} are not numeric")
    if not feats:
        raise DataError("the table has price columns but no feature column")
    out = []
    if SYMBOL_COLUMN in table.columns:
        out += [("", f) for f in whole_sample_check(table[feats])]
        groups = list(table.groupby(SYMBOL_COLUMN, sort=False))
    else:
        groups = [("", table)]
    for sym, part in groups:
        part = part.sort_index()
        if part.index.has_duplicates:
            raise DataError(f"{sym or 'the table'}: duplicate timestamps; one row per bar")
        found = whole_sample_check(part[feats])
        found += future_information_check(part[feats], part[price_cols], cfg)
        out += [(str(sym), f) for f in found]
    return out
