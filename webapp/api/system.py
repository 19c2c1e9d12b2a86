"""``system/health``: versions, the store, the database, TorchServe and the broker, no secrets."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from fastapi import APIRouter, Request

from serving.server_config import ServerConfig
from serving.state import read_state, stale_reason
from webapp.api.deps import settings
from webapp.watch import database_status

router = APIRouter(tags=["system"])
PACKAGES = ("backtrader-ml", "backtrader", "torch", "pandas", "fastapi", "alpaca-py")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def serving_status(request: Request) -> dict[str, Any]:
    s = settings(request)
    cfg = ServerConfig(home=s.store / "serving", registry=s.store / "models")
    state = read_state(cfg)
    if state is None:
        return {"running": False, "note": stale_reason(cfg)}
    return {"running": True, "pid": state.pid, "inference": f"127.0.0.1:{cfg.inference_port}"}


def broker_status(request: Request) -> dict[str, Any]:
    """Which journals exist (paper, live) and their size; never a key."""
    s = settings(request)
    return {"journals": [{"name": p.name, "bytes": p.stat().st_size} for p in s.journal_paths]}


@router.get("/system/health")
def health(request: Request) -> dict[str, Any]:
    """Versions, store, run database, TorchServe and the broker's journals at a glance."""
    s = settings(request)
    db = database_status(s)
    return {
        "ok": db["ok"], "versions": versions(),
        "store": {"path": str(s.store.resolve()), "exists": s.store.is_dir()},
        "database": db, "serving": serving_status(request), "broker": broker_status(request),
        "jobs": {"running": sum(j["state"] == "running" for j in request.app.state.jobs.snapshot()),
                 "max": s.max_jobs},
    }  # fmt: skip
