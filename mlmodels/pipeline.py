"""Train one model end to end: dataset -> split -> scaler -> trainer -> evaluation -> registry.

The test split is used once, after training and model selection (early stopping uses the
validation split only), and the scaler is fit on the training split only.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlmodels.dataset import DatasetConfig, WindowDataset, build_dataset
from mlmodels.evaluate import baseline_metrics, head_metrics, predict
from mlmodels.nets.model import (
    ModelConfig,
    build_model,
    count_parameters,
    get_architecture,
    lstm_baseline,
)
from mlmodels.registry import ModelCard, ModelRegistry, code_version, data_hash
from mlmodels.splits import Split, chronological_split
from mlmodels.trainer import TrainConfig, Trainer


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
) -> tuple[torch.nn.Module, ModelCard]:
    """Fit scaling on ``split.train``, train, evaluate, and register (when ``registry`` is given).

    ``compare_lstm`` also trains the same model with ``nn.LSTM`` of equal size in place of the
    xLSTM stack (same data, split, seed and settings) and records its test metrics in the card
    as ``metrics["lstm_test"]`` (with its parameter count), beside the naive baselines.
    """
    scaler = ds.fit_scaler(split.train) if ds.scaler is None else ds.scaler
    base = get_architecture(arch) if isinstance(arch, str) else arch
    mcfg = base.with_data(len(ds.feature_names), ds.window)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"btml-train-{name}-"))
    model, trainer, state = _fit(mcfg, ds, split, train_cfg, work, resume, on_epoch)
    metrics: dict[str, Any] = {
        "val": head_metrics(predict(model, ds, split.val), ds, split.val),
        "test": head_metrics(predict(model, ds, split.test), ds, split.test),
        "baselines_test": baseline_metrics(ds, split.train, split.test),
    }
    if compare_lstm and mcfg.xlstm_layers and not mcfg.ensemble:
        twin_cfg = lstm_baseline(mcfg)
        twin, _, _ = _fit(twin_cfg, ds, split, train_cfg, work / "lstm", resume, None)
        metrics["lstm_test"] = head_metrics(predict(twin, ds, split.test), ds, split.test)
        metrics["lstm_test"]["parameters"] = float(count_parameters(twin))
    labels = dataclasses.asdict(data_cfg.labels)
    card = ModelCard(
        name=name,
        arch=mcfg.arch,
        model_config=mcfg.to_dict(),
        features=list(ds.feature_names),
        selection=dataclasses.asdict(data_cfg.selection) if data_cfg.selection else None,
        scaler=scaler.to_dict(),
        window=ds.window,
        horizons=list(data_cfg.labels.horizons),
        labels=labels,
        price_scale=trainer.price_scale,
        symbols=list(ds.symbols),
        index=index_name,
        timeframe=timeframe,
        data_hash=data_hash(ds.rows, *(ds.targets[k] for k in sorted(ds.targets))),
        date_ranges={
            "train": _range(ds, split.train),
            "val": _range(ds, split.val),
            "test": _range(ds, split.test),
        },
        metrics=metrics,
        training={
            **{
                k: v
                for k, v in dataclasses.asdict(train_cfg).items()
                if k not in ("loss", "curriculum")
            },
            "loss_weights": dict(train_cfg.loss.weights),
            "uncertainty": train_cfg.loss.uncertainty,
            "curriculum": train_cfg.curriculum is not None,
            "epochs_run": state.epoch,
            "best_epoch": state.best_epoch,
            "history": state.history,
        },
        parameters=count_parameters(model),
        code_version=code_version(),
        created_at=pd.Timestamp.now(tz="UTC").isoformat(),
    )
    if registry is not None:
        card = registry.register(model, card)
    return model, card


def _fit(
    mcfg: ModelConfig,
    ds: WindowDataset,
    split: Split,
    train_cfg: TrainConfig,
    work: Path,
    resume: bool,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> tuple[torch.nn.Module, Trainer, Any]:
    """Train ``mcfg`` from the seed; returns the best checkpoint's model (eval, CPU)."""
    torch.manual_seed(train_cfg.seed)
    model = build_model(mcfg)
    trainer = Trainer(model, ds, split.train, split.val, train_cfg, work)
    state = trainer.fit(resume=resume, on_epoch=on_epoch)
    best = work / "best.pt"
    if best.exists():
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    return model.to("cpu").eval(), trainer, state


def train_model(
    frames: Mapping[str, pd.DataFrame],
    arch: str,
    *,
    name: str,
    registry: ModelRegistry | None,
    train_cfg: TrainConfig | None = None,
    data_cfg: DatasetConfig | None = None,
    index: pd.DataFrame | None = None,
    **kwargs: Any,
) -> tuple[torch.nn.Module, ModelCard]:
    """Build the dataset from ``frames``, split 70/15/15 chronologically (purged), train, register."""
    data_cfg = data_cfg or DatasetConfig()
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
