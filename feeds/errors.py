"""Moved to :mod:`core.errors` (the one error hierarchy, below every package)."""

from core.errors import *  # noqa: F403
from core.errors import __all__  # noqa: F401
