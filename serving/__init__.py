"""Serving: the TorchServe handler, archives, the server lifecycle and the signal clients.

The public names below are imported on first use (PEP 562), so that the light modules
(``serving.procs``, ``serving.state``, ``serving.server_config``) can be used without loading
torch (the dashboard reads the server's state that way).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "CircuitBreaker": "serving.client",
    "InProcessClient": "serving.client",
    "RestClient": "serving.client",
    "RestConfig": "serving.client",
    "ServingUnavailable": "serving.client",
    "SignalClient": "serving.client",
    "TokenRefused": "serving.client",
    "BadRequest": "serving.payload",
    "FLAT": "serving.signal",
    "PositionState": "serving.signal",
    "Signal": "serving.signal",
}

__all__ = [
    "FLAT",
    "BadRequest",
    "CircuitBreaker",
    "InProcessClient",
    "PositionState",
    "RestClient",
    "RestConfig",
    "ServingUnavailable",
    "Signal",
    "SignalClient",
    "TokenRefused",
]

if TYPE_CHECKING:
    from serving.client import (
        CircuitBreaker,
        InProcessClient,
        RestClient,
        RestConfig,
        ServingUnavailable,
        SignalClient,
        TokenRefused,
    )
    from serving.payload import BadRequest
    from serving.signal import FLAT, PositionState, Signal


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
