"""Plug-ins chosen by name, and strategy configs given as backtrader params.

* :class:`PluginSpec`: a sizer or a risk rule as plain data, ``{"name": ..., "params": {...}}``
  (a bare name is short for no parameters). The registries (``strategies.sizing.SIZERS``,
  ``strategies.risk_rules.RISK_RULES``) turn it into the object.
* :func:`config_params` / :func:`config_from_params`: a strategy declares ``config`` plus one
  backtrader param per config field, all ``None`` ("not given"), so both
  ``addstrategy(S, config=SConfig(fast=5))`` and ``addstrategy(S, fast=5)`` work; a field given
  as a param overrides the same field of ``config``. Plain values are type-checked like
  ``from_dict`` (a ``ConfigError`` names the key); ``config`` may also be a table (a dict).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from core.config import DataConfig
from core.errors import ConfigError

PARAM_TYPES = (bool, int, float, str)
C = TypeVar("C", bound=DataConfig)


@dataclass(frozen=True, kw_only=True)
class PluginSpec(DataConfig):
    """A plug-in by registry name with its parameters (numbers, booleans, strings)."""

    name: str
    params: dict[str, int | float | bool | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a plug-in needs a non-empty name, got {self.name!r}")
        object.__setattr__(self, "params", dict(self.params))
        for key, value in self.params.items():
            if not isinstance(value, PARAM_TYPES):
                raise ConfigError(
                    f"{self.name}.{key}: parameters are numbers, booleans or strings, got {value!r}"
                )

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.params.items()))))

    @classmethod
    def of(cls, value: PluginSpec | str | Mapping[str, Any], *, kind: str) -> PluginSpec:
        """``value`` as a spec: a spec, a name, or a ``{"name": ..., "params": {...}}`` table."""
        if isinstance(value, PluginSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, Mapping):
            return cls.from_dict(value, where=kind)
        raise ConfigError(
            f"{kind}: expected a name or a {{'name': ..., 'params': {{...}}}} table, "
            f"got {type(value).__name__} {value!r}"
        )


def config_params(config_cls: type[DataConfig], *extra: str) -> tuple[tuple[str, None], ...]:
    """Backtrader ``params``: ``config``, the ``extra`` runtime names, one per config field."""
    names = ["config", *extra, *(f.name for f in dataclasses.fields(config_cls))]  # type: ignore[arg-type]
    return tuple((n, None) for n in names)


def _is_plain(value: Any) -> bool:
    return isinstance(value, (*PARAM_TYPES, Mapping, list, tuple))


def config_from_params(config_cls: type[C], params: Any, where: str) -> C:
    """The config of a strategy from its backtrader ``params`` (see the module docstring)."""
    base = params.config
    if base is None:
        base = config_cls()
    elif isinstance(base, Mapping):
        base = config_cls.from_dict(base, where=where)
    elif not isinstance(base, config_cls):
        raise ConfigError(
            f"{where}: config must be a {config_cls.__name__} or a table, got {type(base).__name__}"
        )
    names = [f.name for f in dataclasses.fields(config_cls)]  # type: ignore[arg-type]
    given = {n: getattr(params, n) for n in names if getattr(params, n) is not None}
    if not given:
        return base
    plain = {k: v for k, v in given.items() if _is_plain(v)}
    objects = {k: v for k, v in given.items() if k not in plain}
    cfg = config_cls.from_dict({**base.to_dict(), **plain}, where=where) if plain else base
    return cast(C, dataclasses.replace(cast(Any, cfg), **objects)) if objects else cfg


def refuse_unknown(where: str, unknown: Mapping[str, Any], known: Iterable[str]) -> None:
    """A strategy's unknown keyword: a ``ConfigError`` naming it and the closest known param."""
    if not unknown:
        return
    name = next(iter(unknown))
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{where}: unknown param {name!r}{hint} Known params: {', '.join(names)}")
