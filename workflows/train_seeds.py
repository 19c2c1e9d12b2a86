"""``btml train --seeds N``: the same training repeated with N seeds, and its spread.

A network trained once is one draw: its out-of-sample figures move with the seed (on the
planted test market the direction accuracy spans about 0.02 across seeds, as much as the gap
to the logistic baseline). With ``seeds`` > 1 the request trains with ``seed``, ``seed + 1``,
... on the same data and split, reports each seed's out-of-sample figures
(:data:`SEED_FIGURES`) and their mean, standard deviation (ddof 1), minimum and maximum, and
registers ONE model: the seed with the lowest validation loss (chosen without looking at the
test split, so the reported test figures of the chosen seed stay out of sample). The run keeps
``seeds.csv`` (one row per seed) and the metrics ``seeds``, ``seed_chosen`` and
``seeds_{figure}_{mean,std,min,max}``; the card's ``training["seeds"]`` holds the same table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from mlmodels.pipeline import train_on_dataset
from mlmodels.registry import ModelCard, ModelRegistry
from mlmodels.user_features import MODULE_FILE

if TYPE_CHECKING:
    from workflows.train import TrainPlan

#: figure -> (head, model, metric) in the card's out-of-sample report.
SEED_FIGURES: dict[str, tuple[str, str, str]] = {
    "direction_accuracy": ("direction", "network", "accuracy"),
    "direction_balanced_accuracy": ("direction", "network", "balanced_accuracy"),
    "direction_logloss": ("direction", "network", "logloss"),
    "logistic_accuracy": ("direction", "logistic", "accuracy"),
    "price_1_rank_ic": ("price_1", "network", "rank_ic"),
}
OnEpoch = Callable[[int, dict[str, float]], None]


def best_val_loss(card: ModelCard) -> float:
    """The lowest validation loss of the card's training history (inf without one)."""
    losses = [row["val_loss"] for row in card.training.get("history", []) if "val_loss" in row]
    return float(min(losses)) if losses else math.inf


def seed_figures(card: ModelCard) -> dict[str, float | None]:
    """:data:`SEED_FIGURES` of one trained card (None where its report lacks a head)."""
    heads = (card.report or {}).get("heads", {})
    out: dict[str, float | None] = {}
    for name, (head, model, metric) in SEED_FIGURES.items():
        m = heads.get(head, {}).get("models", {}).get(model, {}).get(metric)
        out[name] = None if m is None else m["value"]
    return out


def fit_seeds(
    store_path: Path,
    plan: TrainPlan,
    work: Path,
    training_run: str,
    on_epoch: OnEpoch,
    log: Callable[[str], None],
) -> tuple[torch.nn.Module, ModelCard, pd.DataFrame]:
    """Train every seed unregistered, register the one with the lowest validation loss;
    returns it, its card and the per-seed table (index ``seed``)."""
    cfg = plan.config
    assert cfg.name is not None  # resolved
    fits: dict[int, tuple[torch.nn.Module, ModelCard]] = {}
    rows = []
    for i, seed in enumerate(range(cfg.seed, cfg.seed + cfg.seeds), 1):
        log(f"seed {seed} ({i}/{cfg.seeds})")
        model, card = train_on_dataset(
            plan.dataset, plan.split, cfg.arch, name=cfg.name, registry=None,
            train_cfg=dataclasses.replace(cfg.train_config(), seed=seed),
            data_cfg=plan.data_cfg, work_dir=work / f"seed-{seed}", resume=cfg.resume,
            index_name=cfg.index, timeframe=cfg.timeframe, compare_lstm=cfg.compare_lstm,
            on_epoch=_tagged(on_epoch, seed), training_run=training_run, user=plan.user,
        )  # fmt: skip
        fits[seed] = (model, card)
        rows.append({"seed": seed, "val_loss": best_val_loss(card), **seed_figures(card)})
    table = pd.DataFrame(rows).set_index("seed")
    chosen = int(table["val_loss"].idxmin())
    model, card = fits[chosen]
    record = {"chosen": chosen, "rule": "lowest validation loss",
              "table": table.reset_index().to_dict("records")}  # fmt: skip
    card = dataclasses.replace(card, training={**card.training, "seeds": record})
    files = {MODULE_FILE: plan.user.source_bytes()} if plan.user is not None else None
    card = ModelRegistry(store_path / "models").register(model, card, files)
    return model, card, table


def _tagged(on_epoch: OnEpoch, seed: int) -> OnEpoch:
    """``on_epoch`` with each row tagged with its seed (the run's history.csv has a column)."""
    return lambda epoch, row: on_epoch(epoch, {"seed": seed, **row})


def seed_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """The run's metrics of a seeded training: ``seeds``, ``seed_chosen`` and the spread."""
    out: dict[str, Any] = {"seeds": len(table), "seed_chosen": int(table["val_loss"].idxmin())}
    figures = table[[c for c in SEED_FIGURES if c in table]].astype(float)
    for name, stats in figures.agg(["mean", "std", "min", "max"]).items():
        out |= {f"seeds_{name}_{k}": float(v) for k, v in stats.items()}
    return out


def spread_lines(table: pd.DataFrame) -> list[str]:
    """One printed line per figure: mean +- sd [min, max] over the seeds."""
    lines = [f"{len(table)} seeds; registered seed {int(table['val_loss'].idxmin())} "
             "(lowest validation loss)"]  # fmt: skip
    for name in SEED_FIGURES:
        col = table[name].astype(float) if name in table else None
        if col is None or col.isna().all():
            continue
        lines.append(
            f"  {name}: {col.mean():.4f} +- {col.std(ddof=1):.4f} "
            f"[{col.min():.4f}, {col.max():.4f}]"
        )
    return lines
