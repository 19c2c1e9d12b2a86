"""A throw-away PostgreSQL cluster for tests that take an SQLAlchemy URL (journal, run registry).

``pg_cluster()`` creates a cluster with the machine's ``initdb``/``pg_ctl`` (Debian's
``postgresql`` package; ``.ci/run`` installs it), on a free port, as the ``postgres`` user when
the tests run as root, and removes it afterwards. Without PostgreSQL on the machine it skips the
test with that reason; CI always runs them. ``new_database()`` gives each test an empty database.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def pg_cluster(prefix: str = "btml-pg-") -> Iterator[str]:
    """Start a cluster; yields the URL of its ``postgres`` database (user ``btml``, trust auth)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); CI installs it")
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (in the dev extras)")
    # not under pytest's tmp folder: it is private to root, the postgres user cannot enter it
    root = Path(tempfile.mkdtemp(prefix=prefix))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    run: dict[str, Any] = {"check": True, "capture_output": True, "timeout": 60}
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "btml"], **run)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-w", "start",
                    "-l", str(root / "log")], **run)  # fmt: skip
    try:
        yield f"postgresql+psycopg://btml@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], **run)
        shutil.rmtree(root, ignore_errors=True)


def new_database(pg_url: str, name: str) -> str:
    """Create an empty database called after ``name`` (a test's name) and return its URL."""
    import sqlalchemy as sa

    db = re.sub(r"\W", "_", name.lower())[:40]
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    engine.dispose()
    return pg_url.rsplit("/", 1)[0] + f"/{db}"
