"""UTC conversion: the one place a date, a timestamp or a datetime becomes UTC.

Naive values are taken as UTC; aware ones are converted. Text that is no date is a
:class:`~core.errors.ConfigError` that says how to write it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from core.errors import ConfigError


def to_utc(ts: object | None) -> pd.Timestamp | None:
    """Parse a date or timestamp into a UTC ``pd.Timestamp``; ``None`` stays ``None``."""
    if ts is None:
        return None
    try:
        t = pd.Timestamp(ts)  # type: ignore[arg-type]
    except (ValueError, TypeError) as err:
        raise ConfigError(f"cannot read {ts!r} as a date; write it as YYYY-MM-DD") from err
    if t is pd.NaT:
        raise ConfigError(f"cannot read {ts!r} as a date; write it as YYYY-MM-DD")
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def utc_datetime(value: datetime) -> datetime:
    """A ``datetime`` in UTC (a naive one is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
