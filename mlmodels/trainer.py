"""Training: AdamW, cosine warm restarts, early stopping, clipping, checkpoints, resume.

Defaults follow the seed: AdamW (lr 5e-4, weight decay 1e-5), CosineAnnealingWarmRestarts
(T_0 = 10), early stopping with patience 15 on the validation loss (always with the full task
weights, whatever phase the curriculum is in), gradient clipping at 1.0, deterministic seeding.
Two additions against the direction head settling on the class prior: the direction classes
are weighted by the training split's frequencies (``LossConfig.direction_weighting``), and
validation, ``best.pt`` and the final model use an exponential moving average of the weights
(``ema``, per optimiser step, warmed up as ``min(ema, (1 + k) / (10 + k))`` at step ``k``;
0 turns it off): on a weak signal single-step weights are noisy enough to bury it. After
training, :func:`refit_direction` refits the direction head's output layer on the training
split (``refit_direction``; see there why).
After every epoch ``last.pt`` (model, optimiser, scheduler, history) is written atomically, and
``best.pt`` (weights only) whenever validation improves, so an interrupted run (Ctrl-C, a kill)
leaves a valid checkpoint and ``resume=True`` continues where it stopped. Checkpoints load with
``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import random
from collections.abc import Callable, Iterator
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
from mlmodels.losses import Curriculum, LossConfig, MultiTaskLoss, balanced_class_weights
from mlmodels.nets.streaming import detach_state
from mlmodels.stream import is_streaming, piece_batch, sample_batches, tbptt_pieces


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
    ema: float = 0.95
    refit_direction: bool = True
    tbptt: int = 32
    """Streaming presets: bars per truncated-BPTT chunk; a step trains ``batch_size // tbptt``
    streams (at least 2) over one chunk, and a stream is ``TBPTT_CHUNKS`` chunks long."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not 1 <= self.batch_size <= 65536:
            raise ConfigError(f"batch_size must be in [1, 65536], got {self.batch_size}")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1) (0: off), got {self.ema}")
        if not 2 <= self.tbptt <= 1024:
            raise ConfigError(f"tbptt must be in [2, 1024] bars, got {self.tbptt}")
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


class WeightAverage:
    """An exponential moving average of a model's floating-point weights (see the module
    docstring); other buffers follow the model's."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)
        self.steps += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights inside the block, the live ones restored after it."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(live)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


TBPTT_CHUNKS = 8


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
        weights = balanced_class_weights(ds.targets["direction"][train])
        self.loss = MultiTaskLoss(cfg.loss, torch.tensor(scale), torch.tensor(weights))
        self.loss.to(self.device)
        self.average = WeightAverage(self.model, cfg.ema) if cfg.ema else None
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
            "average": self.average.state_dict() if self.average else None,
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
            if self.average is not None:
                if ck.get("average"):
                    self.average.load_state_dict(ck["average"])
                else:  # a checkpoint from before averaging: start the average here
                    self.average = WeightAverage(self.model, self.cfg.ema)
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
        weights = (
            cfg.curriculum.weights(epoch, cfg.epochs, cfg.loss.weights) if cfg.curriculum else None
        )
        self.model.train()
        if is_streaming(self.model):
            return self._stream_epoch(epoch, rng, weights)
        order = rng.permutation(self.train_idx)
        n_batches = math.ceil(len(order) / cfg.batch_size)
        if cfg.max_batches:
            n_batches = min(n_batches, cfg.max_batches)
        totals: dict[str, float] = {}
        for b in range(n_batches):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x, pos, y = batch_tensors(self.ds, idx, self.device)
            loss, parts = self.loss(self.model(x, pos), y, weights)
            self._step(loss, epoch + (b + 1) / n_batches)
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                totals[k] = totals.get(k, 0.0) + v / n_batches
        return {f"train_{k}": v for k, v in totals.items()}

    def _step(self, loss: torch.Tensor, when: float) -> None:
        """One optimiser step on ``loss``; ``when`` is the epoch's fraction for the scheduler."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        if self.average is not None:
            self.average.update(self.model)
        self.sched.step(when)

    def _stream_epoch(
        self, epoch: int, rng: np.random.Generator, weights: dict[str, float] | None
    ) -> dict[str, float]:
        """Truncated BPTT over pieces of the training streams (:mod:`mlmodels.stream`)."""
        cfg, chunk = self.cfg, self.cfg.tbptt
        model: Any = self.model
        pieces = tbptt_pieces(self.ds, self.train_idx, chunk * TBPTT_CHUNKS, rng)
        per_step = max(2, cfg.batch_size // chunk)
        groups = [pieces[g : g + per_step] for g in range(0, len(pieces), per_step)]
        n_steps = sum(-(-max(len(p.samples) for p in g) // chunk) for g in groups)
        if cfg.max_batches:
            n_steps = min(n_steps, cfg.max_batches)
        totals: dict[str, float] = {}
        done = 0
        for group in groups:
            warm, x, pos, samples = piece_batch(self.ds, group)
            with torch.no_grad():
                zeros = torch.zeros(*warm.shape[:2], 3)
                state = model.forward_chunk(warm, zeros, model.init_state(len(group)))[1]
            for c in range(0, x.shape[1], chunk):
                if done == n_steps:
                    break
                out, state = model.forward_chunk(x[:, c : c + chunk], pos[:, c : c + chunk], state)
                state = detach_state(state)
                valid = torch.from_numpy(samples[:, c : c + chunk] >= 0)
                idx = samples[:, c : c + chunk][valid.numpy()]
                y = {k: torch.from_numpy(self.ds.targets[k][idx]) for k in LABEL_COLUMNS}
                loss, parts = self.loss({k: v[valid] for k, v in out.items()}, y, weights)
                done += 1
                self._step(loss, epoch + done / n_steps)
                for k, v in {"loss": float(loss.detach()), **parts}.items():
                    totals[k] = totals.get(k, 0.0) + v / n_steps
        return {f"train_{k}": v for k, v in totals.items()}

    def averaged(self) -> contextlib.AbstractContextManager[None]:
        """The weights validation and ``best.pt`` use: the moving average when on."""
        return self.average.applied(self.model) if self.average else contextlib.nullcontext()

    @torch.inference_mode()
    def evaluate_loss(self, idx: np.ndarray) -> dict[str, float]:
        """Mean full-weight loss and task losses over samples ``idx`` (current weights)."""
        self.model.eval()
        totals: dict[str, float] = {}
        n = 0
        for part, out in sample_batches(self.model, self.ds, idx):
            y = {c: torch.from_numpy(self.ds.targets[c][part]) for c in LABEL_COLUMNS}
            loss, parts = self.loss(out, y)
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
            with self.averaged():
                row.update({f"val_{k}": v for k, v in self.evaluate_loss(self.val_idx).items()})
                if row["val_loss"] < s.best_val - 1e-9:
                    s.best_val, s.best_epoch, s.bad_epochs = row["val_loss"], s.epoch, 0
                    atomic_save(self.model.state_dict(), self.out / "best.pt")
                else:
                    s.bad_epochs += 1
            row["epoch"] = float(s.epoch)
            s.history.append(row)
            s.epoch += 1
            atomic_save(self._checkpoint(), self.out / "last.pt")
            if on_epoch:
                on_epoch(s.epoch, row)
        return s


@dataclass(frozen=True)
class DirectionRefit:
    """What :func:`refit_direction` chose: the hidden layer read (``source``), the L2 strength
    ``c`` (None: the trained head was kept) and the validation log-losses behind the choice."""

    source: str
    c: float | None
    val_logloss: float
    val_logloss_trained: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _head_layers(model: nn.Module) -> dict[str, nn.Sequential]:
    """The direction head's MLP and each MLP on the same fused input it may read from."""
    heads = getattr(model, "dir_heads", None)
    heads = getattr(model, "heads", None) if heads is None else heads
    if heads is None or not isinstance(getattr(heads, "direction", None), nn.Sequential):
        raise ConfigError(f"{type(model).__name__} has no MultiTaskHeads direction head to refit")
    same_input = (
        ("direction", "price") if getattr(model, "heads", None) is heads else ("direction",)
    )
    return {name: getattr(heads, name) for name in same_input}


@torch.inference_mode()
def _hidden(model: nn.Module, mlp: nn.Sequential, ds: WindowDataset, idx: np.ndarray) -> np.ndarray:
    """The input of ``mlp``'s last layer (its hidden features) for samples ``idx``."""
    parts: list[np.ndarray] = []
    hook = mlp[-1].register_forward_pre_hook(lambda _m, a: parts.append(a[0].float().numpy()))
    try:
        model.eval()
        for _ in sample_batches(model, ds, idx):
            pass
    finally:
        hook.remove()
    return np.concatenate(parts)


REFIT_C: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
_REFIT_CELLS = 20_000_000  # training samples x hidden units read by the refit, at most


def refit_direction(
    model: nn.Module, ds: WindowDataset, train: np.ndarray, val: np.ndarray, seed: int = 0
) -> DirectionRefit:
    """Refit the direction head's output layer by multinomial logistic regression, in place.

    The cross-entropy of a weak three-class signal improves so little on the class prior
    that the head learns it far more slowly than the price head learns the same signal from
    continuous returns. So, after training, an L2-regularised logistic regression is fit on
    the training split (at most ``_REFIT_CELLS`` / hidden samples) over the hidden features of
    the direction head and, in a single-trunk model, of the price head (same fused input);
    the source and ``C`` in ``REFIT_C`` with the lowest validation log-loss win, and only if
    they beat the trained head's. The winner is written into the network's weights (with the
    price source, its first layer is copied into the direction head's), so serving reads the
    same probabilities; they are fit unweighted, hence calibrated to the class frequencies.
    With two classes in the training split (``dead_zone=0``) the absent class gets a logit
    of -30; with one, nothing is refit.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    layers = _head_layers(model)
    last = layers["direction"][-1]
    assert isinstance(last, nn.Linear)
    hidden = int(last.in_features)
    rng = np.random.default_rng(seed)
    n = min(len(train), max(1000, _REFIT_CELLS // hidden))
    sub = np.sort(rng.choice(train, n, replace=False)) if n < len(train) else train
    y_tr, y_va = (ds.targets["direction"][i].astype(int) for i in (sub, val))
    h_va = _hidden(model, layers["direction"], ds, val)
    with torch.inference_mode():
        logits = layers["direction"][-1](torch.from_numpy(h_va))
    trained = float(log_loss(y_va, torch.softmax(logits, -1).numpy(), labels=[0, 1, 2]))
    best: tuple[float, str, float | None, Any] = (trained, "direction", None, None)
    if len(np.unique(y_tr)) >= 2:
        for source, mlp in layers.items():
            h_tr = _hidden(model, mlp, ds, sub)
            h_v = h_va if source == "direction" else _hidden(model, mlp, ds, val)
            for c in REFIT_C:
                fit = _softmax_layer(LogisticRegression(C=c, max_iter=1000).fit(h_tr, y_tr))
                loss = float(log_loss(y_va, _softmax(h_v @ fit[0].T + fit[1]), labels=[0, 1, 2]))
                if loss < best[0] - 1e-6:
                    best = (loss, source, c, fit)
    if best[3] is not None:
        _install_direction(layers, best[1], best[3])
    return DirectionRefit(
        source=best[1], c=best[2], val_logloss=best[0], val_logloss_trained=trained
    )


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


_ABSENT = -30.0  # the logit of a class the training split never had (probability ~1e-13)


def _softmax_layer(fit: Any) -> tuple[np.ndarray, np.ndarray]:
    """A fitted logistic regression as the (3, hidden) weights and (3,) bias of a softmax
    layer over down / flat / up (a binary fit split into two opposite rows)."""
    classes = np.asarray(fit.classes_).astype(int)
    coef, icpt = np.asarray(fit.coef_), np.asarray(fit.intercept_)
    w = np.zeros((3, coef.shape[1]))
    b = np.full(3, _ABSENT)
    if len(classes) == 2:
        w[classes[1]], w[classes[0]] = coef[0] / 2, -coef[0] / 2
        b[classes[1]], b[classes[0]] = icpt[0] / 2, -icpt[0] / 2
    else:
        w[classes], b[classes] = coef, icpt
    return w, b


@torch.no_grad()
def _install_direction(
    layers: dict[str, nn.Sequential], source: str, fit: tuple[np.ndarray, np.ndarray]
) -> None:
    """Write a softmax layer over ``source``'s hidden features into the direction head
    (copying ``source``'s first layer when it is another head's)."""
    head = layers["direction"]
    if source != "direction":
        head[0].load_state_dict(layers[source][0].state_dict())
    last = head[-1]
    assert isinstance(last, nn.Linear)
    last.weight.copy_(torch.as_tensor(fit[0], dtype=last.weight.dtype))
    last.bias.copy_(torch.as_tensor(fit[1], dtype=last.bias.dtype))
