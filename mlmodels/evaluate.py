"""Out-of-sample evaluation per head, beside naive and linear baselines.

Metrics: MAE and RMSE (price per horizon, volatility), accuracy, macro F1 and log-loss
(direction), Brier score and a reliability table (confidence against whether the direction
call was right), and the information coefficient: Spearman's rank correlation of predicted
against realised return per horizon. Baselines: zero return and the majority class (from the
training split's class frequencies), and a linear / logistic model on the last bar's features.

These flat point figures are the card's ``val`` / ``test`` / ``baselines_test`` sections;
:func:`out_of_sample_report` adds the card's ``report``: every head against its naive
baseline and the trained baselines of :mod:`mlmodels.baselines`, with block-bootstrap
intervals, and the edge (:mod:`mlmodels.head_metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score, log_loss
from torch import nn

from mlmodels.baselines import fit_linear, trailing_volatility
from mlmodels.dataset import WindowDataset
from mlmodels.head_metrics import Truth, head_report
from mlmodels.stream import sample_batches

HORIZONS = (1, 4, 24)


@torch.inference_mode()
def predict(
    model: nn.Module, ds: WindowDataset, idx: np.ndarray, batch_size: int = 512
) -> dict[str, np.ndarray]:
    """Model outputs for samples ``idx`` (direction/action as probabilities); a streaming
    preset's from its streams (:func:`mlmodels.stream.sample_batches`)."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for _, out in sample_batches(model, ds, idx, batch_size):
        out = {
            **out,
            "direction": torch.softmax(out["direction"], -1),
            "action": torch.softmax(out["action"], -1),
        }
        for k, v in out.items():
            parts.setdefault(k, []).append(v.float().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _ic(pred: np.ndarray, real: np.ndarray) -> float:
    if len(pred) < 3 or np.std(pred) == 0 or np.std(real) == 0:
        return 0.0
    return float(spearmanr(pred, real).statistic)


def calibration_table(
    conf: np.ndarray, correct: np.ndarray, bins: int = 5
) -> list[dict[str, float]]:
    """Mean confidence against hit rate per confidence bin."""
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf >= lo) & ((conf < hi) if hi < 1 else (conf <= hi))
        if m.any():
            rows.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "n": int(m.sum()),
                    "confidence": float(conf[m].mean()),
                    "hit_rate": float(correct[m].mean()),
                }
            )
    return rows


def head_metrics(pred: dict[str, np.ndarray], ds: WindowDataset, idx: np.ndarray) -> dict[str, Any]:
    """Every head's out-of-sample metrics on samples ``idx``."""
    y = {k: v[idx] for k, v in ds.targets.items()}
    out: dict[str, Any] = {"n": int(len(idx))}
    for k, h in enumerate(HORIZONS):
        err = pred["price"][:, k] - y[f"ret_{h}"]
        out[f"price_{h}_mae"] = float(np.abs(err).mean())
        out[f"price_{h}_rmse"] = float(np.sqrt((err**2).mean()))
        out[f"price_{h}_ic"] = _ic(pred["price"][:, k], y[f"ret_{h}"])
    vol_err = pred["volatility"] - y["volatility"]
    out["volatility_mae"] = float(np.abs(vol_err).mean())
    out["volatility_rmse"] = float(np.sqrt((vol_err**2).mean()))
    d_true = y["direction"].astype(int)
    probs = np.clip(pred["direction"], 1e-7, 1)
    probs = probs / probs.sum(axis=1, keepdims=True)
    d_pred = probs.argmax(axis=1)
    out["direction_accuracy"] = float(accuracy_score(d_true, d_pred))
    out["direction_f1"] = float(
        f1_score(d_true, d_pred, average="macro", labels=[0, 1, 2], zero_division=0)
    )
    out["direction_logloss"] = float(log_loss(d_true, probs, labels=[0, 1, 2]))
    correct = (d_pred == d_true).astype(float)
    out["confidence_brier"] = float(((pred["confidence"] - correct) ** 2).mean())
    out["confidence_calibration"] = calibration_table(pred["confidence"], correct)
    out["action_accuracy"] = float(
        accuracy_score(y["action"].astype(int), pred["action"].argmax(axis=1))
    )
    return out


def baseline_metrics(
    ds: WindowDataset,
    train: np.ndarray,
    test: np.ndarray,
    linear: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Zero-return, majority-class and linear/logistic baselines (fit on ``train``, unless
    ``linear`` holds :func:`mlmodels.baselines.fit_linear`'s test predictions already)."""
    y_tr = ds.targets["direction"][train].astype(int)
    y_te = ds.targets["direction"][test].astype(int)
    prior = np.bincount(y_tr, minlength=3) / len(y_tr)
    out: dict[str, Any] = {}
    for h in HORIZONS:
        r = ds.targets[f"ret_{h}"][test]
        out[f"zero_price_{h}_mae"] = float(np.abs(r).mean())
        out[f"zero_price_{h}_rmse"] = float(np.sqrt((r**2).mean()))
    out["majority_direction_accuracy"] = float((y_te == prior.argmax()).mean())
    p_major = np.clip(prior, 1e-7, 1) / np.clip(prior, 1e-7, 1).sum()
    out["majority_direction_logloss"] = float(
        log_loss(y_te, np.tile(p_major, (len(y_te), 1)), labels=[0, 1, 2])
    )
    linear = linear if linear is not None else fit_linear(ds, train, test, HORIZONS)
    probs = np.clip(linear["direction"], 1e-7, 1)
    probs = probs / probs.sum(axis=1, keepdims=True)
    out["logistic_direction_accuracy"] = float(accuracy_score(y_te, probs.argmax(axis=1)))
    out["logistic_direction_logloss"] = float(log_loss(y_te, probs, labels=[0, 1, 2]))
    for k, h in enumerate(HORIZONS):
        pr, r = linear["price"][:, k], ds.targets[f"ret_{h}"][test]
        out[f"linear_price_{h}_mae"] = float(np.abs(pr - r).mean())
        out[f"linear_price_{h}_ic"] = _ic(pr, r)
    return out


def out_of_sample_report(
    preds: dict[str, dict[str, np.ndarray]],
    ds: WindowDataset,
    train: np.ndarray,
    test: np.ndarray,
    *,
    val_pred: dict[str, np.ndarray] | None = None,
    val: np.ndarray | None = None,
    vol_lag: int = 24,
    reps: int = 500,
) -> dict[str, Any]:
    """:func:`mlmodels.head_metrics.head_report` of the test predictions ``preds`` (the
    network's as ``"network"``, the baselines' by name): the class prior is the training
    split's, the confidence's naive rate the network's hit rate on ``val``."""
    y_tr = ds.targets["direction"][train].astype(int)
    base_rate = None
    if val_pred is not None and val is not None and len(val):
        calls = val_pred["direction"].argmax(axis=1)
        base_rate = float((calls == ds.targets["direction"][val].astype(int)).mean())
    truth = Truth(
        direction=ds.targets["direction"][test].astype(int),
        returns={h: ds.targets[f"ret_{h}"][test].astype(np.float64) for h in HORIZONS},
        mean_returns={h: float(ds.targets[f"ret_{h}"][train].mean()) for h in HORIZONS},
        volatility=ds.targets["volatility"][test].astype(np.float64),
        trailing_volatility=trailing_volatility(ds, test, vol_lag),
        prior=np.bincount(y_tr, minlength=3) / max(len(y_tr), 1),
        confidence_base_rate=base_rate,
    )
    return head_report(preds, truth, ds.times[test], reps=reps)
