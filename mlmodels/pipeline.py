"""Train one model end to end: dataset -> split -> scaler -> trainer -> evaluation -> registry.

The test split is used once, after training and model selection (early stopping uses the
validation split only), and the scaler is fit on the training split only. A model trained on
the user's own features (``user``, :class:`mlmodels.user_features.UserFeatures`) is registered
with the module's card entry and a copy of its source.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlmodels.baselines import fit_baselines
from mlmodels.dataset import DatasetConfig, WindowDataset, build_dataset
from mlmodels.evaluate import (
    HORIZONS,
    baseline_metrics,
    head_metrics,
    out_of_sample_report,
    predict,
)
from mlmodels.nets.model import (
    ModelConfig,
    build_model,
    count_parameters,
    get_architecture,
    lstm_baseline,
)
from mlmodels.registry import ModelCard, ModelRegistry, code_version, data_hash
from mlmodels.splits import Split, chronological_split
from mlmodels.trainer import DirectionRefit, TrainConfig, Trainer, TrainState, refit_direction
from mlmodels.user_features import MODULE_FILE, UserFeatures


def _range(ds: WindowDataset, idx: np.ndarray) -> list[str]:
    t = ds.times[idx]
    return [str(t.min()), str(t.max())] if len(t) else []


def train_on_dataset(
    ds: WindowDataset,
    split: Split,
    arch: str | ModelConfig,
    *,
    name: str,
    registry: ModelRegistry | None,
    train_cfg: TrainConfig,
    data_cfg: DatasetConfig,
    work_dir: Path | None = None,
    resume: bool = False,
    index_name: str | None = None,
    timeframe: str = "1Day",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    compare_lstm: bool = False,
    training_run: str | None = None,
    user: UserFeatures | None = None,
) -> tuple[torch.nn.Module, ModelCard]:
    """Fit scaling on ``split.train``, train, evaluate, and register (when ``registry`` is given).

    ``compare_lstm`` also trains the same model with ``nn.LSTM`` of equal size in place of the
    xLSTM stack (same data, split, seed and settings) and records its test metrics in the card
    as ``metrics["lstm_test"]`` (with its parameter count), beside the naive baselines; for a
    streaming preset it also trains its windowed twin (``metrics["windowed_test"]``, with
    both training times).
    ``training_run`` is the run registry's id of the run doing this, written into the card.
    ``user`` is the features module ``ds`` was built with (``compute=user.table``): the card
    records it and the registry stores its source beside the weights.
    """
    source = user.source_bytes() if user is not None and registry is not None else None
    scaler = ds.fit_scaler(split.train) if ds.scaler is None else ds.scaler
    base = get_architecture(arch) if isinstance(arch, str) else arch
    mcfg = base.with_data(len(ds.feature_names), ds.window)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"btml-train-{name}-"))
    began = time.perf_counter()
    fitted = _fit(mcfg, ds, split, train_cfg, work, resume, on_epoch)
    seconds = time.perf_counter() - began
    metrics = evaluate_splits(
        fitted.model, ds, split, seed=train_cfg.seed, vol_lag=data_cfg.labels.risk_horizon
    )
    if compare_lstm and mcfg.xlstm_layers and not mcfg.ensemble:
        twin = _fit(lstm_baseline(mcfg), ds, split, train_cfg, work / "lstm", resume, None).model
        metrics["lstm_test"] = head_metrics(predict(twin, ds, split.test), ds, split.test)
        metrics["lstm_test"]["parameters"] = float(count_parameters(twin))
    if compare_lstm and mcfg.streaming:
        metrics["windowed_test"] = _windowed_twin(mcfg, ds, split, train_cfg, work, seconds)
    metrics["drift_reference"] = _drift_reference(fitted.model, ds, split)
    card = _card(
        name, mcfg, ds, split, data_cfg, train_cfg, fitted, metrics,
        scaler=scaler.to_dict(), index=index_name, timeframe=timeframe,
        training_run=training_run, feature_module=user.card() if user else None,
    )  # fmt: skip
    if registry is not None:
        files = {MODULE_FILE: source} if source is not None else None
        card = registry.register(fitted.model, card, files)
    return fitted.model, card


def _drift_reference(model: torch.nn.Module, ds: WindowDataset, split: Split) -> dict[str, Any]:
    """The bins live sessions measure drift against (``monitoring.drift``): the training
    rows' features (scaled, at most 20,000 rows) and the validation outputs."""
    from monitoring.drift import reference

    rows = ds.rows[np.unique(ds.sample_row[split.train])]
    if len(rows) > 20_000:
        rows = rows[np.random.default_rng(0).choice(len(rows), 20_000, replace=False)]
    val = predict(model, ds, split.val)
    outputs = {"return_1": val["price"][:, 0], "p_up": val["direction"][:, 2]}
    return reference(rows, ds.feature_names, outputs)


def _windowed_twin(
    mcfg: ModelConfig, ds: WindowDataset, split: Split, cfg: TrainConfig, work: Path, secs: float
) -> dict[str, float]:
    """A streaming preset's windowed twin (same sizes, restarting on every window) trained on
    the same data, split and seed: its test metrics and both training times."""
    twin_cfg = dataclasses.replace(mcfg, arch=f"{mcfg.arch}/windowed", streaming=False)
    began = time.perf_counter()
    twin = _fit(twin_cfg, ds, split, cfg, work / "windowed", False, None).model
    out = head_metrics(predict(twin, ds, split.test), ds, split.test)
    return {**out, "train_seconds": time.perf_counter() - began, "stream_train_seconds": secs}


def evaluate_splits(
    model: torch.nn.Module,
    ds: WindowDataset,
    split: Split,
    *,
    seed: int = 0,
    vol_lag: int = 24,
) -> dict[str, Any]:
    """The card's metrics: every head on the validation and test splits, the naive and
    linear baselines (fit on the training split) on the test split, and ``report``: the
    test split per head against its naive baseline, logistic / ridge and LightGBM (same
    features and split), with block-bootstrap intervals and the edge
    (:func:`mlmodels.evaluate.out_of_sample_report`)."""
    val_pred, test_pred = predict(model, ds, split.val), predict(model, ds, split.test)
    baselines = fit_baselines(ds, split.train, split.val, split.test, HORIZONS, seed)
    report = out_of_sample_report(
        {"network": test_pred, **baselines}, ds, split.train, split.test,
        val_pred=val_pred, val=split.val, vol_lag=vol_lag,
    )  # fmt: skip
    return {
        "val": head_metrics(val_pred, ds, split.val),
        "test": head_metrics(test_pred, ds, split.test),
        "baselines_test": baseline_metrics(ds, split.train, split.test, baselines["linear"]),
        "report": report,
    }


@dataclass(frozen=True)
class _Fitted:
    """A trained network (best checkpoint, direction head refit, eval mode, CPU), its trainer,
    final state and the refit's choice (None when off)."""

    model: torch.nn.Module
    trainer: Trainer
    state: TrainState
    refit: DirectionRefit | None = None


def _card(
    name: str,
    mcfg: ModelConfig,
    ds: WindowDataset,
    split: Split,
    data_cfg: DatasetConfig,
    train_cfg: TrainConfig,
    fitted: _Fitted,
    metrics: dict[str, Any],
    **extra: Any,
) -> ModelCard:
    """The model card of a trained model; ``extra`` holds the scaler, index, timeframe and
    training run."""
    return ModelCard(
        name=name, arch=mcfg.arch, model_config=mcfg.to_dict(), features=list(ds.feature_names),
        selection=dataclasses.asdict(data_cfg.selection) if data_cfg.selection else None,
        window=ds.window, horizons=list(data_cfg.labels.horizons),
        labels=dataclasses.asdict(data_cfg.labels), price_scale=fitted.trainer.price_scale,
        symbols=list(ds.symbols),
        data_hash=data_hash(ds.rows, *(ds.targets[k] for k in sorted(ds.targets))),
        date_ranges={k: _range(ds, getattr(split, k)) for k in ("train", "val", "test")},
        metrics=metrics, training=_training_summary(fitted, train_cfg),
        parameters=count_parameters(fitted.model), code_version=code_version(),
        created_at=pd.Timestamp.now(tz="UTC").isoformat(), **extra,
    )  # fmt: skip


def _training_summary(fitted: _Fitted, train_cfg: TrainConfig) -> dict[str, Any]:
    """The card's ``training`` section: the settings, epochs run, best epoch, the direction
    head's refit, the history."""
    settings = dataclasses.asdict(train_cfg)
    state = fitted.state
    return {
        **{k: v for k, v in settings.items() if k not in ("loss", "curriculum")},
        "loss_weights": dict(train_cfg.loss.weights),
        "uncertainty": train_cfg.loss.uncertainty,
        "direction_weighting": train_cfg.loss.direction_weighting,
        "direction_refit": fitted.refit.to_dict() if fitted.refit else None,
        "curriculum": train_cfg.curriculum is not None,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "history": state.history,
    }


def _fit(
    mcfg: ModelConfig,
    ds: WindowDataset,
    split: Split,
    train_cfg: TrainConfig,
    work: Path,
    resume: bool,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> _Fitted:
    """Train ``mcfg`` from the seed; returns the best checkpoint's model (eval, CPU)."""
    torch.manual_seed(train_cfg.seed)
    model = build_model(mcfg)
    trainer = Trainer(model, ds, split.train, split.val, train_cfg, work)
    state = trainer.fit(resume=resume, on_epoch=on_epoch)
    best = work / "best.pt"
    if best.exists():
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    model = model.to("cpu").eval()
    refit = None
    if train_cfg.refit_direction:
        refit = refit_direction(model, ds, split.train, split.val, train_cfg.seed)
    return _Fitted(model, trainer, state, refit)


def train_model(
    frames: Mapping[str, pd.DataFrame],
    arch: str,
    *,
    name: str,
    registry: ModelRegistry | None,
    train_cfg: TrainConfig | None = None,
    data_cfg: DatasetConfig | None = None,
    index: pd.DataFrame | None = None,
    user: UserFeatures | None = None,
    **kwargs: Any,
) -> tuple[torch.nn.Module, ModelCard]:
    """Build the dataset from ``frames`` (with ``user``'s features when given: check them
    first with :func:`mlmodels.user_features.load_checked`), split 70/15/15 chronologically
    (purged), train, register."""
    data_cfg = data_cfg or DatasetConfig()
    if user is not None:
        ds = build_dataset(frames, data_cfg, index, compute=user.table, warmup=user.total_warmup)
    else:
        ds = build_dataset(frames, data_cfg, index)
    split = chronological_split(ds.times, lookahead=data_cfg.labels.lookahead)
    return train_on_dataset(
        ds,
        split,
        arch,
        name=name,
        registry=registry,
        train_cfg=train_cfg or TrainConfig(),
        data_cfg=data_cfg,
        user=user,
        **kwargs,
    )  # type: ignore[arg-type]


def register_untrained(
    registry: ModelRegistry,
    arch: str,
    name: str,
    *,
    features: list[str],
    window: int,
    seed: int = 0,
) -> ModelCard:
    """Register preset ``arch`` with seeded random weights and a seeded scaler, untrained.

    For serving tests and benchmarks, which need fixed weights of the real networks (latency
    and parity do not depend on training); the card's metrics stay empty, so nobody mistakes
    it for a trained model.
    """
    torch.manual_seed(seed)
    cfg = get_architecture(arch).with_data(len(features), window)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(seed)
    card = ModelCard(
        name=name,
        arch=arch,
        model_config=cfg.to_dict(),
        features=list(features),
        scaler={
            "names": list(features),
            "mean": rng.normal(0, 0.1, len(features)).tolist(),
            "std": rng.uniform(0.5, 2.0, len(features)).tolist(),
        },
        window=window,
        parameters=count_parameters(model),
        training={"untrained": True, "seed": seed},
    )
    return registry.register(model, card)
