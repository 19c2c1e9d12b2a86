"""Where walk-forward folds and sweep trials run: here, in worker processes, or on Ray.

One small interface, :class:`Executor`: ``map(fn, tasks)`` calls ``fn`` on every task and
returns the results in the tasks' order, whichever finished first. ``fn`` is a module-level
function and the tasks plain picklable values (the process and Ray executors send both to
other processes); each task seeds its own random generators, so the same tasks give the same
results on every executor. :func:`using` opens one from an :class:`ExecutorConfig`:

* ``serial``: one task after another in this process, on its torch threads (the default);
* ``process``: ``workers`` spawned processes on this machine;
* ``ray``: Ray tasks of one CPU each, on the cluster at ``ray_address``, else on a local Ray
  runtime of ``workers`` CPUs started for the executor and stopped with it (Ray is the
  optional extra ``pip install 'backtrader-ml[ray]'``).

A worker runs its tasks on ``threads`` torch threads (default 1): on a machine with as many
workers as cores, more threads per worker oversubscribe the cores (18 times slower on two).
Workers never see the broker's keys: the process workers and the local Ray runtime start from
this process's environment less :func:`is_secret` names (``APCA_*``, ``ALPACA_*``, the run
registry's URL, which may hold a password). A remote Ray cluster's environment is its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any, Protocol, TypeVar

from core.config import DataConfig
from core.errors import ConfigError, unknown_name

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("serial", "process", "ray")
#: Environment variables workers never receive: by prefix, and by name.
SECRET_PREFIXES = ("APCA_", "ALPACA_")
SECRET_NAMES = ("BTML_DB", "PGPASSWORD")
MAX_WORKERS = 256
RAY_EXTRA = "pip install 'backtrader-ml[ray]'"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_ENV_LOCK = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig(DataConfig):
    """Which executor, with how many workers (default: this machine's cores), how many torch
    threads each (default 1) and, for ``ray``, the address of an existing cluster (default: a
    local runtime of ``workers`` CPUs)."""

    kind: str = "serial"
    workers: int | None = None
    threads: int = 1
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise unknown_name("executor", self.kind, EXECUTORS)
        if self.workers is not None and not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be in [1, {MAX_WORKERS}], got {self.workers}")
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.ray_address is not None and self.kind != "ray":
            raise ConfigError("--ray-address needs --executor ray")
        if self.kind == "ray" and not ray_available():
            raise ConfigError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}")

    @property
    def n_workers(self) -> int:
        """``workers``, else the cores this process may use."""
        return self.workers or _cores()


class Executor(Protocol):
    """Runs ``fn`` over tasks; ``local`` when the tasks run in this process (nothing is
    pickled, ``fn`` may be a closure)."""

    kind: str
    workers: int
    threads: int
    local: bool

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        """``[fn(t) for t in tasks]``, in the tasks' order; the first task's error is raised."""
        ...

    def close(self) -> None:
        """Stop the workers this executor started."""
        ...


def ray_available() -> bool:
    """Whether Ray can be imported here."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["ray"] is None or has no spec
        return False


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def is_secret(name: str) -> bool:
    """Whether environment variable ``name`` is kept from workers."""
    return name.startswith(SECRET_PREFIXES) or name in SECRET_NAMES


def worker_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default this process's) without the secrets."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if not is_secret(k)}


@contextlib.contextmanager
def scrubbed_environ(extra: Mapping[str, str] | None = None) -> Iterator[None]:
    """This process's environment without the secrets (and with ``extra``) while the block
    runs, for starting workers that copy it; restored afterwards. One block at a time."""
    with _ENV_LOCK:
        saved = {k: v for k, v in os.environ.items() if is_secret(k) or k in (extra or {})}
        for key in saved:
            del os.environ[key]
        os.environ.update(extra or {})
        try:
            yield
        finally:
            for key in extra or {}:
                os.environ.pop(key, None)
            os.environ.update(saved)


def _bounded(threads: int, fn: Callable[[T], R], task: T) -> R:
    """Run ``fn(task)`` on ``threads`` torch threads (in a worker)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(task)


def _init_worker(threads: int) -> None:
    """A process worker's start: its thread count before torch is first imported."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


class SerialExecutor:
    """The tasks one after another in this process (``workers`` is only what a caller that
    asks for work in batches, as a sweep does, takes as its batch size)."""

    kind = "serial"
    local = True

    def __init__(self, threads: int = 1, workers: int = 1) -> None:
        self.workers = workers
        self.threads = threads

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        return [fn(t) for t in tasks]

    def close(self) -> None:
        pass


class _ScrubbedProcess(SpawnProcess):
    """A spawned process started from the environment less the secrets."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        with scrubbed_environ():
            return SpawnProcess._Popen(process_obj)


class _ScrubbedContext(SpawnContext):
    Process = _ScrubbedProcess  # type: ignore[assignment]


class ProcessExecutor:
    """``workers`` spawned processes of ``threads`` torch threads each, started on first use."""

    kind = "process"
    local = False

    def __init__(self, workers: int, threads: int = 1) -> None:
        self.workers, self.threads = workers, threads
        self._pool = ProcessPoolExecutor(
            workers, mp_context=_ScrubbedContext(), initializer=_init_worker, initargs=(threads,)
        )

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        futures = [self._pool.submit(_bounded, self.threads, fn, t) for t in tasks]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Ray tasks of one CPU each: on the cluster at ``address``, else on a local runtime of
    ``workers`` CPUs started now (from the environment less the secrets) and stopped by
    :meth:`close`. A Ray already initialised in this process is used as it is."""

    kind = "ray"
    local = False

    def __init__(self, workers: int, threads: int = 1, address: str | None = None) -> None:
        import ray

        self.workers, self.threads, self._ray = workers, threads, ray
        self._started = not ray.is_initialized()
        if self._started:
            path = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
            opts: dict[str, Any] = (
                {"address": address}
                if address
                else {"num_cpus": workers, "include_dashboard": False}
            )
            with scrubbed_environ({"PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}):
                ray.init(log_to_driver=False, configure_logging=False, **opts)
        self._task: Any = ray.remote(num_cpus=1, max_retries=0)(_bounded)

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        refs = [self._task.remote(self.threads, fn, t) for t in tasks]
        try:
            return list(self._ray.get(refs))
        except BaseException as err:
            for ref in refs:
                self._ray.cancel(ref)
            cause = getattr(err, "cause", None)
            if isinstance(err, self._ray.exceptions.RayTaskError) and isinstance(
                cause, BaseException
            ):
                raise cause from None  # the task's own error, not Ray's wrapper
            raise

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def open_executor(config: ExecutorConfig) -> Executor:
    """Start the executor ``config`` names; close it when done (or use :func:`using`)."""
    if config.kind == "process":
        return ProcessExecutor(config.n_workers, config.threads)
    if config.kind == "ray":
        return RayExecutor(config.n_workers, config.threads, config.ray_address)
    return SerialExecutor(config.threads, config.n_workers)


@contextlib.contextmanager
def using(executor: Executor | ExecutorConfig | None) -> Iterator[Executor]:
    """``executor`` itself (left open), a config's executor (closed afterwards), or the serial
    one for None."""
    if executor is None:
        yield SerialExecutor()
    elif isinstance(executor, ExecutorConfig):
        opened = open_executor(executor)
        try:
            yield opened
        finally:
            opened.close()
    else:
        yield executor
