"""Configs as data: frozen dataclasses of plain values that round-trip through dicts.

A component's config subclasses :class:`DataConfig` (and is a ``@dataclass(frozen=True,
kw_only=True)``); ``to_dict()`` gives JSON/TOML-ready values (tuples as lists, paths and
timestamps as strings, nested configs as dicts) and ``from_dict()`` builds it back, refusing an
unknown key (with the closest known one) or a value of the wrong type with a
:class:`~core.errors.ConfigError` that names the key. ``from_dict(c.to_dict()) == c``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import pandas as pd

from core.errors import ConfigError


def _plain(value: Any) -> Any:
    if isinstance(value, DataConfig):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path | pd.Timestamp):
        return value.isoformat() if isinstance(value, pd.Timestamp) else str(value)
    return value


def _convert(where: str, hint: Any, value: Any) -> Any:
    """``value`` as the annotated type ``hint``; raises ConfigError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(where, arg, value)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}"
        )
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        if item is Any and args and args[-1] is not Ellipsis:
            return tuple(
                _convert(f"{where}[{i}]", a, v)
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        return tuple(_convert(f"{where}[{i}]", item, v) for i, v in enumerate(value))
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        val = args[1] if len(args) == 2 else Any
        return {str(k): _convert(f"{where}.{k}", val, v) for k, v in value.items()}
    return _scalar(where, hint, value)


def _scalar(where: str, hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and issubclass(hint, DataConfig):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return hint.from_dict(value, where=where)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str | Path):
            return Path(value)
    elif hint is pd.Timestamp:
        try:
            return pd.Timestamp(value)
        except (ValueError, TypeError):
            pass
    else:
        return value  # a type this module does not check: taken as given
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


class DataConfig:
    """Mixin for frozen dataclass configs: ``to_dict`` and a checked ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (lists, strings, numbers, nested dicts)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str | None = None) -> Self:
        """Build the config from plain values; unknown keys and wrong types are refused."""
        where = where or cls.__name__
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        hints = typing.get_type_hints(cls)
        unknown = [k for k in data if k not in fields]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r}{hint} Known keys: {', '.join(fields)}"
            )
        values = {k: _convert(f"{where}.{k}", hints[k], v) for k, v in data.items()}
        return cls(**values)
