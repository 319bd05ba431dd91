"""Where a command runs: through the daemon ``HEARTH_URL`` names, through the home's daemon
when one answers and serves this project, or in a host run here (``--local``, or no daemon).

``hearth status`` through a daemon is the one command a person types often that needs one, so
it asks the daemon with the standard library alone (``status_through``): no httpx, pydantic or
asyncio, some 100 ms of imports (``scripts/bench --only serve``), with the same output as
``RemoteHost`` gives. The other commands open a ``RemoteHost`` or a ``Host`` (``open_host``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .._address import CLIENT_TIMEOUT, DAEMON_DEFAULTS, MARGIN, RECONNECT, address_from_env
from .._dirs import SOCKET_FILE, STORE_ENV, TOKEN_ENV, URL_ENV, daemon_project, find_project_dir, state_dir
from .._errors import CallTimeout, DaemonUnavailable, HearthError, InvalidInput, error_from_json
from ._exits import SIGNALS, SignalStop
from ._render import log, status_lines

if TYPE_CHECKING:  # the host, httpx and asyncio load only for the commands that use them
    from .._lifecycle._host import Host
    from .._remote import RemoteHost

#: Seconds to connect to a daemon, and to wait for its answer beyond the bound it keeps itself:
#: ``RemoteHost``'s (``_address`` holds them for both).
CONNECT_BOUND = CLIENT_TIMEOUT
ANSWER_MARGIN = MARGIN
#: The read bound of a ``status`` without ``--timeout`` through ``HEARTH_URL``, whose daemon's
#: settings this process cannot read: ``RemoteHost``'s default timeout plus ``DAEMON_DEFAULTS``.
REMOTE_STATUS_BOUND = CLIENT_TIMEOUT + DAEMON_DEFAULTS
API = "/v1"


def project_toml(args: argparse.Namespace) -> dict[str, Any]:
    """The project's hearth.toml as plain TOML, for the fast paths that must not load the
    settings' models; empty when missing or unreadable (the host reads it again and says what
    is wrong). tomllib loads only when there is a file to read."""
    settings = find_project_dir(getattr(args, "project", None)) / ".hearth" / "hearth.toml"
    try:
        text = settings.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return {}
    import tomllib

    try:
        return tomllib.loads(text)
    except ValueError:
        return {}


def configured_store(args: argparse.Namespace) -> str | None:
    """The store URL this command names (--store, $HEARTH_STORE, or ``store`` in hearth.toml);
    None for the home's SQLite file."""
    named = getattr(args, "store", None) or os.environ.get(STORE_ENV, "").strip()
    if named:
        return str(named)
    value = project_toml(args).get("store")
    return value if isinstance(value, str) and value else None


def named_daemon(args: argparse.Namespace) -> str | None:
    """``HEARTH_URL`` when it decides where the command runs (not under ``--local``); then a
    --home, --project or --store, which are for a host run here, is bad input."""
    value = os.environ.get(URL_ENV, "").strip()
    if getattr(args, "local", False) or not value:
        return None
    for option in ("home", "project", "store"):
        if getattr(args, option, None) is not None:
            raise InvalidInput(
                f"{URL_ENV} names a daemon, which has its own home and project: "
                f"--{option} is for a host run here (add --local, or unset {URL_ENV})"
            )
    return value


def home_daemon(args: argparse.Namespace) -> Path | None:
    """The home's daemon socket when the command should use it: ``--local`` and ``HEARTH_URL``
    aside, a daemon that answers on the home's socket and serves this project (or runs while
    we are in none). A socket file left by a dead daemon is passed by. Asked once."""
    if not hasattr(args, "_home_daemon"):
        args._home_daemon = _find_home_daemon(args)
    found: Path | None = args._home_daemon
    return found


def _find_home_daemon(args: argparse.Namespace) -> Path | None:
    import socket

    if getattr(args, "local", False) or os.environ.get(URL_ENV, "").strip():
        return None
    if getattr(args, "store", None) is not None:  # a store named for this command: run it here
        return None
    home = getattr(args, "home", None)
    path = state_dir(home) / SOCKET_FILE
    try:
        if not path.is_socket():
            return None
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        finally:
            probe.close()
    except OSError as exc:  # a stale socket (connection refused), or one we may not use
        log("info", "not using the daemon at %s: %s", path, exc.strerror or exc)
        return None
    served = daemon_project(home)
    explicit = getattr(args, "project", None) is not None
    ours = find_project_dir(getattr(args, "project", None))
    if served is not None and served != ours and (explicit or (ours / ".hearth").is_dir()):
        log(
            "info",
            "the daemon at %s serves the project %s, not %s: running the host here",
            path,
            served,
            ours,
        )
        return None
    log("info", "using the daemon at %s", path)
    return path


def daemon(args: argparse.Namespace) -> RemoteHost | None:
    """The daemon to use, or None to run the host here: the one ``HEARTH_URL`` names (then it
    must answer), else the home's (``home_daemon``)."""
    if named_daemon(args) is not None:
        from .._remote import RemoteHost  # httpx loads only when a daemon may answer

        timeout, reconnect = client_bounds(args)
        return RemoteHost(timeout=timeout, reconnect=reconnect)
    path = home_daemon(args)
    if path is None:
        return None
    from .._remote import RemoteHost

    timeout, reconnect = client_bounds(args)
    return RemoteHost(socket=path, timeout=timeout, reconnect=reconnect)


def client_bounds(args: argparse.Namespace) -> tuple[float, float]:
    """``RemoteHost``'s bounds for this command: with ``--timeout``, no call waits longer than
    it plus ``ANSWER_MARGIN`` (the start of a verb, a plan, a query), nor does a wait ride out
    a daemon that does not answer (a restart) for longer; else their defaults. As
    (``timeout``, ``reconnect``)."""
    timeout: float | None = getattr(args, "timeout", None)
    if timeout is None:
        return CONNECT_BOUND, RECONNECT
    bound = timeout + ANSWER_MARGIN
    return min(CONNECT_BOUND, bound), min(RECONNECT, bound)


def open_host(args: argparse.Namespace) -> tuple[Host | RemoteHost, str]:
    """The daemon to go through, or a host run here; and how long a cancel may wait, in words."""
    remote = daemon(args)
    if remote is not None:
        return remote, "the daemon's cancel grace"
    from .._lifecycle._host import Host  # loads only for a host run here

    log("info", "running the host in this process")
    host = Host(
        project_dir=getattr(args, "project", None),
        home=getattr(args, "home", None),
        store_url=getattr(args, "store", None),
    )
    host.open()
    return host, f"up to {host.timeouts.cancel_grace:g} s"


def status_default(args: argparse.Namespace) -> float:
    """The daemon's bound of a ``status`` without ``--timeout``: ``[timeouts]`` status and
    handshake of the project's hearth.toml (the daemon serves this project), read without the
    settings' models; their defaults when unset or unreadable (the daemon says what is wrong)."""
    bounds = {"status": 30.0, "handshake": 10.0}  # Timeouts' defaults (its module loads pydantic)
    table = project_toml(args).get("timeouts", {})
    for name in bounds:
        value = table.get(name) if isinstance(table, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
            bounds[name] = float(value)
    return bounds["status"] + bounds["handshake"]


class Address(NamedTuple):
    """A daemon ``status_through`` can ask: its Unix socket, or an ``http://`` listener (host,
    port, the URL's path before ``/v1``) and its bearer token; named as ``RemoteHost`` names it."""

    shown: str
    socket: Path | None
    host: str
    port: int | None
    prefix: str
    token: str | None
    #: How long to wait for the answer to a ``status`` without ``--timeout``; None: the home's
    #: daemon, which serves this project, keeps the bound of its settings (``status_default``).
    default_bound: float | None


def status_address(args: argparse.Namespace) -> Address | None:
    """The daemon a ``hearth status`` asks with the standard library, or None when it runs
    otherwise: in a host here, or through ``RemoteHost`` for an ``https://`` daemon (whose
    certificate check is httpx's, and must stay the same) or a URL it alone reads."""
    named = named_daemon(args)
    if named is None:
        path = home_daemon(args)
        if path is None:
            return None
        return Address(f"unix://{path}", path, "hearth", None, "", None, None)
    socket, named_url = address_from_env()  # RemoteHost's reading of HEARTH_URL, and its words
    if socket is not None:
        log("info", "using the daemon at unix://%s (%s)", socket, URL_ENV)
        return Address(f"unix://{socket}", socket, "hearth", None, "", None, REMOTE_STATUS_BOUND)
    if named_url is None or named_url.startswith("https://"):
        return None
    from urllib.parse import urlsplit

    url = named_url.rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None  # RemoteHost says what is wrong with it
    if not parts.hostname or parts.username is not None or parts.query or parts.fragment:
        return None
    if any(value for name, value in os.environ.items() if name.lower() in ("http_proxy", "all_proxy")):
        return None  # httpx would go through the proxy: so it does
    token = os.environ.get(TOKEN_ENV) or None
    if token is not None and not token.isprintable():
        return None  # not a header value: RemoteHost says so
    log("info", "using the daemon at %s (%s)", url, URL_ENV)
    return Address(url, None, parts.hostname, port, parts.path, token, REMOTE_STATUS_BOUND)


class _Signalled(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def status_through(address: Address, args: argparse.Namespace) -> tuple[Any, str, int]:
    """``hearth status`` through a daemon with the standard library alone (http.client). The
    daemon's JSON is the model's own, so the output is the same as ``RemoteHost``'s, and so
    are the errors; a signal ends it as it ends the others (nothing to cancel). Every wait is
    bounded: the connection by ``CONNECT_BOUND``, the answer by the deadline the daemon keeps
    plus ``ANSWER_MARGIN``."""
    import http.client
    import socket
    import urllib.parse

    timeout: float | None = getattr(args, "timeout", None)
    # the daemon keeps the deadline; a daemon that stops answering is given up on a little later
    if timeout is not None:
        bound = timeout + ANSWER_MARGIN
    elif address.default_bound is not None:
        bound = address.default_bound
    else:
        bound = status_default(args) + ANSWER_MARGIN
    connect_bound = min(CONNECT_BOUND, bound)

    class Connection(http.client.HTTPConnection):
        connected = False

        def connect(self) -> None:
            if address.socket is None:
                super().connect()  # within self.timeout: the connect bound
            else:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(connect_bound)
                self.sock.connect(str(address.socket))
            self.sock.settimeout(bound)
            self.connected = True

    def signalled(signum: int, frame: object) -> None:
        raise _Signalled(signum)

    query = "" if timeout is None else "?" + urllib.parse.urlencode({"timeout": timeout})
    target = f"{address.prefix}{API}/workspaces/{urllib.parse.quote(args.slug, safe='')}/status{query}"
    headers = {"Accept": "application/json"}
    if address.token:
        headers["Authorization"] = f"Bearer {address.token}"
    for signum in SIGNALS:
        signal.signal(signum, signalled)
    connection = Connection(address.host, address.port, timeout=connect_bound)
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except _Signalled as exc:
        raise SignalStop(f"interrupted by {signal.Signals(exc.signum).name}; nothing was changed") from None
    except TimeoutError:
        raise CallTimeout(
            f"the hearth daemon at {address.shown} did not answer GET {target} within {bound:g} s"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        if address.socket is not None and not address.socket.exists():
            raise DaemonUnavailable(
                f"no hearth daemon at {address.shown}: the socket does not exist (start one with "
                "`hearth serve`, or set HEARTH_URL)"
            ) from None
        if not connection.connected and isinstance(exc, OSError):
            raise DaemonUnavailable(f"no hearth daemon answers at {address.shown}: {exc}") from None
        raise DaemonUnavailable(
            f"the connection to the hearth daemon at {address.shown} failed: {exc!r}"
        ) from None
    finally:
        for signum in SIGNALS:  # until exit, as after the other commands: the line is still to come
            signal.signal(signum, signal.SIG_IGN)
        connection.close()
    return _answer(response.status, body, args.slug)


def _answer(status: int, body: bytes, slug: str) -> tuple[Any, str, int]:
    """The status report of a 2xx answer; the daemon's error as its typed ``HearthError``."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    text = body.decode("utf-8", "replace")[:200]
    if not 200 <= status < 300:
        error = document.get("error") if isinstance(document, dict) else None
        if isinstance(error, dict):
            raise error_from_json(error)
        raise HearthError(f"the hearth daemon answered {status}: {text!r}")
    if not isinstance(document, dict):
        raise HearthError(f"the hearth daemon answered {status} with no JSON: {text!r}")
    lines = status_lines(
        slug,
        document.get("state"),
        document.get("endpoint"),
        document.get("message"),
        document.get("details"),
    )
    return document, lines, 0
