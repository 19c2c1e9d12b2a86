"""``models``: the registry and its model cards, each marked whether it is its name's champion.

A name's champion is the version ``NAME`` alone means (:meth:`ModelRegistry.path`): the version
promoted last (``btml models promote``/``rollback``), else the latest.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status

from core.errors import BtmlError, ModelNotFound
from mlmodels.registry import ModelRegistry
from webapp.api.deps import settings

router = APIRouter(tags=["models"])


def card_summary(card: Any) -> dict[str, Any]:
    return {"ref": card.ref, "name": card.name, "version": card.version, "arch": card.arch,
            "symbols": card.symbols, "timeframe": card.timeframe, "parameters": card.parameters,
            "created_at": card.created_at, "training_run": card.training_run,
            "metrics": card.metrics, "date_ranges": card.date_ranges}  # fmt: skip


def champion_version(reg: ModelRegistry, name: str) -> tuple[int | None, str | None]:
    """The version ``name`` alone resolves to (the promoted one, else the latest), or None
    and why (an unreadable champion record, or a champion no longer in the registry)."""
    versions = reg.versions(name)
    try:
        promoted = reg.champion(name)
    except BtmlError as err:
        return None, f"{name}: {err}"
    if promoted is None:
        return (versions[-1] if versions else None), None
    if promoted not in versions:
        return None, f"{name}: champion v{promoted} is no longer in the registry"
    return promoted, None


@router.get("/models")
def list_models(request: Request) -> dict[str, Any]:
    """Every registered model version, newest version first within each name; ``champion``
    is true on the version the name alone means (see the module docstring). ``errors``: the
    cards and champion records that could not be read."""
    reg = ModelRegistry(settings(request).store / "models")
    out, errors = [], []
    for name in reg.names():
        champion, why = champion_version(reg, name)
        if why:
            errors.append(why)
        for v in reversed(reg.versions(name)):
            try:
                out.append({**card_summary(reg.card(f"{name}:{v}")), "champion": v == champion})
            except BtmlError as err:
                errors.append(f"{name}:{v}: {err}")
    return {"models": out, "errors": errors}


@router.get("/models/presets")
def presets() -> dict[str, Any]:
    """The architecture presets a training job can use, and the backtest baselines."""
    from analyzers.backtest import BASELINES
    from mlmodels.presets import ARCHITECTURES

    return {"presets": sorted(ARCHITECTURES), "baselines": list(BASELINES)}


@router.get("/models/{ref}")
def model_card(request: Request, ref: str) -> dict[str, Any]:
    """One model card in full (``NAME`` for its champion, or ``NAME:VERSION``), with
    ``champion``: whether it is the version the name alone means."""
    reg = ModelRegistry(settings(request).store / "models")
    try:
        card = reg.card(ref)
    except ModelNotFound as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err
    champion, _ = champion_version(reg, card.name)
    return {**dataclasses.asdict(card), "champion": card.version == champion}
