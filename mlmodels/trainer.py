"""Training: AdamW, cosine warm restarts, early stopping, clipping, checkpoints, resume.

Defaults follow the seed: AdamW (lr 5e-4, weight decay 1e-5), CosineAnnealingWarmRestarts
(T_0 = 10), early stopping with patience 15 on the validation loss (always with the full task
weights, whatever phase the curriculum is in), gradient clipping at 1.0, deterministic seeding.
After every epoch ``last.pt`` (model, optimiser, scheduler, history) is written atomically, and
``best.pt`` (weights only) whenever validation improves, so an interrupted run (Ctrl-C, a kill)
leaves a valid checkpoint and ``resume=True`` continues where it stopped. Checkpoints load with
``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.config import DataConfig
from core.errors import ConfigError, DataError
from mlmodels.dataset import WindowDataset
from mlmodels.labels import LABEL_COLUMNS
from mlmodels.losses import Curriculum, LossConfig, MultiTaskLoss


@dataclass(frozen=True, kw_only=True)
class TrainConfig(DataConfig):
    """Trainer settings (see the module docstring for the defaults' origin)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 1e-5
    t0: int = 10
    patience: int = 15
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    loss: LossConfig = field(default_factory=LossConfig)
    curriculum: Curriculum | None = None
    max_batches: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not 1 <= self.batch_size <= 65536:
            raise ConfigError(f"batch_size must be in [1, 65536], got {self.batch_size}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file, then rename: a kill never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def batch_tensors(
    ds: WindowDataset, idx: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Inputs, position state and targets of samples ``idx``."""
    x = torch.from_numpy(ds.x(idx)).to(device)
    if not torch.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(ds.x(idx)).all(axis=(1, 2)))[0])
        i = int(idx[bad])
        rows, feats = np.nonzero(~np.isfinite(ds.window_view(i)))
        back = ds.window - 1 - int(rows[0])
        raise DataError(
            f"non-finite input in the window of {ds.symbols[ds.sample_symbol[i]]} at {ds.times[i]}: "
            f"feature {ds.feature_names[int(feats[0])]} {back} bar(s) before it"
        )
    pos = torch.from_numpy(ds.position[idx]).to(device)
    y = {c: torch.from_numpy(ds.targets[c][idx]).to(device) for c in LABEL_COLUMNS}
    return x, pos, y


@dataclass
class TrainState:
    epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on ``ds`` samples ``train``, early-stopping on samples ``val``."""

    def __init__(
        self,
        model: nn.Module,
        ds: WindowDataset,
        train: np.ndarray,
        val: np.ndarray,
        cfg: TrainConfig,
        out_dir: Path,
    ) -> None:
        if len(train) == 0 or len(val) == 0:
            raise DataError(
                f"too few samples: {len(train)} for training and {len(val)} for validation"
            )
        self.cfg, self.ds, self.train_idx, self.val_idx = cfg, ds, train, val
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        scale = np.std(
            np.stack([ds.targets[f"ret_{h}"][train] for h in (1, 4, 24)], axis=1), axis=0
        )
        self.loss = MultiTaskLoss(cfg.loss, torch.tensor(scale)).to(self.device)
        params = list(self.model.parameters()) + list(self.loss.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(self.opt, T_0=cfg.t0)
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.state = TrainState()

    @property
    def price_scale(self) -> list[float]:
        return [float(v) for v in self.loss.price_scale]  # type: ignore[union-attr]

    def _checkpoint(self) -> dict[str, Any]:
        s = self.state
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "loss": self.loss.state_dict(),
            "epoch": s.epoch,
            "best_val": s.best_val,
            "best_epoch": s.best_epoch,
            "bad_epochs": s.bad_epochs,
            "history": s.history,
        }

    def resume(self) -> bool:
        """Load ``last.pt`` if present; True when training continues from it."""
        path = self.out / "last.pt"
        if not path.exists():
            return False
        try:
            ck = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            self.loss.load_state_dict(ck["loss"])
        except (RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise DataError(
                f"{path}: not a checkpoint of this model ({err}); delete it to start over"
            ) from err
        self.state = TrainState(
            ck["epoch"], ck["best_val"], ck["best_epoch"], ck["bad_epochs"], ck["history"]
        )
        return True

    def _epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed * 100_003 + epoch)
        order = rng.permutation(self.train_idx)
        weights = (
            cfg.curriculum.weights(epoch, cfg.epochs, cfg.loss.weights) if cfg.curriculum else None
        )
        self.model.train()
        n_batches = math.ceil(len(order) / cfg.batch_size)
        if cfg.max_batches:
            n_batches = min(n_batches, cfg.max_batches)
        totals: dict[str, float] = {}
        for b in range(n_batches):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x, pos, y = batch_tensors(self.ds, idx, self.device)
            loss, parts = self.loss(self.model(x, pos), y, weights)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.sched.step(epoch + (b + 1) / n_batches)
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                totals[k] = totals.get(k, 0.0) + v / n_batches
        return {f"train_{k}": v for k, v in totals.items()}

    @torch.inference_mode()
    def evaluate_loss(self, idx: np.ndarray) -> dict[str, float]:
        """Mean full-weight loss and task losses over samples ``idx``."""
        self.model.eval()
        totals: dict[str, float] = {}
        n = 0
        for b in range(0, len(idx), 1024):
            part = idx[b : b + 1024]
            x, pos, y = batch_tensors(self.ds, part, self.device)
            loss, parts = self.loss(self.model(x, pos), y)
            for k, v in {"loss": float(loss), **parts}.items():
                totals[k] = totals.get(k, 0.0) + v * len(part)
            n += len(part)
        return {k: v / n for k, v in totals.items()}

    def fit(
        self,
        *,
        resume: bool = False,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> TrainState:
        """Train until ``epochs`` or early stop; returns the final state (history included)."""
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        seed_everything(self.cfg.seed)
        if resume:
            self.resume()
        s = self.state
        while s.epoch < self.cfg.epochs and s.bad_epochs < self.cfg.patience:
            row = self._epoch(s.epoch)
            row.update({f"val_{k}": v for k, v in self.evaluate_loss(self.val_idx).items()})
            row["epoch"] = float(s.epoch)
            s.history.append(row)
            if row["val_loss"] < s.best_val - 1e-9:
                s.best_val, s.best_epoch, s.bad_epochs = row["val_loss"], s.epoch, 0
                atomic_save(self.model.state_dict(), self.out / "best.pt")
            else:
                s.bad_epochs += 1
            s.epoch += 1
            atomic_save(self._checkpoint(), self.out / "last.pt")
            if on_epoch:
                on_epoch(s.epoch, row)
        return s
