"""Build a data source from the CLI's config (the only place CLI settings meet source classes)."""

from __future__ import annotations

from typing import Any

from btml.config import Config
from feeds.sources.base import Source, get_source


def make_source(name: str, config: Config, **options: Any) -> Source:
    """Create the source ``name`` with the settings and credentials in ``config``."""
    s = config.sources
    if name == "alpaca":
        creds = config.alpaca
        kwargs: dict[str, Any] = {
            "key_id": creds.key_id if creds else None,
            "secret_key": creds.secret_key if creds else None,
            "feed": s.alpaca_feed,
            "url": s.alpaca_data_url,
        }
        return get_source("alpaca", **kwargs, **options)
    if name == "ccxt":
        return get_source(
            "ccxt", exchange=options.pop("exchange", None) or s.ccxt_exchange, **options
        )
    return get_source(name, **options)
