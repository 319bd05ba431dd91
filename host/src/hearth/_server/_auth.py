"""Who asks the daemon, and what they may do: principals, scoped tokens, the scope of each route,
and one access line per request.

A request through the Unix socket is its peer (``unix:<uid>(<user>)``, from ``SO_PEERCRED``;
``_limits.BoundedH11`` reads it when the connection is made) with the socket's scopes (every
scope unless ``--socket-scopes`` narrows them); one on a TCP listener needs a bearer token and is
that token (``token:<name>``) with its scopes. ``SCOPE_OF`` is the one table of which scope each
route needs: ``read`` (every GET, the event streams among them), ``operate`` (the verbs that
start work on a workspace, labels, cancel) and ``admin`` (what settles records by hand: adopt,
forget, reconcile). A credential without the scope gets 403 ``forbidden`` naming it.

Secrets are compared in constant time (``hmac.compare_digest`` of their SHA-256 digests,
against every token, whichever matched) and never logged. ``Credentials.replace`` (the daemon's
SIGHUP) swaps the tokens at once and names those that went or changed, whose open streams the
app then ends (``AppState.revoke``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import quote

from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._actors import acting, token_actor, unix_actor
from ._schemas import API, error_response

ScopeName = Literal["read", "operate", "admin"]
#: Every scope, from least to most.
SCOPES: tuple[ScopeName, ...] = get_args(ScopeName)
ALL_SCOPES: frozenset[str] = frozenset(SCOPES)
#: The name the token of ``--token-file`` has (every scope).
DEFAULT_TOKEN = "default"
#: The shortest secret a token may have.
SECRET_MIN = 16
#: The key in the ASGI scope's ``state`` under which ``BoundedH11`` leaves a Unix-socket peer's
#: uid (uvicorn copies the protocol's ``app_state`` into every request's ``scope["state"]``).
PEER_UID = "hearth.peer_uid"
#: The key in the ASGI scope where ``Authenticate`` leaves the request's ``Principal``.
PRINCIPAL = "hearth.principal"
#: The actor of a request no credential names: a TCP listener without tokens (an app mounted
#: in a program of yours, ``create_app(host)``) or a test client.
ANONYMOUS = "anonymous"

access_log = logging.getLogger("hearth.access")

#: The one table of the scope each route needs, by (method, path as the app declares it). A GET
#: (or HEAD) not listed needs ``read`` (``scope_needed``), so a new read falls under ``read``;
#: any other method not listed needs ``admin``.
#: ``tests/test_tokens.py`` checks that every route of the app is here or is a GET.
SCOPE_OF: dict[tuple[str, str], ScopeName] = {
    # reads: every GET, the event streams and the probes among them
    ("GET", f"{API}/workspaces"): "read",
    ("GET", f"{API}/workspaces/{{slug}}"): "read",
    ("GET", f"{API}/workspaces/{{slug}}/status"): "read",
    ("GET", f"{API}/workspaces/{{slug}}/logs"): "read",
    ("GET", f"{API}/operations"): "read",
    ("GET", f"{API}/operations/{{ident}}"): "read",
    ("GET", f"{API}/operations/{{ident}}/wait"): "read",
    ("GET", f"{API}/operations/{{ident}}/events"): "read",
    ("GET", f"{API}/events"): "read",
    ("GET", f"{API}/tiers"): "read",
    ("GET", f"{API}/drivers"): "read",
    ("GET", f"{API}/health"): "read",
    ("GET", f"{API}/ready"): "read",
    ("GET", "/metrics"): "read",
    # questions that change nothing
    ("POST", f"{API}/check"): "read",
    ("POST", f"{API}/plan"): "read",
    # work on a workspace
    ("POST", f"{API}/workspaces"): "operate",
    ("POST", f"{API}/workspaces/{{slug}}/upgrade"): "operate",
    ("POST", f"{API}/workspaces/{{slug}}/stop"): "operate",
    ("POST", f"{API}/workspaces/{{slug}}/start"): "operate",
    ("POST", f"{API}/workspaces/{{slug}}/activity"): "operate",
    ("DELETE", f"{API}/workspaces/{{slug}}"): "operate",
    ("PATCH", f"{API}/workspaces/{{slug}}"): "operate",
    ("DELETE", f"{API}/operations/{{ident}}"): "operate",
    # what settles records by hand
    ("POST", f"{API}/workspaces/{{slug}}/adopt"): "admin",
    ("POST", f"{API}/workspaces/{{slug}}/forget"): "admin",
    ("POST", f"{API}/reconcile"): "admin",
}
#: The methods that read (``read`` by rule, listed or not).
READS = frozenset({"GET", "HEAD"})


def scope_needed(method: str, path: str) -> ScopeName:
    """The scope a request of ``method`` to the route declared as ``path`` needs."""
    listed = SCOPE_OF.get((method, path)) or (SCOPE_OF.get(("GET", path)) if method == "HEAD" else None)
    if listed is not None:
        return listed
    return "read" if method in READS else "admin"  # a route nobody placed: only the most trusted


def parse_scopes(given: Iterable[object], where: str) -> frozenset[str]:
    """``given`` as a set of scopes; ``ValueError`` naming ``where`` and the unknown one."""
    found = set()
    for item in given:
        if not isinstance(item, str) or item not in ALL_SCOPES:
            raise ValueError(f"{where}: unknown scope {item!r:.40} (the scopes: {', '.join(SCOPES)})")
        found.add(item)
    return frozenset(found)


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


@dataclass(frozen=True)
class Token:
    """A named token: the SHA-256 of its secret (the secret itself is not kept) and its scopes."""

    name: str
    digest: bytes
    scopes: frozenset[str]

    @classmethod
    def of(cls, name: str, secret: str, scopes: Iterable[str]) -> Token:
        return cls(name, _digest(secret.encode()), frozenset(scopes))

    def __repr__(self) -> str:  # never the digest, in a log or a traceback
        return f"Token({self.name!r}, scopes={sorted(self.scopes)})"


@dataclass(frozen=True)
class Principal:
    """Who asks: the actor operations record, what they may do, and the token (its name) the
    request came with, if any."""

    actor: str
    scopes: frozenset[str]
    token: str | None = None
    #: The token itself (to tell whether it is still the daemon's when a stream begins).
    credential: Token | None = None


class Credentials:
    """The daemon's tokens (by name) and the Unix socket's scopes; ``replace`` swaps the tokens
    at once (SIGHUP)."""

    def __init__(
        self,
        tokens: Mapping[str, Token] | None = None,
        socket_scopes: Iterable[str] = SCOPES,
        *,
        required: bool | None = None,
    ) -> None:
        self.tokens: dict[str, Token] = dict(tokens or {})
        self.socket_scopes = frozenset(socket_scopes)
        #: Whether a TCP request needs a token: set once (by default: there are tokens), so
        #: that a reload that leaves none refuses every TCP request rather than opening them.
        self.required = bool(self.tokens) if required is None else required

    def match(self, secret: bytes) -> Token | None:
        """The token whose secret is ``secret``, compared with every token in constant time
        (the loop does not stop at a match, nor does its time depend on which matched)."""
        given = _digest(secret)
        found = None
        for token in self.tokens.values():
            same = hmac.compare_digest(given, token.digest)
            found = token if same else found
        return found

    def replace(self, tokens: Mapping[str, Token]) -> set[str]:
        """Use ``tokens`` from now on; the names of the tokens that went or changed (their
        secret or scopes), whose streams are to be closed."""
        gone = {name for name, token in self.tokens.items() if tokens.get(name) != token}
        self.tokens = dict(tokens)
        return gone


def _route_path(routes: Iterable[Any], scope: Scope) -> str | None:
    """The path (as declared) of the route that takes this request, or None (404, 405)."""
    for route in routes:
        if isinstance(route, Route):
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
    return None


class Authenticate:
    """Names the principal of every request (``scope[PRINCIPAL]``; operations it starts record
    its actor, ``_actors.acting``), refuses a TCP request without a known token (401) and one
    whose credential lacks the route's scope (403 ``forbidden``), and logs one access line per
    request (method, path without its query, status, duration, actor, the operation a start
    made): never a header, a query or a body."""

    def __init__(self, app: ASGIApp, credentials: Credentials, routes: Callable[[], Iterable[Any]]) -> None:
        self.app = app
        self.credentials = credentials
        self.routes = routes

    def _principal(self, scope: Scope) -> Principal | str:
        """The request's principal, or why a TCP request is refused (401)."""
        server = scope.get("server")
        unix = server is not None and server[1] is None
        if unix:
            uid = (scope.get("state") or {}).get(PEER_UID)
            actor = unix_actor(uid) if isinstance(uid, int) else "unix"
            return Principal(actor, self.credentials.socket_scopes)
        if not self.credentials.required:
            return Principal(ANONYMOUS, ALL_SCOPES)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, secret = given.partition(b" ")
        if scheme.lower() != b"bearer":
            return "a bearer token is needed (Authorization: Bearer ...; HEARTH_TOKEN for the CLI)"
        token = self.credentials.match(secret.strip())
        if token is None:
            return "this token is not one of the daemon's"
        return Principal(token_actor(token.name), token.scopes, token.name, token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.monotonic()
        status = 0
        location: str | None = None

        async def sending(message: Message) -> None:
            nonlocal status, location
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", []):
                    if name.lower() == b"location":
                        location = value.decode("latin-1")
            await send(message)

        found = self._principal(scope)
        actor = found.actor if isinstance(found, Principal) else None
        try:
            if isinstance(found, str):
                response = error_response("unauthorized", found)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, sending)
                return
            scope[PRINCIPAL] = found
            path = _route_path(self.routes(), scope)
            if path is not None:
                needed = scope_needed(scope["method"], path)
                if needed not in found.scopes:
                    who = f"the token {found.token!r}" if found.token is not None else found.actor
                    message = f"{who} lacks the scope {needed!r} that {scope['method']} {path} needs"
                    await error_response("forbidden", message, scope=needed)(scope, receive, sending)
                    return
            with acting(found.actor):
                await self.app(scope, receive, sending)
        finally:
            _log_access(scope, status, time.monotonic() - began, actor, location)


def _log_access(scope: Scope, status: int, took: float, actor: str | None, location: str | None) -> None:
    operation = None
    prefix = f"{API}/operations/"
    if location is not None and location.startswith(prefix) and location[len(prefix) :].isdigit():
        operation = int(location[len(prefix) :])
    entry: dict[str, Any] = {
        "method": scope.get("method"),
        # percent-encoded as uvicorn's own access line has it: a request cannot write a line
        # break or a terminal escape into the log (the path arrives decoded)
        "path": quote(str(scope.get("path", ""))),
        "status": status,
        "duration_ms": round(took * 1000, 1),
        "actor": actor,
        "operation": operation,
    }
    access_log.info(
        '"%s %s HTTP/%s" %s %.1f ms %s%s',
        entry["method"],
        entry["path"],
        scope.get("http_version", "1.1"),
        status or "-",
        entry["duration_ms"],
        actor or "-",
        f" operation {operation}" if operation is not None else "",
        extra={"access": entry},
    )


def access_json(record: logging.LogRecord) -> dict[str, Any]:
    """An access line's fields, for the daemon's JSON log lines (``{}`` for any other line)."""
    entry = getattr(record, "access", None)
    return dict(entry) if isinstance(entry, dict) else {}


__all__ = [
    "ALL_SCOPES",
    "DEFAULT_TOKEN",
    "PEER_UID",
    "PRINCIPAL",
    "SCOPES",
    "SCOPE_OF",
    "Authenticate",
    "Credentials",
    "Principal",
    "Token",
    "access_json",
    "parse_scopes",
    "scope_needed",
]
