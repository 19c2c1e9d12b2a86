"""What every command module shares: the config decorator and the one-line error exit."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from btml.config import Config
from feeds.errors import UserError

pass_config = click.make_pass_decorator(Config)


def fail(err: Exception) -> NoReturn:
    """Print ``error: ...`` on stderr; exit 2 for bad input (a :class:`UserError`), else 1."""
    click.echo(f"error: {err}", err=True)
    sys.exit(2 if isinstance(err, UserError) else 1)
