"""``AlpacaConfig``: one frozen, checked config for the live Alpaca store, broker and journal.

Keys come from the environment (``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``, the names
Alpaca's own tools use) or are passed in; they never appear in ``repr``, ``str``, log lines or
error messages. Paper trading is the default; live trading needs ``paper=False`` *and*
``live_confirmed=True`` (the CLI's ``--live --i-understand-this-is-real-money``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.config import DataConfig
from core.credentials import KEY_ENV, SECRET_ENV, AlpacaCredentials
from core.errors import ConfigError

PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"


@dataclass(frozen=True, kw_only=True)
class AlpacaConfig(DataConfig):
    """Everything the live Alpaca components need, checked at construction.

    Attributes:
        key_id, secret_key: the API keys (masked in ``repr``).
        paper: trade the paper account (default); ``False`` is real money.
        live_confirmed: the explicit confirmation that live trading needs.
        trading_url, trading_stream_url: Trading API and ``trade_updates`` websocket base URLs
            (default: Alpaca's paper or live hosts); tests and other regions override them.
        data_url, stock_stream_url, crypto_stream_url, feed: market data (history and streams).
        journal: where the order journal lives (a file path or any SQLAlchemy URL); use one
            journal per account (the CLI keeps ``journal-paper`` and ``journal-live`` apart).
        strategy: the strategy name in every ``client_order_id``.
        connect_timeout, read_timeout: seconds, on every HTTP call (alpaca-py sets none).
        max_requests_per_minute: the client-side limiter (Alpaca allows 200).
        rate_window: the limiter's window in seconds (60; tests shrink it).
        retries: attempts after the first for reads and cancels (5xx, timeouts, resets).
        backoff_initial, backoff_max: bounded exponential backoff with full jitter, seconds.
        position_tolerance: the largest |broker - journal| position difference per symbol
            that reconciliation accepts.
        position_check_every: seconds between periodic position checks while trading.
        fractional: send fractional quantities (sizes are not rounded to whole shares).
    """

    key_id: str = field(repr=False)
    secret_key: str = field(repr=False)
    paper: bool = True
    live_confirmed: bool = False
    trading_url: str | None = None
    trading_stream_url: str | None = None
    data_url: str | None = None
    stock_stream_url: str | None = None
    crypto_stream_url: str | None = None
    feed: str = "iex"
    journal: str | Path = ""  # default: data_storage/live/journal-{paper,live}.sqlite
    strategy: str = "btml"
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_requests_per_minute: int = 190
    rate_window: float = 60.0
    retries: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    position_tolerance: float = 1e-6
    position_check_every: float = 60.0
    fractional: bool = True

    def __post_init__(self) -> None:
        if not str(self.journal):  # one journal per account mode, never shared
            object.__setattr__(self, "journal", f"data_storage/live/journal-{self.mode}.sqlite")
        if not self.key_id or not self.secret_key:
            raise ConfigError(
                f"Alpaca keys missing: set {KEY_ENV} and {SECRET_ENV} (paper keys for --paper)"
            )
        if not self.paper and not self.live_confirmed:
            raise ConfigError(
                "live trading needs an explicit confirmation: pass --live together with "
                "--i-understand-this-is-real-money (or live_confirmed=True)"
            )
        for name in ("connect_timeout", "read_timeout", "rate_window", "backoff_initial"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"AlpacaConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.max_requests_per_minute <= 200:
            raise ConfigError(
                "AlpacaConfig.max_requests_per_minute must be in [1, 200] (Alpaca's limit), "
                f"got {self.max_requests_per_minute}"
            )
        if not 0 <= self.retries <= 10:
            raise ConfigError(f"AlpacaConfig.retries must be in [0, 10], got {self.retries}")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("AlpacaConfig.backoff_max must be >= backoff_initial")
        if self.position_tolerance < 0:
            raise ConfigError("AlpacaConfig.position_tolerance must be >= 0")
        if not self.strategy.strip() or len(self.strategy) > 32:
            raise ConfigError("AlpacaConfig.strategy must be 1..32 characters")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name not in ("key_id", "secret_key")
        )
        return f"AlpacaConfig(key_id='***', secret_key='***', {shown})"

    __str__ = __repr__

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values, without the keys (they come from the environment)."""
        return {k: v for k, v in super().to_dict().items() if k not in ("key_id", "secret_key")}

    @property
    def mode(self) -> str:
        """``paper`` or ``live``."""
        return "paper" if self.paper else "live"

    @property
    def base_url(self) -> str:
        """The Trading API base URL in use."""
        return self.trading_url or (PAPER_URL if self.paper else LIVE_URL)

    def redact(self, text: str) -> str:
        """``text`` with both keys replaced by ``***``."""
        return AlpacaCredentials(key_id=self.key_id, secret_key=self.secret_key).redact(text)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AlpacaConfig:
        """Keys from ``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``; ``overrides`` set the rest.

        ``APCA_API_BASE_URL`` (Alpaca's own variable) overrides the Trading API URL.
        """
        env = os.environ if env is None else env
        creds = AlpacaCredentials.from_env(env)
        values: dict[str, Any] = {
            "key_id": creds.key_id if creds else "",
            "secret_key": creds.secret_key if creds else "",
        }
        if env.get("APCA_API_BASE_URL"):
            values["trading_url"] = env["APCA_API_BASE_URL"]
        return cls(**(values | overrides))
