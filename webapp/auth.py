"""The access token: like Jupyter's, one secret per store, asked for by every API call.

The token comes from ``BTML_DASHBOARD_TOKEN`` when set, otherwise from ``{store}/dashboard/token``
(created with mode 0600 on first start). A request proves it with ``Authorization: Bearer
TOKEN``, or with the ``btml_token`` cookie that ``/?token=TOKEN`` or ``POST /api/v1/login`` set
(HttpOnly, SameSite=Strict). The WebSocket also checks that its Origin is this server.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from fastapi import HTTPException, Request, WebSocket, status

TOKEN_ENV = "BTML_DASHBOARD_TOKEN"
COOKIE = "btml_token"


def token_file(store: Path) -> Path:
    return store / "dashboard" / "token"


def load_token(store: Path, env: dict[str, str] | None = None) -> str:
    """The token: the environment's, else the store's file (created, mode 0600, if missing)."""
    env = dict(os.environ) if env is None else env
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV]
    path = token_file(store)
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        text = path.read_text().strip()
        if text:
            return text
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def presented(headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
    """The token a request presents (header first, then cookie), or None."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return str(auth[7:].strip())
    return cookies.get(COOKIE)


def matches(given: str | None, token: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), token.encode())


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries the token."""
    token: str = request.app.state.token
    if not matches(presented(request.headers, request.cookies), token):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong token: open the URL btml dashboard printed, or send "
            "Authorization: Bearer TOKEN",
            headers={"WWW-Authenticate": "Bearer"},
        )


def websocket_allowed(ws: WebSocket) -> str | None:
    """Why this WebSocket is refused (None: allowed): the token, then the Origin."""
    token: str = ws.app.state.token
    given = presented(ws.headers, ws.cookies) or ws.query_params.get("token")
    if not matches(given, token):
        return "missing or wrong token"
    origin = ws.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != ws.headers.get("host", ""):
        return f"origin {origin} is not this server"
    return None
