"""``btml train``'s work: train one model on stored data, register it, record the run.

:func:`train` checks the request first (:func:`plan_training`: the symbols, the preset, the
selection file, the stored data, the dataset and its 70/15/15 chronological split; a refused
request records nothing and trains nothing), then records a run of kind ``train`` with the
resolved request as its parameters and the sha256 of every stored file it read as its
inputs. The run's folder holds ``history.csv`` (one row per epoch, rewritten after each, so
an interrupted run keeps what it did) and a copy of the registered ``model_card.json``; its
metrics (``metrics.json``) are the card's (``test_direction_accuracy``, ...), the
out-of-sample report's per head against the naive and trained baselines (``oos_edge``,
``oos_direction_network_accuracy`` and its ``_lo`` / ``_hi``, ``oos_beat_...``: see
:func:`card_metrics`), the best epoch and the parameter count. The model is linked to the run (``btml runs rm`` of the run is then refused) and its
card names the run (``training_run``).

Checkpoints live in ``{store}/training/{name}/`` (:func:`checkpoint_dir`), outside the run's
folder, so ``resume`` continues an interrupted training of the same name.

``labels_from`` (``next_open``, the default, or ``close``) is where the trading heads'
returns start and ``price_labels_from`` (``close`` by default) the price heads'
(:mod:`mlmodels.labels`). ``features_module`` adds the user's own features
(:mod:`mlmodels.user_features`) after the built-in ones (or, with ``own_features_only``,
instead of them): every function is truncation-tested on the training data first, and a leak
refuses the request (naming the function and the first differing row) before anything is
recorded. The module's file and sha256 are among the run's inputs; the card records it and
the registry keeps its source beside the model. ``seeds`` > 1 repeats the training with
as many seeds and registers the one of lowest validation loss (:mod:`workflows.train_seeds`).

An ``index`` built from a universe of today's constituents (its stored ``survivorship``
attribute) is warned about as a backtest over it is: in the log, the run's ``warnings``
metric and ``btml train``'s printed summary (:func:`index_warnings`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from core.config import DataConfig
from core.errors import ConfigError
from feeds.store import ParquetStore
from feeds.universes import get_universe
from mlmodels.dataset import DatasetConfig, WindowDataset, build_dataset
from mlmodels.labels import LabelConfig
from mlmodels.losses import Curriculum, LossConfig
from mlmodels.nets.model import get_architecture
from mlmodels.pipeline import train_on_dataset
from mlmodels.registry import CARD_FILE, WEIGHTS_FILE, ModelCard, ModelRegistry
from mlmodels.selection import Selection
from mlmodels.splits import Split, chronological_split
from mlmodels.trainer import TrainConfig
from mlmodels.user_features import MODULE_FILE, UserFeatures, load_checked
from workflows.errors import RunNotFound
from workflows.runs import Run, RunRegistry
from workflows.runs_info import file_sha256
from workflows.train_seeds import fit_seeds, seed_metrics

Log = Callable[[str], None]
OnEpoch = Callable[[int, dict[str, float]], None]


def checkpoint_dir(store: str | os.PathLike[str], name: str) -> Path:
    """Where training ``name`` keeps ``last.pt`` and ``best.pt`` (what ``resume`` reads)."""
    return Path(store) / "training" / name


def check_model_name(name: str, flag: str = "--name") -> None:
    """Refuse a registry name the model registry could not store."""
    if not name or "/" in name or ":" in name:
        raise ConfigError(f"{flag} must be non-empty without '/' or ':', got {name!r}")


def check_symbols(symbols: Sequence[str], *, required: bool = True) -> None:
    """Refuse no symbols (when ``required``), empty, padded or repeated ones."""
    if required and not symbols:
        raise ConfigError("no symbols given; pass --symbols A,B,...")
    if any(not s or s != s.strip() for s in symbols):
        raise ConfigError(f"symbols: give stored symbols (--symbols A,B), got {tuple(symbols)}")
    if len(set(symbols)) != len(symbols):
        raise ConfigError(f"symbols: a symbol is named twice in {', '.join(symbols)}")


@dataclass(frozen=True, kw_only=True)
class TrainRunConfig(DataConfig):
    """One training request as plain values: the symbols (or a named ``universe``), the
    preset, the trainer's settings. ``name`` defaults to the preset and ``threads`` to the
    process's torch threads (:meth:`resolved` fills both, and the universe's symbols)."""

    arch: str = "tiny"
    symbols: tuple[str, ...] = ()
    universe: str | None = None
    index: str | None = None
    selection_file: str | None = None
    name: str | None = None
    epochs: int = 100
    batch_size: int = 256
    lr: float = 5e-4
    patience: int = 15
    window: int = 60
    curriculum: bool = False
    uncertainty: bool = False
    resume: bool = False
    threads: int | None = None
    seed: int = 0
    timeframe: str = "1Day"
    compare_lstm: bool = False
    labels_from: str = "next_open"
    price_labels_from: str = "close"
    features_module: str | None = None
    own_features_only: bool = False
    seeds: int = 1

    def __post_init__(self) -> None:
        if self.universe and self.symbols and self.symbols != get_universe(self.universe):
            raise ConfigError("give --symbols or --universe, not both")
        if not self.symbols and not self.universe:
            raise ConfigError("nothing to train on: pass --symbols A,B,... or --universe NAME")
        check_symbols(self.symbols, required=False)
        if self.name is not None:
            check_model_name(self.name)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if not 1 <= self.seeds <= 100:
            raise ConfigError(f"--seeds must be in [1, 100], got {self.seeds}")
        self.train_config()  # the trainer's own checks (epochs, lr, ...), now
        DatasetConfig(window=self.window)
        for flag, value in (("--labels-from", self.labels_from),
                            ("--price-labels-from", self.price_labels_from)):  # fmt: skip
            if value not in ("close", "next_open"):
                raise ConfigError(f"{flag} must be close or next-open, got {value!r}")
        if self.own_features_only and not self.features_module:
            raise ConfigError("--own-features-only needs --features-module (your features)")
        if self.features_module and self.selection_file:
            raise ConfigError(
                "give --features (a selection of the built-in features) or --features-module, "
                "not both"
            )

    def label_config(self) -> LabelConfig:
        """The labels this request trains on."""
        return LabelConfig(
            trading_from=self.labels_from,  # type: ignore[arg-type]  # checked above
            price_from=self.price_labels_from,  # type: ignore[arg-type]
        )

    def resolved(self) -> TrainRunConfig:
        """The request with its defaults filled: symbols, name, threads, and the absolute
        paths of the selection file and of a features module given as a file."""
        symbols = self.symbols or get_universe(self.universe or "")
        selection = str(Path(self.selection_file).resolve()) if self.selection_file else None
        module = self.features_module
        if module and (module.endswith(".py") or Path(module).is_file()):
            module = str(Path(module).resolve())
        return dataclasses.replace(
            self, symbols=tuple(symbols), name=self.name or self.arch,
            threads=self.threads or torch.get_num_threads(), selection_file=selection,
            features_module=module,
        )  # fmt: skip

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, patience=self.patience,
            seed=self.seed, threads=self.threads, loss=LossConfig(uncertainty=self.uncertainty),
            curriculum=Curriculum() if self.curriculum else None,
        )  # fmt: skip


@dataclass(frozen=True)
class TrainPlan:
    """A checked request: the resolved config, the dataset and split, the data hashes read,
    the user's features module (checked) if any."""

    config: TrainRunConfig
    dataset: WindowDataset
    split: Split
    data_cfg: DatasetConfig
    inputs: dict[str, str]
    user: UserFeatures | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainResult:
    """A finished training: its run, the resolved request, the registered card and model,
    the per-seed table (with several seeds) and the warnings its reports carry."""

    run_id: str
    run_dir: Path
    config: TrainRunConfig
    card: ModelCard
    model: torch.nn.Module
    seeds: pd.DataFrame | None = None
    warnings: tuple[str, ...] = ()


def index_warnings(name: str | None, index: pd.DataFrame | None) -> tuple[str, ...]:
    """The survivorship warning a stored index carries (its ``survivorship`` attribute,
    written when it was built from a universe of today's constituents), naming the index;
    none without one. The attribute is one line (the warning itself holds a "; ")."""
    notes = str(index.attrs.get("survivorship", "")) if index is not None else ""
    return (f"index {name}: {notes}",) if notes else ()


def read_stored(
    store_path: Path, symbols: Sequence[str], timeframe: str, index: str | None = None
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame | None, dict[str, str]]:
    """Read each symbol's stored bars (and the index's); returns the frames, the index and
    ``{file: sha256}`` of the Parquet files read (relative to the store). An unknown symbol
    is refused."""
    if not symbols:
        raise ConfigError("no symbols given; pass --symbols A,B,...")
    store = ParquetStore(store_path)
    frames = {s: store.read(s, timeframe) for s in symbols}
    index_frame = store.read(index, timeframe) if index else None
    files = [store.find(s, timeframe) or Path() for s in [*symbols, *([index] if index else [])]]
    inputs = {p.relative_to(store_path).as_posix(): file_sha256(p) for p in files}
    return frames, index_frame, inputs


def model_inputs(store_path: Path, card: ModelCard) -> dict[str, str]:
    """``{file: sha256}`` of a registered model's card and weights, and of its features
    module's copy when it has one (paths relative to the store): the inputs of a run that
    uses the model."""
    folder = ModelRegistry(store_path / "models").path(card.ref)
    files = [folder / CARD_FILE, folder / WEIGHTS_FILE]
    if card.feature_module:
        files.append(folder / str(card.feature_module.get("file") or MODULE_FILE))
    return {p.relative_to(store_path).as_posix(): file_sha256(p) for p in files}


def plan_training(store_path: Path, config: TrainRunConfig) -> TrainPlan:
    """Check ``config`` against the store (read-only): every refusal happens here."""
    cfg = config.resolved()
    get_architecture(cfg.arch)  # an unknown preset names the closest one
    selection = Selection.load(cfg.selection_file) if cfg.selection_file else None
    data_cfg = DatasetConfig(
        window=cfg.window, skip_short=True, selection=selection, labels=cfg.label_config()
    )
    frames, index, inputs = read_stored(store_path, cfg.symbols, cfg.timeframe, cfg.index)
    if cfg.selection_file:
        inputs[Path(cfg.selection_file).name] = file_sha256(cfg.selection_file)
    user = None
    if cfg.features_module:  # a leak refuses the request here, before anything is recorded
        user = load_checked(cfg.features_module, frames, index)
        user = dataclasses.replace(user, builtin=not cfg.own_features_only)
        inputs[Path(user.path).name if user.path else cfg.features_module] = user.digest
        ds = build_dataset(frames, data_cfg, index, compute=user.table, warmup=user.total_warmup)
    else:
        ds = build_dataset(frames, data_cfg, index)
    split = chronological_split(ds.times, lookahead=data_cfg.labels.lookahead)
    return TrainPlan(cfg, ds, split, data_cfg, inputs, user, index_warnings(cfg.index, index))


def train(
    store: str | os.PathLike[str],
    config: TrainRunConfig,
    *,
    on_epoch: OnEpoch | None = None,
    log: Log = print,
    db_url: str | None = None,
) -> TrainResult:
    """Train, register and record one model (see the module docstring); ``on_epoch`` is
    called after every epoch with its number and losses. A refused request raises before
    anything is written; Ctrl-C leaves the run cancelled and a valid checkpoint."""
    store_path = Path(store)
    plan = plan_training(store_path, config)
    t0 = time.perf_counter()
    with (
        RunRegistry(store_path, db_url) as registry,
        registry.start("train", plan.config.to_dict(), inputs=plan.inputs) as run,
    ):
        log(f"run {run.id}")
        for warning in plan.warnings:
            log(f"warning: {warning}")
        model, card, seeds = _fit(store_path, plan, run, on_epoch, log)
        registry.link_model(card.ref, run.id)
        _record(run, store_path, card, time.perf_counter() - t0, seeds is None)
        if seeds is not None:
            seeds.to_csv(run.add_artifact("seeds.csv"))
            run.log_metrics(seed_metrics(seeds))
        if plan.warnings:
            run.log_metrics({"warnings": list(plan.warnings)})
    return TrainResult(run.id, run.dir, plan.config, card, model, seeds, plan.warnings)


def _fit(
    store_path: Path, plan: TrainPlan, run: Run, on_epoch: OnEpoch | None, log: Log
) -> tuple[torch.nn.Module, ModelCard, pd.DataFrame | None]:
    """Train and register the model (with several seeds, the one of lowest validation loss,
    and the per-seed table); ``history.csv`` in the run's folder grows each epoch."""
    cfg, history = plan.config, run.add_artifact("history.csv")
    rows: list[dict[str, float]] = []

    def epoch_done(epoch: int, row: dict[str, float]) -> None:
        rows.append(row)
        write_history(history, rows)
        if on_epoch is not None:
            on_epoch(epoch, row)

    assert cfg.name is not None  # resolved
    work = checkpoint_dir(store_path, cfg.name)
    if cfg.seeds > 1:
        return fit_seeds(store_path, plan, work, run.id, epoch_done, log)
    model, card = train_on_dataset(
        plan.dataset, plan.split, cfg.arch, name=cfg.name,
        registry=ModelRegistry(store_path / "models"), train_cfg=cfg.train_config(),
        data_cfg=plan.data_cfg, work_dir=work, resume=cfg.resume,
        index_name=cfg.index, timeframe=cfg.timeframe, on_epoch=epoch_done,
        compare_lstm=cfg.compare_lstm, training_run=run.id, user=plan.user,
    )  # fmt: skip
    return model, card, None


def write_history(path: Path, rows: Sequence[Mapping[str, float]]) -> None:
    """The per-epoch losses as CSV: ``epoch`` (from 1) first, then the loss columns."""
    frame = pd.DataFrame(list(rows))
    frame["epoch"] = range(1, len(frame) + 1) if "epoch" not in frame else frame["epoch"] + 1
    frame = frame[["epoch", *(c for c in frame.columns if c != "epoch")]]
    tmp = path.with_name(f".{path.name}.tmp")
    frame.astype({"epoch": int}).to_csv(tmp, index=False)
    os.replace(tmp, path)


def _record(
    run: Run, store_path: Path, card: ModelCard, seconds: float, history: bool = True
) -> None:
    """The full history (with resumed epochs; with several seeds the file already holds every
    seed's), the card's copy and the final metrics."""
    if history:
        write_history(run.add_artifact("history.csv"), card.training.get("history", []))
    run.add_artifact((ModelRegistry(store_path / "models").path(card.ref) / CARD_FILE).resolve())
    run.log_metrics({"model": card.ref, **card_metrics(card), "seconds": seconds})


def card_metrics(card: ModelCard) -> dict[str, Any]:
    """A trained card's metrics as one flat mapping: ``{split}_{metric}`` for every split
    (``val``, ``test``, ``baselines_test``, ``lstm_test``), the out-of-sample report's
    figures (``oos_edge``, the summary line; ``oos_{head}_{model}_{metric}`` with the
    network's ``_lo`` / ``_hi``; ``oos_beat_{head}_{metric}_{baseline}``; see
    :func:`flat_report`), the best epoch, epochs run, the parameter
    count."""
    out: dict[str, Any] = {
        f"{split}_{name}": value
        for split, values in card.metrics.items()
        if isinstance(values, Mapping) and split not in ("report", "drift_reference")
        for name, value in values.items()
    }
    if isinstance(card.metrics.get("report"), Mapping):
        out |= flat_report(card.metrics["report"])
    t = card.training
    return out | {"best_epoch": t.get("best_epoch"), "epochs_run": t.get("epochs_run"),
                  "parameters": card.parameters}  # fmt: skip


def link_training_run(run: Run, card: ModelCard, log: Log) -> None:
    """Declare the run that trained ``card``'s model (when the card names one) as a parent
    of ``run``: that run then cannot be removed while ``run`` exists."""
    if not card.training_run:
        return
    try:
        run.depends_on(card.training_run)
    except RunNotFound:
        log(f"note: {card.ref}'s training run {card.training_run} is not in the run registry")


def flat_report(report: Mapping[str, Any], prefix: str = "oos") -> dict[str, Any]:
    """The report as flat scalars for a run's metrics: ``oos_edge`` (the summary), every
    model's metric values (``oos_{head}_{model}_{metric}``), the network's interval bounds
    (``..._lo``, ``..._hi``), and ``oos_beat_{head}_{metric}_{baseline}``."""
    out: dict[str, Any] = {f"{prefix}_edge": report["edge"]["summary"]}
    for head, rep in report["heads"].items():
        for model, metrics in rep["models"].items():
            for metric, m in metrics.items():
                key = f"{prefix}_{head}_{model}_{metric}"
                out[key] = m["value"]
                if model == "network":
                    out[f"{key}_lo"], out[f"{key}_hi"] = m["lo"], m["hi"]
    for row in report["comparison"]:
        for base, won in row["beat"].items():
            out[f"{prefix}_beat_{row['head']}_{row['metric']}_{base}"] = won
    return out
