"""The multi-task loss: fixed weights (the seed's) or learned uncertainty weighting.

Per task, on a batch (targets from :mod:`mlmodels.labels`):

* price: mean squared error of the three horizons, each divided by its training standard
  deviation (so 1-bar and 24-bar errors weigh alike);
* direction: cross-entropy over down/flat/up, with ``direction_weighting="balanced"`` (the
  default) each class weighted by ``n / (3 n_c)`` from the training split's class counts, so
  predicting the class prior earns nothing (plain cross-entropy on a weak signal settles on
  the prior: argmax is then always the majority class); ``"none"`` is the unweighted loss;
* position: cross-entropy over sell/hold/buy plus the squared error of the size;
* volatility and risk: squared error of the logarithms (both are positive, spanning decades);
* confidence: binary cross-entropy against the confidence target in [0, 1].

Total = sum_k w_k L_k with the seed's weights (price 0.30, direction 0.20, position 0.20,
volatility 0.15, risk 0.10, confidence 0.05), or, with ``uncertainty=True`` (Kendall et al.,
2018), sum_k exp(-s_k) L_k + s_k with a learned log-variance s_k per task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.config import DataConfig
from core.errors import ConfigError

DIRECTION_WEIGHTINGS: tuple[str, ...] = ("balanced", "none")
TASKS: tuple[str, ...] = ("price", "direction", "position", "volatility", "risk", "confidence")
SEED_WEIGHTS: dict[str, float] = {
    "price": 0.30,
    "direction": 0.20,
    "position": 0.20,
    "volatility": 0.15,
    "risk": 0.10,
    "confidence": 0.05,
}


@dataclass(frozen=True, kw_only=True)
class LossConfig(DataConfig):
    """Task weights, and whether to learn them (uncertainty weighting)."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(SEED_WEIGHTS))
    uncertainty: bool = False
    direction_weighting: str = "balanced"

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(TASKS)
        if unknown:
            raise ConfigError(
                f"unknown task(s) in loss weights: {sorted(unknown)}; tasks are {', '.join(TASKS)}"
            )
        if any(w < 0 for w in self.weights.values()):
            raise ConfigError(f"loss weights must be >= 0, got {dict(self.weights)}")
        if self.direction_weighting not in DIRECTION_WEIGHTINGS:
            raise ConfigError(
                f"direction_weighting must be one of {', '.join(DIRECTION_WEIGHTINGS)}, "
                f"got {self.direction_weighting!r}"
            )


def balanced_class_weights(labels: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """``n / (n_classes * n_c)`` per class (1 for a class absent from ``labels``)."""
    counts = np.bincount(labels.astype(int), minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 1.0)


def task_losses(
    out: Mapping[str, torch.Tensor],
    y: Mapping[str, torch.Tensor],
    price_scale: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Each task's loss on a batch (see the module docstring); ``class_weights`` weigh the
    direction classes (None: unweighted)."""
    price_t = torch.stack([y["ret_1"], y["ret_4"], y["ret_24"]], dim=1)
    return {
        "price": (((out["price"] - price_t) / price_scale) ** 2).mean(),
        "direction": F.cross_entropy(out["direction"], y["direction"].long(), weight=class_weights),
        "position": F.cross_entropy(out["action"], y["action"].long())
        + ((out["size"] - y["size"]) ** 2).mean(),
        "volatility": (
            (torch.log(out["volatility"]) - torch.log(y["volatility"].clamp(min=1e-6))) ** 2
        ).mean(),
        "risk": ((torch.log(out["risk"]) - torch.log(y["risk"].clamp(min=1e-4))) ** 2).mean(),
        "confidence": F.binary_cross_entropy(
            out["confidence"].clamp(1e-6, 1 - 1e-6), y["confidence"]
        ),
    }


class MultiTaskLoss(nn.Module):
    """Combines the task losses; holds the learned log-variances when ``uncertainty`` is on.

    ``class_weights`` (3,) weigh the direction classes when ``cfg.direction_weighting`` is
    ``"balanced"`` (the trainer passes :func:`balanced_class_weights` of the training split;
    None leaves the loss unweighted)."""

    def __init__(
        self,
        cfg: LossConfig,
        price_scale: torch.Tensor,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("price_scale", price_scale.float().clamp(min=1e-6))
        weights = class_weights if cfg.direction_weighting == "balanced" else None
        # recomputed from the training split on every start: not part of a checkpoint
        self.register_buffer(
            "class_weights", None if weights is None else weights.float(), persistent=False
        )
        self.log_vars = nn.Parameter(torch.zeros(len(TASKS))) if cfg.uncertainty else None

    def forward(
        self,
        out: Mapping[str, torch.Tensor],
        y: Mapping[str, torch.Tensor],
        weights: Mapping[str, float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        scale: torch.Tensor = self.price_scale  # type: ignore[assignment]
        parts = task_losses(out, y, scale, self.class_weights)  # type: ignore[arg-type]
        w = dict(weights if weights is not None else self.cfg.weights)
        total = torch.zeros((), device=scale.device)
        for k, name in enumerate(TASKS):
            wk = w.get(name, 0.0)
            if wk == 0:
                continue
            if self.log_vars is not None:
                total = total + wk * (torch.exp(-self.log_vars[k]) * parts[name] + self.log_vars[k])
            else:
                total = total + wk * parts[name]
        return total, {k: float(v.detach()) for k, v in parts.items()}


@dataclass(frozen=True, kw_only=True)
class Curriculum(DataConfig):
    """Loss weights by phase: ``phases`` are (fraction of epochs, tasks switched on).

    Default: direction first (20 % of epochs), then price and direction (30 %), then all.
    """

    phases: tuple[tuple[float, tuple[str, ...]], ...] = (
        (0.2, ("direction",)),
        (0.3, ("price", "direction")),
        (0.5, TASKS),
    )

    def __post_init__(self) -> None:
        if abs(sum(f for f, _ in self.phases) - 1.0) > 1e-6:
            raise ConfigError("curriculum phase fractions must sum to 1")
        for _, tasks in self.phases:
            unknown = set(tasks) - set(TASKS)
            if unknown:
                raise ConfigError(f"unknown task(s) in curriculum: {sorted(unknown)}")

    def weights(self, epoch: int, epochs: int, base: Mapping[str, float]) -> dict[str, float]:
        """The weights for ``epoch`` (0-based) of ``epochs``."""
        done = 0.0
        tasks: tuple[str, ...] = self.phases[-1][1]
        for frac, phase_tasks in self.phases:
            done += frac
            if epoch < round(done * epochs):
                tasks = phase_tasks
                break
        return {k: (v if k in tasks else 0.0) for k, v in base.items()}
