"""``btml index ...``: build synthetic indices from stored constituents, and list them."""

from __future__ import annotations

import click

from btml.common import fail, pass_config
from btml.config import Config
from btml.output import echo_json, json_option, series_dict, stamp
from core.errors import BtmlError


@click.group()
def index() -> None:
    """Synthetic indices built from weighted constituents."""


@index.command()
@click.argument("name")
@click.option(
    "--method",
    type=click.Choice(["price", "cap", "equal", "fixed"]),
    default="equal",
    show_default=True,
)
@click.option("--constituents", default=None, help="Comma-separated symbols, e.g. AAPL,MSFT,IBM.")
@click.option(
    "--universe",
    default=None,
    help="A named universe's constituents (today's: warned as survivorship).",
)
@click.option(
    "--membership",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Point-in-time membership CSV: symbol,start,end (end empty = still a member) or "
    "date,symbol[,weight|shares].",
)
@click.option(
    "--weights",
    "weights_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CSV of symbol,weight (fixed/cap) or date,symbol,shares (cap).",
)
@click.option(
    "--rebalance",
    type=click.Choice(["M", "Q"]),
    default=None,
    help="Rebalance monthly or quarterly.",
)
@click.option("--start", default=None, help="First date (UTC).")
@click.option("--end", default=None, help="End date, exclusive (UTC).")
@click.option("--timeframe", default="1Day", show_default=True)
@click.option(
    "--carry-limit",
    default=5,
    show_default=True,
    help="Bars a missing constituent bar may be carried.",
)
@pass_config
def build(
    config: Config,
    name: str,
    method: str,
    constituents: str | None,
    universe: str | None,
    membership: str | None,
    weights_file: str | None,
    rebalance: str | None,
    start: str | None,
    end: str | None,
    timeframe: str,
    carry_limit: int,
) -> None:
    """Build index NAME from stored constituents and store it under raw/index."""
    import pandas as pd

    from feeds.index import IndexConfig, build_from_store
    from feeds.membership import membership_layout, read_membership, read_spans, read_weights
    from feeds.store import ParquetStore

    try:
        weights, shares = read_weights(weights_file) if weights_file else (None, None)
        layout = membership_layout(membership) if membership else None
        cfg = IndexConfig(
            name=name,
            method=method,
            constituents=tuple(s.strip() for s in constituents.split(",") if s.strip())
            if constituents
            else (),
            universe=universe,
            membership=read_membership(membership)
            if membership and layout == "snapshots"
            else None,
            spans=read_spans(membership) if membership and layout == "spans" else None,
            weights=weights,
            shares=shares,
            rebalance=rebalance,
            carry_limit=carry_limit,
            start=pd.Timestamp(start, tz="UTC") if start else None,
            end=pd.Timestamp(end, tz="UTC") if end else None,
        )
        result, path = build_from_store(ParquetStore(config.store), cfg, timeframe)
    except BtmlError as err:
        fail(err)
    f = result.frame
    for note in result.notes:
        click.echo(f"note: {note}")
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
    click.echo(
        f"{name}: {method}, {len(result.weights.columns)} constituents, {len(f)} bars "
        f"{f.index[0].date()} .. {f.index[-1].date()}, level {f['close'].iloc[0]:.2f} -> "
        f"{f['close'].iloc[-1]:.2f} -> {path}"
    )


@index.command(name="list")
@json_option
@pass_config
def list_(config: Config, as_json: bool) -> None:
    """List the stored indices."""
    from feeds.store import ParquetStore

    good, _bad = ParquetStore(config.store).list()
    rows = [s for s in good if s.asset_class == "index"]
    if as_json:
        echo_json([series_dict(s) for s in rows])
        return
    if not rows:
        click.echo("no indices stored; build one with `btml index build NAME --constituents ...`")
    for s in rows:
        first, last = stamp(s.first, s.timeframe), stamp(s.last, s.timeframe)
        click.echo(f"{s.symbol:<12} {s.timeframe:<5} {s.rows:>6} bars  {first} .. {last}")
