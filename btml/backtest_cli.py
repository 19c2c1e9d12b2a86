"""``btml backtest``: the ML strategy or a baseline over stored data, with costs and risk rules."""

from __future__ import annotations

import click

from btml.common import fail, pass_config
from btml.config import Config
from feeds.errors import BtmlError


@click.command()
@click.option("--model", default=None, help="NAME[:VERSION] of a registered model.")
@click.option(
    "--baseline",
    type=click.Choice(["sma", "buyhold"]),
    default=None,
    help="Run a baseline instead.",
)
@click.option("--symbols", required=True, help="Comma-separated stored symbols.")
@click.option(
    "--serving", type=click.Choice(["inprocess", "torchserve"]), default="inprocess", show_default=True,
    help="Ask the model in this process, or over REST (a running server, else one started for the run).",
)  # fmt: skip
@click.option("--start", default=None, help="First bar (default for a model: its test range).")
@click.option("--end", default=None, help="Last bar.")
@click.option("--timeframe", default="1Day", show_default=True)
@click.option("--cash", default=100_000.0, show_default=True)
@click.option("--commission", default=0.001, show_default=True, help="Fraction of traded value.")
@click.option("--slippage", default=0.001, show_default=True, help="Fraction of price (10 bps).")
@click.option("--allow-short", is_flag=True, help="Trade short signals too (default long-only).")
@click.option(
    "--entry-prob", default=0.0, show_default=True, help="Minimum P(up) (or P(down)) to enter."
)
@click.option(
    "--min-edge", default=0.01, show_default=True, help="Minimum P(up) - P(down) to enter long."
)
@click.option("--max-position", default=0.25, show_default=True, help="Max weight per symbol.")
@click.option(
    "--daily-loss-stop",
    default=0.03,
    show_default=True,
    help="No new entries that day after this loss.",
)
@click.option(
    "--max-drawdown", default=0.25, show_default=True, help="Halt new entries beyond this drawdown."
)
@click.option(
    "--on-serving-failure", type=click.Choice(["abort", "hold", "flatten"]), default="abort",
    show_default=True, help="What to do when the model server fails mid-run.",
)  # fmt: skip
@click.option(
    "--name", default=None, help="Run name under {store}/backtests (default: model or baseline)."
)
@click.option("--tearsheet", "tearsheet_path", default=None, help="Write an HTML tearsheet here.")
@pass_config
def backtest(
    config: Config,
    model: str | None,
    baseline: str | None,
    symbols: str,
    serving: str,
    start: str | None,
    end: str | None,
    timeframe: str,
    cash: float,
    commission: float,
    slippage: float,
    allow_short: bool,
    entry_prob: float,
    min_edge: float,
    max_position: float,
    daily_loss_stop: float,
    max_drawdown: float,
    on_serving_failure: str,
    name: str | None,
    tearsheet_path: str | None,
) -> None:
    """Backtest --model (beside buy-and-hold and SMA at the same costs) or --baseline."""
    from analyzers.backtest import CostConfig
    from feeds.store import ParquetStore
    from strategies.risk import RiskConfig
    from workflows.backtest import (
        MLRunConfig,
        clip_range,
        load_frames,
        run_baseline,
        run_model,
        save_run,
    )

    if (model is None) == (baseline is None):
        raise click.UsageError("give exactly one of --model or --baseline")
    try:
        costs = CostConfig(cash=cash, commission=commission, slippage=slippage)
        frames = load_frames(
            ParquetStore(config.store), [s.strip() for s in symbols.split(",")], timeframe
        )
        card = None
        if model:
            ml = MLRunConfig(
                entry_prob=entry_prob, min_edge=min_edge, allow_short=allow_short, serving_failure=on_serving_failure,
                risk=RiskConfig(max_position=max_position, daily_loss_stop=daily_loss_stop,
                                max_drawdown=max_drawdown),
            )  # fmt: skip
            res, card = run_model(
                config.store, model, frames, serving=serving, start=start, end=end,
                costs=costs, ml=ml, log=click.echo,
            )  # fmt: skip
            span = clip_range(frames, res.returns.index[0], res.returns.index[-1])
            results = [res, run_baseline("buyhold", span, costs), run_baseline("sma", span, costs)]
        else:
            results = [run_baseline(baseline or "", clip_range(frames, start, end), costs)]
        run_dir = save_run(
            config.store, name or (model or baseline or "run").replace(":", "-v"), results, card
        )
        if tearsheet_path:
            from workflows.reports import tearsheet_for_run

            tearsheet_for_run(run_dir, tearsheet_path)
    except BtmlError as err:
        fail(err)
    click.echo(summary(results))
    click.echo(f"run saved in {run_dir}")
    if tearsheet_path:
        click.echo(f"tearsheet: {tearsheet_path}")


def summary(results) -> str:  # type: ignore[no-untyped-def]
    head = f"{'strategy':<22}{'final value':>14}{'CAGR':>9}{'Sharpe':>8}{'max DD':>9}{'trades':>8}"
    rows = [head, "-" * len(head)]
    for r in results:
        s = r.stats
        rows.append(
            f"{r.name:<22}{r.final_value:>14,.0f}{s.cagr:>9.2%}{s.sharpe:>8.2f}"
            f"{s.max_drawdown:>9.2%}{s.trades:>8d}"
        )
    return "\n".join(rows)


@click.command()
@click.argument("run")
@click.option("--out", required=True, help="HTML file to write.")
@pass_config
def tearsheet(config: Config, run: str, out: str) -> None:
    """Write the QuantStats tearsheet (plus the ML section) of a saved backtest RUN.

    RUN is a name under {store}/backtests (see btml backtest) or a run folder.
    """
    from pathlib import Path

    from workflows.reports import tearsheet_for_run

    run_dir = Path(run) if Path(run).is_dir() else config.store / "backtests" / run
    try:
        path = tearsheet_for_run(run_dir, out)
    except BtmlError as err:
        fail(err)
    click.echo(f"tearsheet: {path}")
