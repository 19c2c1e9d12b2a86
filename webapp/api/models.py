"""``models``: the registry and its model cards."""

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


@router.get("/models")
def list_models(request: Request) -> dict[str, Any]:
    """Every registered model version, newest version first within each name."""
    reg = ModelRegistry(settings(request).store / "models")
    out, errors = [], []
    for name in reg.names():
        for v in reversed(reg.versions(name)):
            try:
                out.append(card_summary(reg.card(f"{name}:{v}")))
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
    """One model card in full (``NAME`` for the latest version, or ``NAME:VERSION``)."""
    reg = ModelRegistry(settings(request).store / "models")
    try:
        card = reg.card(ref)
    except ModelNotFound as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err
    return dataclasses.asdict(card)
