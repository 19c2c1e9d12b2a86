"""The live Alpaca store, broker, data hub and order journal, on the official ``alpaca-py`` SDK.

``store.AlpacaStore`` owns the clients and streams (``getbroker()``, ``getdata(symbol)``);
``broker.AlpacaBroker`` is the backtrader broker; ``datastream.AlpacaBarHub`` multiplexes every
symbol's bars over one stock and one crypto websocket; ``journal`` holds the order journal
(every intent written before it is sent, with a deterministic ``client_order_id``, every update
applied once); ``reconcile`` makes journal and account agree before any new order; ``rest`` is
the guarded Trading API (timeouts, limiter, retries, idempotent submits).

Import the submodules for the store and broker (``from brokers.alpaca.store import
AlpacaStore``); this package itself imports only the journal, so nothing heavy loads with it.
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
