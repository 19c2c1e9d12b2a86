"""The baselines beside every trained network: same features, same split, same test.

Each baseline reads the (scaled) feature row of the decision bar, which is the last row of
the network's window (the same features, without the earlier rows the network also sees), and
is fit on the training split only:

* ``linear``: multinomial logistic regression for the direction (L2, ``C = 0.1``) and ridge
  regression (``alpha = 10``) for the return at each horizon;
* ``lightgbm``: gradient-boosted trees (LightGBM) for both, early-stopped on the validation
  split as the network is (30 rounds without improvement, at most 300 trees), with small fixed
  settings (15 leaves, learning rate 0.05, at least 50 samples a leaf, 80 % of rows and
  features per tree, one thread, deterministic).

Both return predictions shaped like the network's outputs (``direction``: (n, 3)
probabilities of down / flat / up; ``price``: (n, 3) log returns at the horizons), which
:mod:`mlmodels.head_metrics` scores exactly as it scores the network. The naive baselines
(class prior, zero return, trailing volatility) live there too; :func:`trailing_volatility`
gives the last one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlmodels.dataset import WindowDataset

BASELINES: tuple[str, ...] = ("linear", "lightgbm")
LGBM_SETTINGS: dict[str, Any] = {
    "n_estimators": 300,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 50,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "n_jobs": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}
_PATIENCE = 30


def features(ds: WindowDataset, idx: np.ndarray) -> np.ndarray:
    """The feature row of each sample's decision bar."""
    return np.asarray(ds.rows[ds.sample_row[idx]], dtype=np.float64)


def _three(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Probabilities over down / flat / up (0 for a class the model never saw)."""
    out = np.zeros((len(probs), 3))
    out[:, classes.astype(int)] = probs
    return out


def fit_linear(
    ds: WindowDataset, train: np.ndarray, test: np.ndarray, horizons: Sequence[int] = (1, 4, 24)
) -> dict[str, np.ndarray]:
    """Logistic regression (direction) and ridge (each horizon's return) on ``train``."""
    from sklearn.linear_model import LogisticRegression, Ridge

    x_tr, x_te = features(ds, train), features(ds, test)
    logit = LogisticRegression(max_iter=500, C=0.1).fit(x_tr, ds.targets["direction"][train])
    price = [
        Ridge(alpha=10.0).fit(x_tr, ds.targets[f"ret_{h}"][train]).predict(x_te) for h in horizons
    ]
    return {
        "direction": _three(logit.predict_proba(x_te), logit.classes_),
        "price": np.stack(price, axis=1),
    }


def fit_lightgbm(
    ds: WindowDataset,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    horizons: Sequence[int] = (1, 4, 24),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """LightGBM classifier (direction) and regressors (each horizon's return) on ``train``,
    early-stopped on ``val``."""
    import lightgbm as lgb

    x_tr, x_va, x_te = features(ds, train), features(ds, val), features(ds, test)
    stop: list[Any] = [lgb.early_stopping(_PATIENCE, verbose=False)]
    settings = {**LGBM_SETTINGS, "random_state": seed}
    y = ds.targets["direction"]
    clf = lgb.LGBMClassifier(**settings)  # binary or multiclass: as many classes as train has
    clf.fit(
        x_tr, y[train].astype(int), eval_X=(x_va,), eval_y=(y[val].astype(int),), callbacks=stop
    )
    price = []
    for h in horizons:
        r = ds.targets[f"ret_{h}"]
        reg = lgb.LGBMRegressor(objective="regression", **settings)
        reg.fit(x_tr, r[train], eval_X=(x_va,), eval_y=(r[val],), callbacks=stop)
        price.append(np.asarray(reg.predict(x_te)))
    return {
        "direction": _three(np.asarray(clf.predict_proba(x_te)), np.asarray(clf.classes_)),
        "price": np.stack(price, axis=1),
    }


def fit_baselines(
    ds: WindowDataset,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    horizons: Sequence[int] = (1, 4, 24),
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Every baseline's test predictions, by name (``BASELINES``)."""
    return {
        "linear": fit_linear(ds, train, test, horizons),
        "lightgbm": fit_lightgbm(ds, train, val, test, horizons, seed),
    }


def trailing_volatility(ds: WindowDataset, idx: np.ndarray, lag: int = 24) -> np.ndarray:
    """The naive volatility forecast of samples ``idx``: the realised volatility of the
    ``lag`` bars up to the decision bar, i.e. the ``volatility`` label of the same symbol
    ``lag`` bars earlier (``std(g_{t-lag+1..t})``, all known at ``t``). A symbol's samples
    are consecutive bars, so that is the sample ``lag`` places before; NaN where the symbol
    has no such sample."""
    back = np.asarray(idx) - lag
    ok = back >= 0
    ok[ok] = ds.sample_symbol[back[ok]] == ds.sample_symbol[np.asarray(idx)[ok]]
    out = np.full(len(back), np.nan)
    out[ok] = ds.targets["volatility"][back[ok]]
    return out
