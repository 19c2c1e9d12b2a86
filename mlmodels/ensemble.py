"""Build, fit and evaluate an ensemble of registered models (``btml models ensemble``).

The members must read the same features over the same window at the same timeframe, with the
same horizons and index (the first difference is named when they do not), and be windowed
networks without a features module of their own. The combination is fit and evaluated on the
bars none of the members trained or validated on: the samples after the latest member's
validation range, on the symbols they share, split in time into a *fit* half (each member's
spread of predictions for ``zscore``, the non-negative least-squares weights for ``stack``)
and a *test* half, purged by the label horizon, where the ensemble and every member are
evaluated side by side; the card says whether the ensemble beat its best member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from core.errors import ConfigError, DataError
from mlmodels.dataset import DatasetConfig, WindowDataset, build_dataset
from mlmodels.evaluate import head_metrics, predict
from mlmodels.nets.ensemble import METHODS, ModelEnsemble
from mlmodels.nets.model import ModelConfig, build_model, count_parameters
from mlmodels.registry import ENSEMBLE_ARCH, ModelCard, ModelRegistry, code_version
from mlmodels.splits import chronological_split

MIN_SAMPLES = 100  # common out-of-sample samples needed to fit and test the combination


@dataclass(frozen=True)
class Member:
    ref: str
    weight: float = 1.0


def parse_members(text: str) -> list[Member]:
    """``"a:1=2,b"`` -> members ``a:1`` (weight 2) and ``b`` (its latest version, weight 1)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ref, _, weight = part.partition("=")
        try:
            w = float(weight) if weight else 1.0
        except ValueError as err:
            raise ConfigError(f"--members: weight {weight!r} of {ref} is not a number") from err
        if w <= 0:
            raise ConfigError(f"--members: weight of {ref} must be > 0, got {w}")
        out.append(Member(ref.strip(), w))
    if len(out) < 2:
        raise ConfigError("--members: an ensemble needs at least two models (a:1,b:2=2,...)")
    return out


def build_ensemble(config: Mapping[str, Any]) -> ModelEnsemble:
    """The network of an ensemble card's ``model_config`` (weights loaded by the caller)."""
    members = [build_model(ModelConfig.from_dict(m["model_config"])) for m in config["members"]]
    scalers = [(m["scaler"]["mean"], m["scaler"]["std"]) for m in config["members"]]
    return ModelEnsemble(members, config["weights"], scalers, config["method"], config.get("scale"))


def feature_difference(card: ModelCard, other: ModelCard) -> str:
    """How ``card``'s feature list differs from ``other``'s, in a phrase."""
    extra = [f for f in card.features if f not in other.features]
    lack = [f for f in other.features if f not in card.features]
    order = ", or in another order" if not extra and not lack else ""
    return (
        f"{card.ref} reads {len(card.features)} features, {other.ref} {len(other.features)}"
        f" ({card.ref} adds {extra[:5] or 'none'}, lacks {lack[:5] or 'none'}{order})"
    )


def check_members(cards: Sequence[ModelCard]) -> None:
    """Refuse members that cannot be combined, naming the first difference."""
    first = cards[0]
    for card in cards:
        if card.is_ensemble or card.streaming or card.feature_module:
            what = ("an ensemble" if card.is_ensemble else "a streaming preset" if card.streaming
                    else "trained with its own features module")  # fmt: skip
            raise ConfigError(
                f"{card.ref} is {what}: ensembles combine windowed models on the built-in features"
            )
    for card in cards[1:]:
        if card.features != first.features:
            raise ConfigError(f"{feature_difference(card, first)}; members must read the same")
        for field in ("window", "timeframe", "horizons", "index", "labels", "selection"):
            a, b = getattr(first, field), getattr(card, field)
            if a != b:
                raise ConfigError(
                    f"{card.ref} has {field} {b}, {first.ref} {a}; members must agree"
                )


def make_ensemble(
    store: str | Path, name: str, members: Sequence[Member], method: str = "mean"
) -> tuple[ModelEnsemble, ModelCard]:
    """Build, fit and evaluate the ensemble (module docstring); register with the registry."""
    from feeds.store import ParquetStore

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    registry = ModelRegistry(Path(store) / "models")
    loaded = [registry.load(m.ref) for m in members]
    cards = [c for _, c in loaded]
    check_members(cards)
    symbols = sorted(set.intersection(*(set(c.symbols) for c in cards)))
    if not symbols:
        raise ConfigError("the members share no symbol: nothing to fit or test the ensemble on")
    pstore = ParquetStore(store)
    frames = {s: pstore.read(s, cards[0].timeframe) for s in symbols}
    index = pstore.read(cards[0].index, cards[0].timeframe) if cards[0].index else None
    data_cfg = DatasetConfig(window=cards[0].window, labels=cards[0].label_cfg(),
                             selection=cards[0].selection_obj())  # fmt: skip
    ds = build_dataset(frames, data_cfg, index)
    ds.apply_scaler(cards[0].scaler_obj())
    fit, test = _halves(ds, cards)
    nets = [n for n, _ in loaded]
    scalers = [(c.scaler["mean"], c.scaler["std"]) for c in cards]
    equal = ModelEnsemble(nets, [1.0] * len(nets), scalers, "mean")
    preds = [_member_predict(equal, i, ds, fit) for i in range(len(nets))]
    scale = [max(float(np.std(p)), 1e-9) for p in preds]
    weights = [m.weight for m in members]
    if method == "stack":
        weights = _stack_weights(np.stack(preds, axis=1), ds.targets["ret_1"][fit])
    ensemble = ModelEnsemble(nets, weights, scalers, method, scale)
    ensemble.eval()
    config = {"arch": ENSEMBLE_ARCH, "method": method, "weights": [float(w) for w in ensemble.weights],
              "scale": scale, "streaming": False,
              "members": [{"ref": c.ref, "model_config": c.model_config, "scaler": c.scaler}
                          for c in cards]}  # fmt: skip
    card = _card(name, cards, ensemble, config, ds, fit, test, symbols)
    return ensemble, registry.register(ensemble, card)


def _halves(ds: WindowDataset, cards: Sequence[ModelCard]) -> tuple[np.ndarray, np.ndarray]:
    """The fit and test halves of the samples none of the members saw in training or
    validation."""
    seen_until = max(pd.Timestamp(c.date_ranges["val"][1]) for c in cards)
    unseen = np.flatnonzero(ds.times > seen_until)
    if len(unseen) < MIN_SAMPLES:
        raise DataError(
            f"the members' common out-of-sample range (after {seen_until.date()}) holds "
            f"{len(unseen)} samples; the ensemble needs {MIN_SAMPLES} to fit and test on"
        )
    part = chronological_split(ds.times[unseen], lookahead=ds_lookahead(cards[0]),
                               fractions=(0.5, 0.0, 0.5), min_samples=10)  # fmt: skip
    return unseen[part.train], unseen[part.test]


def ds_lookahead(card: ModelCard) -> int:
    return int(card.label_cfg().lookahead)


@torch.inference_mode()
def _member_predict(ens: ModelEnsemble, i: int, ds: WindowDataset, idx: np.ndarray) -> np.ndarray:
    """Member ``i``'s 1-bar return predictions on samples ``idx`` (its own scaling)."""
    out = []
    member: Any = ens.members[i]
    for b in range(0, len(idx), 1024):
        part = idx[b : b + 1024]
        x = ens._inputs(torch.from_numpy(ds.x(part)), i)
        out.append(member(x, torch.from_numpy(ds.position[part]))["price"][:, 0].numpy())
    return np.concatenate(out)


def _stack_weights(preds: np.ndarray, target: np.ndarray) -> list[float]:
    """Non-negative least squares of the target on the members' predictions, normalised
    (equal weights when every coefficient is zero)."""
    from scipy.optimize import nnls

    ok = np.isfinite(target)
    coef, _ = nnls(preds[ok].astype(np.float64), target[ok].astype(np.float64))
    if coef.sum() <= 0:
        return [1.0] * preds.shape[1]
    return [float(c) for c in coef / coef.sum()]


def _card(
    name: str, cards: Sequence[ModelCard], ens: ModelEnsemble, config: dict[str, Any],
    ds: WindowDataset, fit: np.ndarray, test: np.ndarray, symbols: list[str],
) -> ModelCard:  # fmt: skip
    first = cards[0]
    ens_test = head_metrics(predict(ens, ds, test), ds, test)
    members_test = {}
    for i, card in enumerate(cards):
        alone = _Alone(ens, i)
        members_test[card.ref] = head_metrics(predict(alone, ds, test), ds, test)
    best = max(members_test, key=lambda r: members_test[r]["price_1_ic"])
    rng = {
        k: [str(ds.times[v].min()), str(ds.times[v].max())]
        for k, v in (("fit", fit), ("test", test))
    }
    return ModelCard(
        name=name, arch=ENSEMBLE_ARCH, model_config=config, features=list(first.features),
        scaler=first.scaler, window=first.window, horizons=list(first.horizons),
        labels=first.labels, price_scale=first.price_scale, symbols=symbols, index=first.index,
        timeframe=first.timeframe,
        date_ranges={"train": rng["fit"], "val": rng["fit"], "test": rng["test"]},
        metrics={"test": ens_test, "members_test": members_test, "best_member": best,
                 "beats_best_member": ens_test["price_1_ic"] > members_test[best]["price_1_ic"],
                 "drift_reference": _drift_reference(first, ens, ds, fit)},
        training={"members": [c.ref for c in cards], "method": config["method"],
                  "weights": config["weights"], "fit_samples": int(len(fit))},
        parameters=count_parameters(ens), code_version=code_version(),
        created_at=pd.Timestamp.now(tz="UTC").isoformat(),
    )  # fmt: skip


def _drift_reference(
    first: ModelCard, ens: ModelEnsemble, ds: WindowDataset, fit: np.ndarray
) -> dict[str, Any] | None:
    """The first member's feature bins (the ensemble's input scaling is its) and the
    ensemble's own output bins on the fit half (averaging narrows the outputs)."""
    from monitoring.drift import bins

    ref = first.metrics.get("drift_reference")
    if not isinstance(ref, dict):
        return None
    pred = predict(ens, ds, fit)
    outputs = {"return_1": pred["price"][:, 0], "p_up": pred["direction"][:, 2]}
    return {
        **ref,
        "outputs": {k: bins(np.asarray(v, dtype=np.float64)) for k, v in outputs.items()},
    }


class _Alone(nn.Module):
    """Member ``i`` of an ensemble on the ensemble's (first member's) scaling."""

    def __init__(self, ens: ModelEnsemble, i: int) -> None:
        super().__init__()
        self.ens, self.i = ens, i

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.ens.members[self.i](self.ens._inputs(x, self.i), pos)  # type: ignore[no-any-return]
