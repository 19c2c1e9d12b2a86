"""``--config FILE.toml``: a command's options from a file, flags on the command line winning.

The file holds the command's option names (``epochs = 5``, ``symbols = "AAPL,MSFT"``; dashes or
underscores), either at the top level or under a table named after the command (``[backtest]``),
so one file can serve several commands. Every value is checked with the option's own type before
the command runs: an unknown key or a wrong type is one error naming the key and the file.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _table(data: dict[str, Any], command: str, path: Path) -> dict[str, Any]:
    """The command's own table when the file has one, else the top level (minus other tables)."""
    if isinstance(data.get(command), dict):
        return dict(data[command])
    return {k: v for k, v in data.items() if not isinstance(v, dict)}


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as err:
        raise click.BadParameter(f"cannot read {path} ({err.strerror or err})") from err
    except tomllib.TOMLDecodeError as err:
        raise click.BadParameter(f"{path} is not valid TOML ({err})") from err


def _options(cmd: click.Command) -> dict[str, click.Option]:
    """Each option under its long flag names (``bars`` for ``--bars``), dashes as written."""
    out: dict[str, click.Option] = {}
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name and p.name != "config":
            for flag in p.opts:
                if flag.startswith("--"):
                    out[flag[2:]] = p
    return out


def _defaults(ctx: click.Context, path: Path) -> dict[str, Any]:
    """The file's values keyed by parameter name, each converted by its option's type."""
    options = _options(ctx.command)
    out: dict[str, Any] = {}
    for key, value in _table(_read(path), ctx.command.name or "", path).items():
        param = options.get(key.replace("_", "-"))
        if param is None or param.name is None:
            names = sorted(options)
            close = difflib.get_close_matches(key.replace("_", "-"), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise click.BadParameter(
                f"{path}: unknown key {key!r}{hint} The options are {', '.join(names)}"
            )
        try:
            out[param.name] = param.type_cast_value(ctx, value)
        except click.BadParameter as err:
            raise click.BadParameter(f"{path}: {key} = {value!r}: {err.message}") from None
    return out


def _load(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **_defaults(ctx, value)}
    return value


def config_file_option(f: F) -> F:
    """Add ``--config FILE.toml`` to a click command (put it below the ``@command`` line)."""
    return click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        is_eager=True,
        expose_value=False,
        callback=_load,
        help="Read options from a TOML file; flags given here win over it.",
    )(f)
