"""Download many symbols into the store, one at a time, losing nothing on partial failure.

Each symbol is fetched for the part of the range the store lacks, validated and written
atomically; a failure on one symbol is recorded and the others go on. A rerun fetches only
what is still missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.errors import BtmlError
from core.utc import to_utc
from feeds.sources.base import Source
from feeds.store import ParquetStore


@dataclass
class DownloadReport:
    """What a download did, per symbol."""

    stored: dict[str, tuple[Path | None, int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        out = [f"{s}: +{n} rows -> {p}" for s, (p, n) in self.stored.items()]
        out += [f"{s}: FAILED: {msg}" for s, msg in self.failed.items()]
        return out


def download(
    store: ParquetStore,
    source: Source,
    symbols: Iterable[str],
    *,
    timeframe: str = "1Day",
    start: object = "2000-01-01",
    end: object | None = None,
    asset_class: str | None = None,
    on_symbol: Callable[[str], None] | None = None,
) -> DownloadReport:
    """Fetch each symbol's missing bars in ``[start, end)`` from ``source`` into ``store``.

    ``end`` defaults to now. Errors raised by the project (unknown symbol, bad data, network)
    are recorded per symbol; anything else propagates.
    """
    s = to_utc(start)
    e = to_utc(end) if end is not None else pd.Timestamp.now(tz="UTC").floor("min")
    report = DownloadReport()
    for sym in symbols:
        try:

            def fetch(a: pd.Timestamp, b: pd.Timestamp, sym: str = sym) -> pd.DataFrame:
                frame = source.fetch(sym, timeframe=timeframe, start=a, end=b)
                if asset_class:
                    frame.attrs["asset_class"] = asset_class
                return frame

            report.stored[sym] = store.update(
                sym, fetch, timeframe=timeframe, start=s, end=e, asset_class=asset_class
            )
        except BtmlError as err:
            report.failed[sym] = str(err)
        if on_symbol:
            on_symbol(sym)
    return report
