"""The record of a running TorchServe (``server.json``) and how it is stopped.

The record names the launcher's pid and process group, and the launcher's identity: its start
time (``/proc/PID/stat`` field 22) and command line. A pid whose identity no longer matches was
reused by another process: the record is stale, and nothing is ever signalled because of it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields

from serving.procs import (
    Identity,
    end_processes,
    group_alive,
    group_pids,
    identity,
    signal_group,
)
from serving.server_config import ServerConfig


@dataclass
class ServerState:
    """What ``start`` records about the running server (``server.json``).

    ``start_time`` (clock ticks after boot) and ``cmdline`` identify the launcher process
    ``pid``; a record without them (an older btml wrote it) is never signalled.
    """

    pid: int
    pgid: int
    inference_port: int
    management_port: int
    metrics_port: int
    models: dict[str, list[int]] = field(default_factory=dict)
    defaults: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    start_time: int = 0
    cmdline: list[str] = field(default_factory=list)

    def is_process(self, ident: Identity | None) -> bool:
        """True if ``ident`` is the very process this state recorded."""
        return (
            ident is not None
            and bool(self.cmdline)
            and (self.start_time, tuple(self.cmdline)) == (ident.start_time, ident.cmdline)
        )


_STATE_FIELDS = {f.name for f in fields(ServerState)}


def load_state(cfg: ServerConfig) -> ServerState:
    """The record as written (unknown keys ignored); raises OSError, ValueError, TypeError."""
    d = json.loads(cfg.state_file.read_text())
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    return ServerState(**{k: v for k, v in d.items() if k in _STATE_FIELDS})


def write_state(cfg: ServerConfig, state: ServerState) -> None:
    """Write the record atomically (temp file + rename)."""
    tmp = cfg.state_file.with_name(f"{cfg.state_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(state)))
    os.replace(tmp, cfg.state_file)


def inspect_state(cfg: ServerConfig) -> tuple[ServerState | None, str | None]:
    """(state, None) for a live server; (None, why) for a stale record; (None, None) for none.

    A record without a process identity (an older btml) counts as live while its pid is.
    """
    if not cfg.state_file.exists():
        return None, None
    try:
        state = load_state(cfg)
    except (OSError, ValueError, TypeError) as err:
        return None, f"{cfg.state_file} is unreadable ({err})"
    ident = identity(state.pid)
    if ident is None:
        return None, f"its server (pid {state.pid}) is gone"
    if state.cmdline and not state.is_process(ident):
        now = " ".join(ident.cmdline)[:60]
        return None, f"pid {state.pid} is now another process ({now})"
    return state, None


def read_state(cfg: ServerConfig) -> ServerState | None:
    """The running server's state, or None when none is recorded or the record is stale."""
    return inspect_state(cfg)[0]


def stale_reason(cfg: ServerConfig) -> str | None:
    """Why ``server.json`` does not describe a running server (None: it does, or is absent)."""
    return inspect_state(cfg)[1]


@dataclass(frozen=True)
class Shutdown:
    """What ``shutdown`` did, in one line."""

    stopped: bool
    message: str


def shutdown(cfg: ServerConfig, timeout: float = 30.0) -> Shutdown:
    """Stop the recorded server and every process in its group, if it is still ours.

    A pid that is now another process, or one recorded without its identity, is never
    signalled; when the launcher is gone, only leftover processes of this home are ended.
    The state file is removed in every case.
    """
    where = cfg.state_file
    if not where.exists():
        return Shutdown(False, "no server was running")
    try:
        state = load_state(cfg)
    except (OSError, ValueError, TypeError) as err:
        where.unlink(missing_ok=True)
        return Shutdown(False, f"removed the unreadable state file {where} ({err})")
    ident = identity(state.pid)
    if state.is_process(ident):
        _end_group(state.pgid, timeout)
        where.unlink(missing_ok=True)
        return Shutdown(True, f"stopped (pid {state.pid})")
    where.unlink(missing_ok=True)
    if ident is not None:
        why = (
            "is now another process"
            if state.cmdline
            else f"was recorded without its identity (if it is TorchServe: kill -- -{state.pgid})"
        )
        return Shutdown(
            False, f"stale state file {where}: pid {state.pid} {why}; removed it, signalled nothing"
        )
    leftovers = _leftovers(cfg, state.pgid)
    end_processes(leftovers, timeout)
    if leftovers:  # the group is this TorchServe's (a pgid is not reused while it has members)
        _end_group(state.pgid, timeout)
    done = f"; stopped {len(leftovers)} leftover processes" if leftovers else ""
    return Shutdown(
        bool(leftovers), f"stale state file {where}: pid {state.pid} is gone; removed it{done}"
    )


KILL_WAIT = 15.0  # seconds to wait for SIGKILLed processes to disappear


def stop(cfg: ServerConfig, timeout: float = 30.0) -> bool:
    """Stop the server (see ``shutdown``); True if processes of it were ended."""
    return shutdown(cfg, timeout).stopped


def _end_group(pgid: int, timeout: float) -> None:
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    # SIGKILL until the group is empty: a killed JVM can take seconds to go under load, and a
    # worker it started while shutting down must not outlive it
    deadline = time.monotonic() + KILL_WAIT
    while group_alive(pgid) and time.monotonic() < deadline:
        signal_group(pgid, signal.SIGKILL)
        time.sleep(0.2)


def _leftovers(cfg: ServerConfig, pgid: int) -> list[int]:
    """Processes of group ``pgid`` that name this home's TEMP on their command line (Java's
    ``-Djava.io.tmpdir``, a worker's socket): TorchServe's, after its launcher died."""
    tmp = str(cfg.temp_dir)
    marks = (f"-Djava.io.tmpdir={tmp}", f"{tmp}/.ts.sock.")
    out = []
    for pid in group_pids(pgid):
        ident = identity(pid)
        if ident is not None and any(a.startswith(marks) for a in ident.cmdline):
            out.append(pid)
    return out
