"""Leakage checks: a feature must not know the future.

* :func:`truncation_check` recomputes the features on the data cut at several points and
  reports every feature whose value at a bar changes when later bars are removed (the
  definition of a non-causal feature).
* :func:`future_correlation_check` scans a feature table (for example one a user built
  outside this package) for columns that track the next bar's return far better than anything
  observable could: ``|corr(f_t, r_{t+1})|`` above ``threshold`` (0.3 by default; honest
  daily features stay well below 0.1) and above ``|corr(f_t, r_t)|``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class LeakFinding:
    """One suspicious feature and the evidence."""

    feature: str
    check: str
    detail: str


def truncation_check(
    ohlcv: pd.DataFrame,
    compute: Callable[..., pd.DataFrame],
    *,
    index: pd.DataFrame | None = None,
    cuts: Sequence[int] | None = None,
    rtol: float = 1e-9,
) -> list[LeakFinding]:
    """Features whose rows before a cut change when the bars after it are removed."""
    full = compute(ohlcv, index)
    n = len(ohlcv)
    cuts = list(cuts) if cuts is not None else sorted({n // 2, (3 * n) // 4, n - 30})
    found: dict[str, LeakFinding] = {}
    for cut in cuts:
        sub_index = index.loc[: ohlcv.index[cut - 1]] if index is not None else None
        part = compute(ohlcv.iloc[:cut], sub_index)
        a = full.iloc[:cut].to_numpy(dtype=np.float64)
        b = part.reindex(columns=full.columns).to_numpy(dtype=np.float64)
        same = np.isclose(a, b, rtol=rtol, atol=1e-12, equal_nan=True)
        for j in np.flatnonzero(~same.all(axis=0)):
            name = str(full.columns[j])
            if name not in found:
                i = int(np.argmax(~same[:, j]))
                found[name] = LeakFinding(
                    name,
                    "truncation",
                    f"value at {ohlcv.index[i]} is {a[i, j]:.6g} with all data but {b[i, j]:.6g} "
                    f"when data ends at {ohlcv.index[cut - 1]}",
                )
    return list(found.values())


def future_correlation_check(
    features: pd.DataFrame, close: pd.Series, *, threshold: float = 0.3
) -> list[LeakFinding]:
    """Columns of ``features`` that correlate with the next bar's return beyond ``threshold``."""
    c = close.reindex(features.index).astype(float)
    ret = np.log(c).diff()
    nxt = ret.shift(-1)
    out = []
    for name in features.columns:
        f = pd.to_numeric(features[name], errors="coerce")
        ok = f.notna() & nxt.notna() & ret.notna()
        if ok.sum() < 30 or f[ok].std() == 0:
            continue
        fut = abs(float(np.corrcoef(f[ok], nxt[ok])[0, 1]))
        now = abs(float(np.corrcoef(f[ok], ret[ok])[0, 1]))
        if fut > threshold and fut > now:
            out.append(
                LeakFinding(
                    str(name),
                    "future-correlation",
                    f"|corr| with the next bar's return {fut:.3f} (with this bar's {now:.3f})",
                )
            )
    return out
