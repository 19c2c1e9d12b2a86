"""Small facts a run records about itself: its id, the code version, data hashes, its process.

All pure or read-only helpers; :mod:`workflows.runs` uses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from core.errors import ConfigError

ID_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_id_lock = threading.Lock()
_last_id_time: list[datetime] = [datetime.min.replace(tzinfo=UTC)]


def new_run_id(now: datetime | None = None) -> str:
    """A time-sortable run id: UTC time to the microsecond, then 6 random hex digits.

    ``20261205T101502.482913Z-3f9a1c``. Ids made in sequence by one process sort in the
    order they were made even if the clock stands still or steps back (the time part is
    bumped by 1 µs); the random part keeps ids from concurrent processes distinct.
    """
    t = (now or datetime.now(UTC)).astimezone(UTC)
    with _id_lock:
        if t <= _last_id_time[0]:
            t = _last_id_time[0] + timedelta(microseconds=1)
        _last_id_time[0] = t
    return f"{t.strftime(ID_TIME_FORMAT)}-{secrets.token_hex(3)}"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks: the hash of a data input."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """``git describe --always --dirty`` of the checkout this code runs from, else the
    installed version of ``backtrader-ml`` (``unknown`` when neither is available)."""
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backtrader-ml")
    except PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class ProcessId:
    """Who runs a run: host name, pid and the process's start time (so a reused pid differs)."""

    host: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> ProcessId:
        pid = os.getpid()
        return cls(host=socket.gethostname(), pid=pid, started=process_start_time(pid) or 0.0)

    def alive(self) -> bool:
        """True while that very process runs (only answerable on its own host: else True)."""
        if self.host != socket.gethostname():
            return True
        started = process_start_time(self.pid)
        if started is None:
            return False
        return math.isnan(started) or abs(started - self.started) < 0.05


def process_start_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), None when no such process (a zombie,
    ended but not reaped by its parent, counts as gone)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # it exists; we may not look closer
        return float("nan")


def to_jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON types: dataclasses, paths, dates, numpy scalars and tuples are
    converted; NaN and infinities become None (JSON has no such numbers)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return to_jsonable(value.item(), where)
    raise ConfigError(
        f"{where} is a {type(value).__name__}, which cannot be stored as JSON; "
        "pass numbers, strings, lists or dicts"
    )


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a temp file renamed over the target)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)
