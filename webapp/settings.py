"""The dashboard's settings: plain values, checked at construction."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConfigError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, kw_only=True)
class DashboardSettings:
    """Where the dashboard reads from and how it serves.

    ``store`` is the data store (the model registry, runs and live journals live under it);
    ``db_url`` the run registry's database (default SQLite in the store); ``token`` the access
    token (default: ``BTML_DASHBOARD_TOKEN``, else generated and kept in the store, mode 0600);
    ``max_jobs`` how many job processes run at once (the rest wait); ``allow_remote`` must be
    set to bind anything but loopback.
    """

    store: Path = Path("data_storage")
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_jobs: int = 2
    allow_remote: bool = False
    poll_seconds: float = 0.5
    journals: tuple[Path, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", Path(os.fspath(self.store)))
        if not 1 <= self.max_jobs <= 32:
            raise ConfigError(f"max_jobs must be 1..32, got {self.max_jobs}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if not self.allow_remote and not is_loopback(self.host):
            raise ConfigError(
                f"--host {self.host} is reachable from other machines; add --allow-remote "
                "(and put TLS in a reverse proxy in front of it)"
            )
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("the dashboard token must be at least 16 characters")

    @property
    def journal_paths(self) -> tuple[Path, ...]:
        """The order journals shown on the Live page: the given ones, else the store's."""
        if self.journals:
            return self.journals
        return tuple(sorted((self.store / "live").glob("journal-*.sqlite")))


def is_loopback(host: str) -> bool:
    """True for a loopback name or address (the only hosts bound without ``--allow-remote``)."""
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
