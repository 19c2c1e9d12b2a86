"""The run registry: every command that produces results records a run.

A run has a time-sortable id (:func:`~workflows.runs_info.new_run_id`), a folder
``{store}/runs/{id}/`` holding ``params.json``, ``metrics.json``, ``run.json`` (status, start
and end times, code version, the data hashes it read, its process), ``trials.json`` when it
tried several configurations, and its artefacts; and a row in a database (SQLite in the store
by default, any SQLAlchemy URL otherwise). Runs never overwrite each other.

    registry = RunRegistry(store)
    with registry.start("backtest", {"symbol": "AAPL"}, inputs={"AAPL": file_sha256(p)}) as run:
        ...
        run.log_metrics({"sharpe": 1.2})
        report = run.add_artifact("tearsheet.html")   # a path inside the run's folder
    # leaving the block finishes the run: "ok", or "failed" with the error's message

A run or a model that needs another run declares it (:meth:`Run.depends_on`,
:meth:`RunRegistry.link_model`); :meth:`RunRegistry.remove` refuses such runs.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from core.errors import ConfigError
from workflows.errors import RegistryError, RunInUse, RunNotFound, RunStateError
from workflows.runs_db import DependRow, RunRow, TrialRow, default_url, open_engine, where
from workflows.runs_info import ProcessId, code_version, new_run_id, to_jsonable, write_json
from workflows.runs_model import (
    FINAL_STATUSES,
    RESERVED_FILES,
    STATUSES,
    MetricsTable,
    RunRecord,
)
from workflows.runs_trials import DataTrials, query_data_trials

_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # naive UTC in the database


def _aware(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC)


def _to_record(
    r: RunRow, folder: Path, parents: Sequence[str], dependents: Sequence[str], n_trials: int
) -> RunRecord:
    return RunRecord(id=r.id, kind=r.kind, status=r.status,
                     started_at=r.started_at.replace(tzinfo=UTC), ended_at=_aware(r.ended_at),
                     code_version=r.code_version, params=dict(r.params),
                     metrics=dict(r.metrics), inputs=dict(r.inputs),
                     artifacts=tuple(r.artifacts), error=r.error, host=r.host, pid=r.pid,
                     dir=folder, parents=tuple(parents), dependents=tuple(dependents),
                     n_trials=n_trials)  # fmt: skip


class Run:
    """A run in progress. Use it as a context manager, or call :meth:`finish` yourself."""

    def __init__(self, registry: RunRegistry, record: RunRecord) -> None:
        self._registry = registry
        self.id = record.id
        self.kind = record.kind
        self.dir = record.dir
        self._metrics: dict[str, Any] = dict(record.metrics)
        self._artifacts: list[str] = list(record.artifacts)
        self._finished = False

    def __repr__(self) -> str:
        return f"Run({self.id!r}, kind={self.kind!r})"

    def log_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Add or overwrite metrics (numbers, strings; NaN is stored as None)."""
        self._metrics.update(to_jsonable(dict(metrics), "metrics"))
        self._registry._update(self.id, metrics=dict(self._metrics))
        write_json(self.dir / "metrics.json", self._metrics)

    def add_artifact(self, path: str | os.PathLike[str]) -> Path:
        """Record an artefact and return its path inside the run's folder.

        A relative path names a file (or folder) in the run's folder, for the caller to
        write (it need not exist yet). An absolute path outside the folder is copied in.
        """
        rel = self._artifact_name(Path(path))
        target = self.dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel not in self._artifacts:
            self._artifacts.append(rel)
            self._registry._update(self.id, artifacts=list(self._artifacts))
        return target

    def _artifact_name(self, path: Path) -> str:
        if path.is_absolute():
            try:
                return self._check_name(path.resolve().relative_to(self.dir.resolve()))
            except ValueError:
                return self._copy_in(path)
        return self._check_name(path)

    def _check_name(self, rel: Path) -> str:
        name = rel.as_posix()
        if ".." in rel.parts or name in ("", ".") or name in RESERVED_FILES:
            raise ConfigError(
                f"artifact {name!r} of run {self.id}: give a file name inside the run's "
                f"folder other than {', '.join(RESERVED_FILES)}"
            )
        return name

    def _copy_in(self, src: Path) -> str:
        if not src.exists():
            raise ConfigError(f"artifact {src} of run {self.id} does not exist")
        name = self._check_name(Path(src.name))
        dest = self.dir / name
        if dest.exists():
            raise ConfigError(f"run {self.id} already has an artifact named {name!r}")
        if src.is_dir():
            shutil.copytree(src, dest)
        else:
            shutil.copy2(src, dest)
        return name

    def record_trials(self, trials: Sequence[Mapping[str, Any]]) -> int:
        """Record configurations this run tried (one dict each); returns the run's total."""
        return self._registry._add_trials(self.id, trials)

    def depends_on(self, run_id: str) -> None:
        """Declare that this run needs run ``run_id`` (which then cannot be removed)."""
        self._registry._add_depend(run_id, "run", self.id)

    def finish(self, status: str = "ok", error: str | None = None) -> RunRecord:
        """End the run with ``status`` ``ok``, ``failed`` or ``cancelled``."""
        if status not in FINAL_STATUSES:
            raise RunStateError(f"a run finishes as one of {FINAL_STATUSES}, not {status!r}")
        if self._finished:
            raise RunStateError(f"run {self.id} is already finished")
        record = self._registry._finish(self.id, status, error)
        self._finished = True
        return record

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        if exc is None:
            self.finish("ok")
        elif isinstance(exc, KeyboardInterrupt):
            self.finish("cancelled", "interrupted")
        else:
            self.finish("failed", f"{type(exc).__name__}: {exc}")


class RunRegistry:
    """The runs of one store: folders under ``{store}/runs`` and rows in ``db_url``
    (default ``sqlite:///{store}/runs.sqlite``). Opening upgrades the schema."""

    def __init__(self, store: str | os.PathLike[str], db_url: str | None = None) -> None:
        self.store = Path(store)
        self.runs_dir = self.store / "runs"
        self.db_url = db_url or default_url(self.store)
        self._engine = open_engine(self.db_url)
        self.where = where(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> RunRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------

    def start(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        inputs: Mapping[str, str] | None = None,
        parent_ids: Sequence[str] = (),
        trials: Sequence[Mapping[str, Any]] | None = None,
    ) -> Run:
        """Start a run of ``kind`` (``backtest``, ``train``, ...): a new id, its folder with
        ``params.json``, and its row with status ``running``. ``inputs`` maps each data
        input to its hash (:func:`~workflows.runs_info.file_sha256`)."""
        if not _KIND.match(kind):
            raise ConfigError(f"run kind {kind!r}: use lower-case letters, digits, - and _")
        params_j = to_jsonable(dict(params or {}), "params")
        inputs_j = to_jsonable(dict(inputs or {}), "inputs")
        trials_j = [to_jsonable(dict(t), f"trials[{i}]") for i, t in enumerate(trials or ())]
        now, proc = _now(), ProcessId.current()
        run_id, folder = self._new_folder(now)
        row = RunRow(id=run_id, kind=kind, status="running", started_at=now, ended_at=None,
                     code_version=code_version(), params=params_j, metrics={}, inputs=inputs_j,
                     artifacts=[], error=None, host=proc.host, pid=proc.pid,
                     pid_started=proc.started)  # fmt: skip
        try:
            write_json(folder / "params.json", params_j)
            write_json(folder / "metrics.json", {})
            with self._session() as s:
                s.add(row)
                s.flush()
                for parent in parent_ids:
                    self._insert_depend(s, self._resolve(s, parent), "run", run_id)
                self._insert_trials(s, run_id, trials_j)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        record = self.get(run_id)
        self._write_files(record)
        return Run(self, record)

    def _new_folder(self, now: datetime) -> tuple[str, Path]:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            run_id = new_run_id(now.replace(tzinfo=UTC))
            folder = self.runs_dir / run_id
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return run_id, folder
        raise RegistryError(f"could not make a new run folder in {self.runs_dir}")

    def link_model(self, model: str, run_id: str) -> None:
        """Declare that model ``model`` (a registry reference) was made by run ``run_id``."""
        self._add_depend(run_id, "model", model)

    def unlink_model(self, model: str) -> int:
        """Forget the runs model ``model`` needed (when it is deleted); returns how many."""
        with self._session() as s:
            result = s.execute(
                sa.delete(DependRow).where(
                    DependRow.dependent_kind == "model", DependRow.dependent == model
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def remove(self, run_id: str) -> str:
        """Delete a run's row and folder; returns its id. Refused (:class:`RunInUse`, nothing
        changed) while runs or models depend on it, or while it is still running."""
        trash: Path | None = None
        try:
            with self._session() as s:
                row = s.get(RunRow, self._resolve(s, run_id))
                assert row is not None
                run_id = row.id
                self._check_removable(s, row)
                s.execute(sa.delete(TrialRow).where(TrialRow.run_id == run_id))
                s.execute(
                    sa.delete(DependRow).where(
                        DependRow.dependent_kind == "run", DependRow.dependent == run_id
                    )
                )
                s.delete(row)
                s.flush()
                trash = self._move_aside(run_id)
        except BaseException:
            if trash is not None:  # the database kept the run: so does the folder
                trash.rename(self.runs_dir / run_id)
            raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return run_id

    def _check_removable(self, s: Session, row: RunRow) -> None:
        dependents = self._dependents(s, [row.id]).get(row.id, ())
        if dependents:
            raise RunInUse(row.id, dependents)
        proc = ProcessId(row.host, row.pid, row.pid_started)
        if row.status == "running" and proc.alive():
            raise RunStateError(
                f"run {row.id} is still running (pid {row.pid} on {row.host}); "
                "wait for it or stop that process first"
            )

    def _move_aside(self, run_id: str) -> Path | None:
        folder = self.runs_dir / run_id
        if not folder.exists():
            return None
        trash = self.runs_dir / f".removing-{run_id}-{secrets.token_hex(3)}"
        folder.rename(trash)
        return trash

    def mark_lost(self) -> builtins.list[str]:
        """Mark ``lost`` the running runs of this host whose process has ended (or whose pid
        now belongs to another process); returns their ids."""
        with self._session() as s:
            rows = s.scalars(sa.select(RunRow).where(RunRow.status == "running")).all()
            lost = [r for r in rows if not ProcessId(r.host, r.pid, r.pid_started).alive()]
            for r in lost:
                r.status, r.ended_at = "lost", _now()
                r.error = f"process {r.pid} on {r.host} ended without finishing the run"
            ids = [r.id for r in lost]
        for run_id in ids:
            self._write_files(self.get(run_id))
        return ids

    # -- reading -------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord:
        """The run with this id (or the only one whose id starts with it)."""
        with self._session() as s:
            row = s.get(RunRow, self._resolve(s, run_id))
            assert row is not None
            return self._records(s, [row])[0]

    def compare(self, run_ids: Sequence[str]) -> MetricsTable:
        """The metrics of these runs side by side (the union of their metric names)."""
        if not run_ids:
            raise ConfigError("compare needs at least one run id")
        runs = [self.get(r) for r in run_ids]
        seen = [r.id for r in runs]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"compare: a run is named twice in {', '.join(run_ids)}")
        return MetricsTable.of(runs)

    def trials(self, run_id: str) -> builtins.list[dict[str, Any]]:
        """The configurations a run tried, in the order they were recorded."""
        with self._session() as s:
            rid = self._resolve(s, run_id)
            q = sa.select(TrialRow.config).where(TrialRow.run_id == rid).order_by(TrialRow.seq)
            return [dict(c) for c in s.scalars(q)]

    def data_trials(self, inputs: Mapping[str, Any], *, exclude: Sequence[str] = ()) -> DataTrials:
        """The distinct configurations finished runs tried on the data ``inputs`` names (the
        same files with the same hashes, model files aside), each with its Sharpe ratio where
        known (see :mod:`workflows.runs_trials`); ``exclude`` leaves runs out (the asking one)."""
        with self._session() as s:
            return query_data_trials(s, inputs, exclude)

    def count(self) -> int:
        """How many runs are recorded."""
        with self._session() as s:
            return int(s.scalar(sa.select(sa.func.count()).select_from(RunRow)) or 0)

    def list(
        self,
        kind: str | None = None,
        status: str | None = None,
        limit: int | None = 50,
        before: str | None = None,
    ) -> builtins.list[RunRecord]:
        """Runs, newest first, optionally of one kind and/or status; ``before`` (a run id)
        gives the next page: only runs older than it."""
        if status is not None and status not in STATUSES:
            raise ConfigError(f"unknown run status {status!r}: known are {', '.join(STATUSES)}")
        q = sa.select(RunRow).order_by(RunRow.id.desc())
        if kind is not None:
            q = q.where(RunRow.kind == kind)
        if status is not None:
            q = q.where(RunRow.status == status)
        if before is not None:
            q = q.where(RunRow.id < before)
        if limit is not None:
            q = q.limit(limit)
        with self._session() as s:
            return self._records(s, builtins.list(s.scalars(q)))

    # -- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with Session(self._engine, expire_on_commit=False) as s, s.begin():
                yield s
        except sa.exc.SQLAlchemyError as err:
            raise RegistryError(f"run registry at {self.where}: {err}") from err

    def _resolve(self, s: Session, run_id: str) -> str:
        if s.get(RunRow, run_id) is not None:
            return run_id
        q = sa.select(RunRow.id).where(RunRow.id.startswith(run_id, autoescape=True)).limit(3)
        found = builtins.list(s.scalars(q)) if run_id else []
        if len(found) == 1:
            return found[0]
        if found:
            raise RunNotFound(f"run id {run_id!r} is ambiguous: {', '.join(found)}, ...")
        raise RunNotFound(f"no run {run_id!r} in {self.where}; `btml runs list` shows the runs")

    def _records(self, s: Session, rows: Sequence[RunRow]) -> builtins.list[RunRecord]:
        ids = [r.id for r in rows]
        dependents = self._dependents(s, ids)
        parents: dict[str, builtins.list[str]] = {}
        q = sa.select(DependRow.dependent, DependRow.run_id).where(
            DependRow.dependent_kind == "run", DependRow.dependent.in_(ids)
        )
        for child, parent in s.execute(q.order_by(DependRow.run_id)):
            parents.setdefault(child, []).append(parent)
        counts = dict(
            s.execute(  # type: ignore[arg-type]
                sa.select(TrialRow.run_id, sa.func.count())
                .where(TrialRow.run_id.in_(ids))
                .group_by(TrialRow.run_id)
            ).all()
        )
        return [
            _to_record(r, self.runs_dir / r.id, parents.get(r.id, ()), dependents.get(r.id, ()),
                       int(counts.get(r.id, 0)))
            for r in rows
        ]  # fmt: skip

    def _dependents(self, s: Session, ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        q = (
            sa.select(DependRow.run_id, DependRow.dependent_kind, DependRow.dependent)
            .where(DependRow.run_id.in_(ids))
            .order_by(DependRow.dependent_kind.desc(), DependRow.dependent)
        )
        out: dict[str, tuple[str, ...]] = {}
        for run_id, kind, dependent in s.execute(q):
            out[run_id] = (*out.get(run_id, ()), f"{kind} {dependent}")
        return out

    def _update(self, run_id: str, **values: Any) -> None:
        with self._session() as s:
            s.execute(sa.update(RunRow).where(RunRow.id == run_id).values(**values))
        if "artifacts" in values:
            self._write_files(self.get(run_id))

    def _finish(self, run_id: str, status: str, error: str | None) -> RunRecord:
        with self._session() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise RunNotFound(f"run {run_id} was removed while it ran")
            if row.status not in ("running", "lost"):
                raise RunStateError(f"run {run_id} is already finished ({row.status})")
            row.status, row.ended_at, row.error = status, _now(), error
        record = self.get(run_id)
        self._write_files(record)
        return record

    def _add_depend(self, run_id: str, kind: str, dependent: str) -> None:
        with self._session() as s:
            self._insert_depend(s, self._resolve(s, run_id), kind, dependent)
        if kind == "run":
            self._write_files(self.get(dependent))

    def _insert_depend(self, s: Session, run_id: str, kind: str, dependent: str) -> None:
        if kind == "run" and run_id == dependent:
            raise ConfigError(f"run {run_id} cannot depend on itself")
        if not dependent or len(dependent) > 255:
            raise ConfigError(f"a {kind} name must have 1 to 255 characters, got {dependent!r}")
        if s.get(DependRow, (run_id, kind, dependent)) is None:
            s.add(DependRow(run_id=run_id, dependent_kind=kind, dependent=dependent,
                            created_at=_now()))  # fmt: skip
            s.flush()

    def _add_trials(self, run_id: str, trials: Sequence[Mapping[str, Any]]) -> int:
        configs = [to_jsonable(dict(t), f"trials[{i}]") for i, t in enumerate(trials)]
        with self._session() as s:
            total = self._insert_trials(s, run_id, configs)
        write_json(self.runs_dir / run_id / "trials.json", self.trials(run_id))
        return total

    def _insert_trials(self, s: Session, run_id: str, configs: Sequence[dict[str, Any]]) -> int:
        q = sa.select(sa.func.max(TrialRow.seq)).where(TrialRow.run_id == run_id)
        start = (s.scalar(q) or 0) + 1
        s.add_all(TrialRow(run_id=run_id, seq=start + i, config=c) for i, c in enumerate(configs))
        s.flush()
        return start - 1 + len(configs)

    def _write_files(self, record: RunRecord) -> None:
        if record.dir.is_dir():
            write_json(record.dir / "run.json", record.summary())
        if record.n_trials and not (record.dir / "trials.json").exists():
            write_json(record.dir / "trials.json", self.trials(record.id))
