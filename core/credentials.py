"""Alpaca API keys: read from the environment in one place, never shown.

The names are Alpaca's own (``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``); ``ALPACA_API_KEY`` /
``ALPACA_SECRET_KEY`` are accepted too. ``repr`` and ``str`` mask the keys, and :meth:`redact`
removes them from any text (an error body may echo a request).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.errors import ConfigError

KEY_ENV, SECRET_ENV = "APCA_API_KEY_ID", "APCA_API_SECRET_KEY"
_ALIASES = {KEY_ENV: "ALPACA_API_KEY", SECRET_ENV: "ALPACA_SECRET_KEY"}


@dataclass(frozen=True, kw_only=True)
class AlpacaCredentials:
    """Alpaca API keys. ``repr``/``str`` never show them."""

    key_id: str = field(repr=False)
    secret_key: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.key_id or not self.secret_key:
            raise ConfigError(f"Alpaca credentials need both {KEY_ENV} and {SECRET_ENV}")

    def __repr__(self) -> str:
        return "AlpacaCredentials(key_id='***', secret_key='***')"

    __str__ = __repr__

    def redact(self, text: str) -> str:
        """``text`` with both keys replaced by ``***``."""
        for secret in (self.key_id, self.secret_key):
            text = text.replace(secret, "***")
        return text

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AlpacaCredentials | None:
        """Keys from the environment; None when neither is set, an error when only one is."""
        env = os.environ if env is None else env
        key = env.get(KEY_ENV) or env.get(_ALIASES[KEY_ENV])
        secret = env.get(SECRET_ENV) or env.get(_ALIASES[SECRET_ENV])
        if not key and not secret:
            return None
        return cls(key_id=key or "", secret_key=secret or "")
