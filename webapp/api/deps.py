"""What every route needs: the app's settings, registries and error mapping."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import HTTPException, Request, status
from sqlalchemy.exc import SQLAlchemyError

from core.errors import BtmlError, UserError
from webapp.jobs import JobManager
from webapp.settings import DashboardSettings
from workflows.errors import RunNotFound
from workflows.runs import RunRegistry


def settings(request: Request) -> DashboardSettings:
    s: DashboardSettings = request.app.state.settings
    return s


def jobs(request: Request) -> JobManager:
    m: JobManager = request.app.state.jobs
    return m


@contextmanager
def registry(request: Request) -> Iterator[RunRegistry]:
    """The run registry; a database that cannot be opened is a 503 that says why."""
    s = settings(request)
    try:
        reg = RunRegistry(s.store, s.db_url)
    except (BtmlError, OSError, SQLAlchemyError) as err:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"run registry: {err}") from err
    try:
        yield reg
    except RunNotFound as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(err)) from err
    except UserError as err:
        raise unprocessable(str(err)) from err
    except (BtmlError, SQLAlchemyError) as err:  # the database went away or is locked
        msg = str(err).splitlines()[0]
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"run registry: {msg}") from err
    finally:
        reg.close()


def unprocessable(message: str, field: str | None = None) -> HTTPException:
    """A 422 shaped like FastAPI's own: ``detail`` is a list of ``{loc, msg, type}``; the
    message names the field."""
    loc: list[Any] = ["body", field] if field else ["body"]
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [{"loc": loc, "msg": message, "type": "value_error"}],
    )
