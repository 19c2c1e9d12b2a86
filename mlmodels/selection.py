"""Feature selection: correlation filter, importance ranking, PCA; fit on training rows only.

* ``corr``: walk the features in priority order (importance when given, else the registry's
  order) and drop any whose absolute Pearson correlation with an already kept one exceeds the
  threshold (0.8 by default).
* ``importance``: a gradient-boosting (or random-forest) classifier of the direction label, fit
  on the first 80 % of the training period; permutation importance on its last 20 % (still
  training data, never validation or test); keep the top ``k`` after the correlation filter.
  The cut is by time (``times``), not by row: rows come symbol after symbol, and a cut at 80 %
  of the rows would fit on the first symbols' whole history and judge on the last symbol's.
* ``pca``: standardise and project onto the principal components explaining ``variance`` of the
  training rows; the selection file stores the projection so training and serving apply it.

The result is a JSON selection file that training reads, with a report of what was kept and why.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import ConfigError, DataError

METHODS = ("corr", "importance", "pca")


@dataclass(frozen=True)
class Selection:
    """A fitted selection: the input features it reads and, for PCA, the projection."""

    method: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    report: list[dict[str, object]] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    components: tuple[tuple[float, ...], ...] = ()

    def transform(self, features: pd.DataFrame) -> pd.DataFrame:
        """Apply the selection to a feature frame (all computed features in, selected out)."""
        missing = [c for c in self.inputs if c not in features.columns]
        if missing:
            raise DataError(f"selection needs feature(s) the data lacks: {', '.join(missing)}")
        if self.method != "pca":
            return features.loc[:, list(self.outputs)]
        x = features.loc[:, list(self.inputs)]
        z = (x.to_numpy(dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        pcs = z @ np.asarray(self.components).T
        return pd.DataFrame(pcs, index=features.index, columns=list(self.outputs))

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.write_text(
            json.dumps(
                self.__dict__ | {"inputs": list(self.inputs), "outputs": list(self.outputs)},
                indent=1,
                default=float,
            )
        )
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Selection:
        try:
            d = json.loads(Path(path).read_text())
            return cls(
                method=d["method"],
                inputs=tuple(d["inputs"]),
                outputs=tuple(d["outputs"]),
                report=d.get("report", []),
                mean=tuple(d.get("mean", ())),
                scale=tuple(d.get("scale", ())),
                components=tuple(tuple(c) for c in d.get("components", ())),
            )
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path}: not a valid selection file ({err})") from err


def correlation_filter(
    x: pd.DataFrame, threshold: float = 0.8, order: list[str] | None = None
) -> tuple[list[str], list[dict[str, object]]]:
    """Keep features in ``order`` unless |corr| with a kept one exceeds ``threshold``."""
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    order = order or list(x.columns)
    corr = np.abs(np.corrcoef(x[order].to_numpy(dtype=np.float64), rowvar=False))
    corr = np.nan_to_num(corr, nan=0.0)
    kept: list[int] = []
    report: list[dict[str, object]] = []
    for i, name in enumerate(order):
        hit = next((k for k in kept if corr[i, k] > threshold), None)
        if hit is None:
            kept.append(i)
            report.append(
                {"feature": name, "kept": True, "why": "no kept feature above the threshold"}
            )
        else:
            report.append(
                {
                    "feature": name,
                    "kept": False,
                    "why": f"|corr| {corr[i, hit]:.3f} > {threshold} with {order[hit]}",
                }
            )
    return [order[k] for k in kept], report


def holdout_by_time(
    times: pd.DatetimeIndex | np.ndarray, fraction: float = 0.8, gap: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions before and from the cut at ``fraction`` of the distinct ``times``.

    Every symbol contributes to both parts, and no fit row is later than a holdout row; ``gap``
    more distinct times before the cut are left out of the fit part (labels ``gap`` bars long
    would reach into the holdout)."""
    t = pd.DatetimeIndex(times).asi8
    distinct = np.unique(t)
    k = min(max(int(len(distinct) * fraction), 1), len(distinct) - 1)
    idx = np.arange(len(t))
    return idx[t < distinct[max(k - gap, 0)]], idx[t >= distinct[k]]


def importance_ranking(
    x: pd.DataFrame,
    y: np.ndarray,
    *,
    model: str = "gbm",
    n_repeats: int = 5,
    seed: int = 0,
    times: pd.DatetimeIndex | np.ndarray | None = None,
    gap: int = 0,
) -> pd.Series:
    """Permutation importance of each feature for predicting ``y``: fit on the first 80 % of
    the period, scored on the rest (:func:`holdout_by_time`; rows in time order if no
    ``times``)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.inspection import permutation_importance

    if len(x) < 50:
        raise DataError(f"importance ranking needs at least 50 training rows, got {len(x)}")
    fit, hold = holdout_by_time(np.arange(len(x)) if times is None else times, 0.8, gap)
    if model == "gbm":
        est = HistGradientBoostingClassifier(
            max_iter=100, max_depth=3, learning_rate=0.05, random_state=seed
        )
    elif model == "rf":
        est = RandomForestClassifier(n_estimators=100, max_depth=6, n_jobs=1, random_state=seed)
    else:
        raise ConfigError(f"model must be 'gbm' or 'rf', got {model!r}")
    est.fit(x.iloc[fit], y[fit])
    imp = permutation_importance(
        est, x.iloc[hold], y[hold], n_repeats=n_repeats, random_state=seed, n_jobs=1
    )
    return pd.Series(imp.importances_mean, index=x.columns).sort_values(ascending=False)


def select_features(
    x: pd.DataFrame,
    y: np.ndarray | None = None,
    *,
    method: str = "corr",
    threshold: float = 0.8,
    top_k: int = 38,
    variance: float = 0.95,
    seed: int = 0,
    times: pd.DatetimeIndex | np.ndarray | None = None,
    gap: int = 0,
) -> Selection:
    """Fit a selection on training rows ``x`` (and direction labels ``y`` for ``importance``,
    split by ``times``, one per row, with ``gap`` bars between fit and holdout)."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    keep = x.replace([np.inf, -np.inf], np.nan).notna().all(axis=1).to_numpy()
    x = x[keep]
    if method == "corr":
        kept, report = correlation_filter(x, threshold)
        return Selection("corr", tuple(x.columns), tuple(kept), report)
    if method == "importance":
        if y is None:
            raise ConfigError("importance selection needs labels y")
        if len(y) != len(keep) or (times is not None and len(times) != len(keep)):
            raise DataError(f"x has {len(keep)} rows; give y (and times) with one value per row")
        rows_t = None if times is None else pd.DatetimeIndex(times)[keep]
        ranking = importance_ranking(x, np.asarray(y)[keep], seed=seed, times=rows_t, gap=gap)
        kept, report = correlation_filter(x, threshold, order=list(ranking.index))
        kept = kept[:top_k]
        for row in report:
            row["importance"] = float(ranking[str(row["feature"])])
            if row["kept"] and row["feature"] not in kept:
                row["kept"], row["why"] = False, f"below the top {top_k} by importance"
        return Selection("importance", tuple(x.columns), tuple(kept), report)
    return _pca(x, variance)


def _pca(x: pd.DataFrame, variance: float) -> Selection:
    from sklearn.decomposition import PCA

    if not 0 < variance <= 1:
        raise ConfigError(f"variance must be in (0, 1], got {variance}")
    a = x.to_numpy(dtype=np.float64)
    mean, scale = a.mean(axis=0), a.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    pca = PCA(n_components=variance, svd_solver="full").fit((a - mean) / scale)
    names = tuple(f"pc_{i + 1:02d}" for i in range(pca.n_components_))
    report: list[dict[str, object]] = [
        {"feature": n, "kept": True, "why": f"explains {v:.2%} of training variance"}
        for n, v in zip(names, pca.explained_variance_ratio_, strict=True)
    ]
    return Selection(
        "pca",
        tuple(x.columns),
        names,
        report,
        tuple(mean),
        tuple(scale),
        tuple(tuple(map(float, c)) for c in pca.components_),
    )
