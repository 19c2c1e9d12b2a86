"""The FastAPI application: ``create_app(settings)``; ``serve(settings)`` runs it under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from core.errors import ConfigError
from webapp.api import data, jobs, live, models, runs, system, ws
from webapp.auth import COOKIE, load_token, matches, require_token
from webapp.events import Hub
from webapp.jobs import JobManager
from webapp.settings import DashboardSettings, is_loopback
from webapp.watch import AlertWatch, JournalWatch, health_loop, health_now, watch_loop
from workflows.runs import RunRegistry

STATIC = Path(__file__).resolve().parent / "static"
API = "/api/v1"
KEEP_ON_LOSS = {"params.json", "metrics.json", "run.json", "job.log", "trials.json"}


class Login(BaseModel):
    token: str


def recover_lost(settings: DashboardSettings) -> list[str]:
    """Mark ``lost`` the runs whose process died (a dashboard killed mid-job) and remove their
    partial artefacts (the run's record, parameters and log stay)."""
    try:
        with RunRegistry(settings.store, settings.db_url) as reg:
            lost = reg.mark_lost()
            for run_id in lost:
                folder = reg.get(run_id).dir
                for p in folder.iterdir() if folder.is_dir() else []:
                    if p.name not in KEEP_ON_LOSS:
                        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            return lost
    except Exception:  # the database is down: health says so; nothing to recover now
        return []


def _api_router() -> APIRouter:
    api = APIRouter(prefix=API, dependencies=[Depends(require_token)])
    for module in (system, data, models, runs, jobs, live):
        api.include_router(module.router)
    return api


def _session_routes(app: FastAPI) -> None:
    @app.post(f"{API}/login", tags=["auth"])
    def login(body: Login, response: Response) -> dict[str, bool]:
        """Check a token and set the session cookie (HttpOnly, SameSite=Strict)."""
        if not matches(body.token, app.state.token):
            response.status_code = status.HTTP_401_UNAUTHORIZED
            return {"ok": False}
        response.set_cookie(COOKIE, body.token, httponly=True, samesite="strict")
        return {"ok": True}

    @app.get(f"{API}/session", tags=["auth"], dependencies=[Depends(require_token)])
    def session() -> dict[str, bool]:
        """200 when the request carries the token (the page asks for it on 401)."""
        return {"ok": True}


def _page_routes(app: FastAPI) -> None:
    if (STATIC / "assets").is_dir():
        app.mount("/assets", StaticFiles(directory=STATIC / "assets"), name="assets")

    @app.get("/{path:path}", include_in_schema=False)
    def page(request: Request, path: str) -> Response:
        """The single-page app; ``?token=`` once sets the cookie and drops it from the URL."""
        if path.startswith("api/"):
            return Response(status_code=status.HTTP_404_NOT_FOUND)
        token = request.query_params.get("token")
        if token is not None and matches(token, app.state.token):
            resp = RedirectResponse(f"/{path}", status.HTTP_303_SEE_OTHER)
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return resp
        index = STATIC / "index.html"
        if not index.exists():
            return HTMLResponse("<p>The dashboard's frontend is not built: run <code>make "
                                "frontend</code> (npm ci, vite build).</p>", 503)  # fmt: skip
        return FileResponse(index)


def _running(app: FastAPI) -> Any:
    return lambda: sum(j["state"] == "running" for j in app.state.jobs.snapshot())


def create_app(settings: DashboardSettings) -> FastAPI:
    """The dashboard's app over ``settings.store`` (see the package docstring)."""
    hub = Hub()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        app.state.lost = await asyncio.to_thread(recover_lost, settings)
        watch = JournalWatch(settings, hub)
        alerts = AlertWatch(settings, hub)
        hub.add_snapshot("fills", watch.snapshot_fills)
        hub.add_snapshot("signals", watch.snapshot_signals)
        hub.add_snapshot("alerts", alerts.snapshot)
        tasks = [
            asyncio.create_task(watch_loop(watch, settings.poll_seconds)),
            asyncio.create_task(watch_loop(alerts, settings.poll_seconds)),
            asyncio.create_task(health_loop(hub, settings, _running(app), 5.0)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.to_thread(app.state.jobs.close)

    app = FastAPI(title="backtrader-ml dashboard", version="1", lifespan=lifespan,
                  openapi_url=f"{API}/openapi.json", docs_url=f"{API}/docs", redoc_url=None)  # fmt: skip
    app.state.settings = settings
    app.state.token = settings.token or load_token(settings.store)
    app.state.hub = hub
    app.state.jobs = JobManager(settings.store, settings.db_url, hub.publish, settings.max_jobs)
    app.state.lost = []
    hub.add_snapshot("jobs", app.state.jobs.snapshot)
    hub.add_snapshot("training", lambda: None)
    hub.add_snapshot("health", lambda: health_now(settings, _running(app)()))
    app.include_router(_api_router())
    app.include_router(ws.router, prefix=API)
    _session_routes(app)
    _page_routes(app)
    return app


def serve(settings: DashboardSettings, log: Any = print) -> None:
    """Run the dashboard under uvicorn until Ctrl-C."""
    import uvicorn

    check_port(settings.host, settings.port)
    app = create_app(settings)
    log(f"dashboard: http://{settings.host}:{settings.port}/?token={app.state.token}")
    if not is_loopback(settings.host):
        log("warning: reachable from other machines; put TLS in a reverse proxy in front of it")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


def check_port(host: str, port: int) -> None:
    """Refuse (ConfigError) an address that cannot be bound, before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); "
                "choose another with --port"
            ) from err
