"""``btml trade``: the backtested strategy on Alpaca paper (default) or live; ``kill``; ``status``."""

from __future__ import annotations

import sys
from typing import Any

import click

from btml.common import fail
from btml.config import Config
from btml.config_file import config_file_option
from core.errors import BtmlError


def _alpaca_config(config: Config, opts: dict[str, Any]) -> Any:
    from brokers.alpaca.config import AlpacaConfig

    overrides: dict[str, Any] = {
        "paper": opts["paper"],
        "live_confirmed": opts["confirm"],
        # one journal per account: paper fills must never be reconciled with the live account
        "journal": opts["journal"]
        or config.store / "live" / f"journal-{'paper' if opts['paper'] else 'live'}.sqlite",
    }
    if opts["trading_url"]:
        overrides["trading_url"] = opts["trading_url"]
    if opts["stream_url"]:
        overrides["trading_stream_url"] = opts["stream_url"]
    if opts["data_url"] or config.sources.alpaca_data_url:
        overrides["data_url"] = opts["data_url"] or config.sources.alpaca_data_url
    if opts["data_stream_url"]:
        overrides["stock_stream_url"] = opts["data_stream_url"]
    if opts["crypto_stream_url"]:
        overrides["crypto_stream_url"] = opts["crypto_stream_url"]
    overrides["feed"] = config.sources.alpaca_feed
    return AlpacaConfig.from_env(**overrides)


@click.group(invoke_without_command=True)
@config_file_option
@click.option("--paper/--live", default=True, show_default=True, help="Account to trade.")
@click.option(
    "--i-understand-this-is-real-money",
    "confirm",
    is_flag=True,
    help="Required with --live.",
)
@click.option("--model", default=None, help="NAME[:VERSION] of a registered model.")
@click.option("--symbols", default=None, help="Comma-separated symbols (BTC/USD for crypto).")
@click.option("--timeframe", default="1m", show_default=True, help="Bar timeframe of the feeds.")
@click.option(
    "--serving",
    type=click.Choice(["inprocess", "torchserve"]),
    default="torchserve",
    show_default=True,
)
@click.option(
    "--serving-deadline",
    type=float,
    default=None,
    help="Seconds per TorchServe call, retries included (default: half a bar, at most 10).",
)
@click.option(
    "--shadow",
    default=None,
    help="NAME:VERSION of a challenger scored beside the model on every bar, never traded.",
)
@click.option("--bars", type=int, default=None, help="Stop after this many live bars.")
@click.option(
    "--regular-hours",
    is_flag=True,
    help="Stocks: only bars of the 09:30-16:00 New York session (crypto is never filtered).",
)
@click.option("--journal", default=None, help="Order journal: a path or SQLAlchemy URL.")
@click.option(
    "--adopt-positions",
    is_flag=True,
    help="Take positions held outside the journal as the starting point instead of refusing.",
)
@click.option("--trading-url", default=None, help="Trading API base URL (default Alpaca's).")
@click.option("--stream-url", default=None, help="trade_updates websocket URL.")
@click.option("--data-url", default=None, help="Market data REST base URL (history).")
@click.option("--data-stream-url", default=None, help="Stock bars websocket URL.")
@click.option("--crypto-stream-url", default=None, help="Crypto bars websocket URL.")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve the session's Prometheus metrics on 127.0.0.1:PORT/metrics.",
)
@click.option(
    "--alert-rules",
    default=None,
    help="Alert rules file (YAML; default: the shipped rules, see docs/operations.md).",
)
@click.pass_context
def trade(ctx: click.Context, **opts: Any) -> None:
    """Trade a model with the backtested strategy on Alpaca (paper unless --live).

    Keys come from APCA_API_KEY_ID / APCA_API_SECRET_KEY. Every order is journaled before it
    is sent; on start the journal is reconciled with the account and a position mismatch
    refuses to trade. Mode options go before a subcommand: btml trade --live ... kill.
    """
    config: Config = ctx.obj
    ctx.meta["trade_opts"] = opts
    if ctx.invoked_subcommand is not None:
        return  # the subcommand builds the Alpaca config (so its --help needs no keys)
    try:
        alpaca = _alpaca_config(config, opts)
    except BtmlError as err:
        fail(err)
    if not opts["model"] or not opts["symbols"]:
        fail(ValueError("btml trade needs --model NAME[:VERSION] and --symbols A,B,..."))
    from workflows.trading import run_live

    try:
        out = run_live(
            config.store, opts["model"], [s.strip() for s in opts["symbols"].split(",")],
            alpaca, timeframe=opts["timeframe"], serving=opts["serving"],
            adopt_positions=opts["adopt_positions"], bars=opts["bars"], log=click.echo,
            feed_kwargs={"market_hours": True} if opts["regular_hours"] else None,
            db_url=config.db_url, metrics_port=opts["metrics_port"],
            alert_rules=opts["alert_rules"], shadow=opts["shadow"],
            serving_deadline=opts["serving_deadline"],
        )  # fmt: skip
    except BtmlError as err:
        fail(err)
    except KeyboardInterrupt:
        click.echo("session cancelled (recorded as such in its run)", err=True)
        sys.exit(130)
    click.echo(f"session over: {len(out.strategy.audit)} decisions; recorded as run {out.run_id}")


@trade.command()
@click.option("--flatten", is_flag=True, help="Also close every position at market.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def kill(ctx: click.Context, flatten: bool, yes: bool) -> None:
    """Cancel every open order (and --flatten positions) now, without the model server."""
    from brokers.alpaca.store import kill_switch

    try:
        alpaca = _alpaca_config(ctx.obj, ctx.meta["trade_opts"])
    except BtmlError as err:
        fail(err)
    what = "cancel every open order" + (" and close every position" if flatten else "")
    if not yes:
        click.confirm(f"{what} on the {alpaca.mode} account?", abort=True)
    try:
        out = kill_switch(alpaca, flatten=flatten)
    except BtmlError as err:  # refused: nothing was sent or journaled
        fail(err)
    if out.done:
        click.echo(", ".join(out.done))
    for symbol, qty in sorted((out.positions or {}).items()):
        click.echo(f"  still held: {symbol} {qty:g}")
    if out.error is not None:
        done = "after " + ", ".join(out.done) if out.done else "before any step went through"
        fail(BtmlError(f"kill switch stopped {done}: {out.error}"))


@trade.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Reconcile the journal with the account; exit 1 on a position mismatch."""
    from workflows.trading import trade_status

    try:
        report = trade_status(_alpaca_config(ctx.obj, ctx.meta["trade_opts"]))
    except BtmlError as err:
        fail(err)
    click.echo(f"positions ({len(report.positions)}):")
    for key, (qty, price) in sorted(report.positions.items()):
        click.echo(f"  {key:10s} {qty:>12g} @ {price:.4f}")
    labels = {"never_arrived": "journaled, fate not known yet", "external": "open at Alpaca, "
              "not placed by us"}  # fmt: skip
    for name, label in labels.items():
        items = getattr(report, name)
        if items:
            click.echo(f"{label}: {', '.join(items)}")
    click.echo(f"journal and account agree (checked in {report.seconds * 1000:.0f} ms)")


@trade.command()
@click.option("--since", required=True, help="First day of the sessions to compare (UTC date).")
@click.option("--until", default=None, help="End, exclusive (default: now).")
@click.option(
    "--tolerance",
    type=float,
    default=1e-5,
    show_default=True,
    help="Largest difference of the outputs (1-bar return, P(up)) that still counts as the same.",
)
@click.pass_context
def report(ctx: click.Context, since: str, until: str | None, tolerance: float) -> None:
    """Replay the sessions since --since in a backtest and compare them with what happened.

    Per session: signal parity (same model, same outputs on the same bars), the trades
    matched, missed and extra with their reasons, and each fill against the price the
    backtest assumes (the next bar's open; realised slippage against the assumed 10 bps).
    Needs no keys; reads the journal each session recorded (or --journal before `report`).
    Recorded as a run of kind trade_report with report.html beside its tables.
    """
    from workflows.trade_report import trade_report

    config: Config = ctx.obj
    journal = ctx.meta["trade_opts"].get("journal")
    try:
        trade_report(config.store, since, until=until, journal=journal, tolerance=tolerance,
                     log=click.echo, db_url=config.db_url)  # fmt: skip
    except BtmlError as err:
        fail(err)
