"""The run registry's errors, in the project's tree (:mod:`core.errors`).

UserError
+-- RunNotFound      no run has that id (or the prefix matches none or several)
+-- RunInUse         a run that models or other runs depend on cannot be removed
+-- RunStateError    finishing a finished run, removing a running one, an unknown status
+-- BadRegistryURL   (also a RegistryError) the database URL is unusable: fix --db / BTML_DB
BtmlError
+-- RegistryError    the registry's database cannot be opened or written
"""

from __future__ import annotations

from collections.abc import Sequence

from core.errors import BtmlError, UserError


class RunNotFound(UserError, LookupError):
    """No run has this id."""


class RunInUse(UserError):
    """Removing the run was refused: ``dependents`` (``"model NAME"``/``"run ID"``) need it."""

    def __init__(self, run_id: str, dependents: Sequence[str]) -> None:
        self.run_id = run_id
        self.dependents = tuple(dependents)
        super().__init__(
            f"run {run_id} is used by {', '.join(self.dependents)}; nothing was removed: "
            "remove those first"
        )


class RunStateError(UserError):
    """The run is not in a state that allows the call."""


class RegistryError(BtmlError):
    """The run registry's database could not be opened, migrated or written."""


class BadRegistryURL(RegistryError, UserError):
    """The registry's database URL cannot be used: not a URL, an unknown database, or a
    driver that is not installed (fix ``--db`` / ``BTML_DB``)."""
