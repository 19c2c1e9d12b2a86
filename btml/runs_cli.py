"""``btml runs list|show|compare|rm``: the run registry from the command line."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from btml.common import fail
from btml.config import Config, load_config
from core.errors import BtmlError
from workflows.runs import RunRegistry
from workflows.runs_model import STATUSES, RunRecord


@dataclass(frozen=True)
class _Target:
    store: Path
    db_url: str | None


_pass_target = click.make_pass_decorator(_Target)


def _open(target: _Target) -> RunRegistry:
    try:
        return RunRegistry(target.store, target.db_url)
    except BtmlError as err:
        fail(err)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def fmt_value(value: Any) -> str:
    """A metric or parameter for a table: floats to 4 decimals (or 3 significant digits in
    scientific notation when tiny or huge), thousands separated in big integers, ``-`` for
    missing values, JSON for lists and dicts."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 100_000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e9):
            return f"{value:.3e}"
        return f"{value:,.2f}" if abs(value) >= 100_000 else f"{value:.4f}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Columns padded to their widest cell; ``right[i]`` right-aligns column ``i``."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


@click.group()
@click.option(
    "--db",
    "db_url",
    default=None,
    metavar="URL",
    help="Registry database (default: that of btml --db, which reads $BTML_DB, else "
    "sqlite:///{store}/runs.sqlite), e.g. postgresql+psycopg://user@host/db.",
)
@click.pass_context
def runs(ctx: click.Context, db_url: str | None) -> None:
    """Recorded runs: their parameters, metrics, artefacts and what depends on them."""
    config = ctx.find_object(Config) or load_config()
    ctx.obj = _Target(config.store, db_url or config.db_url)


@runs.command("list")
@click.option("--kind", default=None, help="Only runs of this kind (backtest, train, ...).")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_pass_target
def list_runs(
    target: _Target, kind: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List runs, newest first (running runs whose process died show as lost)."""
    with _open(target) as registry:
        try:
            registry.mark_lost()
            found = registry.list(kind=kind, status=status, limit=limit)
        except BtmlError as err:
            fail(err)
    if as_json:
        _echo_json([r.to_dict() for r in found])
        return
    if not found:
        click.echo(f"no runs in {registry.where}")
        return
    rows = [
        [r.id, r.kind, r.status, f"{r.started_at:%Y-%m-%d %H:%M:%S}",
         "-" if r.seconds is None else f"{r.seconds:.1f}", str(r.n_trials), r.code_version]
        for r in found
    ]  # fmt: skip
    header = ["ID", "KIND", "STATUS", "STARTED (UTC)", "SECONDS", "TRIALS", "CODE"]
    click.echo(table(header, rows, [False] * 4 + [True, True, False]))


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_pass_target
def show(target: _Target, run_id: str, as_json: bool) -> None:
    """Show one run (an id, or a prefix of exactly one id)."""
    with _open(target) as registry:
        try:
            registry.mark_lost()
            record = registry.get(run_id)
        except BtmlError as err:
            fail(err)
    if as_json:
        _echo_json(record.to_dict())
    else:
        click.echo(describe(record))


def describe(r: RunRecord) -> str:
    """A run as ``key  value`` lines, then its params, metrics, inputs and artefacts."""
    ended = "-" if r.ended_at is None else f"{r.ended_at:%Y-%m-%d %H:%M:%S} ({r.seconds:.1f} s)"
    lines = [
        f"id            {r.id}",
        f"kind          {r.kind}",
        f"status        {r.status}" + (f": {r.error}" if r.error else ""),
        f"started       {r.started_at:%Y-%m-%d %H:%M:%S} UTC",
        f"ended         {ended}",
        f"code version  {r.code_version}",
        f"process       {r.pid} on {r.host}",
        f"folder        {r.dir}",
        f"depends on    {', '.join(r.parents) or '-'}",
        f"used by       {', '.join(r.dependents) or '-'}",
        f"trials        {r.n_trials}",
    ]
    for title, mapping in (("params", r.params), ("metrics", r.metrics), ("inputs", r.inputs)):
        lines.append(f"{title}:" + ("" if mapping else " -"))
        lines += [f"  {k} = {fmt_value(v)}" for k, v in mapping.items()]
    lines.append("artifacts:" + ("" if r.artifacts else " -"))
    lines += [f"  {a}" for a in r.artifacts]
    return "\n".join(lines)


@runs.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_pass_target
def compare(target: _Target, run_ids: tuple[str, ...], as_json: bool) -> None:
    """Metrics of several runs side by side: a column per run, a row per metric."""
    with _open(target) as registry:
        try:
            result = registry.compare(run_ids)
        except BtmlError as err:
            fail(err)
    if as_json:
        _echo_json(result.to_dict())
        return
    rows = [[name, *(fmt_value(v) for v in result.values[name])] for name in result.names]
    if not rows:
        rows = [["(no metrics)", *("-" for _ in result.run_ids)]]
    click.echo(table(["metric", *result.run_ids], rows, [False] + [True] * len(result.run_ids)))


@runs.command("rm")
@click.argument("run_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_pass_target
def rm(target: _Target, run_id: str, yes: bool, as_json: bool) -> None:
    """Remove a run's record and folder (refused while runs or models depend on it)."""
    from workflows.errors import RunInUse

    with _open(target) as registry:
        try:
            record = registry.get(run_id)
            if record.dependents:  # refuse before asking
                raise RunInUse(record.id, record.dependents)
            if not yes:
                click.confirm(f"remove run {record.id} and its folder {record.dir}?", abort=True)
            removed = registry.remove(record.id)
        except BtmlError as err:
            fail(err)
    if as_json:
        _echo_json({"removed": removed})
    else:
        click.echo(f"removed run {removed}")
