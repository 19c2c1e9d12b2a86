"""What every command prints the same way: ``--json``, and timestamps (daily bars as dates)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click
import pandas as pd

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    """Add ``--json`` (parameter ``as_json``): print machine-readable JSON instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON (timestamps and paths as strings)."""
    click.echo(json.dumps(value, indent=2, default=str))


def stamp(ts: pd.Timestamp | None, timeframe: str = "1Day") -> str:
    """``2024-01-02`` for a daily bar at midnight, the full UTC time otherwise; ``-`` for none."""
    if ts is None or ts is pd.NaT:
        return "-"
    t = pd.Timestamp(ts)
    if timeframe == "1Day" and t == t.normalize():
        return t.strftime("%Y-%m-%d")
    return t.isoformat()


def series_dict(s: Any) -> dict[str, Any]:
    """A stored series (:class:`feeds.store.StoredSeries`) as JSON-ready values."""
    return {
        "symbol": s.symbol,
        "asset_class": s.asset_class,
        "timeframe": s.timeframe,
        "rows": s.rows,
        "first": stamp(s.first, s.timeframe),
        "last": stamp(s.last, s.timeframe),
        "source": s.source,
        "fetched_at": s.fetched_at,
        "path": str(s.path),
    }
