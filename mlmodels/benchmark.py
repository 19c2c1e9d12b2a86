"""The architecture benchmark: every preset beside ``nn.LSTM`` of equal size, in one run.

For each model: parameters, forward latency (p50, ms) at batch 1 and 64, training samples/s,
and out-of-sample metrics after the same short training on one fixed synthetic dataset (a
planted AR(1) of 0.1, so there is something to find). The xLSTM-to-LSTM latency ratio is
measured on the bare recurrent paths of matched parameter count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from feeds.sources.synthetic import SyntheticConfig, generate_market
from mlmodels.dataset import DatasetConfig, build_dataset
from mlmodels.nets.model import (
    ARCHITECTURES,
    LSTMPath,
    ModelConfig,
    build_model,
    count_parameters,
    lstm_baseline,
)
from mlmodels.nets.xlstm import XLSTMStack
from mlmodels.pipeline import train_on_dataset
from mlmodels.splits import chronological_split
from mlmodels.trainer import TrainConfig


def _p50_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


@torch.inference_mode()
def latency(model: nn.Module, cfg: ModelConfig, batch: int, rounds: int = 20) -> float:
    model.eval()
    x = torch.randn(batch, cfg.window, cfg.n_features)
    pos = torch.zeros(batch, 3)
    return _p50_ms(lambda: model(x, pos), rounds if batch == 1 else max(3, rounds // 4))


@torch.inference_mode()
def path_latency(cfg: ModelConfig, batch: int, rounds: int = 20) -> tuple[float, float, int, int]:
    """(xLSTM ms, nn.LSTM ms, xLSTM params, LSTM params) of the bare recurrent paths."""
    xl = XLSTMStack(
        cfg.n_features,
        cfg.xlstm_hidden,
        cfg.xlstm_layers,
        num_heads=cfg.xlstm_heads,
        slstm_at=cfg.slstm_at,
    ).eval()
    lc = lstm_baseline(cfg)
    ls = LSTMPath(cfg.n_features, lc.xlstm_hidden, cfg.xlstm_layers, 0.0).eval()
    x = torch.randn(batch, cfg.window, cfg.n_features)
    n = 3 * rounds if batch == 1 else max(3, rounds // 4)
    xl(x), ls(x)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(n):  # interleaved, so load from other processes hits both alike
        for fn, out in ((xl, times[0]), (ls, times[1])):
            t = time.perf_counter()
            fn(x)
            out.append(time.perf_counter() - t)
    return (
        float(np.median(times[0]) * 1000),
        float(np.median(times[1]) * 1000),
        count_parameters(xl),
        count_parameters(ls),
    )


def benchmark_architectures(
    archs: list[str] | None = None,
    *,
    epochs: int = 3,
    max_batches: int = 30,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the benchmark and return one row per model."""
    frames = generate_market(
        SyntheticConfig.pure_random_walk(n_symbols=6, n_bars=1500, seed=11, planted_strength=0.1)
    )
    dcfg = DatasetConfig(window=60)
    rows = []
    for name in archs or list(ARCHITECTURES):
        for cfg in _variants(ARCHITECTURES[name]):
            row = benchmark_one(cfg, frames, dcfg, epochs=epochs, max_batches=max_batches)
            rows.append(row)
            log(format_row(row))
    return rows


def _variants(base: ModelConfig) -> list[ModelConfig]:
    """The preset, and beside a recurrent single model its ``nn.LSTM`` twin of equal size."""
    return [base, lstm_baseline(base)] if base.xlstm_layers and not base.ensemble else [base]


def benchmark_one(
    cfg: ModelConfig,
    frames: Mapping[str, pd.DataFrame],
    dcfg: DatasetConfig,
    *,
    epochs: int,
    max_batches: int,
) -> dict[str, Any]:
    """One model's row: size and latency, training speed and test metrics, path ratios."""
    ds = build_dataset(frames, dcfg)
    split = chronological_split(ds.times, lookahead=24)
    mcfg = cfg.with_data(len(ds.feature_names), ds.window)
    model = build_model(mcfg)
    row: dict[str, Any] = {
        "model": mcfg.arch,
        "params": count_parameters(model),
        "ms_b1": latency(model, mcfg, 1),
        "ms_b64": latency(model, mcfg, 64),
    }
    tcfg = TrainConfig(epochs=epochs, batch_size=64, max_batches=max_batches, lr=1e-3, seed=0)
    t = time.perf_counter()
    _, card = train_on_dataset(
        ds, split, mcfg, name="bench", registry=None, train_cfg=tcfg, data_cfg=dcfg
    )
    row["train_samples_s"] = epochs * max_batches * 64 / (time.perf_counter() - t)
    row.update(_test_metrics(card.metrics))
    if cfg.rnn == "xlstm" and cfg.xlstm_layers:
        row.update(_path_ratios(mcfg))
    return row


def _test_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The out-of-sample figures the table shows, from a model card's metrics."""
    m = metrics["test"]
    return {
        "dir_acc": m["direction_accuracy"],
        "dir_logloss": m["direction_logloss"],
        "ic_1": m["price_1_ic"],
        "price_1_mae": m["price_1_mae"],
        "majority_acc": metrics["baselines_test"]["majority_direction_accuracy"],
    }


def _path_ratios(mcfg: ModelConfig) -> dict[str, Any]:
    """xLSTM / nn.LSTM latency of the bare recurrent paths at batch 1 and 64."""
    out: dict[str, Any] = {}
    for b in (1, 64):
        xm, lm, xp, lp = path_latency(mcfg, b)
        out[f"path_ratio_b{b}"] = xm / lm
        out[f"path_ms_b{b}"] = (xm, lm, xp, lp)
    return out


def format_row(r: dict[str, Any]) -> str:
    ratio = ""
    if "path_ratio_b1" in r:
        ratio = f"  xLSTM/LSTM path {r['path_ratio_b1']:.2f}x (b1) {r['path_ratio_b64']:.2f}x (b64)"
    return (
        f"{r['model']:<24} {r['params']:>11,}  b1 {r['ms_b1']:7.1f} ms  b64 {r['ms_b64']:8.1f} ms  "
        f"fit+eval {r['train_samples_s']:7.0f} samples/s  acc {r['dir_acc']:.3f} (maj {r['majority_acc']:.3f})  "
        f"IC {r['ic_1']:+.3f}{ratio}"
    )
