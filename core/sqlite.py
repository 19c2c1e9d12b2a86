"""SQLite engines for the project's databases (the order journal, the run registry).

One configuration for every SQLite file: WAL, a busy timeout, foreign keys, and transactions
that take the write lock at once (``BEGIN IMMEDIATE``), so a read-then-write in one process
cannot deadlock with another; a connection whose ``info["read_only"]`` is set begins a plain
``BEGIN``. Before a file is opened, :func:`foreign_header` tells a file of another kind, which
is then left untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

SQLITE_MAGIC = b"SQLite format 3\x00"


def foreign_header(path: Path) -> bytes | None:
    """The first bytes of ``path`` when it is a non-empty file that is no SQLite database."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with path.open("rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    return None if head == SQLITE_MAGIC else head


def sqlite_engine(url: sa.URL, *, busy_timeout_s: float, synchronous: str | None = None) -> Engine:
    """An engine for the SQLite ``url`` (a file, or ``:memory:`` shared by one static pool)."""
    memory = (url.database or "") in ("", ":memory:")
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": busy_timeout_s}
    }
    if memory:
        kwargs["poolclass"] = sa.StaticPool
    engine = sa.create_engine(url, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is lazy)
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        if synchronous is not None:
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.info.get("read_only") else "BEGIN IMMEDIATE")

    return engine
