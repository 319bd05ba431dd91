"""What ``RemoteHost`` reads off the wire: where the daemon is (``HEARTH_URL``), its answers
(JSON, its typed errors, the reconcile report), and its event streams (``GET /v1/events`` and
``GET /v1/operations/{id}/events``, NDJSON): the reconnecting stream, and the relay of an operation's
``progress`` to an ``on_progress`` listener, as ``Host`` calls its listeners."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import urllib.parse
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import TypeAdapter

from ._address import DAEMON_DEFAULTS, MARGIN
from ._api import ProgressListener
from ._errors import HearthError, InvalidInput, error_from_json
from ._models import Event, ReconcileReport
from ._settings import positive_seconds

if TYPE_CHECKING:
    from ._remote import RemoteHost

log = logging.getLogger("hearth")

API = "/v1"
#: Attempts to reconnect a dropped event stream before giving up: no longer the bound (kept for
#: those who read it); ``RemoteHost(reconnect=...)`` is, in seconds (``RECONNECT``).
RECONNECTS = 5
#: The pause before the first reconnect (seconds), doubled after each failed one up to ``PAUSE_MAX``.
PAUSE = 0.1
PAUSE_MAX = 2.0
#: How long a verb lets its ``on_progress`` relay deliver the progress still on its way (seconds).
QUIET = 1.0
T = TypeVar("T")


def decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise HearthError(
            f"the hearth daemon answered {response.status_code} with no JSON: {response.text[:200]!r}"
        ) from None


def report(data: Any) -> ReconcileReport:
    """A ``ReconcileReport`` from its JSON form (resolutions written as ``{"slug","from","to"}``)."""
    if isinstance(data, dict) and isinstance(data.get("resolved"), list):
        data = {
            **data,
            "resolved": [
                (r["slug"], r["from"], r["to"]) if isinstance(r, dict) else r for r in data["resolved"]
            ],
        }
    return ReconcileReport.model_validate(data)


def parse(kind: type[T], data: Any) -> T:
    return TypeAdapter(kind).validate_python(data)


def seg(slug: str) -> str:
    """A slug as one path segment (the daemon checks it; a '/' must not change the route)."""
    if not isinstance(slug, str):
        raise InvalidInput(f"{slug!r} is not a slug")
    return urllib.parse.quote(slug, safe="")


def own_key() -> str:
    return f"remote-{uuid.uuid4().hex}"


def longer(timeout: float | None, bound: float, default: float = 0.0) -> float | httpx.Timeout:
    """The HTTP bound of a call the daemon bounds itself: ``timeout`` plus ``MARGIN`` (the
    daemon answers its own timeout error by then), or without one the daemon's default, which
    this client does not know: ``default`` (else ``bound``, the client's) plus ``DAEMON_DEFAULTS``.
    A ``timeout`` that is no positive, finite number is ``invalid_input``, as on ``Host``."""
    if timeout is not None:
        return positive_seconds(timeout, "timeout") + MARGIN
    return httpx.Timeout(bound, read=(default or bound) + DAEMON_DEFAULTS)


def error_of(response: httpx.Response) -> HearthError:
    """The daemon's JSON error as its typed ``HearthError``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return error_from_json(body["error"])
    return HearthError(f"the hearth daemon answered {response.status_code}: {response.text[:200]!r}")


def label_params(labels: Mapping[str, str] | None) -> list[str] | None:
    """``?label=KEY=VALUE``, repeated, for ``labels``; None (no parameter) without any."""
    if not labels:
        return None
    return [f"{key}={value}" for key, value in labels.items()]


async def stream(
    remote: RemoteHost,
    after: int,
    slug: str | None,
    operation: int | None = None,
    *,
    labels: list[str] | None = None,
) -> AsyncGenerator[Event]:
    """Every event after ``after`` (of ``slug``), as they come; a dropped connection is reopened
    from the last ``seq`` seen, so nothing is lost or repeated, for up to ``remote.reconnect``
    seconds without one (a pause of ``PAUSE`` doubling to ``PAUSE_MAX`` between tries): past it
    a daemon that does not answer is ``DaemonUnavailable``, one that keeps ending the stream (it
    is stopping) ends it. A client that never reached a daemon is told at once.

    With ``operation``, its own stream (``/v1/operations/{id}/events``), which the daemon ends
    after the final event: that event ends this one too, and so does a stream that ends with
    nothing new for an operation the daemon says is finished (``after`` was past its end)."""
    cursor = after
    down_since: float | None = None
    pause = PAUSE
    path = f"{API}/events" if operation is None else f"{API}/operations/{operation}/events"
    while True:
        params: dict[str, Any] = {"after": cursor}
        if slug is not None:
            params["slug"] = slug
        if labels:
            params["label"] = labels
        failure: httpx.TransportError | None = None
        fresh = False
        try:
            async with remote.client().stream(
                "GET",
                path,
                params=params,
                headers={"Accept": "application/x-ndjson"},
                timeout=httpx.Timeout(remote.timeout, read=None),
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_of(response)
                down_since, pause, remote._reached = None, PAUSE, True
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = Event.model_validate(json.loads(line))
                    if event.seq <= cursor:
                        continue  # never repeat one
                    cursor, fresh = event.seq, True
                    yield event
                    if operation is not None and event.final:
                        return
        except httpx.TransportError as exc:  # dropped, or refused: reconnect from the cursor
            if isinstance(exc, httpx.ConnectError) and not remote._reached:
                raise remote._unavailable(exc) from None  # no daemon was ever there: say so at once
            failure = exc
        if operation is not None and failure is None and not fresh and await _finished(remote, operation):
            return
        # dropped, refused, or ended by the daemon (it is stopping): ask again, within the bound
        paused = await _paused(remote, down_since, pause, None)
        if paused is None:
            if failure is not None:
                raise remote._unavailable(failure) from None
            return
        down_since, pause = paused


async def _finished(remote: RemoteHost, ident: int) -> bool:
    """Whether the daemon says the operation finished; False when it cannot say now."""
    try:
        return (await remote.operation(ident)).finished
    except HearthError as exc:
        if exc.kind == "not_found":
            raise
        return False


async def _paused(
    remote: RemoteHost, down_since: float | None, pause: float, deadline: float | None
) -> tuple[float, float] | None:
    """One pause of an outage (``PAUSE`` doubling to ``PAUSE_MAX``, not past ``deadline``): the
    outage's start and the next pause, or None once it has lasted ``remote.reconnect`` seconds."""
    now = asyncio.get_running_loop().time()
    if down_since is None:
        down_since = now
    elif now - down_since >= remote.reconnect:
        return None
    end = down_since + remote.reconnect if deadline is None else min(deadline, down_since + remote.reconnect)
    await asyncio.sleep(min(pause, max(0.0, end - now)))
    return down_since, min(pause * 2, PAUSE_MAX)


async def outage(
    remote: RemoteHost, exc: HearthError, down_since: float | None, pause: float, deadline: float | None
) -> tuple[float, float]:
    """After a call a daemon did not answer (``exc``, ``DaemonUnavailable``) in a wait that may
    ask again: pause and give the outage's start and the next pause (``_paused``); ``exc`` again
    once the outage has lasted ``remote.reconnect`` seconds."""
    paused = await _paused(remote, down_since, pause, deadline)
    if paused is None:
        raise exc
    return paused


async def operation_events(remote: RemoteHost, ident: int, after: int) -> AsyncGenerator[Event]:
    """The operation's events after ``after``, ending with its final one: its own stream
    (``GET /v1/operations/{id}/events``), reopened from the last ``seq`` if dropped."""
    events = stream(remote, after, None, operation=ident)
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()


async def relay(events: AsyncIterator[Event], on_progress: ProgressListener, ident: int) -> None:
    """Call ``on_progress`` with each ``progress`` event of ``events`` (a coroutine listener is
    awaited) until they end. A listener that raises is logged and called again on the next
    event; a stream that can no longer be read is logged and ends the relay."""
    try:
        async for event in events:
            if event.kind != "progress":
                continue
            try:
                outcome = on_progress(event.as_progress())
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("an on_progress callback raised")
    except HearthError as exc:
        log.warning("the progress of operation #%d can no longer be followed: %s", ident, exc.message)
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()
