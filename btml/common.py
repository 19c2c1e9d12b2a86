"""What every command module shares: the config decorator, the one-line error exit, and the
process settings the ``btml`` group makes (log level, torch threads)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, NoReturn

import click

from btml.config import Config
from core.errors import ConfigError, UserError

pass_config = click.make_pass_decorator(Config)


def fail(err: Exception) -> NoReturn:
    """Print ``error: ...`` on stderr; exit 2 for bad input (a :class:`UserError`), else 1."""
    click.echo(f"error: {err}", err=True)
    sys.exit(2 if isinstance(err, UserError) else 1)


# -- what the CLI sets for its process: log level and torch threads -------------------------------

THREADS_ENV = "BTML_THREADS"
#: The default is the machine's cores, at most this many: more intra-op threads barely speed up
#: the project's small models and starve the other processes (TorchServe workers, a dashboard).
MAX_DEFAULT_THREADS = 4
#: The project's top-level packages: the CLI sets their loggers' level; others keep their own.
PROJECT_LOGGERS = (
    "analyzers",
    "brokers",
    "btml",
    "core",
    "feeds",
    "mlmodels",
    "serving",
    "strategies",
    "webapp",
    "workflows",
)
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def cores() -> int:
    """The CPUs this process may run on (its affinity, which containers limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_threads(n_cores: int | None = None) -> int:
    """``min(cores, MAX_DEFAULT_THREADS)``: the torch threads a command uses unless told."""
    return max(1, min(cores() if n_cores is None else n_cores, MAX_DEFAULT_THREADS))


def log_level(verbose: bool, quiet: bool) -> int:
    """DEBUG with ``-v``, WARNING with ``-q``, else INFO."""
    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet exclude each other: give one")
    return logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO


class _EchoHandler(logging.Handler):
    """Log records on stderr through click (the stream current at each record, as under tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:
            self.handleError(record)


def setup_logging(level: int, loggers: Sequence[str] = PROJECT_LOGGERS) -> Callable[[], None]:
    """Send the project's records at ``level`` and above to stderr; returns the undo.

    Only the CLI calls this (importing a package never configures logging); the records still
    propagate to the root logger, so an embedding application's handlers see them too.
    """
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(level)
        logger.addHandler(handler)

    def undo() -> None:
        for logger, old in saved:
            logger.removeHandler(handler)
            logger.setLevel(old)

    return undo


def apply_threads(
    n: int,
    environ: MutableMapping[str, str] | None = None,
    modules: Mapping[str, Any] | None = None,
) -> Callable[[], None]:
    """Make this process use ``n`` torch threads; returns the undo.

    Sets ``OMP_NUM_THREADS`` (read when torch is first imported; the commands import it late)
    and ``BTML_THREADS`` (so child processes inherit the choice); if torch is already imported,
    also calls ``torch.set_num_threads``. ``environ`` and ``modules`` default to the process's.
    """
    if n < 1:
        raise ConfigError(f"threads must be >= 1, got {n}")
    env = os.environ if environ is None else environ
    torch = (sys.modules if modules is None else modules).get("torch")
    saved = {key: env.get(key) for key in (THREADS_ENV, "OMP_NUM_THREADS")}
    before = torch.get_num_threads() if torch is not None else None
    env[THREADS_ENV] = env["OMP_NUM_THREADS"] = str(n)
    if torch is not None:
        torch.set_num_threads(n)

    def undo() -> None:
        for key, value in saved.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        if torch is not None and before is not None:
            torch.set_num_threads(before)

    return undo


def configure_process(
    ctx: click.Context, *, verbose: bool, quiet: bool, threads: int | None
) -> None:
    """The group's process settings: the project's log level and the torch threads (``threads``
    or :func:`default_threads`). Both are undone when ``ctx`` closes, so a caller that runs the
    CLI in its own process (a test, a notebook) keeps its settings."""
    ctx.call_on_close(setup_logging(log_level(verbose, quiet)))
    ctx.call_on_close(apply_threads(threads or default_threads()))
