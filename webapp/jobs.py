"""Jobs: one process per workflow call (``webapp.job_main``), at most ``max_jobs`` at once.

A job is queued, then running, then ``ok``, ``failed`` or ``cancelled``. Its workflow records
its own run in the run registry (so ``btml runs`` and a restarted dashboard see it); the job's
log lines are kept in the run's folder as ``job.log``. The process gets the dashboard's
environment without anything named like a secret (broker keys, tokens), one torch thread,
and dies with the dashboard; on the next start its run is marked ``lost``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.procs import is_secret_name

STATES = ("queued", "running", "ok", "failed", "cancelled")
FINAL = ("ok", "failed", "cancelled")
LOG_TAIL = 200

Publish = Callable[[str, Any], None]


@dataclass(eq=False)
class Job:
    """One job as the dashboard sees it (``as_dict`` is what the API and WebSocket send)."""

    id: str
    kind: str
    params: dict[str, Any]
    state: str = "queued"
    run_id: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    ended_at: datetime | None = None
    progress: float | None = None
    error: str | None = None
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))
    proc: subprocess.Popen[str] | None = None
    cancel_requested: bool = False
    owner_key: str | None = None  # e.g. "model:NAME": two running jobs may not share one

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "params": self.params, "state": self.state,
            "run_id": self.run_id, "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at), "ended_at": _iso(self.ended_at),
            "progress": self.progress, "error": self.error,
            "last_log": self.log[-1] if self.log else None, "pid": self.proc.pid if self.proc else None,
        }  # fmt: skip


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


JOB_COMMAND = (sys.executable, "-m", "webapp.job_main")
JOB_CWD = str(Path(__file__).resolve().parents[1])  # where ``webapp`` is importable from
BROKER_ENV = ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "APCA_API_BASE_URL", "BTML_ALPACA_DATA_URL")
NEEDS_BROKER = frozenset({"kill", "download-alpaca"})  # the only jobs that need its keys


def child_env(parent: dict[str, str] | None = None, *, broker: bool = False) -> dict[str, str]:
    """The environment a job process gets: the dashboard's, minus every secret-looking name
    (the broker's keys only for a job that needs them), plus one thread per maths library
    (the jobs share the machine with the server)."""
    parent = dict(os.environ) if parent is None else parent
    env = {k: v for k, v in parent.items() if not is_secret_name(k)}
    if broker:
        env.update({k: parent[k] for k in BROKER_ENV if k in parent})
    env.pop("BTML_DASHBOARD_TOKEN", None)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = "1"
    env["BTML_JOB_PARENT"] = str(os.getpid())
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Refused(Exception):
    """A job request its workflow refuses: ``field`` names the request field, if known."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field


def check_request(
    store: Path, kind: str, params: dict[str, Any], timeout: float = 120.0
) -> dict[str, Any]:
    """Check a request in a short-lived job process (the workflow's own checks, which need
    torch: the dashboard's process stays without it); returns the resolved parameters or
    raises :class:`Refused`."""
    request = {"kind": kind, "params": params, "store": str(store.resolve()), "check_only": True}
    proc = subprocess.run(
        JOB_COMMAND, input=json.dumps(request), text=True,
        capture_output=True, env=child_env(), timeout=timeout,
        cwd=JOB_CWD,
    )  # fmt: skip
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    last = events[-1] if events else {}
    if last.get("event") == "accepted":
        return dict(last["params"])
    if last.get("event") == "refused":
        raise Refused(str(last["message"]), last.get("field"))
    tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    raise RuntimeError(f"the request could not be checked: {tail[0]}")


class JobManager:
    """Starts, follows and cancels jobs; publishes every change on the ``jobs`` topic and each
    training epoch on ``training``."""

    def __init__(
        self, store: Path, db_url: str | None, publish: Publish, max_jobs: int = 2
    ) -> None:
        self.store, self.db_url, self.publish, self.max_jobs = store, db_url, publish, max_jobs
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._closed = False

    # -- the API's view -------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)
            return [j.as_dict() for j in jobs]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def busy_key(self, key: str) -> Job | None:
        """The unfinished job holding ``key`` (a model name being written), if any."""
        with self._lock:
            return next(
                (j for j in self._jobs.values() if j.owner_key == key and j.state not in FINAL),
                None,
            )

    def submit(self, kind: str, params: dict[str, Any], owner_key: str | None = None) -> Job:
        """Queue a checked request; it starts now if fewer than ``max_jobs`` run."""
        job = Job(id=secrets.token_hex(6), kind=kind, params=params, owner_key=owner_key)
        with self._lock:
            if self._closed:
                raise RuntimeError("the dashboard is shutting down")
            self._jobs[job.id] = job
        self._changed(job)
        self._start_queued()
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job, or SIGTERM a running one (its run ends ``cancelled``)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state in FINAL:
                return job
            job.cancel_requested = True
            if job.state == "queued":
                self._finish(job, "cancelled", "cancelled before it started")
                return job
            proc = job.proc
        if proc is not None:
            _signal_group(proc, signal.SIGTERM)
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything (the dashboard stops); waits up to ``timeout`` for the processes."""
        with self._lock:
            self._closed = True
            jobs = [j for j in self._jobs.values() if j.state not in FINAL]
        for job in jobs:
            self.cancel(job.id)
        deadline = time.monotonic() + timeout
        for job in jobs:
            if job.proc is not None:
                try:
                    job.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal_group(job.proc, signal.SIGKILL)

    # -- internals ------------------------------------------------------------------------

    def _start_queued(self) -> None:
        with self._lock:
            running = sum(j.state == "running" for j in self._jobs.values())
            queued = sorted(
                (j for j in self._jobs.values() if j.state == "queued"), key=lambda j: j.created_at
            )
            to_start = queued[: max(0, self.max_jobs - running)]
            for job in to_start:
                job.state, job.started_at = "running", datetime.now(UTC)
        for job in to_start:
            threading.Thread(
                target=self._run, args=(job,), name=f"job-{job.id}", daemon=True
            ).start()

    def _run(self, job: Job) -> None:
        """The job's thread: starts its process, reads its events, records its end. The
        process is started here so that it dies with this thread's process (PDEATHSIG)."""
        request = {"kind": job.kind, "params": job.params, "store": str(self.store.resolve()),
                   "db_url": self.db_url, "threads": 1}  # fmt: skip
        log_dir = self.store / "dashboard" / "jobs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{job.id}.log", "w") as err_log:
            try:
                proc = subprocess.Popen(
                    JOB_COMMAND, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=err_log, text=True, env=child_env(broker=_needs_broker(job)),
                    start_new_session=True, cwd=JOB_CWD,
                )  # fmt: skip
            except OSError as err:
                self._finish(job, "failed", f"could not start the job's process: {err}")
                return
            with self._lock:
                job.proc = proc
            self._changed(job)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(request))
            proc.stdin.close()
            outcome = self._follow(job, proc)
            code = proc.wait()
        self._finish(job, *_final_state(job, code, outcome))
        self._start_queued()

    def _follow(self, job: Job, proc: subprocess.Popen[str]) -> dict[str, Any]:
        """Read the job's events until its stdout closes; returns the last done/error event."""
        assert proc.stdout is not None
        outcome: dict[str, Any] = {}
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "log", "message": line.rstrip()}
            kind = event.get("event")
            if kind in ("done", "error"):
                outcome = event
            self._on_event(job, kind, event)
        return outcome

    def _on_event(self, job: Job, kind: str | None, event: dict[str, Any]) -> None:
        if kind == "log":
            msg = str(event.get("message", ""))
            with self._lock:
                job.log.append(msg)
            self._append_log(job, [msg])
        elif kind == "run":
            with self._lock:
                first = job.run_id is None
                job.run_id = event.get("run_id")
            if first:
                self._append_log(job, list(job.log))
        elif kind == "epoch":
            self._on_epoch(job, event)
        elif kind == "progress":
            with self._lock:
                job.progress = int(event["done"]) / max(1, int(event["total"]))
        elif kind in ("done", "error") and event.get("run_id"):
            with self._lock:
                job.run_id = event["run_id"]
        self._changed(job)

    def _on_epoch(self, job: Job, event: dict[str, Any]) -> None:
        epochs = int(job.params.get("epochs", 0) or 0)
        with self._lock:
            if epochs:
                job.progress = min(1.0, int(event["epoch"]) / epochs)
        self.publish("training", {"job_id": job.id, "run_id": job.run_id, "epoch": event["epoch"],
                                  "losses": event.get("losses", {}),
                                  "ended_at": event.get("ended_at")})  # fmt: skip

    def _append_log(self, job: Job, lines: list[str]) -> None:
        """Keep the job's log in its run's folder once the run exists."""
        if job.run_id is None or not lines:
            return
        folder = self.store / "runs" / job.run_id
        if folder.is_dir():
            with open(folder / "job.log", "a") as f:
                f.write("".join(f"{m}\n" for m in lines))

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        with self._lock:
            job.state, job.error, job.ended_at = state, error, datetime.now(UTC)
            if state == "ok":
                job.progress = 1.0
        self._changed(job)

    def _changed(self, job: Job) -> None:
        with self._lock:
            data = job.as_dict()
        self.publish("jobs", data)


def _needs_broker(job: Job) -> bool:
    kind = job.kind if job.kind != "download" else f"download-{job.params.get('source')}"
    return kind in NEEDS_BROKER


def _final_state(job: Job, code: int, outcome: dict[str, Any]) -> tuple[str, str | None]:
    if outcome.get("event") == "done" and code == 0:
        return "ok", None
    if job.cancel_requested or outcome.get("cancelled"):
        return "cancelled", "cancelled"
    if outcome.get("event") == "error":
        return "failed", str(outcome.get("message"))
    return "failed", f"the job's process ended with exit code {code} (see its log)"


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        return
