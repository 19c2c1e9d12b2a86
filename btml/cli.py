"""The ``btml`` command line: thin commands that call into the packages and print."""

from __future__ import annotations

from pathlib import Path

import click

from btml.common import configure_process, fail, pass_config
from btml.config import Config, load_config
from core.errors import BtmlError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store folder (default: $BTML_STORE or ./data_storage).",
)
@click.option(
    "--db",
    "db_url",
    envvar="BTML_DB",
    default=None,
    metavar="URL",
    help="Run registry database of every command (default: $BTML_DB, else "
    "sqlite:///{store}/runs.sqlite), e.g. postgresql+psycopg://user@host/db.",
)
@click.option("-v", "--verbose", is_flag=True, help="Also show the debug log lines.")
@click.option("-q", "--quiet", is_flag=True, help="Show only warnings and errors in the log.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    envvar="BTML_THREADS",
    default=None,
    help="Torch CPU threads of this process (default: $BTML_THREADS, else min(cores, 4)).",
)
@click.version_option(package_name="backtrader-ml", prog_name="btml")
@click.pass_context
def main(
    ctx: click.Context,
    store: Path | None,
    db_url: str | None,
    verbose: bool,
    quiet: bool,
    threads: int | None,
) -> None:
    """backtrader-ml: market data, ML signals and backtests for backtrader."""
    configure_process(ctx, verbose=verbose, quiet=quiet, threads=threads)
    try:
        ctx.obj = load_config(store, db_url=db_url)
        if ctx.obj.db_url:
            from workflows.runs_db import check_url

            check_url(ctx.obj.db_url)  # a typo fails now, not after a training
    except BtmlError as err:  # e.g. only one of the two Alpaca keys set, a bad --db
        fail(err)


@main.command()
@click.option(
    "--synthetic", is_flag=True, help="Use the synthetic market instead of the real sample."
)
@pass_config
def demo(config: Config, synthetic: bool) -> None:
    """Run the whole system offline on the embedded default and print a summary."""
    from workflows.demo import run_demo, summary_table

    try:
        result = run_demo(config.store, synthetic=synthetic, log=click.echo, db_url=config.db_url)
    except BtmlError as err:
        fail(err)
    click.echo("")
    click.echo(summary_table(result))
    click.echo("")
    click.echo(f"store: {result.store.resolve()}")
    for f in result.files:
        click.echo(f"  {f}")
    click.echo("runs (btml runs show ID):")
    for kind, run_id, folder in result.runs:
        click.echo(f"  {kind:<9}{run_id}  {folder}")
    click.echo(f"done in {result.seconds:.1f} s")


from btml.backtest_cli import backtest, tearsheet  # noqa: E402
from btml.dashboard_cli import dashboard  # noqa: E402
from btml.data_cli import data  # noqa: E402
from btml.features_cli import features  # noqa: E402
from btml.index_cli import index  # noqa: E402
from btml.models_cli import models, train  # noqa: E402
from btml.research_cli import stress, walkforward  # noqa: E402
from btml.runs_cli import runs  # noqa: E402
from btml.serve_cli import serve  # noqa: E402
from btml.sweep_cli import sweep  # noqa: E402
from btml.trade_cli import trade  # noqa: E402

main.add_command(data)
main.add_command(index)
main.add_command(features)
main.add_command(train)
main.add_command(models)
main.add_command(serve)
main.add_command(backtest)
main.add_command(tearsheet)
main.add_command(walkforward)
main.add_command(stress)
main.add_command(sweep)
main.add_command(trade)
main.add_command(runs)
main.add_command(dashboard)

if __name__ == "__main__":  # pragma: no cover
    main()
