"""``btml walkforward`` and ``btml stress``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from btml.common import fail, pass_config
from btml.config import Config
from btml.config_file import config_file_option
from btml.sweep_cli import executor_config, executor_options
from core.errors import BtmlError

if TYPE_CHECKING:
    from workflows.walkforward import WalkForwardRunResult


def _symbols(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(","))


@click.command()
@config_file_option
@click.option("--symbols", required=True, help="Comma-separated stored symbols.")
@click.option("--arch", default="tiny", show_default=True, help="Architecture preset.")
@click.option("--name", default="wf", show_default=True, help="Fold models register as NAME-fK.")
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
@click.option(
    "--serving",
    type=click.Choice(["inprocess", "torchserve"]),
    default="inprocess",
    show_default=True,
)
@click.option("--timeframe", default="1Day", show_default=True)
@click.option(
    "--seeds",
    default=1,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Repeat with N training seeds; report the spread across them (each is a trial).",
)
@click.option(
    "--tearsheet", "tearsheet_path", default=None, help="HTML tearsheet of the stitched OOS run."
)
@click.option(
    "--inference",
    type=click.Choice(["batched", "per-bar"]),
    default="batched",
    show_default=True,
    help="The folds' backtests score the model's paths ahead (same decisions) or per bar.",
)
@click.option(
    "--entry-rule",
    type=click.Choice(["direction", "return", "auto"]),
    default="auto",
    show_default=True,
    help="Enter on the direction head, on the price heads' expected return net of costs, or "
    "on whichever did better on each fold's own validation split (chosen per fold).",
)
@click.option(
    "--min-return",
    default=0.0,
    show_default=True,
    help="The return rule's minimum expected return after a round trip's costs.",
)
@executor_options
@pass_config
def walkforward(
    config: Config, symbols: str, folds: int, test_bars: int, rolling: int | None, epochs: int,
    tearsheet_path: str | None, executor: str, workers: int | None, ray_address: str | None,
    **opts: Any,
) -> None:  # fmt: skip
    """Train, serve and backtest per fold; report only the stitched out-of-sample result.

    Its deflated Sharpe counts every configuration tried on the same data (the finished
    backtests, walk-forwards and sweeps in the run registry, and each seed); the folds are one
    configuration. Each head is reported over every fold's test samples against its naive
    baseline. The folds run on --executor (the same results on each).
    """
    from workflows.walkforward import WalkForwardConfig, run_walk_forward

    try:
        ml = {k: opts.pop(k) for k in ("inference", "entry_rule", "min_return")}
        cfg = WalkForwardConfig.from_dict({
            **opts, "symbols": _symbols(symbols), "tearsheet": tearsheet_path is not None,
            "ml": {**(opts.get("ml") or {}), **ml},
            "folds": {"n_splits": folds, "test_size": test_bars, "train_size": rolling,
                      "train": "expanding" if rolling is None else "rolling"},
            "train": {"epochs": epochs, "patience": 5},
        })  # fmt: skip
        ex = executor_config(executor, workers, ray_address)
        out = run_walk_forward(
            config.store,
            cfg,
            tearsheet_to=tearsheet_path,
            log=click.echo,
            db_url=config.db_url,
            executor=ex,
        )
    except BtmlError as err:
        fail(err)
    _report(out)


def _num(v: float) -> str:
    return f"{v:.4f}"


def _report(out: WalkForwardRunResult) -> None:
    """The first seed's folds (with each fold's entry rule), the seeds' table and spread, the
    per-head report over the folds' test samples (its edge line first), the stitched
    out-of-sample result with its activity and deflated Sharpe, the PBO across seeds, the
    warnings."""
    from btml.models_cli import report_lines
    from workflows.walkforward_report import seed_spread

    res, p, sel = out.result, out.stitched.stats, out.selection
    assert sel is not None  # a recorded walk-forward has its selection statistics
    shown = [c for c in res.folds.columns if c == "entry_rule_chosen" or
             (c != "seconds" and not c.startswith("entry_"))]  # fmt: skip
    click.echo(res.folds[shown].to_string(float_format=_num))
    if out.seed_table is not None:
        click.echo(f"\nper seed (the folds above are seed {out.seed_table.index[0]}'s):")
        click.echo(out.seed_table.to_string(float_format=_num))
        click.echo(f"\nacross {len(out.seed_table)} seeds:")
        click.echo(seed_spread(out.seed_table).to_string(float_format=_num))
    if res.report is not None:
        edge, *rest = report_lines(res.report)
        click.echo(f"per head, stitched over {res.report['folds']} folds' test samples: {edge}")
        click.echo("\n".join([*rest, f"  baselines: {res.report['baselines']}"]))
    click.echo(
        f"out-of-sample: return {p.total_return:.2%}, Sharpe {p.sharpe:.2f}, "
        f"max DD {p.max_drawdown:.2%}; {sel.describe()}"
    )
    if p.activity:
        click.echo(f"{out.stitched.name}: {p.activity}")
    if sel.pbo is not None:
        click.echo(sel.describe_pbo("seed"))
    for warning in out.warnings:
        click.echo(f"warning: {warning}")
    click.echo(f"recorded as run {out.run_id} in {out.run_dir}")


@click.command()
@config_file_option
@click.option("--model", required=True, help="NAME[:VERSION] of a registered model.")
@click.option("--symbols", required=True, help="Comma-separated stored symbols.")
@click.option("--timeframe", default="1Day", show_default=True)
@pass_config
def stress(config: Config, model: str, symbols: str, timeframe: str) -> None:
    """The model's strategy over crash windows the data covers and synthetic shocks."""
    from workflows.stress import StressConfig, run_stress

    try:
        cfg = StressConfig(model=model, symbols=_symbols(symbols), timeframe=timeframe)
        out = run_stress(config.store, cfg, log=click.echo, db_url=config.db_url)
    except BtmlError as err:
        fail(err)
    click.echo(out.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    click.echo(f"recorded as run {out.run_id}")
    if out.limits_breached:
        click.echo("a risk limit was breached (see the limit_ columns)", err=True)
        raise SystemExit(1)
