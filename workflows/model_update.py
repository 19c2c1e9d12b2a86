"""``btml models update NAME``: a challenger fine-tuned on the bars since the model's data ended.

The model's own symbols are read from the store at its timeframe; the bars after the last one
its training, validation and test used are the *new* bars. They are split chronologically
50/25/25, purged by the label horizon: the first half fine-tunes, the next quarter stops the
training early and gates the result, the newest quarter is the challenger's out-of-sample test
(its card's ``test`` report, as for any trained model). By default the base stays frozen: only
the fusion, the position encoder and the heads learn (the xLSTM and Transformer paths keep the
champion's weights, as the system's ``OnlineLearner`` does); ``--full`` lets every layer learn.
The champion's scaling is kept (the frozen paths expect it).

The gate: the challenger is registered, as the next version of the same name with its lineage
in ``training["lineage"]``, only when its loss on the gate quarter is below the champion's on
the same bars; otherwise nothing is registered and the run says why. Too few new bars are
refused before anything runs, with the number needed.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.errors import ConfigError, DataError
from feeds.store import ParquetStore
from mlmodels.dataset import DatasetConfig, WindowDataset, build_dataset
from mlmodels.evaluate import head_metrics, predict
from mlmodels.pipeline import evaluate_splits
from mlmodels.registry import ModelCard, ModelRegistry
from mlmodels.splits import Split, chronological_split
from mlmodels.trainer import TrainConfig, Trainer
from workflows.promotion import make_champion
from workflows.runs import RunRegistry
from workflows.train import model_inputs

Log = Callable[[str], None]
FRACTIONS = (0.5, 0.25, 0.25)
FROZEN = ("xlstm", "transformer")  # the paths: frozen unless --full


@dataclass(frozen=True)
class UpdateConfig:
    """``min_bars`` None: ``4 x`` the label lookahead plus 60."""

    epochs: int = 5
    lr: float = 2e-4
    batch_size: int = 64
    full: bool = False
    min_bars: int | None = None
    seed: int = 0
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or not 0 < self.lr < 1:
            raise ConfigError(
                f"--epochs must be >= 1 and --lr in (0, 1), got {self.epochs}, {self.lr}"
            )
        if self.min_bars is not None and self.min_bars < 30:
            raise ConfigError(f"--min-bars must be >= 30, got {self.min_bars}")


@dataclass(frozen=True)
class UpdateResult:
    run_id: str
    parent: ModelCard
    card: ModelCard | None  # the registered challenger (None: the gate refused it)
    champion_loss: float
    challenger_loss: float
    new_bars: int


def update_model(
    store: str | Path,
    ref: str,
    cfg: UpdateConfig = UpdateConfig(),
    *,
    log: Log = print,
    db_url: str | None = None,
) -> UpdateResult:
    """Fine-tune, gate and (when it beats the champion) register a challenger of ``ref``."""
    store_path = Path(store)
    registry = ModelRegistry(store_path / "models")
    card = registry.card(ref)
    if card.is_ensemble:
        raise ConfigError(
            f"{card.ref} is an ensemble: update its members, then build it again from them"
        )
    champion, card = registry.load(ref)
    ds, split, new_bars = _new_data(store_path, card, cfg)
    params = {"model": card.ref, **dataclasses.asdict(cfg), "new_bars": new_bars}
    with (
        RunRegistry(store_path, db_url) as runs,
        runs.start("update", params, inputs=model_inputs(store_path, card)) as run,
    ):
        log(f"run {run.id}: {new_bars} new bars since {card.date_ranges['test'][1][:10]}")
        challenger, before, after, history = _fine_tune(card, champion, ds, split, cfg)
        log(f"gate ({len(split.val)} samples): champion loss {before:.5f}, challenger {after:.5f}")
        run.log_metrics({"champion_gate_loss": before, "challenger_gate_loss": after,
                         "epochs_run": len(history), "new_bars": new_bars})  # fmt: skip
        if not after < before:
            run.log_metrics(
                {"registered": None, "refused": "the challenger did not beat the champion"}
            )
            log("the challenger did not beat the champion on the gate bars: nothing registered")
            return UpdateResult(run.id, card, None, before, after, new_bars)
        new = _challenger_card(card, challenger, champion, ds, split, cfg, run.id,
                               (before, after, new_bars, history))  # fmt: skip
        # the parent is the champion until the challenger is promoted: never traded before
        make_champion(registry, card, "the parent of the first challenger")
        new = registry.register(challenger, new, _copied_files(registry, card))
        runs.link_model(new.ref, run.id)
        run.log_metrics({"registered": new.ref})
        log(
            f"registered {new.ref} (parent {card.ref}) as a challenger; {card.name} still means "
            f"{registry.card(card.name).ref} until promoted: btml trade {card.name} --shadow "
            f"{new.ref}, then btml models promote {new.ref}"
        )
        return UpdateResult(run.id, card, new, before, after, new_bars)


def _fine_tune(
    card: ModelCard, champion: torch.nn.Module, ds: WindowDataset, split: Split, cfg: UpdateConfig
) -> tuple[torch.nn.Module, float, float, list[dict[str, float]]]:
    """The challenger (best checkpoint, eval mode), the champion's and its gate losses on the
    same loss, and its training history."""
    challenger = _copy(card, champion)
    with tempfile.TemporaryDirectory(prefix="btml-update-") as work:
        trainer = _trainer(challenger, ds, split, cfg, Path(work), card)
        gate = _gate_loss(trainer)
        before = _loss_on(gate, champion, ds, split.val)
        state = trainer.fit()
        best = Path(work) / "best.pt"
        if best.exists():
            challenger.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    challenger.eval()
    return challenger, before, _loss_on(gate, challenger, ds, split.val), state.history


def _new_data(
    store_path: Path, card: ModelCard, cfg: UpdateConfig
) -> tuple[WindowDataset, Split, int]:
    """The dataset over the model's symbols (scaled as the champion) and the split of its new
    samples; refuses too few new bars."""
    store = ParquetStore(store_path)
    frames = {s: store.read(s, card.timeframe) for s in card.symbols}
    index = store.read(card.index, card.timeframe) if card.index else None
    data_cfg = DatasetConfig(
        window=card.window, labels=card.label_cfg(), skip_short=True,
        selection=card.selection_obj(),
    )  # fmt: skip
    user = ModelRegistry(store_path / "models").user_features(card.ref)
    if user is not None:
        ds = build_dataset(frames, data_cfg, index, compute=user.table, warmup=user.total_warmup)
    else:
        ds = build_dataset(frames, data_cfg, index)
    end = pd.Timestamp(card.date_ranges["test"][1])
    new = np.flatnonzero(ds.times > end)
    bars = int(len(np.unique(ds.times[new])))
    lookahead = data_cfg.labels.lookahead
    need = cfg.min_bars or 4 * lookahead + 60
    if bars < need:
        raise DataError(
            f"{card.ref}: {bars} new bars since {end.date()} in the store; an update needs at "
            f"least {need} (download more with btml data download, or give --min-bars)"
        )
    ds.apply_scaler(card.scaler_obj())
    part = chronological_split(ds.times[new], lookahead=lookahead, fractions=FRACTIONS,
                               symbols=ds.sample_symbol[new])  # fmt: skip
    split = Split(new[part.train], new[part.val], new[part.test], part.test_start, part.test_end)
    return ds, split, bars


def _copy(card: ModelCard, champion: torch.nn.Module) -> torch.nn.Module:
    from mlmodels.nets.model import build_model

    twin = build_model(card.model_cfg())
    twin.load_state_dict(champion.state_dict())
    return twin


def _trainer(
    model: torch.nn.Module, ds: WindowDataset, split: Split, cfg: UpdateConfig, work: Path,
    card: ModelCard,
) -> Trainer:  # fmt: skip
    """A trainer over the fine-tuning samples, the paths frozen unless ``cfg.full``."""
    if not cfg.full:
        for name, p in model.named_parameters():
            if name.split(".", 1)[0] in FROZEN:
                p.requires_grad_(False)
    tc = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                     threads=cfg.threads, patience=max(2, cfg.epochs // 2), refit_direction=False,
                     ema=0.0,  # an average would move the frozen weights by its rounding
                     loss=_loss_cfg(card))  # fmt: skip
    return Trainer(model, ds, split.train, split.val, tc, work)


def _gate_loss(trainer: Trainer) -> Any:
    """The loss both models are gated on: the trainer's task weights, price scale and class
    weights, without learned uncertainty (which would favour the model trained with it)."""
    from mlmodels.losses import MultiTaskLoss

    loss: Any = trainer.loss
    cfg = dataclasses.replace(loss.cfg, uncertainty=False)
    return MultiTaskLoss(cfg, loss.price_scale.clone(), loss.class_weights)


@torch.inference_mode()
def _loss_on(loss: Any, model: torch.nn.Module, ds: WindowDataset, idx: np.ndarray) -> float:
    """The mean of ``loss`` over samples ``idx``."""
    from mlmodels.labels import LABEL_COLUMNS
    from mlmodels.stream import sample_batches

    model.eval()
    total = 0.0
    for part, out in sample_batches(model, ds, idx):
        y = {c: torch.from_numpy(ds.targets[c][part]) for c in LABEL_COLUMNS}
        total += float(loss(out, y)[0]) * len(part)
    return total / max(len(idx), 1)


def _loss_cfg(card: ModelCard) -> Any:
    """The champion's loss settings (task weights, uncertainty, direction weighting)."""
    from mlmodels.losses import LossConfig

    t = card.training
    default = LossConfig()
    return LossConfig(
        weights=t.get("loss_weights") or default.weights,
        uncertainty=bool(t.get("uncertainty", default.uncertainty)),
        direction_weighting=str(t.get("direction_weighting") or default.direction_weighting),
    )


def _challenger_card(
    card: ModelCard,
    model: torch.nn.Module,
    champion: torch.nn.Module,
    ds: WindowDataset,
    split: Split,
    cfg: UpdateConfig,
    run_id: str,
    gate: tuple[float, float, int, list[dict[str, float]]],
) -> ModelCard:
    """The challenger's card: the parent's, with the new data's ranges, metrics and lineage."""
    before, after, bars, history = gate
    metrics = evaluate_splits(
        model, ds, split, seed=cfg.seed, vol_lag=card.label_cfg().risk_horizon
    )
    metrics["parent_test"] = head_metrics(predict(champion, ds, split.test), ds, split.test)
    metrics["drift_reference"] = card.metrics.get("drift_reference")
    ranges = {k: [str(ds.times[getattr(split, k)].min()), str(ds.times[getattr(split, k)].max())]
              for k in ("train", "val", "test")}  # fmt: skip
    lineage = {"parent": card.ref, "kind": "full" if cfg.full else "frozen-base",
               "new_bars": bars, "gate_loss": {"champion": before, "challenger": after},
               "parent_ranges": card.date_ranges}  # fmt: skip
    training = {**card.training, "lineage": lineage, "history": history,
                "update": dataclasses.asdict(cfg)}  # fmt: skip
    return dataclasses.replace(
        card, version=0, date_ranges=ranges, metrics=metrics, training=training,
        created_at=pd.Timestamp.now(tz="UTC").isoformat(), archives={}, training_run=run_id,
    )  # fmt: skip


def _copied_files(registry: ModelRegistry, card: ModelCard) -> dict[str, bytes] | None:
    """The parent's features module, copied beside the challenger (same features)."""
    if not card.feature_module:
        return None
    name = str(card.feature_module.get("file") or "")
    path = registry.path(card.ref) / name
    return {name: path.read_bytes()} if name and path.exists() else None
