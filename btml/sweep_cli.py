"""``btml sweep``, and the executor options it shares with ``btml walkforward``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from btml.common import fail, pass_config
from btml.config import Config
from btml.config_file import config_file_option
from core.errors import BtmlError

if TYPE_CHECKING:
    from workflows.executors import ExecutorConfig
    from workflows.sweep import SweepResult

F = TypeVar("F", bound=Callable[..., Any])
SHOWN_TRIALS = 20


def executor_options(f: F) -> F:
    """Add ``--executor``, ``--workers`` and ``--ray-address`` (see :func:`executor_config`)."""
    f = click.option(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="An existing Ray cluster (default: a local Ray runtime of --workers CPUs).",
    )(f)
    f = click.option(
        "--workers",
        type=click.IntRange(1, 256),
        default=None,
        help="Worker processes or Ray CPUs (default: this machine's cores).",
    )(f)
    return click.option(
        "--executor",
        type=click.Choice(["serial", "process", "ray"]),
        default="serial",
        show_default=True,
        help="Where folds and trials run: here one by one, worker processes, or Ray.",
    )(f)


def executor_config(executor: str, workers: int | None, ray_address: str | None) -> ExecutorConfig:
    """The executor the options name; each worker trains on ``btml --threads`` torch threads
    if given, else one (more would oversubscribe the cores). Raises ConfigError (e.g. Ray
    asked for but not installed)."""
    from workflows.executors import ExecutorConfig

    threads = click.get_current_context().find_root().params.get("threads") or 1
    return ExecutorConfig(kind=executor, workers=workers, threads=threads, ray_address=ray_address)


@click.command()
@config_file_option
@click.option("--symbols", default=None, help="Comma-separated stored symbols (required).")
@click.option(
    "--space",
    "space_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Search space, a TOML or JSON file (default: the built-in space; see --show-space).",
)
@click.option("--show-space", is_flag=True, help="Print the search space as TOML and exit.")
@click.option("--study", default="sweep", show_default=True, help="Optuna study to run or resume.")
@click.option("--new-study", is_flag=True, help="Start a fresh study (NAME-2, ... if NAME exists).")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--objective",
    type=click.Choice(["sharpe", "sortino", "total_return"]),
    default="sharpe",
    show_default=True,
    help="Metric of the stitched out-of-sample returns to maximise.",
)
@click.option("--seed", default=0, show_default=True, help="The sampler's seed.")
@click.option("--arch", default="tiny", show_default=True, help="Architecture preset.")
@click.option("--folds", default=3, show_default=True)
@click.option(
    "--test-bars", default=252, show_default=True, help="Bars in each fold's test segment."
)
@click.option(
    "--rolling",
    default=None,
    type=click.IntRange(min=1),
    help="Rolling training window in bars (default expanding).",
)
@click.option("--index", default=None, help="Stored index for the index features.")
@click.option("--epochs", default=20, show_default=True)
@click.option("--window", default=30, show_default=True)
@click.option("--timeframe", default="1Day", show_default=True)
@executor_options
@pass_config
def sweep(
    config: Config, symbols: str | None, space_path: Path | None, show_space: bool, folds: int,
    test_bars: int, rolling: int | None, epochs: int, executor: str, workers: int | None,
    ray_address: str | None, **opts: Any,
) -> None:  # fmt: skip
    """Search model, training and strategy parameters by their walk-forward out-of-sample score.

    An Optuna study (TPE, median pruning per fold) stored in the run registry's database;
    the same --study with the same space resumes it. Prints the trials ranked, the best
    configuration and its deflated Sharpe (counting every configuration tried on the data),
    and the PBO across the trials.
    """
    import optuna

    from workflows.sweep import DEFAULT_SPACE, SearchSpace, SweepConfig, load_space, run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        space = load_space(space_path) if space_path else SearchSpace.parse(DEFAULT_SPACE)
        if show_space:
            click.echo(space.to_toml(), nl=False)
            return
        if not symbols:
            raise click.UsageError("Missing option '--symbols'.")
        cfg = SweepConfig.from_dict({
            **{k: opts[k] for k in ("study", "new_study", "trials", "objective", "seed")},
            "space": space.to_dict(),
            "walkforward": {
                **{k: opts[k] for k in ("arch", "index", "window", "timeframe")},
                "symbols": tuple(s.strip() for s in symbols.split(",")),
                "folds": {"n_splits": folds, "test_size": test_bars, "train_size": rolling,
                          "train": "expanding" if rolling is None else "rolling"},
                "train": {"epochs": epochs, "patience": 5},
            },
        })  # fmt: skip
        ex = executor_config(executor, workers, ray_address)
        out = run_sweep(config.store, cfg, log=click.echo, db_url=config.db_url, executor=ex)
    except BtmlError as err:
        fail(err)
    _report(out)


def _num(v: float) -> str:
    return f"{v:.4f}"


def _report(out: SweepResult) -> None:
    """The ranked trials, the best configuration, its stitched result and deflated Sharpe,
    the PBO across the trials, the warnings (survivorship), and where it is all recorded."""
    table = out.table.drop(columns=["run"], errors="ignore")
    more = len(table) - SHOWN_TRIALS
    click.echo(f"\nstudy {out.study}: {len(table)} trials, ranked by {out.config.objective}:")
    click.echo(table.head(SHOWN_TRIALS).to_string(float_format=_num))
    if more > 0:
        click.echo(f"... {more} more in trials.csv")
    if out.best is None or out.selection is None:
        click.echo("no trial finished all its folds: nothing to select")
    else:
        best, res = out.best, out.best["result"]
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in best["params"].items()
        )
        click.echo(f"best: trial {best['trial']}: {params}")
        click.echo(
            f"out-of-sample: return {res['total_return']:.2%}, Sharpe {res['sharpe']:.2f}, "
            f"max DD {res['max_drawdown']:.2%}; {out.selection.describe()}"
        )
        if out.selection.pbo is not None:
            click.echo(out.selection.describe_pbo("trial"))
    for warning in out.warnings:
        click.echo(f"warning: {warning}")
    click.echo(f"recorded as run {out.run_id} in {out.run_dir}")
