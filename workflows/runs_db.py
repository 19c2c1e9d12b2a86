"""The run registry's database: SQLAlchemy 2 models, the engine, and the Alembic upgrade.

SQLite (a file in the store) by default, any SQLAlchemy URL otherwise (PostgreSQL through
``postgresql+psycopg://``). The schema is created and upgraded only by the Alembic
migrations in ``workflows/migrations``; :func:`migrate` runs them to ``head`` whenever a
registry opens. Several processes may open the same database at once: on SQLite a file lock
serialises the upgrade, on PostgreSQL a transaction-scoped advisory lock does.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from filelock import FileLock
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.sqlite import foreign_header, sqlite_engine
from workflows.errors import BadRegistryURL, RegistryError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "runs_alembic_version"  # not "alembic_version": the database may be shared
BUSY_TIMEOUT_S = 60.0
_PG_LOCK_KEY = 7_261_535
DEPENDENT_KINDS = ("run", "model")


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "pk": "pk_%(table_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
        }
    )


class RunRow(Base):
    """One run. Times are naive UTC on every backend."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32), index=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(sa.DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    code_version: Mapped[str] = mapped_column(sa.String(128))
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    inputs: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    artifacts: Mapped[list[str]] = mapped_column(sa.JSON)
    error: Mapped[str | None] = mapped_column(sa.Text)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    pid_started: Mapped[float] = mapped_column(sa.Float)


class DependRow(Base):
    """``dependent`` (a run id, or a model reference) needs run ``run_id``."""

    __tablename__ = "run_depends"
    run_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("runs.id"), primary_key=True)
    dependent_kind: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    dependent: Mapped[str] = mapped_column(sa.String(255), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime)
    __table_args__ = (sa.CheckConstraint("dependent_kind IN ('run', 'model')", name="kind"),)


class TrialRow(Base):
    """One configuration a run tried (a backtest's or walk-forward's candidates)."""

    __tablename__ = "run_trials"
    run_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("runs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON)


def default_url(store: Path) -> str:
    """``sqlite:///{store}/runs.sqlite`` with an absolute path."""
    return f"sqlite:///{(Path(store) / 'runs.sqlite').resolve()}"


def where(engine_or_url: Engine | sa.URL) -> str:
    """The database for messages: the SQLite path, else the URL without its password."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def check_url(db_url: str) -> sa.URL:
    """``db_url`` parsed, its database known and its driver importable (nothing is opened);
    raises :class:`BadRegistryURL` naming the fix otherwise."""
    try:
        url = sa.make_url(db_url)
        url.get_dialect().import_dbapi()
    except sa.exc.ArgumentError as err:  # unparseable, or no such database (NoSuchModuleError)
        raise BadRegistryURL(
            f"run registry: {db_url!r} is not a database URL SQLAlchemy knows ({err}); give "
            "e.g. sqlite:////abs/path/runs.sqlite or postgresql+psycopg://user@host/db"
        ) from err
    except ImportError as err:
        raise BadRegistryURL(
            f"run registry at {where(url)}: the {url.drivername} driver is not installed "
            f"({err}); install it or name an installed one (postgresql+psycopg://...)"
        ) from err
    if url.get_backend_name() == "sqlite" and (url.database or "") in ("", ":memory:"):
        raise BadRegistryURL("run registry: give SQLite a file, not an in-memory database")
    return url


def open_engine(db_url: str) -> Engine:
    """The engine for ``db_url`` (see :func:`check_url`), its schema upgraded to the newest
    migration."""
    url = check_url(db_url)
    try:
        engine = _sqlite_engine(url) if url.get_backend_name() == "sqlite" else _engine(url)
    except (sa.exc.ArgumentError, ImportError) as err:
        raise RegistryError(f"run registry at {where(url)}: {err}") from err
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _engine(url: sa.URL) -> Engine:
    return sa.create_engine(url, pool_pre_ping=True)


def _sqlite_engine(url: sa.URL) -> Engine:
    _check_sqlite_file(Path(url.database or ""))
    return sqlite_engine(url, busy_timeout_s=BUSY_TIMEOUT_S)


def _check_sqlite_file(path: Path) -> None:
    if path.is_dir():
        raise RegistryError(f"run registry path {path} is a folder; give a file path")
    head = foreign_header(path)
    if head is not None:
        raise RegistryError(
            f"run registry {path} is not an SQLite database (it starts with {head[:8]!r}); "
            "it was left untouched: move it aside or give another --db"
        )
    path.parent.mkdir(parents=True, exist_ok=True)


def migrate(engine: Engine) -> None:
    """Upgrade the schema to Alembic's ``head``; one process at a time, the others wait."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    sqlite = engine.url.get_backend_name() == "sqlite"
    lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if sqlite:
        lock = FileLock(f"{engine.url.database}.lock", timeout=BUSY_TIMEOUT_S)
    try:
        with lock, engine.begin() as conn:
            if engine.url.get_backend_name() == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except sa.exc.SQLAlchemyError as err:
        raise RegistryError(f"run registry at {where(engine)}: {err}") from err
    except TimeoutError as err:
        raise RegistryError(
            f"run registry at {where(engine)}: another process held the upgrade lock "
            f"for {BUSY_TIMEOUT_S:.0f} s"
        ) from err
