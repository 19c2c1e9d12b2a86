"""The live Alpaca broker's building blocks, on the official ``alpaca-py`` SDK.

``journal`` holds the order journal: every order intent is written before it is sent, with a
deterministic ``client_order_id``, and every trade update is applied once.
"""

from __future__ import annotations

from brokers.alpaca.journal import (
    Applied,
    CorruptJournalError,
    FillPosition,
    FillRecord,
    IntentConflictError,
    Journal,
    JournalConfig,
    JournalError,
    OrderIntent,
    OrderRecord,
    make_client_order_id,
)

__all__ = [
    "Applied",
    "CorruptJournalError",
    "FillPosition",
    "FillRecord",
    "IntentConflictError",
    "Journal",
    "JournalConfig",
    "JournalError",
    "OrderIntent",
    "OrderRecord",
    "make_client_order_id",
]
