"""``runs`` (list, show, compare, cancel), ``backtest/results`` and ``training/metrics``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import FileResponse

from webapp.api.deps import jobs, registry, unprocessable
from workflows.runs_model import STATUSES, RunRecord

router = APIRouter(tags=["runs"])
MAX_POINTS = 2000


@router.get("/runs")
def list_runs(
    request: Request,
    kind: str | None = None,
    status_: str | None = Query(None, alias="status"),
    limit: int = Query(100, ge=1, le=10_000),
    before: str | None = Query(None, description="only runs older than this id (the next page)"),
) -> dict[str, Any]:
    """Runs, newest first (``kind``: backtest, train, walkforward, ...; ``status``), a page of
    ``limit``; ``next`` is the ``before`` of the following page (None on the last)."""
    if status_ is not None and status_ not in STATUSES:
        raise unprocessable(f"status must be one of {', '.join(STATUSES)}", "status")
    with registry(request) as reg:
        runs = reg.list(kind, status_, limit, before)
    return {"runs": [row(r) for r in runs], "next": runs[-1].id if len(runs) == limit else None}


def row(r: RunRecord) -> dict[str, Any]:
    """A run in a list: what, when, how it ended, its parameters and metrics."""
    return {"id": r.id, "kind": r.kind, "status": r.status, "started_at": r.started_at.isoformat(),
            "ended_at": r.ended_at.isoformat() if r.ended_at else None, "seconds": r.seconds,
            "error": r.error, "params": dict(r.params), "metrics": dict(r.metrics)}  # fmt: skip


@router.get("/runs/compare")
def compare(request: Request, ids: str) -> dict[str, Any]:
    """The metrics of several runs side by side (``ids=A,B,...``)."""
    with registry(request) as reg:
        return reg.compare([i for i in ids.split(",") if i]).to_dict()


@router.get("/runs/{run_id}")
def show(request: Request, run_id: str) -> dict[str, Any]:
    """One run: parameters, metrics, inputs, artefacts, status, and the job log if any."""
    with registry(request) as reg:
        rec = reg.get(run_id)
        out = rec.to_dict()
        log = rec.dir / "job.log"
        out["job_log"] = log.read_text()[-20_000:] if log.exists() else None
        out["trials"] = reg.trials(rec.id)[:200]
        return out


@router.post("/runs/{run_id}/cancel")
def cancel_run(request: Request, run_id: str) -> dict[str, Any]:
    """Cancel the dashboard job that is running this run."""
    with registry(request) as reg:
        rid = reg.get(run_id).id
    for job in jobs(request).snapshot():
        if job["run_id"] == rid and job["state"] in ("queued", "running"):
            cancelled = jobs(request).cancel(job["id"])
            assert cancelled is not None
            return cancelled.as_dict()
    raise HTTPException(status.HTTP_409_CONFLICT, f"run {rid} is not a running dashboard job")


def _curves(returns: pd.DataFrame) -> dict[str, Any]:
    """Each strategy's growth of 1, thinned to at most ``MAX_POINTS`` points."""
    step = max(1, len(returns) // MAX_POINTS)
    equity = (1 + returns.fillna(0.0)).cumprod().iloc[::step]
    times = [int(pd.Timestamp(t).timestamp()) for t in equity.index]
    return {str(c): [{"time": t, "value": float(v)} for t, v in zip(times, equity[c], strict=True)]
            for c in equity.columns}  # fmt: skip


@router.get("/backtest/results/{run_id}")
def results(request: Request, run_id: str) -> dict[str, Any]:
    """A backtest or walk-forward's equity curves (the strategy and its baselines), metrics
    and whether it has a tearsheet."""
    with registry(request) as reg:
        rec = reg.get(run_id)
    path = rec.dir / "returns.parquet"
    if not path.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {rec.id} ({rec.kind}) has no returns")
    return {"run": rec.summary(), "metrics": dict(rec.metrics), "curves": _curves(pd.read_parquet(path)),
            "tearsheet": (rec.dir / "tearsheet.html").exists()}  # fmt: skip


@router.get("/backtest/results/{run_id}/tearsheet")
def tearsheet(request: Request, run_id: str) -> FileResponse:
    """The run's QuantStats tearsheet (HTML)."""
    with registry(request) as reg:
        rec = reg.get(run_id)
    path = Path(rec.dir) / "tearsheet.html"
    if not path.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {rec.id} has no tearsheet")
    return FileResponse(path, media_type="text/html")


@router.get("/training/metrics/{run_id}")
def training_metrics(request: Request, run_id: str) -> dict[str, Any]:
    """A training run's losses per epoch and per task (``history.csv``, growing while it runs)."""
    with registry(request) as reg:
        rec = reg.get(run_id)
    path = rec.dir / "history.csv"
    if not path.exists():
        return {"run_id": rec.id, "status": rec.status, "epochs": []}
    frame = pd.read_csv(path)
    return {"run_id": rec.id, "status": rec.status,
            "epochs": frame.where(frame.notna(), None).to_dict(orient="records")}  # fmt: skip
