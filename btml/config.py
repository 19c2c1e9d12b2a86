"""The one configuration model: frozen dataclasses, read from flags and the environment.

Credentials come from the environment through :class:`core.credentials.AlpacaCredentials` (the
one place keys are read) and are never printed: their ``repr`` masks them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.config import DataConfig
from core.credentials import AlpacaCredentials
from core.errors import ConfigError

DEFAULT_STORE = "./data_storage"
ALPACA_FEEDS = ("iex", "sip")


@dataclass(frozen=True, kw_only=True)
class SourceSettings(DataConfig):
    """Settings shared by the data sources."""

    timeout_s: float = 10.0
    alpaca_feed: str = "iex"
    alpaca_data_url: str | None = None
    ccxt_exchange: str = "binance"

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= 300:
            raise ConfigError(f"timeout_s must be in (0, 300], got {self.timeout_s}")
        if self.alpaca_feed not in ALPACA_FEEDS:
            raise ConfigError(
                f"alpaca_feed must be one of {ALPACA_FEEDS}, got {self.alpaca_feed!r}"
            )


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a command needs: where the store is, the run registry's database
    (``db_url``; None: ``sqlite:///{store}/runs.sqlite``), credentials, source settings."""

    store: Path = Path(DEFAULT_STORE)
    db_url: str | None = None
    alpaca: AlpacaCredentials | None = None
    sources: SourceSettings = field(default_factory=SourceSettings)


def load_config(
    store: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    db_url: str | None = None,
) -> Config:
    """Build the config: ``store`` flag, else ``BTML_STORE``, else ``./data_storage``;
    ``db_url`` flag, else ``BTML_DB``, else None (the store's SQLite file)."""
    env = os.environ if env is None else env
    path = Path(store or env.get("BTML_STORE") or DEFAULT_STORE)
    db = db_url or env.get("BTML_DB") or None
    sources = SourceSettings(
        alpaca_feed=env.get("BTML_ALPACA_FEED", "iex"),
        alpaca_data_url=env.get("BTML_ALPACA_DATA_URL") or None,
        ccxt_exchange=env.get("BTML_CCXT_EXCHANGE", "binance"),
    )
    return Config(store=path, db_url=db, alpaca=AlpacaCredentials.from_env(env), sources=sources)


__all__ = ["DEFAULT_STORE", "AlpacaCredentials", "Config", "SourceSettings", "load_config"]
