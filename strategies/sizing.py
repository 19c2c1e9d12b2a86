"""Sizers: a signal (and a volatility estimate) -> an unsigned target weight (fraction of equity).

The strategy's entry rules pick the side; the risk rules clip to the per-symbol and gross caps.

* ``FixedFraction``: ``w = fraction``.
* ``VolTarget``: ``w = target_vol / sigma`` with ``sigma`` the realised per-bar volatility of
  recent returns (annualised by ``sqrt(periods)`` on both sides, so per-bar values are compared).
* ``ModelSizer``: ``w = size * confidence * target_vol / sigma_hat``, where ``size`` and
  ``confidence`` are the position and confidence heads and ``sigma_hat`` is the volatility head
  (the predicted per-bar volatility of the next 24 bars); without a usable head, the realised
  estimate stands in.

Every weight is capped at ``max_weight`` (default 1.0; the risk rules' ``max_position`` caps it
again per symbol) and is 0 for a non-finite input.

In a config a sizer is data: a ``PluginSpec`` (``{"name": "fixed", "params": {"fraction":
0.1}}``) of a ``SIZERS`` entry; :func:`sizer_spec` turns a sizer object into one and
:func:`build_sizer` builds it back.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import ConfigError, unknown_name
from serving.signal import Signal
from strategies.plugins import PluginSpec


class Sizer(Protocol):
    """``weight(signal, realised_vol) -> float >= 0``."""

    def weight(self, signal: Signal, realised_vol: float | None = None) -> float: ...


def _check(name: str, value: float, lo: float, hi: float) -> None:
    if not lo < value <= hi:
        raise ConfigError(f"{name} must be in ({lo}, {hi}], got {value}")


def _finite(w: float, cap: float) -> float:
    return max(0.0, min(cap, w)) if math.isfinite(w) else 0.0


@dataclass(frozen=True, kw_only=True)
class FixedFraction:
    """The same weight for every entry."""

    fraction: float = 0.1

    def __post_init__(self) -> None:
        _check("fraction", self.fraction, 0.0, 1.0)

    def weight(self, signal: Signal, realised_vol: float | None = None) -> float:
        return self.fraction


@dataclass(frozen=True, kw_only=True)
class VolTarget:
    """``target_vol / realised_vol`` per bar (0.01 = 1 % a bar, about 16 % a year daily)."""

    target_vol: float = 0.01
    max_weight: float = 1.0

    def __post_init__(self) -> None:
        _check("target_vol", self.target_vol, 0.0, 1.0)
        _check("max_weight", self.max_weight, 0.0, 10.0)

    def weight(self, signal: Signal, realised_vol: float | None = None) -> float:
        if not realised_vol or realised_vol <= 0:
            return 0.0
        return _finite(self.target_vol / realised_vol, self.max_weight)


@dataclass(frozen=True, kw_only=True)
class ModelSizer:
    """Position head x confidence, scaled to ``target_vol`` by the volatility head."""

    target_vol: float = 0.01
    max_weight: float = 1.0
    min_vol: float = 1e-4

    def __post_init__(self) -> None:
        _check("target_vol", self.target_vol, 0.0, 1.0)
        _check("max_weight", self.max_weight, 0.0, 10.0)
        _check("min_vol", self.min_vol, 0.0, 1.0)

    def weight(self, signal: Signal, realised_vol: float | None = None) -> float:
        vol = signal.volatility
        if not (math.isfinite(vol) and vol > self.min_vol):
            vol = realised_vol or 0.0
        if vol <= 0:
            return 0.0
        w = signal.size * signal.confidence * self.target_vol / max(vol, self.min_vol)
        return _finite(w, self.max_weight)


SIZERS: dict[str, type] = {"model": ModelSizer, "fixed": FixedFraction, "vol-target": VolTarget}


def get_sizer(name: str, **kwargs: float) -> Sizer:
    """A sizer by registry name (``model``, ``fixed``, ``vol-target``)."""
    if name not in SIZERS:
        raise unknown_name("sizer", name, SIZERS)
    try:
        return SIZERS[name](**kwargs)  # type: ignore[no-any-return]
    except TypeError as err:
        raise ConfigError(f"sizer {name!r}: {err}") from err


def build_sizer(spec: PluginSpec) -> Sizer:
    """The sizer ``spec`` names, with its parameters."""
    return get_sizer(spec.name, **spec.params)  # type: ignore[arg-type]


def sizer_spec(value: PluginSpec | str | Mapping[str, Any] | Sizer) -> PluginSpec:
    """``value`` as plain data: a spec, a name, a table, or a sizer of a ``SIZERS`` class.

    The spec lists every parameter (``"fixed"`` becomes ``fixed`` with ``fraction=0.1``), so
    two specs of the same sizer are equal."""
    if isinstance(value, PluginSpec | str | Mapping):
        sizer = build_sizer(PluginSpec.of(value, kind="sizer"))
    else:
        sizer = value
    names = [n for n, cls in SIZERS.items() if type(sizer) is cls]
    if not names or not dataclasses.is_dataclass(sizer):
        raise ConfigError(
            f"sizer {type(sizer).__name__} is not a strategies.sizing.SIZERS entry: add it "
            "(SIZERS['mine'] = MySizer, a dataclass) and pass sizer='mine'"
        )
    return PluginSpec(name=names[0], params=dataclasses.asdict(sizer))  # type: ignore[arg-type]
