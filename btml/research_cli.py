"""``btml walkforward`` and ``btml stress``."""

from __future__ import annotations

import click

from btml.common import fail, pass_config
from btml.config import Config
from feeds.errors import BtmlError


@click.command()
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
@click.option("--index", "index_name", default=None, help="Stored index for the index features.")
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
    "--tearsheet", "tearsheet_path", default=None, help="HTML tearsheet of the stitched OOS run."
)
@pass_config
def walkforward(
    config: Config,
    symbols: str,
    arch: str,
    name: str,
    folds: int,
    test_bars: int,
    rolling: int | None,
    index_name: str | None,
    epochs: int,
    window: int,
    serving: str,
    timeframe: str,
    tearsheet_path: str | None,
) -> None:
    """Train, serve and backtest per fold; report only the stitched out-of-sample result."""
    import os

    from feeds.store import ParquetStore
    from mlmodels.dataset import DatasetConfig
    from mlmodels.splits import WalkForward
    from mlmodels.trainer import TrainConfig
    from workflows.backtest import load_frames
    from workflows.research import save_walk_forward, walk_forward

    try:
        store = ParquetStore(config.store)
        frames = load_frames(store, [s.strip() for s in symbols.split(",")], timeframe)
        index = store.read(index_name, timeframe) if index_name else None
        wf = WalkForward(
            n_splits=folds, test_size=test_bars,
            train="expanding" if rolling is None else "rolling", train_size=rolling,
        )  # fmt: skip
        res = walk_forward(
            config.store, frames, name=name, arch=arch, folds=wf,
            train_cfg=TrainConfig(epochs=epochs, patience=5, threads=os.cpu_count()),
            data_cfg=DatasetConfig(window=window, skip_short=True), index=index,
            index_name=index_name, timeframe=timeframe, serving=serving, log=click.echo,
        )  # fmt: skip
        run_dir, stitched = save_walk_forward(config.store, name, res)
        if tearsheet_path:
            from workflows.reports import tearsheet_for_run

            tearsheet_for_run(run_dir, tearsheet_path)
    except BtmlError as err:
        fail(err)
    click.echo(res.folds.drop(columns=["seconds"]).to_string(float_format=lambda v: f"{v:.4f}"))
    p, d = stitched.stats, res.dsr
    click.echo(
        f"out-of-sample: return {p.total_return:.2%}, Sharpe {p.sharpe:.2f}, max DD {p.max_drawdown:.2%}; "
        f"deflated Sharpe {d['dsr']:.3f} (P[true Sharpe > best of {int(d['trials'])} unskilled trials])"
    )
    click.echo(f"run saved in {run_dir}")


@click.command()
@click.option("--model", required=True, help="NAME[:VERSION] of a registered model.")
@click.option("--symbols", required=True, help="Comma-separated stored symbols.")
@click.option("--timeframe", default="1Day", show_default=True)
@pass_config
def stress(config: Config, model: str, symbols: str, timeframe: str) -> None:
    """The model's strategy over crash windows the data covers and synthetic shocks."""
    from feeds.store import ParquetStore
    from workflows.backtest import load_frames
    from workflows.research import stress as run_stress

    try:
        frames = load_frames(
            ParquetStore(config.store), [s.strip() for s in symbols.split(",")], timeframe
        )
        table = run_stress(config.store, model, frames, log=click.echo)
    except BtmlError as err:
        fail(err)
    click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if table.filter(like="limit_").eq(False).any().any():
        click.echo("a risk limit was breached (see the limit_ columns)", err=True)
        raise SystemExit(1)
