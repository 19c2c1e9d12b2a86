"""``btml features ...``: the feature table, selection, and leakage checks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from btml.common import fail, pass_config
from btml.config import Config
from btml.output import echo_json, json_option
from core.errors import BtmlError


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
        ds = build_dataset(frames, DatasetConfig(window=2), index)
        split = chronological_split(ds.times, lookahead=24)
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
    "table",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A feature table (Parquet/CSV, datetime index or column, plus a close column) to scan.",
)
@click.option(
    "--index", "index_name", default=None, help="Stored index for the index-relative features."
)
@click.option("--timeframe", default="1Day", show_default=True)
@pass_config
def check_leakage(
    config: Config,
    symbols: tuple[str, ...],
    table: Path | None,
    index_name: str | None,
    timeframe: str,
) -> None:
    """Check the feature pipeline on stored SYMBOLS (truncation) and/or a feature --file.

    Exits 1 when any feature looks at the future.
    """
    from mlmodels.features import compute_features
    from mlmodels.leakage import future_correlation_check, truncation_check

    findings = []
    try:
        frames, index = _load_frames(config, symbols, index_name, timeframe)
        for sym, frame in frames.items():
            findings += [(sym, f) for f in truncation_check(frame, compute_features, index=index)]
        if table is not None:
            tab = _read_table(table)
            if "close" not in tab.columns:
                raise click.UsageError(f"{table}: needs a close column to compare against returns")
            findings += [
                (table.name, f)
                for f in future_correlation_check(tab.drop(columns=["close"]), tab["close"])
            ]
    except BtmlError as err:
        fail(err)
    for where, f in findings:
        click.echo(f"LEAK {where}: {f.feature} ({f.check}): {f.detail}")
    if findings:
        sys.exit(1)
    click.echo(f"no leakage found ({len(symbols)} symbol(s){', 1 table' if table else ''})")


def _read_table(path: Path):  # type: ignore[no-untyped-def]
    import pandas as pd

    tab = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if not isinstance(tab.index, pd.DatetimeIndex):
        col = next(
            (c for c in tab.columns if str(c).lower() in ("datetime", "date", "timestamp")), None
        )
        if col is not None:
            tab = tab.set_index(pd.to_datetime(tab.pop(col), utc=True))
    return tab
