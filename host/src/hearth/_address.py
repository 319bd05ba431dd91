"""Where a daemon is, as ``HEARTH_URL`` says, and how long its clients wait: read in one place
for ``RemoteHost`` and for the CLI's standard-library ``status`` path (which must not load
httpx), so that the two cannot drift. Standard library only."""

from __future__ import annotations

import os
from pathlib import Path

from ._dirs import URL_ENV
from ._errors import InvalidInput

#: ``RemoteHost``'s default bound on a call (seconds), connection included.
CLIENT_TIMEOUT = 30.0
#: How long a wait of ``RemoteHost`` rides out a daemon that does not answer (seconds): a
#: restart; ``RemoteHost(reconnect=)`` changes it, and the CLI's ``--timeout`` caps it.
RECONNECT = 120.0
#: How long a client waits for an answer beyond a deadline the daemon keeps itself.
MARGIN = 5.0
#: Room for the daemon's default bounds (``[timeouts]`` status 30 s, handshake 10 s, ...) on a
#: call given no deadline: a daemon that stops answering is given up on after that.
DAEMON_DEFAULTS = 60.0


def address_from_env() -> tuple[Path | None, str | None]:
    """``HEARTH_URL`` as (socket, None) for ``unix:///abs/path``, (None, url) for ``http(s)://``,
    (None, None) when unset; anything else is ``invalid_input``."""
    value = os.environ.get(URL_ENV, "").strip()
    if not value:
        return None, None
    if value.startswith("unix://"):
        path = value[len("unix://") :]
        if not path.startswith("/"):
            raise InvalidInput(f"{URL_ENV}={value[:80]!r}: expected unix:///absolute/path/to.sock")
        return Path(path), None
    if value.startswith(("http://", "https://")):
        return None, value
    raise InvalidInput(f"{URL_ENV}={value[:80]!r}: expected unix:///path/to.sock or http(s)://host:port")
