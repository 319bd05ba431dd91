"""Who did what: the **actor** an operation records (the principal that asked for it, as the
host authenticated it) and, apart from it, **on behalf of** (a free string a caller may pass, a
console acting for its end user: recorded, shown, never used to decide anything).

An actor is one string, of one of these forms:

- ``unix:<uid>(<user>)`` (``unix:<uid>`` when the uid has no name): a request through the
  daemon's Unix socket, from the peer's credentials (``SO_PEERCRED``);
- ``token:<name>``: a request on a TCP listener with the token of that name (``--tokens``; the
  token of ``--token-file`` is ``default``);
- ``process:<uid>(<user>)``: an embedded ``Host``, the process's user (``Host(actor=...)``
  names another);
- ``hearth:<what>``: the host's own work (``hearth:reconcile``, the daemon's periodic reconcile).

The daemon sets who asks for the length of a request (``acting``, a context variable); the
lifecycle reads it when it records an operation (``acting_now``). The standard library and the
error tree only.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass

from ._errors import InvalidInput

#: The longest ``on_behalf_of`` (characters).
ON_BEHALF_OF_MAX = 200
#: The longest actor (characters).
ACTOR_MAX = 200
#: The header a caller of the API passes ``on_behalf_of`` in.
ON_BEHALF_OF_HEADER = "Hearth-On-Behalf-Of"
#: The actor of the daemon's periodic reconcile.
RECONCILE_ACTOR = "hearth:reconcile"


@dataclass(frozen=True)
class Acting:
    """Who asks now: the actor, and whom for (``on_behalf_of``), if the caller said."""

    actor: str
    on_behalf_of: str | None = None


_acting: contextvars.ContextVar[Acting | None] = contextvars.ContextVar("hearth_acting", default=None)


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def _uid_actor(kind: str, uid: int) -> str:
    name = user_name(uid)
    return f"{kind}:{uid}" if name is None else f"{kind}:{uid}({name})"


def unix_actor(uid: int) -> str:
    """The actor of a Unix-socket peer of ``uid``."""
    return _uid_actor("unix", uid)


def token_actor(name: str) -> str:
    """The actor of a request with the token ``name``."""
    return f"token:{name}"


def process_actor() -> str:
    """The actor of an embedded ``Host``: this process's user."""
    return _uid_actor("process", os.getuid())


def _printable(value: object, what: str, most: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= most or not value.isprintable():
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:80] + "…"
        raise InvalidInput(f"{what} {shown} must be 1 to {most} printable characters")
    return value


def check_on_behalf_of(value: object) -> str | None:
    """``on_behalf_of`` as given (None: not given); 1 to ``ON_BEHALF_OF_MAX`` printable
    characters, else ``invalid_input``."""
    return None if value is None else _printable(value, "on_behalf_of", ON_BEHALF_OF_MAX)


def check_actor(value: object) -> str:
    """An actor an embedding program names (``Host(actor=)``): 1 to ``ACTOR_MAX`` printable
    characters."""
    return _printable(value, "actor", ACTOR_MAX)


def acting_now() -> Acting | None:
    """Who the caller's context says asks (``acting``), if it says."""
    return _acting.get()


@contextlib.contextmanager
def acting(actor: str | None = None, on_behalf_of: str | None = None) -> Iterator[Acting | None]:
    """For the block: ``actor`` asks (None keeps the one the context says), for
    ``on_behalf_of`` (None keeps the context's)."""
    now = _acting.get()
    chosen = actor if actor is not None else (now.actor if now is not None else None)
    whom = on_behalf_of if on_behalf_of is not None else (now.on_behalf_of if now is not None else None)
    if chosen is None and whom is None:
        yield now
        return
    value = Acting(chosen or "", whom)
    token = _acting.set(value)
    try:
        yield value
    finally:
        _acting.reset(token)


__all__ = [
    "ACTOR_MAX",
    "ON_BEHALF_OF_HEADER",
    "ON_BEHALF_OF_MAX",
    "RECONCILE_ACTOR",
    "Acting",
    "acting",
    "acting_now",
    "check_actor",
    "check_on_behalf_of",
    "process_actor",
    "token_actor",
    "unix_actor",
    "user_name",
]
