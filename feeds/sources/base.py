"""The source interface and its registry.

A source turns a symbol, a timeframe and a date range into one canonical OHLCV frame
(:mod:`feeds.frame`). It raises :class:`~core.errors.SymbolNotFound` for an unknown symbol or
an empty answer and :class:`~core.errors.SourceUnavailable` for network failures; it never
returns an empty frame as if that were data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import pandas as pd

from core.errors import unknown_name


@runtime_checkable
class Source(Protocol):
    """What every data source provides."""

    name: str

    def fetch(
        self,
        symbol: str,
        *,
        timeframe: str = "1Day",
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Return the canonical frame for ``symbol`` with bars in ``[start, end)``."""
        ...


SourceFactory = Callable[..., Source]


def _registry() -> dict[str, SourceFactory]:
    # Imported lazily: each source pulls in its own client library.
    from feeds.sources.alpaca import AlpacaSource
    from feeds.sources.ccxt_source import CcxtSource
    from feeds.sources.csv_source import CsvSource
    from feeds.sources.synthetic import SyntheticSource
    from feeds.sources.yahoo import YahooSource

    return {
        "yahoo": YahooSource,
        "alpaca": AlpacaSource,
        "ccxt": CcxtSource,
        "csv": CsvSource,
        "synthetic": SyntheticSource,
    }


SOURCE_NAMES: tuple[str, ...] = ("yahoo", "alpaca", "ccxt", "csv", "synthetic")


def get_source(name: str, **settings: object) -> Source:
    """Create the source registered as ``name`` with its settings."""
    if name not in SOURCE_NAMES:
        raise unknown_name("source", name, SOURCE_NAMES)
    return _registry()[name](**settings)
