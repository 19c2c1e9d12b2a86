"""``btml data ...``: download, import, synthesise, list and validate stored market data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from btml.common import fail, pass_config
from btml.config import Config
from btml.config_file import config_file_option
from btml.output import echo_json, json_option, series_dict, stamp
from core.errors import BtmlError, ConfigError, SymbolNotFound


@click.group()
def data() -> None:
    """Market data: download, import, synthesise, list, validate."""


@data.command()
@config_file_option
@click.argument("symbols", nargs=-1)
@click.option("--universe", help="A named universe instead of SYMBOLS (see `btml data universes`).")
@click.option(
    "--source",
    "source_name",
    type=click.Choice(["yahoo", "alpaca", "ccxt"]),
    default="yahoo",
    show_default=True,
)
@click.option("--timeframe", default="1Day", show_default=True, help="1m, 5m, 15m, 1h, 4h or 1Day.")
@click.option("--start", default="2015-01-01", show_default=True, help="First date (UTC).")
@click.option("--end", default=None, help="End date, exclusive (UTC; default now).")
@click.option("--exchange", default=None, help="ccxt exchange id (default binance).")
@pass_config
def download(
    config: Config,
    symbols: tuple[str, ...],
    universe: str | None,
    source_name: str,
    timeframe: str,
    start: str,
    end: str | None,
    exchange: str | None,
) -> None:
    """Download SYMBOLS (or --universe) into the store; only missing ranges are fetched.

    Exits 1 if any symbol failed; the others are stored, and a rerun fetches only what is missing.
    """
    from btml.sources import make_source
    from feeds.download import download as run
    from feeds.store import ParquetStore
    from feeds.universes import get_universe

    try:
        syms = list(symbols) or (list(get_universe(universe)) if universe else [])
        if not syms:
            raise click.UsageError("give SYMBOLS or --universe NAME")
        opts = {"exchange": exchange} if source_name == "ccxt" and exchange else {}
        source = make_source(source_name, config, **opts)
        with click.progressbar(length=len(syms), label=f"{source_name} {timeframe}") as bar:
            report = run(
                ParquetStore(config.store),
                source,
                syms,
                timeframe=timeframe,
                start=start,
                end=end,
                on_symbol=lambda _s: bar.update(1),
            )
    except BtmlError as err:
        fail(err)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        click.echo(
            f"error: {len(report.failed)} of {len(syms)} symbol(s) failed; rerun to fetch what is missing",
            err=True,
        )
        sys.exit(1)


@data.command(name="import")
@config_file_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--symbol",
    default=None,
    help="Name of a one-symbol file (default: the file name), or the one symbol to take from a long or wide file.",
)
@click.option(
    "--timeframe",
    default=None,
    help="1m, 5m, 15m, 1h, 4h or 1Day; inferred from the timestamps, and checked against them when given.",
)
@click.option(
    "--tz",
    default=None,
    help="Timezone of naive intraday timestamps, e.g. America/New_York or UTC.",
)
@click.option("--sep", default=None, help="Column separator (sniffed: , ; tab |).")
@click.option("--decimal", default=None, help="Decimal mark (sniffed: . or ,).")
@click.option(
    "--date-col", default=None, help="The date column (found by name or content otherwise)."
)
@click.option(
    "--symbol-col",
    default=None,
    help="The symbol column of a long file (default: Ticker, Symbol or Name).",
)
@click.option(
    "--dayfirst/--monthfirst",
    default=None,
    help="Order of d/m/y dates (sniffed when a day is above 12).",
)
@click.option(
    "--asset-class",
    type=click.Choice(["stocks", "crypto", "index"]),
    default=None,
    help="Where to store it (default: guessed from the symbol).",
)
@click.option("--adjust", is_flag=True, help="Scale OHLC by Adj Close / Close.")
@click.option(
    "--repair",
    is_flag=True,
    help="Sort rows; keep the last of duplicated timestamps (the others are listed and kept in a file).",
)
@click.option(
    "--drop-invalid",
    is_flag=True,
    help="Import the good rows; the rejected ones go to a file beside the store.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace a stored series instead of adding to it (and, for a symbol stored only at "
    "other timeframes, those series).",
)
@click.option(
    "--allow-jump", is_flag=True, help="Accept a price jump where the file joins the stored series."
)
@click.option(
    "--add-timeframe",
    is_flag=True,
    help="Store the bars beside the symbol's series at other timeframes (e.g. 1h beside 1Day).",
)
@pass_config
def import_(
    config: Config,
    file: Path,
    drop_invalid: bool,
    replace: bool,
    allow_jump: bool,
    add_timeframe: bool,
    **opts: Any,
) -> None:
    """Import a CSV FILE into the store: one symbol, long (with a Ticker/Symbol/Name column),
    close-only or wide (one close column per symbol).

    Nothing is written unless every symbol can be: a row that breaks a rule, or a stored series
    of another source, adjustment, asset class or timeframe, or other prices on the same days,
    refuses the import.
    """
    from feeds.sources.csv_source import CsvOptions
    from workflows.data import import_file

    try:
        result, run_id = import_file(
            config.store,
            file,
            CsvOptions(**opts),
            drop_invalid=drop_invalid,
            replace=replace,
            allow_jump=allow_jump,
            add_timeframe=add_timeframe,
            db_url=config.db_url,
        )
    except BtmlError as err:
        fail(err)
    for line in result.lines():
        click.echo(line)
    click.echo(f"run {run_id}")
    if not result.ok:
        click.echo("warning: check the findings above with `btml data validate`", err=True)


@data.command()
@click.argument("symbols", nargs=-1, required=True)
@click.option("--timeframe", default="1Day", show_default=True)
@click.option("--asset-class", type=click.Choice(["stocks", "crypto", "index"]), default=None)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_config
def rm(
    config: Config, symbols: tuple[str, ...], timeframe: str, asset_class: str | None, yes: bool
) -> None:
    """Remove stored SYMBOLS (one timeframe) from the store."""
    from feeds.store import ParquetStore

    store = ParquetStore(config.store)
    try:
        paths = []
        for sym in symbols:
            path = store.find(sym, timeframe, asset_class)
            if path is None:
                store.remove(sym, timeframe, asset_class)  # raises the not-found error
            paths.append((sym, path))
        if not yes and not click.confirm(f"remove {', '.join(str(p) for _, p in paths)}?"):
            raise click.Abort()
        for sym, _ in paths:
            click.echo(f"removed {store.remove(sym, timeframe, asset_class)}")
    except BtmlError as err:
        fail(err)


@data.command()
@config_file_option
@click.option("--symbols", "n_symbols", default=10, show_default=True, help="Number of symbols.")
@click.option("--bars", "n_bars", default=2520, show_default=True, help="Bars per symbol.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--planted",
    default=0.0,
    show_default=True,
    help="Strength of the planted predictable component.",
)
@click.option(
    "--random-walk",
    is_flag=True,
    help="A pure random walk: no factors, clustering, jumps or plant.",
)
@pass_config
def synth(
    config: Config, n_symbols: int, n_bars: int, seed: int, planted: float, random_walk: bool
) -> None:
    """Generate a synthetic market and store it (symbols SYN000, SYN001, ...)."""
    from feeds.sources.synthetic import SyntheticConfig, generate_market
    from feeds.store import ParquetStore

    if random_walk and planted:
        fail(ConfigError("--random-walk has no planted signal: drop --planted or --random-walk"))
    try:
        if random_walk:
            cfg = SyntheticConfig.pure_random_walk(n_symbols=n_symbols, n_bars=n_bars, seed=seed)
        else:
            cfg = SyntheticConfig(
                n_symbols=n_symbols, n_bars=n_bars, seed=seed, planted_strength=planted
            )
        store = ParquetStore(config.store)
        frames = generate_market(cfg)
        with click.progressbar(list(frames.items()), label="storing") as items:
            for _sym, frame in items:
                store.write(frame, merge=False)
    except BtmlError as err:
        fail(err)
    click.echo(f"stored {len(frames)} synthetic symbols x {n_bars} bars in {config.store}")


@data.command(name="list")
@json_option
@pass_config
def list_(config: Config, as_json: bool) -> None:
    """List what the store holds."""
    from feeds.store import ParquetStore

    good, bad = ParquetStore(config.store).list()
    if as_json:
        echo_json([series_dict(s) for s in good])
    elif not good and not bad:
        click.echo(f"the store at {config.store} is empty")
    for s in [] if as_json else good:
        first, last = stamp(s.first, s.timeframe), stamp(s.last, s.timeframe)
        click.echo(
            f"{s.asset_class:<7} {s.timeframe:<5} {s.symbol:<12} {s.rows:>7} rows  {first} .. {last}  "
            f"{s.source}"
        )
    for err in bad:
        click.echo(f"error: {err}", err=True)
    if bad:
        sys.exit(1)


@data.command(name="validate")
@click.argument("symbols", nargs=-1)
@click.option("--timeframe", default="1Day", show_default=True)
@pass_config
def validate_(config: Config, symbols: tuple[str, ...], timeframe: str) -> None:
    """Validate stored SYMBOLS (default: all); exit 1 if any breaks a rule or has a finding
    (a possible unadjusted split, a price jump where two imports were joined)."""
    from feeds.store import ParquetStore
    from feeds.timeframes import get_timeframe
    from feeds.validate import validate

    try:
        timeframe = get_timeframe(timeframe).name  # "1d" lists the files stored under 1Day
    except BtmlError as tf_err:
        fail(tf_err)
    store = ParquetStore(config.store)
    good, bad = store.list()
    targets = list(symbols) or [s.symbol for s in good if s.timeframe == timeframe]
    failed = len(bad)
    for err in bad:
        click.echo(f"error: {err}", err=True)
    unknown = 0
    for sym in targets:
        try:
            _, report = validate(store.read(sym, timeframe), sym)
            click.echo(("ok      " if report.ok else "warning ") + report.summary())
            failed += not report.ok
        except SymbolNotFound as err:
            unknown += 1
            click.echo(f"error: {err}", err=True)
        except BtmlError as err:
            failed += 1
            click.echo(f"error: {err}", err=True)
    if unknown or failed:
        sys.exit(2 if unknown else 1)


@data.command()
def universes() -> None:
    """List the named universes and their symbols."""
    from feeds.universes import UNIVERSES

    for name, syms in UNIVERSES.items():
        click.echo(f"{name} ({len(syms)}): {' '.join(syms)}")
