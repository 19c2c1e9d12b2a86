"""The file archived as the ``.mar``'s handler: TorchServe wants exactly one class defined here.

It subclasses ``serving.handler.SignalHandler`` (imported from the installed package), so the
archive carries no model or feature code of its own.
"""

from serving.handler import SignalHandler


class BtmlSignalHandler(SignalHandler):
    """The installed ``SignalHandler``, under a class defined in this module."""
