"""The run registry's value types: a stored run, and the metrics of several runs side by side."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

STATUSES = ("running", "ok", "failed", "cancelled", "lost")
FINAL_STATUSES = ("ok", "failed", "cancelled")
RESERVED_FILES = ("params.json", "metrics.json", "run.json", "trials.json")


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """A run as stored: what it was asked (``params``), read (``inputs``: name -> sha256),
    produced (``metrics``, ``artifacts`` relative to ``dir``) and how it ended.

    ``parents`` are the runs it depends on; ``dependents`` what depends on it, as
    ``"run ID"`` or ``"model REF"``; ``n_trials`` how many configurations it tried.
    """

    id: str
    kind: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    code_version: str
    params: Mapping[str, Any]
    metrics: Mapping[str, Any]
    inputs: Mapping[str, Any]
    artifacts: tuple[str, ...]
    error: str | None
    host: str
    pid: int
    dir: Path
    parents: tuple[str, ...] = ()
    dependents: tuple[str, ...] = ()
    n_trials: int = 0

    @property
    def seconds(self) -> float | None:
        """Wall time from start to end; None while running."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    def summary(self) -> dict[str, Any]:
        """What ``run.json`` in the run's folder holds (all but params and metrics)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "code_version": self.code_version,
            "inputs": dict(self.inputs),
            "artifacts": list(self.artifacts),
            "parents": list(self.parents),
            "error": self.error,
            "host": self.host,
            "pid": self.pid,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, as plain JSON types."""
        return self.summary() | {
            "params": dict(self.params),
            "metrics": dict(self.metrics),
            "dependents": list(self.dependents),
            "n_trials": self.n_trials,
            "seconds": self.seconds,
            "dir": str(self.dir),
        }


@dataclass(frozen=True)
class MetricsTable:
    """Metrics of several runs: ``values[name][i]`` is run ``run_ids[i]``'s value of ``name``
    (None when that run did not log it). ``names`` is the union, in first-logged order."""

    run_ids: tuple[str, ...]
    names: tuple[str, ...]
    values: Mapping[str, tuple[Any, ...]]

    @classmethod
    def of(cls, runs: list[RunRecord]) -> MetricsTable:
        names: dict[str, None] = {}
        for run in runs:
            names.update(dict.fromkeys(run.metrics))
        values = {n: tuple(run.metrics.get(n) for run in runs) for n in names}
        return cls(tuple(r.id for r in runs), tuple(names), values)

    def to_dict(self) -> dict[str, Any]:
        """``{"runs": [ids], "metrics": {name: {run_id: value}}}``."""
        return {
            "runs": list(self.run_ids),
            "metrics": {n: dict(zip(self.run_ids, v, strict=True)) for n, v in self.values.items()},
        }
