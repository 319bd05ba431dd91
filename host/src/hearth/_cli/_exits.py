"""How a command ends: its exit statuses, the signals that stop it, and the two stops that are
not a ``HearthError`` (a signal, an unconfirmed question). Every other module of the CLI uses
them, so they sit here, below all of them, on the standard library alone."""

from __future__ import annotations

import signal

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: ``reconcile --dry-run`` found records and backends that disagree.
EXIT_DRIFT = 3
#: What stops a command the way Ctrl-C does: its work is cancelled and the record says why.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalStop(Exception):
    """A signal (``SIGNALS``) stopped the command; ``message`` says what became of its work.

    Not ``hearth.Interrupted`` (an operation whose host stopped before it finished): this one
    never leaves the CLI, which answers it with exit status 130."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotConfirmed(Exception):
    """A person at the terminal did not confirm: nothing was started."""
