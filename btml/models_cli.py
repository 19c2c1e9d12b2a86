"""``btml train`` and ``btml models ...``: train presets, list, show, benchmark, explain."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from btml.common import apply_threads, fail, pass_config
from btml.config import Config
from btml.config_file import config_file_option
from core.errors import BtmlError, DataError


@click.command()
@config_file_option
@click.option(
    "--arch",
    default="tiny",
    show_default=True,
    help="Preset: seed-full, efficient-hybrid, simplex-lstm, task-ensemble, tiny.",
)
@click.option("--symbols", default=None, help="Comma-separated stored symbols.")
@click.option(
    "--universe", default=None, help="A named universe instead of --symbols (must be stored)."
)
@click.option("--index", default=None, help="Stored index for the index-relative features.")
@click.option(
    "--features",
    "selection_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Selection file from `btml features select`.",
)
@click.option(
    "--features-module",
    default=None,
    help="Your own feature functions (a .py file, a module name or a btml.features entry "
    "point) beside the built-in features; truncation-tested first, stored with the model.",
)
@click.option(
    "--own-features-only",
    is_flag=True,
    help="With --features-module: train on your features alone, without the built-in ones.",
)
@click.option(
    "--labels-from",
    type=click.Choice(["next-open", "close"]),
    default="next-open",
    show_default=True,
    help="Trading heads' (direction, action, size, confidence) returns: from the next bar's "
    "open, where orders fill, or from the close.",
)
@click.option(
    "--price-labels-from",
    type=click.Choice(["close", "next-open"]),
    default="close",
    show_default=True,
    help="Price heads' (1/4/24-bar returns) returns: close to close, or from the next open.",
)
@click.option("--name", default=None, help="Registry name (default: the preset).")
@click.option("--epochs", default=100, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--lr", default=5e-4, show_default=True)
@click.option("--patience", default=15, show_default=True)
@click.option("--window", default=60, show_default=True)
@click.option("--curriculum", is_flag=True, help="Direction first, then price, then all heads.")
@click.option(
    "--uncertainty", is_flag=True, help="Learned uncertainty weighting of the task losses."
)
@click.option("--resume", is_flag=True, help="Continue the interrupted run of this name.")
@click.option(
    "--threads", default=None, type=int, help="CPU threads (default: those of btml --threads)."
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--seeds",
    default=1,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Train with N seeds (--seed, --seed+1, ...); report their spread and register the "
    "one of lowest validation loss.",
)
@click.option("--timeframe", default="1Day", show_default=True)
@click.option(
    "--compare-lstm",
    is_flag=True,
    help="Also train the same model with nn.LSTM of equal size (and a streaming preset's "
    "windowed twin); their test metrics go in the card.",
)
@pass_config
def train(config: Config, symbols: str | None, **opts: Any) -> None:
    """Train a multi-task model on stored data and register it (70/15/15 chronological split).

    The training is recorded as a run (`btml runs show ID`); the model's card names it.
    """
    from workflows.train import TrainRunConfig, checkpoint_dir
    from workflows.train import train as run_training

    syms = tuple(s.strip() for s in symbols.split(",")) if symbols else ()
    for key in ("labels_from", "price_labels_from"):  # next-open on the command line
        opts[key] = opts[key].replace("-", "_")
    try:
        cfg = TrainRunConfig.from_dict({**opts, "symbols": syms})
        label = f"training {cfg.name or cfg.arch} ({cfg.arch})"
        with click.progressbar(length=cfg.epochs * cfg.seeds, label=label) as bar:
            result = run_training(
                config.store, cfg, on_epoch=_epoch_line(bar), log=click.echo, db_url=config.db_url
            )
    except BtmlError as err:
        fail(err)
    except KeyboardInterrupt:
        where = checkpoint_dir(config.store, opts["name"] or opts["arch"])
        click.echo(
            f"\ninterrupted: the last checkpoint in {where} is valid; continue with --resume",
            err=True,
        )
        sys.exit(130)
    _print_card(result.card)
    if result.seeds is not None:
        from workflows.train_seeds import spread_lines

        for line in spread_lines(result.seeds):
            click.echo(line)
    for warning in result.warnings:  # under the summary, as a backtest's
        click.echo(f"warning: {warning}")
    click.echo(f"recorded as run {result.run_id}")


def _epoch_line(bar: Any) -> Callable[[int, dict[str, float]], None]:
    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        bar.update(1)
        click.echo(
            f"  epoch {epoch}: train {row['train_loss']:.4f}  val {row['val_loss']:.4f}  "
            f"val direction CE {row['val_direction']:.4f}"
        )

    return on_epoch


def _print_card(card: Any) -> None:
    t = card.metrics["test"]
    b = card.metrics["baselines_test"]
    click.echo(
        f"registered {card.ref} ({card.parameters:,} parameters, best epoch {card.training['best_epoch']})"
    )
    report = card.report
    if report:
        for line in report_lines(report):
            click.echo(line)
    else:
        click.echo(
            f"test: direction accuracy {t['direction_accuracy']:.3f} (majority {b['majority_direction_accuracy']:.3f}, "
            f"logistic {b['logistic_direction_accuracy']:.3f}), IC 1-bar {t['price_1_ic']:.3f}"
        )
    lstm = card.metrics.get("lstm_test")
    if lstm:
        click.echo(
            f"nn.LSTM twin ({int(lstm['parameters']):,} parameters): direction accuracy "
            f"{lstm['direction_accuracy']:.3f}, IC 1-bar {lstm['price_1_ic']:.3f}"
        )
    win = card.metrics.get("windowed_test")
    if win:
        click.echo(
            f"windowed twin: direction accuracy {win['direction_accuracy']:.3f}, IC 1-bar "
            f"{win['price_1_ic']:.3f}, trained in {win['train_seconds']:.0f} s (streaming "
            f"{win['stream_train_seconds']:.0f} s)"
        )


def report_lines(report: dict[str, Any]) -> list[str]:
    """The out-of-sample report (a training's test split, or a backtest's signals: its
    ``split``), compactly: the edge line first, then one line per head
    (the network's metrics with their 95 % intervals | each baseline's same metrics), then
    which baselines the network beat on each compared metric."""
    from mlmodels.head_metrics import METRIC_LABELS, fmt, head_label

    boot = report["bootstrap"]
    blocks = sorted({rep["block"] for rep in report["heads"].values()})
    split = report.get("split", "test")
    lines = [
        report["edge"]["summary"],
        f"{split} {'split' if split == 'test' else 'signals'}: {report['n']:,} samples on "
        f"{report['dates']:,} dates; [95 % interval] by "
        f"{boot['method']}, blocks of {' to '.join(map(str, blocks))} dates (the label "
        f"horizon at least), {boot['reps']} resamples",
    ]
    for head, rep in report["heads"].items():
        net = rep["models"]["network"]
        shown = " ".join(
            f"{METRIC_LABELS.get(m, m)} {fmt(m, v['value'])} [{fmt(m, v['lo'])}, {fmt(m, v['hi'])}]"
            for m, v in net.items()
        )
        others = " | ".join(
            f"{name} " + "/".join(fmt(m, vals[m]["value"]) for m in net)
            for name, vals in rep["models"].items()
            if name != "network"
        )
        lines.append(f"  {head_label(head):<13}{shown} | {others}")
    beats = " | ".join(
        f"{head_label(r['head'])} {METRIC_LABELS.get(r['metric'], r['metric'])}: "
        + ("all" if r["beat_all"] else ", ".join(k for k, v in r["beat"].items() if v) or "none")
        for r in report["comparison"]
    )
    lines.append(f"  network beat: {beats}")
    return lines


@click.group()
def models() -> None:
    """The model registry: list, show, benchmark, explain, update, promote, ensemble."""


@models.command(name="list")
@pass_config
def list_(config: Config) -> None:
    """List registered models and versions."""
    from mlmodels.registry import ModelRegistry

    reg = ModelRegistry(config.store / "models")
    names = reg.names()
    if not names:
        click.echo(f"no models in {reg.root}; train one with `btml train`")
    for n in names:
        champion = reg.card(n).version
        for v in reg.versions(n):
            c = reg.card(f"{n}:{v}")
            acc = c.metrics.get("test", {}).get("direction_accuracy", float("nan"))
            mark = "*" if v == champion else " "
            click.echo(
                f"{mark}{c.ref:<23} {c.arch:<17} {c.parameters:>11,} params  test dir acc {acc:.3f}  {c.created_at[:19]}"
            )
    if names:
        click.echo("* the champion: what NAME alone means (btml models promote / rollback)")


def _show_evaluation(card: Any) -> None:
    """``models show``'s out-of-sample report (cards written before it have none), the
    naive baselines' direction figures and the direction head's refit."""
    report = card.report
    if report:  # cards written before the report have only the lines above and below
        for line in report_lines(report):
            click.echo(f"  {line}")
    click.echo(
        "  baselines (test): "
        + json.dumps(
            {
                k: round(v, 4)
                for k, v in card.metrics.get("baselines_test", {}).items()
                if "direction" in k
            }
        )
    )
    refit = card.training.get("direction_refit")
    if refit and refit["c"] is None:
        click.echo(
            f"  direction head as trained (no refit beat val log-loss {refit['val_logloss']:.4f})"
        )
    elif refit:
        click.echo(
            f"  direction head refit on {refit['source']} features (C {refit['c']}): "
            f"val log-loss {refit['val_logloss']:.4f} (trained {refit['val_logloss_trained']:.4f})"
        )


@models.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the whole model card as JSON.")
@pass_config
def show(config: Config, ref: str, as_json: bool) -> None:
    """Show the model card of REF (NAME or NAME:VERSION)."""
    from mlmodels.registry import ModelRegistry

    try:
        registry = ModelRegistry(config.store / "models")
        card = registry.card(ref)
        champion = registry.card(card.name).ref
    except BtmlError as err:
        fail(err)
    if as_json:
        click.echo(card.to_json())
        return
    click.echo(
        f"{card.ref}: {card.arch}, {card.parameters:,} parameters, window {card.window}, "
        f"{len(card.features)} features, horizons {card.horizons}"
    )
    click.echo(
        f"symbols {', '.join(card.symbols)}; index {card.index or '-'}; data {card.data_hash[:12]}"
    )
    lineage = card.training.get("lineage", {}).get("parent")
    role = "the champion" if champion == card.ref else f"not the champion ({champion} is)"
    click.echo(f"{role} of {card.name}" + (f"; updated from {lineage}" if lineage else ""))
    labels = card.label_cfg()
    click.echo(
        f"labels: trading heads from {labels.trading_from}, price heads from {labels.price_from}"
    )
    fm = card.feature_module
    if fm:
        click.echo(
            f"features module {fm['source']} ({', '.join(fm['names'])}; warm-up {fm['warmup']}; "
            f"{'beside the built-in features' if fm.get('builtin', True) else 'alone'}; "
            f"sha256 {str(fm['sha256'])[:12]})"
        )
    for split, (a, b) in card.date_ranges.items():
        click.echo(f"  {split:<5} {a[:10]} .. {b[:10]}")
    for split in ("val", "test", "lstm_test", "windowed_test"):
        m = card.metrics.get(split, {})
        if not m:
            continue
        keys = (
            "direction_accuracy",
            "direction_f1",
            "direction_logloss",
            "price_1_ic",
            "confidence_brier",
        )
        click.echo(f"  {split}: " + "  ".join(f"{k} {m[k]:.4f}" for k in keys if k in m))
    _show_evaluation(card)
    click.echo(f"code {card.code_version}; created {card.created_at}")


@models.command()
@click.option("--arch", "archs", multiple=True, help="Preset(s) to run (default: all).")
@click.option(
    "--epochs", default=3, show_default=True, help="Training epochs for the out-of-sample metrics."
)
@click.option("--max-batches", default=30, show_default=True, help="Batches per epoch.")
@click.option(
    "--threads",
    default=None,
    type=click.IntRange(min=1),
    help="CPU threads (default: those of btml --threads).",
)
@click.pass_context
def bench(
    ctx: click.Context, archs: tuple[str, ...], epochs: int, max_batches: int, threads: int | None
) -> None:
    """Benchmark presets beside nn.LSTM of equal size: size, latency, training speed, OOS metrics."""
    from mlmodels.benchmark import benchmark_architectures
    from mlmodels.nets.model import get_architecture

    try:
        for a in archs:
            get_architecture(a)
    except BtmlError as err:
        fail(err)
    if threads is not None:  # else the group's (btml --threads) stand
        ctx.call_on_close(apply_threads(threads))
    benchmark_architectures(
        list(archs) or None, epochs=epochs, max_batches=max_batches, log=click.echo
    )


@models.command(name="explain")
@click.argument("ref")
@click.option("--symbol", required=True, help="Stored symbol to explain.")
@click.option(
    "--date",
    "date",
    required=True,
    help="Decision date; the window ends at the last bar on or before it.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("explain.png"),
    show_default=True,
)
@pass_config
def explain_(config: Config, ref: str, symbol: str, date: str, out: Path) -> None:
    """Picture of one prediction: attention over time, fusion weights, feature attribution."""
    import pandas as pd
    import torch

    from feeds.store import ParquetStore
    from mlmodels.explain import explain, plot_explanation
    from mlmodels.features import compute_features
    from mlmodels.registry import ModelRegistry
    from mlmodels.selection import Selection

    try:
        registry = ModelRegistry(config.store / "models")
        model, card = registry.load(ref)
        user = registry.user_features(card.ref)  # the model's own features module, if any
        store = ParquetStore(config.store)
        frame = store.read(symbol, card.timeframe)
        index = store.read(card.index, card.timeframe) if card.index else None
        feats = user.table(frame, index) if user else compute_features(frame, index)
        if card.selection:
            feats = Selection(
                **{
                    **card.selection,
                    "inputs": tuple(card.selection["inputs"]),
                    "outputs": tuple(card.selection["outputs"]),
                }
            ).transform(feats)
        card.check_features(list(feats.columns))
        end = int(feats.index.searchsorted(pd.Timestamp(date, tz="UTC"), side="right")) - 1
        window = feats.iloc[end - card.window + 1 : end + 1]
        if end < 0 or len(window) < card.window or window.isna().any().any():
            raise DataError(
                f"{symbol}: no complete {card.window}-bar feature window ends on or before {date}"
            )
        x = torch.from_numpy(card.scaler_obj().transform(window.to_numpy()))[None]
        exp = explain(model, x, torch.zeros(1, 3), tuple(feats.columns))
        path = plot_explanation(exp, out, f"{card.ref} on {symbol} at {window.index[-1].date()}")
    except BtmlError as err:
        fail(err)
    click.echo(f"wrote {path}")


@models.command()
@click.argument("ref")
@click.option("--epochs", type=int, default=5, show_default=True, help="Fine-tuning epochs.")
@click.option("--lr", type=float, default=2e-4, show_default=True, help="Learning rate.")
@click.option(
    "--full", is_flag=True, help="Let every layer learn (default: the paths stay frozen)."
)
@click.option(
    "--min-bars",
    type=int,
    default=None,
    help="New bars needed (default: 4 x the label lookahead + 60).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@pass_config
def update(config: Config, ref: str, **opts: Any) -> None:
    """Fine-tune a challenger of REF on the bars stored since its data ended.

    The new bars are split 50/25/25 (fine-tune, gate, test); the challenger is registered as
    the next version, with its lineage, only when it beats REF on the gate bars (else exit 1).
    Recorded as a run of kind update.
    """
    from workflows.model_update import UpdateConfig, update_model

    try:
        cfg = UpdateConfig(**opts)
        out = update_model(config.store, ref, cfg, log=click.echo, db_url=config.db_url)
    except BtmlError as err:
        fail(err)
    if out.card is None:
        click.echo(
            f"error: the challenger's gate loss {out.challenger_loss:.5f} is not below "
            f"{out.parent.ref}'s {out.champion_loss:.5f}; nothing registered (run {out.run_id})",
            err=True,
        )
        sys.exit(1)
    click.echo(f"{out.card.ref}: test report on the newest bars")
    for line in report_lines(out.card.report or {}) if out.card.report else []:
        click.echo(line)


@models.command()
@click.argument("name")
@click.option(
    "--members",
    required=True,
    help="Comma-separated NAME[:VERSION][=WEIGHT] of the members (weight 1 by default).",
)
@click.option("--method", type=click.Choice(["mean", "zscore", "stack"]), default="mean",
              show_default=True, help="How the heads combine (docs/models.md).")  # fmt: skip
@pass_config
def ensemble(config: Config, name: str, members: str, method: str) -> None:
    """Register NAME: one servable model whose heads combine its members'.

    Fit and tested on the bars none of the members trained or validated on; the card says
    whether it beat its best member.
    """
    from mlmodels.ensemble import make_ensemble, parse_members

    try:
        _, card = make_ensemble(config.store, name, parse_members(members), method)
    except BtmlError as err:
        fail(err)
    m = card.metrics
    click.echo(f"registered {card.ref} ({method} of {', '.join(card.training['members'])}, "
               f"weights {', '.join(f'{w:.2f}' for w in card.training['weights'])})")  # fmt: skip
    click.echo(f"test {card.date_ranges['test'][0][:10]} .. {card.date_ranges['test'][1][:10]}: "
               f"IC 1-bar {m['test']['price_1_ic']:.3f}, direction accuracy "
               f"{m['test']['direction_accuracy']:.3f}")  # fmt: skip
    for ref, t in m["members_test"].items():
        click.echo(
            f"  {ref}: IC 1-bar {t['price_1_ic']:.3f}, direction accuracy {t['direction_accuracy']:.3f}"
        )
    verdict = "beats" if m["beats_best_member"] else "does not beat"
    click.echo(f"the ensemble {verdict} its best member ({m['best_member']}) on the 1-bar IC")


@models.command()
@click.argument("ref")
@click.option("--test", "test", type=click.Choice(["ic", "pnl"]), default="ic", show_default=True,
              help="ic: 1-bar rank IC; pnl: net P&L of the direction calls.")  # fmt: skip
@click.option("--min-bars", type=int, default=100, show_default=True,
              help="Shadow bars needed against the champion.")  # fmt: skip
@click.option("--cost-bps", type=float, default=10.0, show_default=True,
              help="Cost per unit of position change (the pnl test).")  # fmt: skip
@click.option("--keep", type=int, default=5, show_default=True,
              help="Versions kept after a promotion (besides the champions to roll back to).")  # fmt: skip
@pass_config
def promote(config: Config, ref: str, **opts: Any) -> None:
    """Make challenger REF (NAME:VERSION) the champion if it beat it in shadow.

    Reads the shadow rows of every session traded with `btml trade NAME --shadow REF`, and
    promotes when the 95 % interval of the difference (challenger minus champion, block
    bootstrap over bars) is above zero; else exit 1. Never shadowed, or too few bars: exit 2.
    Recorded as a run of kind promotion.
    """
    from workflows.promotion import PromoteConfig
    from workflows.promotion import promote as promote_model

    try:
        out = promote_model(config.store, ref, PromoteConfig(**opts), log=click.echo,
                            db_url=config.db_url)  # fmt: skip
    except BtmlError as err:
        fail(err)
    if not out.promoted:
        sys.exit(1)


@models.command()
@click.argument("name")
@pass_config
def rollback(config: Config, name: str) -> None:
    """Make the champion before the current one of NAME the champion again.

    Recorded as a run of kind promotion; exit 2 when NAME was never promoted.
    """
    from workflows.promotion import rollback as rollback_model

    try:
        rollback_model(config.store, name, log=click.echo, db_url=config.db_url)
    except BtmlError as err:
        fail(err)
