"""``RemoteHost``: the ``Host`` API through a ``hearth serve`` daemon (its HTTP API v1), over httpx.

``RemoteHost(socket=...)`` talks to the daemon's Unix socket, ``RemoteHost(url=..., token=...)`` to
a TCP listener with a bearer token; with neither it reads ``HEARTH_URL`` (``unix:///path/to.sock``
or ``http(s)://host:port``, the token in ``HEARTH_TOKEN``), else uses the home's default socket.
The daemon's JSON errors come back as the same typed ``HearthError``; a daemon that does not
answer is ``DaemonUnavailable``. A console switches from embedding to the daemon by changing
``Host(...)`` to ``RemoteHost(...)``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import json
import os
import urllib.parse
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx
from pydantic import TypeAdapter

from hearth_adaptersdk import DeploymentRef, Progress, StatusReport

from ._dirs import state_dir
from ._discovery import DriverInfo
from ._errors import CallTimeout, HearthError, InvalidInput, error_from_json
from ._host import CheckResult, ReconcileReport
from ._models import Deployment, Event, Operation
from ._settings import Tier

URL_ENV = "HEARTH_URL"
TOKEN_ENV = "HEARTH_TOKEN"
#: The daemon's socket in a home (``hearth._serve.default_socket``, without importing the server).
SOCKET_FILE = "hearth.sock"
API = "/v1"
#: The longest single ``/wait`` the client asks for (seconds); a longer wait asks again.
WAIT_CHUNK = 30.0
#: Attempts to reconnect a dropped event stream before giving up (with a growing pause).
RECONNECTS = 5
#: How long the events of an operation already finished may stay quiet before they are over.
QUIET = 1.0
ProgressListener = Callable[[Progress], object] | Callable[[Progress], Awaitable[object]]
T = TypeVar("T")


class DaemonUnavailable(HearthError):
    """No hearth daemon answers at the address (no socket, connection refused, dropped)."""

    kind = "daemon_unavailable"


def _address_from_env() -> tuple[Path | None, str | None]:
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


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise HearthError(
            f"the hearth daemon answered {response.status_code} with no JSON: {response.text[:200]!r}"
        ) from None


def _error_of(response: httpx.Response) -> HearthError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return error_from_json(body["error"])
    return HearthError(f"the hearth daemon answered {response.status_code}: {response.text[:200]!r}")


def _report(data: Any) -> ReconcileReport:
    """A ``ReconcileReport`` from its JSON form (resolutions written as ``{"slug","from","to"}``)."""
    if isinstance(data, dict) and isinstance(data.get("resolved"), list):
        data = {
            **data,
            "resolved": [
                (r["slug"], r["from"], r["to"]) if isinstance(r, dict) else r for r in data["resolved"]
            ],
        }
    return ReconcileReport.model_validate(data)


class RemoteHost:
    """The ``Host`` API on a hearth daemon: verbs, ``start_*``, ``Operation``, ``watch``, queries.

    Use it as an async context manager (or call ``aclose``). ``timeout`` bounds each request
    (a wait for an operation asks the daemon in steps, each bounded by it).
    """

    def __init__(
        self,
        socket: str | Path | None = None,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        if socket is not None and url is not None:
            raise InvalidInput("give a RemoteHost either a socket or a url, not both")
        if socket is None and url is None:
            socket, url = _address_from_env()
            if url is not None and token is None:
                token = os.environ.get(TOKEN_ENV) or None
            if socket is None and url is None:
                socket = state_dir() / SOCKET_FILE
        if url is not None and not url.startswith(("http://", "https://")):
            raise InvalidInput(f"{url[:80]!r} is not an http(s):// URL")
        self.socket = Path(socket) if socket is not None else None
        self.url = url.rstrip("/") if url is not None else None
        self.timeout = float(timeout)
        self._token = token
        self._client: httpx.AsyncClient | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.socket}" if self.socket is not None else str(self.url)

    def __repr__(self) -> str:
        return f"RemoteHost({self.address!r})"

    # --- the connection --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.client()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def client(self) -> httpx.AsyncClient:
        """The httpx client (made on first use)."""
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            if self.socket is not None:
                transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
                self._client = httpx.AsyncClient(
                    transport=transport, base_url="http://hearth", timeout=self.timeout, headers=headers
                )
            else:
                self._client = httpx.AsyncClient(
                    base_url=str(self.url), timeout=self.timeout, headers=headers
                )
        return self._client

    def _unavailable(self, exc: Exception) -> DaemonUnavailable:
        if self.socket is not None and not self.socket.exists():
            return DaemonUnavailable(
                f"no hearth daemon at {self.address}: the socket does not exist (start one with "
                "`hearth serve`, or set HEARTH_URL)"
            )
        if isinstance(exc, httpx.ConnectError):
            return DaemonUnavailable(f"no hearth daemon answers at {self.address}: {exc}")
        return DaemonUnavailable(f"the connection to the hearth daemon at {self.address} failed: {exc!r}")

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """The JSON of a 2xx answer; the daemon's error as its typed ``HearthError``."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        bound: float | httpx.Timeout = self.timeout if timeout is None else timeout
        try:
            response = await self.client().request(
                method, API + path, params=query, json=body, headers=headers, timeout=bound
            )
        except httpx.TimeoutException as exc:
            raise CallTimeout(
                f"the hearth daemon at {self.address} did not answer {method} {path}: {exc!r}"
            ) from None
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        if response.is_success:
            return _decode(response)
        raise _error_of(response)

    def _operation(self, data: Any) -> Operation:
        return Operation.model_validate(data).bound(self)

    # --- operations: start ---------------------------------------------------------------------
    async def _post_started(self, method: str, path: str, body: Any, key: str | None) -> Operation:
        headers = {"Idempotency-Key": key} if key is not None else None
        return self._operation(await self._call(method, path, body=body, headers=headers))

    async def start_provision(
        self, slug: str, *, tier: str, driver: str, key: str | None = None, reuse: bool = False
    ) -> Operation:
        """Provision ``slug`` on the daemon; the operation, at once."""
        body = {"slug": slug, "tier": tier, "driver": driver, "reuse": bool(reuse)}
        return await self._post_started("POST", "/workspaces", body, key)

    async def start_upgrade(self, slug: str, *, tier: str, key: str | None = None) -> Operation:
        return await self._post_started("POST", f"/workspaces/{_seg(slug)}/upgrade", {"tier": tier}, key)

    async def start_teardown(self, slug: str, *, key: str | None = None) -> Operation:
        return await self._post_started("DELETE", f"/workspaces/{_seg(slug)}", None, key)

    # --- the verbs: start, then the result ------------------------------------------------------
    async def provision(
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        reuse: bool = False,
        key: str | None = None,
    ) -> DeploymentRef:
        """Provision ``slug`` and wait for it (cancelling this call cancels what it started)."""
        ours = key or _own_key()
        op = await self.start_provision(slug, tier=tier, driver=driver, key=ours, reuse=reuse)
        ref = await self._result_for_caller(op, ours, on_progress, timeout)
        assert ref is not None
        return ref

    async def upgrade(
        self,
        slug: str,
        *,
        tier: str,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
    ) -> DeploymentRef:
        ours = key or _own_key()
        op = await self.start_upgrade(slug, tier=tier, key=ours)
        ref = await self._result_for_caller(op, ours, on_progress, timeout)
        assert ref is not None
        return ref

    async def teardown(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
    ) -> None:
        ours = key or _own_key()
        op = await self.start_teardown(slug, key=ours)
        await self._result_for_caller(op, ours, on_progress, timeout)

    async def _result_for_caller(
        self, op: Operation, key: str, on_progress: ProgressListener | None, timeout: float | None
    ) -> DeploymentRef | None:
        """The verb's result; a cancelled caller cancels the operation if its own key started
        it (an operation it joined runs on), then lets the cancellation through."""
        relay = None
        if on_progress is not None and not op.finished:
            relay = asyncio.get_running_loop().create_task(self._relay(op.id, on_progress))
        try:
            return await self._operation_result(op.id, timeout)
        except asyncio.CancelledError:
            if op.key == key and not op.finished:
                with contextlib.suppress(HearthError):
                    await asyncio.shield(self._operation_cancel(op.id, "cancelled by the caller"))
            raise
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(BaseException):
                    await relay

    async def _relay(self, ident: int, on_progress: ProgressListener) -> None:
        async for event in self._operation_events(ident, 0):
            if event.kind == "progress":
                progress = Progress.model_validate(
                    {
                        "request_id": ident,
                        "level": event.level or "info",
                        "message": event.message or "",
                        "fraction": event.fraction,
                    }
                )
                outcome = on_progress(progress)
                if inspect.isawaitable(outcome):
                    await outcome

    # --- operations: find, wait, cancel, events --------------------------------------------------
    async def operation(self, ident: int) -> Operation:
        return self._operation(await self._call("GET", f"/operations/{int(ident)}"))

    async def operations(
        self,
        *,
        slug: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: int | None = None,
    ) -> builtins.list[Operation]:
        found = await self._call(
            "GET", "/operations", params={"slug": slug, "state": state, "limit": limit, "after": after}
        )
        return [self._operation(item) for item in found]

    async def _operation_wait(self, ident: int, timeout: float | None) -> Operation:
        if timeout is not None and not timeout > 0:
            raise InvalidInput(f"timeout must be a positive number of seconds, not {timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            step = WAIT_CHUNK if deadline is None else min(WAIT_CHUNK, deadline - loop.time())
            if step <= 0:
                return await self.operation(ident)
            data = await self._call(
                "GET",
                f"/operations/{int(ident)}/wait",
                params={"timeout": round(max(step, 0.001), 3)},
                timeout=step + self.timeout,
            )
            op = self._operation(data)
            if op.finished or (deadline is not None and loop.time() >= deadline):
                return op

    async def _operation_result(self, ident: int, timeout: float | None) -> DeploymentRef | None:
        final = await self._operation_wait(ident, timeout)
        if not final.finished:
            raise CallTimeout(f"operation #{ident} ({final.verb} of {final.slug!r}) is still {final.state}")
        if final.state == "succeeded":
            return final.ref if final.verb != "teardown" else None
        raise error_from_json(
            final.error or {"kind": final.state, "message": f"operation #{ident} {final.state}"}
        )

    async def _operation_cancel(self, ident: int, reason: str) -> Operation:
        if not isinstance(reason, str) or not reason:
            raise InvalidInput("a cancel needs a reason (a non-empty string)")
        return self._operation(
            await self._call("DELETE", f"/operations/{int(ident)}", params={"reason": reason[:500]})
        )

    def _operation_events(self, ident: int, after: int) -> AsyncIterator[Event]:
        return self._events_of(ident, after)

    async def _events_of(self, ident: int, after: int) -> AsyncIterator[Event]:
        """The operation's events after ``after``, ending with its final one. The API streams a
        slug's events, so this follows the slug's stream and keeps the operation's; for an
        operation already finished, a stream quiet for ``QUIET`` seconds means it is over."""
        op = await self.operation(ident)
        stream = self._stream(after, op.slug)
        try:
            while True:
                try:
                    if op.finished:
                        event = await asyncio.wait_for(anext(stream), QUIET)
                    else:
                        event = await anext(stream)
                except (StopAsyncIteration, TimeoutError):
                    return
                if event.operation != ident:
                    continue
                yield event
                if event.final:
                    return
        finally:
            await stream.aclose()

    # --- events --------------------------------------------------------------------------------
    def watch(self, after: int = 0, slug: str | None = None) -> AsyncIterator[Event]:
        """Every event after sequence number ``after`` (``slug`` narrows it), as they come; a
        dropped connection is reopened from the last ``seq`` seen, so nothing is lost or
        repeated. Ends when the daemon stops (its stream ends and it no longer answers)."""
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InvalidInput(f"after must be a whole number of at least 0, not {after!r}")
        return self._stream(after, slug)

    async def _stream(self, after: int, slug: str | None) -> AsyncGenerator[Event]:
        cursor = after
        failures = 0
        while True:
            params: dict[str, Any] = {"after": cursor}
            if slug is not None:
                params["slug"] = slug
            try:
                async with self.client().stream(
                    "GET",
                    f"{API}/events",
                    params=params,
                    headers={"Accept": "application/x-ndjson"},
                    timeout=httpx.Timeout(self.timeout, read=None),
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        raise _error_of(response)
                    failures = 0
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        event = Event.model_validate(json.loads(line))
                        if event.seq <= cursor:
                            continue  # never repeat one
                        cursor = event.seq
                        yield event
            except httpx.TransportError as exc:  # dropped, or refused: reconnect from the cursor
                failures += 1
                if failures > RECONNECTS:
                    raise self._unavailable(exc) from None
                await asyncio.sleep(0.05 * 2**failures)
                continue
            # the daemon ended the stream (it is stopping): ask again, a few times at most
            failures += 1
            if failures > RECONNECTS:
                return

    # --- queries -------------------------------------------------------------------------------
    async def deployments(
        self,
        *,
        state: str | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: int | None = None,
        after: str | None = None,
    ) -> builtins.list[Deployment]:
        params = {
            "state": state,
            "driver": driver,
            "include_torn_down": "true" if include_torn_down else "false",
            "limit": limit,
            "after": after,
        }
        return _parse(list[Deployment], await self._call("GET", "/workspaces", params=params))

    async def deployment(self, slug: str) -> Deployment:
        return Deployment.model_validate(await self._call("GET", f"/workspaces/{_seg(slug)}"))

    async def status(self, slug: str, *, timeout: float | None = None) -> StatusReport:
        data = await self._call("GET", f"/workspaces/{_seg(slug)}/status", timeout=timeout)
        return StatusReport.model_validate(data)

    async def logs(self, slug: str, *, limit: int | None = None) -> builtins.list[Operation]:
        found = await self._call("GET", f"/workspaces/{_seg(slug)}/logs", params={"limit": limit})
        return [self._operation(item) for item in found]

    async def tiers(self) -> builtins.list[Tier]:
        """The daemon's tiers (a coroutine here: it asks the daemon)."""
        return _parse(list[Tier], await self._call("GET", "/tiers"))

    async def drivers(self) -> builtins.list[DriverInfo]:
        return _parse(list[DriverInfo], await self._call("GET", "/drivers"))

    async def check(
        self, slug: str, verb: str, *, tier: str | None = None, driver: str | None = None
    ) -> CheckResult:
        body = {"slug": slug, "verb": verb, "tier": tier, "driver": driver}
        return CheckResult.model_validate(await self._call("POST", "/check", body=body))

    async def reconcile(self, slug: str | None = None, *, dry_run: bool = False) -> ReconcileReport:
        body = {"slug": slug, "dry_run": bool(dry_run)}
        return _report(await self._call("POST", "/reconcile", body=body))

    async def health(self) -> dict[str, Any]:
        """The daemon's ``/v1/health``: status, version, owner, running."""
        return dict(await self._call("GET", "/health"))


def _parse(kind: type[T], data: Any) -> T:
    return TypeAdapter(kind).validate_python(data)


def _seg(slug: str) -> str:
    """A slug as one path segment (the daemon checks it; a '/' must not change the route)."""
    if not isinstance(slug, str):
        raise InvalidInput(f"{slug!r} is not a slug")
    return urllib.parse.quote(slug, safe="")


def _own_key() -> str:
    return f"remote-{uuid.uuid4().hex}"


__all__ = ["DaemonUnavailable", "RemoteHost"]
