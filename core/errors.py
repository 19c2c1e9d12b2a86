"""The project's exception tree.

Two branches: the user's mistakes (bad configuration, bad data, unknown names), which a rerun
will not fix, and passing faults (network, a busy server), which a rerun may fix.

    BtmlError
    +-- UserError                 fix the input, then rerun
    |   +-- ConfigError           a config value out of range, an unknown registry name
    |   +-- DataError             data breaks the OHLCV contract (names symbol, row, rule)
    |   |   +-- ValidationError
    |   +-- SymbolNotFound        the source has no such symbol, or returned nothing
    |   +-- ModelNotFound         the registry or the server has no such model or version
    |   +-- StoreError            the store cannot be read or written
    |   |   +-- CorruptFileError  a Parquet file that cannot be read (names the file)
    |   +-- StoreConflict         new rows disagree with what is stored (source, adjustment, prices)
    +-- TransientError            retry later
        +-- SourceUnavailable     network failure, timeout, 5xx, rate limit
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "BrokerProtocolError",
    "BtmlError",
    "ConfigError",
    "CorruptFileError",
    "DataError",
    "ModelNotFound",
    "SourceUnavailable",
    "StoreConflict",
    "StoreError",
    "SymbolNotFound",
    "TransientError",
    "UserError",
    "ValidationError",
    "unknown_name",
]


class BtmlError(Exception):
    """Base of every error this project raises on purpose."""


class UserError(BtmlError):
    """The input is wrong; rerunning unchanged will fail the same way."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid or a registry name is unknown."""


class DataError(UserError, ValueError):
    """Data breaks the OHLCV contract."""


class ValidationError(DataError):
    """A validation rule failed; carries the symbol, timestamp and rule."""

    def __init__(self, symbol: str, rule: str, message: str, timestamp: object = None) -> None:
        self.symbol = symbol
        self.rule = rule
        self.timestamp = timestamp
        super().__init__(message)


class SymbolNotFound(UserError, LookupError):
    """The source does not know the symbol, or returned no rows for the range."""


class ModelNotFound(UserError, LookupError):
    """The model registry (or the serving endpoint) has no such model or version."""


class StoreError(UserError, OSError):
    """The store could not be read or written."""


class CorruptFileError(StoreError):
    """A stored file cannot be read; other files are unaffected."""

    def __init__(self, path: object, message: str) -> None:
        self.path = path
        super().__init__(message)


class StoreConflict(UserError):
    """Rows to store disagree with the stored series; nothing was written."""


class TransientError(BtmlError):
    """A passing fault: the same call may succeed later."""


class SourceUnavailable(TransientError, ConnectionError):
    """A data source could not be reached or answered with a server error."""


class BrokerProtocolError(TransientError):
    """A broker answered outside its API's schema (one object where a list is due, a field
    missing or not a number); the answer was not used. Names the endpoint and the field."""

    def __init__(self, endpoint: str, field: str, message: str) -> None:
        self.endpoint = endpoint
        self.field = field
        super().__init__(message)


def unknown_name(kind: str, name: str, known: Iterable[str]) -> ConfigError:
    """The error for a name missing from a registry: lists the known names, suggests the closest."""
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}: known are {', '.join(names)}{hint}")
