"""``btml features ...``: the feature table, selection, and leakage checks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from btml.common import fail, pass_config
from btml.config import Config
from btml.output import echo_json, json_option
from core.errors import BtmlError

if TYPE_CHECKING:
    import pandas as pd

    from mlmodels.leakage import LeakFinding

Frames = dict[str, "pd.DataFrame"]


@click.group()
def features() -> None:
    """Technical features: list them, select a subset, check for leakage."""


@features.command(name="list")
@json_option
def list_(as_json: bool) -> None:
    """Print every feature with its family, window and formula."""
    from mlmodels.features import FEATURES, WARMUP

    if as_json:
        echo_json(
            [
                {"name": f.name, "family": f.family, "window": f.window, "formula": f.formula}
                for f in FEATURES
            ]
        )
        return
    for f in FEATURES:
        click.echo(f"{f.name:<22} {f.family:<10} {f.window:>4}  {f.formula}")
    click.echo(f"{len(FEATURES)} features; warm-up {WARMUP} bars")


def _load_frames(config: Config, symbols: tuple[str, ...], index_name: str | None, timeframe: str):  # type: ignore[no-untyped-def]
    from feeds.store import ParquetStore

    store = ParquetStore(config.store)
    frames = {s: store.read(s, timeframe) for s in symbols}
    index = store.read(index_name, timeframe) if index_name else None
    return frames, index


@features.command()
@click.argument("symbols", nargs=-1, required=True)
@click.option(
    "--method", type=click.Choice(["corr", "importance", "pca"]), default="corr", show_default=True
)
@click.option(
    "--index", "index_name", default=None, help="Stored index for the index-relative features."
)
@click.option("--threshold", default=0.8, show_default=True, help="Correlation threshold.")
@click.option("--top-k", default=38, show_default=True, help="Features kept by importance.")
@click.option("--variance", default=0.95, show_default=True, help="Variance PCA keeps.")
@click.option("--timeframe", default="1Day", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("selection.json"),
    show_default=True,
)
@pass_config
def select(
    config: Config,
    symbols: tuple[str, ...],
    method: str,
    index_name: str | None,
    threshold: float,
    top_k: int,
    variance: float,
    timeframe: str,
    out: Path,
) -> None:
    """Fit a feature selection on the training split (first 70 %) of stored SYMBOLS."""
    from mlmodels.dataset import DatasetConfig, build_dataset
    from mlmodels.selection import select_features
    from mlmodels.splits import chronological_split

    try:
        frames, index = _load_frames(config, symbols, index_name, timeframe)
        cfg = DatasetConfig(window=2)
        ds = build_dataset(frames, cfg, index)
        split = chronological_split(
            ds.times, lookahead=cfg.labels.lookahead, symbols=ds.sample_symbol
        )
        rows = ds.rows[ds.sample_row[split.train]]
        import pandas as pd

        x = pd.DataFrame(rows, columns=list(ds.feature_names))
        sel = select_features(
            x,
            ds.targets["direction"][split.train],
            method=method,
            threshold=threshold,
            top_k=top_k,
            variance=variance,
            times=ds.times[split.train],
            gap=cfg.labels.direction_horizon,
        )
        sel.save(out)
    except BtmlError as err:
        fail(err)
    for row in sel.report:
        click.echo(f"{'keep' if row['kept'] else 'drop'} {row['feature']:<22} {row['why']}")
    click.echo(
        f"{method}: {len(sel.inputs)} -> {len(sel.outputs)} features, fit on {len(split.train)} "
        f"training samples before {split.test_start.date()}; wrote {out}"
    )


@features.command(name="check-leakage")
@click.argument("symbols", nargs=-1)
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A feature table (.parquet or .csv: a time index or datetime/date column, a close "
    "column, optionally open/high/low/volume and symbol, then one column per feature) for the "
    "statistical tests, or a .py module of feature functions (as --features-module).",
)
@click.option(
    "--features-module",
    "module",
    default=None,
    help="Your feature functions: a .py path, a module name or a btml.features entry point; "
    "truncation-tested and scanned on SYMBOLS (the embedded sample if none).",
)
@click.option(
    "--index", "index_name", default=None, help="Stored index for the index-relative features."
)
@click.option("--timeframe", default="1Day", show_default=True)
@pass_config
def check_leakage(
    config: Config,
    symbols: tuple[str, ...],
    file: Path | None,
    module: str | None,
    index_name: str | None,
    timeframe: str,
) -> None:
    """Check features for look-ahead; exit 1 on a leak, 2 on bad input.

    \b
    SYMBOLS                the built-in pipeline on stored series: truncation test (a value
                           must not change when later bars are removed)
    --features-module/.py  your functions: the truncation test, then the weak-leak test of
                           their values (catches future data joined from elsewhere)
    --file TABLE           values only: the weak-leak test (does a column know the returns
                           after its bar beyond what the past explains? partial regression,
                           Newey-West, Bonferroni; see mlmodels.leakage) and the fingerprint
                           of a z-score over the whole sample
    """
    from mlmodels.leakage import read_table, scan_table

    if file is not None and file.suffix == ".py":
        if module is not None:
            raise click.UsageError("give the module as --file or --features-module, not both")
        module = str(file)
    table = file if file is not None and file.suffix != ".py" else None
    if not symbols and table is None and module is None:
        raise click.UsageError("give SYMBOLS, --file or --features-module to check")
    findings: list[tuple[str, LeakFinding]] = []
    try:
        frames, index = _leak_frames(config, symbols, index_name, timeframe, module)
        if symbols:
            findings += _builtin_findings(frames, index)
        if module is not None:
            findings += _module_findings(module, frames, index)
        if table is not None:
            found = scan_table(read_table(table))
            findings += [(f"{table.name}{':' + s if s else ''}", f) for s, f in found]
    except BtmlError as err:
        fail(err)
    for where, f in findings:
        click.echo(f"LEAK {where}: {f.feature} ({f.check}): {f.detail}")
    if findings:
        sys.exit(1)
    what = [f"{len(frames)} series"] if frames else []
    what += [f"module {module}"] if module else []
    what += [f"table {table.name}"] if table else []
    click.echo(f"no leakage found ({', '.join(what)})")


def _leak_frames(
    config: Config,
    symbols: tuple[str, ...],
    index_name: str | None,
    timeframe: str,
    module: str | None,
) -> tuple[Frames, pd.DataFrame | None]:
    """Stored SYMBOLS, or the embedded sample's AAPL, IBM, MSFT to test a module on."""
    if symbols:
        frames, index = _load_frames(config, symbols, index_name, timeframe)
        return frames, index
    if module is None:
        return {}, None
    from feeds.sample import load_sample

    sample = load_sample(adjusted=True)
    return {s: sample[s] for s in ("AAPL", "IBM", "MSFT")}, None


def _builtin_findings(frames: Frames, index: pd.DataFrame | None) -> list[tuple[str, LeakFinding]]:
    from mlmodels.features import compute_features
    from mlmodels.leakage import truncation_check

    return [
        (sym, f)
        for sym, frame in frames.items()
        for f in truncation_check(frame, compute_features, index=index)
    ]


def _module_findings(
    module: str, frames: Frames, index: pd.DataFrame | None
) -> list[tuple[str, LeakFinding]]:
    from mlmodels.user_features import load_feature_module

    user = load_feature_module(module)
    return [(f"{module}:{sym}", f) for sym, f in user.scan(frames, index)]
