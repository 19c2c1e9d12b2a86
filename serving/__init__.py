"""Serving: the TorchServe handler, archives, the server lifecycle and the signal clients."""

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
