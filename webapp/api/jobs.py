"""Starting work: ``backtest``, ``train``, ``data/import`` and ``data/download`` jobs, the jobs
list and cancel, and the kill switch.

Every request is checked against the store and the registry before a process starts: an
unknown model, symbol or preset is a 422 naming the field, and nothing is started. A training
job writing a model name that another unfinished job writes is refused (409).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from core.errors import UserError
from webapp.api.deps import jobs, settings, unprocessable
from webapp.jobs import Refused, check_request

router = APIRouter(tags=["jobs"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CostsBody(_Body):
    cash: float = 100_000.0
    commission: float = 0.001
    slippage: float = 0.001


class BacktestBody(_Body):
    """A backtest: a registered ``model`` (traded beside both baselines) or a ``baseline``."""

    symbols: list[str] = Field(min_length=1)
    model: str | None = None
    baseline: str | None = None
    start: str | None = None
    end: str | None = None
    timeframe: str = "1Day"
    serving: Literal["inprocess", "torchserve"] = "inprocess"
    costs: CostsBody = Field(default_factory=CostsBody)
    tearsheet: bool = True


class TrainBody(_Body):
    """A training run: a preset (``arch``) on stored symbols."""

    symbols: list[str] = Field(min_length=1)
    arch: str = "tiny"
    name: str | None = None
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(5e-4, gt=0)
    patience: int = Field(15, ge=1)
    window: int = Field(60, ge=2)
    seed: int = 0
    timeframe: str = "1Day"
    index: str | None = None


class ImportBody(_Body):
    """A CSV file on the server's disk to import (the options of ``btml data import``)."""

    path: str
    options: dict[str, Any] = Field(default_factory=dict)
    drop_invalid: bool = False
    replace: bool = False
    allow_jump: bool = False


class DownloadBody(_Body):
    """Symbols to fetch into the store from a data source (only what is missing)."""

    symbols: list[str] = Field(min_length=1)
    source: Literal["yahoo", "alpaca", "ccxt"] = "yahoo"
    timeframe: str = "1Day"
    start: str = "2000-01-01"
    end: str | None = None


class KillBody(_Body):
    """The kill switch: ``confirm`` must be the word ``KILL``."""

    mode: Literal["paper", "live"] = "paper"
    flatten: bool = False
    confirm: str


def _checked(request: Request, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """The workflow's own checks (in a job process): 422 naming the field when refused."""
    try:
        return check_request(settings(request).store, kind, params)
    except Refused as err:
        raise unprocessable(str(err), err.field) from err


@router.post("/backtest", status_code=status.HTTP_202_ACCEPTED)
def start_backtest(request: Request, body: BacktestBody) -> dict[str, Any]:
    """Start a backtest job (checked first: 422 and nothing started if it would be refused)."""
    params = _checked(request, "backtest", body.model_dump())
    return jobs(request).submit("backtest", params).as_dict()


@router.post("/train", status_code=status.HTTP_202_ACCEPTED)
def start_training(request: Request, body: TrainBody) -> dict[str, Any]:
    """Start a training job; its epochs stream on the WebSocket's ``training`` topic."""
    params = _checked(request, "train", body.model_dump())
    key = f"model:{params['name']}"
    busy = jobs(request).busy_key(key)
    if busy is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {busy.id} is already training model {params['name']!r}; "
            "wait for it or choose another name",
        )
    return jobs(request).submit("train", params, owner_key=key).as_dict()


@router.post("/data/import", status_code=status.HTTP_202_ACCEPTED)
def start_import(request: Request, body: ImportBody) -> dict[str, Any]:
    """Import a CSV file from the server's disk into the store, as a job."""
    from feeds.sources.csv_source import CsvOptions

    path = Path(body.path).expanduser()
    if not path.is_file():
        raise unprocessable(f"path: {body.path} is not a file on the dashboard's machine", "path")
    try:
        CsvOptions(**body.options)
    except (TypeError, UserError) as err:
        raise unprocessable(f"options: {err}", "options") from err
    params = {**body.model_dump(), "path": str(path.resolve())}
    return jobs(request).submit("import", params, owner_key=f"file:{path.resolve()}").as_dict()


@router.post("/data/download", status_code=status.HTTP_202_ACCEPTED)
def start_download(request: Request, body: DownloadBody) -> dict[str, Any]:
    """Download symbols into the store, as a job (progress per symbol)."""
    from feeds.timeframes import get_timeframe

    try:
        get_timeframe(body.timeframe)
    except UserError as err:
        raise unprocessable(f"timeframe: {err}", "timeframe") from err
    return jobs(request).submit("download", body.model_dump(), owner_key="download").as_dict()


@router.get("/jobs")
def list_jobs(request: Request) -> dict[str, Any]:
    """The jobs this dashboard started, newest first (finished ones included)."""
    return {"jobs": jobs(request).snapshot()}


@router.get("/jobs/{job_id}")
def get_job(request: Request, job_id: str) -> dict[str, Any]:
    job = jobs(request).get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return {**job.as_dict(), "log": list(job.log)}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    """Cancel a queued or running job (its run ends ``cancelled``)."""
    job = jobs(request).cancel(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job.as_dict()


@router.post("/live/kill", status_code=status.HTTP_202_ACCEPTED)
def kill_switch(request: Request, body: KillBody) -> dict[str, Any]:
    """Cancel every open order (``flatten``: and close every position) at Alpaca. Asks for
    ``confirm: "KILL"``; the intent is journaled before anything is sent."""
    if body.confirm != "KILL":
        raise unprocessable("confirm: type KILL to confirm the kill switch", "confirm")
    return jobs(request).submit("kill", body.model_dump(), owner_key="kill").as_dict()
