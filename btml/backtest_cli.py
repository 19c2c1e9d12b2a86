"""``btml backtest``: the ML strategy or a baseline over stored data, with costs and risk rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from btml.common import fail, pass_config
from btml.config import Config
from btml.config_file import config_file_option
from core.errors import BtmlError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from analyzers.backtest import BacktestResult
    from workflows.backtest import BacktestConfig


@click.command()
@config_file_option
@click.option("--model", default=None, help="NAME[:VERSION] of a registered model.")
@click.option(
    "--baseline",
    type=click.Choice(["sma", "buyhold"]),
    default=None,
    help="Run a baseline instead.",
)
@click.option("--symbols", default=None, help="Comma-separated stored symbols.")
@click.option(
    "--universe",
    default=None,
    help="A named universe instead of --symbols (today's constituents: warned as survivorship).",
)
@click.option(
    "--membership", "membership_file", type=click.Path(exists=True, dir_okay=False), default=None,
    help="Point-in-time members, CSV symbol,start,end (or date,symbol): each traded only while a member.",
)  # fmt: skip
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
@click.option(
    "--entry-rule",
    type=click.Choice(["direction", "return", "auto"]),
    default="auto",
    show_default=True,
    help="Enter on the direction head, on the price heads' expected return net of costs, or "
    "on whichever did better on the model's validation split.",
)
@click.option(
    "--inference",
    type=click.Choice(["batched", "per-bar"]),
    default="batched",
    show_default=True,
    help="Score the model's window paths --chunk bars ahead in one request (the heads per bar, "
    "in-process), or send one request per timestamp. Same decisions either way.",
)
@click.option(
    "--chunk", default=256, show_default=True, help="Bars scored ahead per request (batched)."
)
@click.option(
    "--min-return",
    default=0.0,
    show_default=True,
    help="The return rule's minimum expected return after a round trip's costs.",
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
    "--tearsheet", "tearsheet_path", default=None, help="Also write the HTML tearsheet here."
)
@click.option("--plot", "plot_path", default=None, help="Also write backtrader's chart here (PNG).")
@pass_config
def backtest(
    config: Config, tearsheet_path: str | None, plot_path: str | None, **opts: Any
) -> None:
    """Backtest --model (beside buy-and-hold and SMA at the same costs) or --baseline.

    Every backtest is recorded as a run: its folder {store}/runs/ID holds the returns, the
    audit trail, the summary and, when asked, the tearsheet and the plot (btml runs show ID).
    """
    from workflows.backtest import backtest as run_backtest

    try:
        request = _request(opts, tearsheet=tearsheet_path is not None, plot=plot_path is not None)
        result = run_backtest(
            config.store, request, tearsheet_to=tearsheet_path, plot_to=plot_path,
            log=click.echo, db_url=config.db_url,
        )  # fmt: skip
    except BtmlError as err:
        fail(err)
    click.echo(summary(result.results, result.warnings, result.report))
    click.echo(f"recorded as run {result.run_id} in {result.run_dir}")
    for label, path in (("tearsheet", result.tearsheet), ("plot", result.plot)):
        if path is not None:
            click.echo(f"{label}: {path}")


def _request(o: dict[str, Any], *, tearsheet: bool, plot: bool) -> BacktestConfig:
    """The backtest request of the command's options."""
    from analyzers.backtest import CostConfig
    from core.errors import ConfigError
    from feeds.membership import read_member_spans
    from strategies.risk import RiskConfig
    from workflows.backtest import BacktestConfig, MLRunConfig

    ml = None
    if o["model"] is not None:
        risk = RiskConfig(max_position=o["max_position"], daily_loss_stop=o["daily_loss_stop"],
                          max_drawdown=o["max_drawdown"])  # fmt: skip
        ml = MLRunConfig(entry_prob=o["entry_prob"], min_edge=o["min_edge"], risk=risk,
                         allow_short=o["allow_short"], serving_failure=o["on_serving_failure"],
                         entry_rule=o["entry_rule"], min_return=o["min_return"],
                         inference=o["inference"], chunk=o["chunk"])  # fmt: skip
    if not (o["symbols"] or o["universe"] or o["membership_file"]):
        raise ConfigError("give --symbols A,B, --universe NAME or --membership FILE")
    spans = read_member_spans(o["membership_file"]) if o["membership_file"] else None
    return BacktestConfig(
        symbols=tuple(s.strip() for s in (o["symbols"] or "").split(",") if o["symbols"]),
        universe=o["universe"], membership=spans, model=o["model"],
        baseline=o["baseline"], serving=o["serving"], start=o["start"], end=o["end"],
        timeframe=o["timeframe"], ml=ml, tearsheet=tearsheet, plot=plot,
        costs=CostConfig(cash=o["cash"], commission=o["commission"], slippage=o["slippage"]),
    )  # fmt: skip


def summary(
    results: Sequence[BacktestResult],
    warnings: Sequence[str] = (),
    report: Mapping[str, Any] | None = None,
) -> str:
    """The results table, a line for each run that never traded or bought and held, each
    run's notes (the entry rule chosen), a model's out-of-sample report per head (its edge
    line first) and the run's warnings (survivorship)."""
    from analyzers.backtest import activity_lines
    from btml.models_cli import report_lines

    head = f"{'strategy':<22}{'final value':>14}{'CAGR':>9}{'Sharpe':>8}{'max DD':>9}{'trades':>8}"
    rows = [head, "-" * len(head)]
    for r in results:
        s = r.stats
        rows.append(
            f"{r.name:<22}{r.final_value:>14,.0f}{s.cagr:>9.2%}{s.sharpe:>8.2f}"
            f"{s.max_drawdown:>9.2%}{s.trades:>8d}"
        )
    rows += activity_lines(results)
    rows += [note for r in results for note in r.notes]
    rows += report_lines(dict(report)) if report else []
    rows += [f"warning: {w}" for w in warnings]
    return "\n".join(rows)


@click.command()
@click.argument("run")
@click.option("--out", required=True, help="HTML file to write.")
@pass_config
def tearsheet(config: Config, run: str, out: str) -> None:
    """Write the QuantStats tearsheet (plus the ML section) of backtest RUN.

    RUN is a run id, or the start of exactly one (see btml runs list --kind backtest).
    """
    from workflows.reports import tearsheet_of_run

    try:
        path = tearsheet_of_run(config.store, run, out, db_url=config.db_url)
    except BtmlError as err:
        fail(err)
    click.echo(f"tearsheet: {path}")
