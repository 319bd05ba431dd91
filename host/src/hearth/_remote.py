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
import ssl
import urllib.parse
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx
from pydantic import TypeAdapter

from hearth_adaptersdk import DeploymentRef, PlanResult, Progress, StatusReport

from ._dirs import SOCKET_FILE, TOKEN_ENV, URL_ENV, state_dir
from ._errors import CallTimeout, DaemonUnavailable, HearthError, InvalidInput, NotFound, error_from_json
from ._models import Deployment, Event, Operation
from ._states import same_ready, teardown_done

API = "/v1"
#: The longest single ``/wait`` the client asks for (seconds); a longer wait asks again.
WAIT_CHUNK = 30.0
#: How much longer than a call's own deadline the client waits for the daemon's answer.
MARGIN = 5.0
#: Room for the daemon's default bounds (``[timeouts]`` status 30 s, handshake 10 s, ...) on a
#: call given no deadline: a daemon that stops answering is given up on after that.
DAEMON_DEFAULTS = 60.0
#: The read bound of a ``reconcile`` given no deadline (one list per driver, a status per
#: uncertain record: it may take long).
RECONCILE_BOUND = 3600.0
#: Attempts to reconnect a dropped event stream before giving up (with a growing pause).
RECONNECTS = 5
#: How long the events of an operation already finished may stay quiet before they are over.
QUIET = 1.0
if TYPE_CHECKING:  # loaded where used: a CLI command through the daemon does not pay for them
    from ._adapters._discovery import DriverInfo
    from ._models import CheckResult, ReconcileReport
    from ._settings import Tier

ProgressListener = Callable[[Progress], object] | Callable[[Progress], Awaitable[object]]
T = TypeVar("T")


class Unanswered(CallTimeout):
    """The daemon did not answer within the call's bound (kind ``timeout``)."""


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
    from ._models import ReconcileReport

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
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``verify``: for an ``https://`` url, an ``ssl.SSLContext`` that trusts the daemon's
        certificate (``ssl.create_default_context(cafile=...)`` for a private CA); the system's
        CAs by default."""
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
        self._verify = verify
        self._token = token
        self._client: httpx.AsyncClient | None = None
        #: Operations this client's verbs started, by id, and the cancels it asked for.
        self._mine: dict[int, Operation] = {}
        self._cancelling: dict[int, asyncio.Future[Operation]] = {}
        self._cancel_reason: str | None = None
        self._starting = 0
        #: One line per operation this client cancelled: what became of it (as ``Host``'s).
        self.interruptions: builtins.list[str] = []

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
        """Close the connection (operations started run on in the daemon)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def close(self) -> None:
        """``aclose``, under ``Host``'s name."""
        await self.aclose()

    def client(self) -> httpx.AsyncClient:
        """The httpx client (made on first use)."""
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            if self.socket is not None:
                # No TLS on a Unix socket: an empty context spares loading the CA bundle.
                bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                transport = httpx.AsyncHTTPTransport(uds=str(self.socket), verify=bare)
                self._client = httpx.AsyncClient(
                    transport=transport, base_url="http://hearth", timeout=self.timeout, headers=headers
                )
            else:
                self._client = httpx.AsyncClient(
                    base_url=str(self.url), timeout=self.timeout, headers=headers, verify=self._verify
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
        timeout: float | httpx.Timeout | None = None,
    ) -> Any:
        """The JSON of a 2xx answer; the daemon's error as its typed ``HearthError``."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        bound: float | httpx.Timeout = self.timeout if timeout is None else timeout
        try:
            response = await self.client().request(
                method, API + path, params=query, json=body, headers=headers, timeout=bound
            )
        except httpx.TimeoutException as exc:
            raise Unanswered(
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
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        key: str | None = None,
        reuse: bool = False,
        timeout: float | None = None,
    ) -> Operation:
        """Provision ``slug`` on the daemon; the operation, at once. ``timeout`` is the
        deadline of the adapter's work, kept by the daemon (as ``Host``'s is)."""
        body = {"slug": slug, "tier": tier, "driver": driver, "reuse": bool(reuse), "timeout": timeout}
        return await self._post_started("POST", "/workspaces", body, key)

    async def start_upgrade(
        self, slug: str, *, tier: str, key: str | None = None, timeout: float | None = None
    ) -> Operation:
        body = {"tier": tier, "timeout": timeout}
        return await self._post_started("POST", f"/workspaces/{_seg(slug)}/upgrade", body, key)

    async def start_teardown(
        self, slug: str, *, key: str | None = None, timeout: float | None = None
    ) -> Operation:
        headers = {"Idempotency-Key": key} if key is not None else None
        data = await self._call(
            "DELETE", f"/workspaces/{_seg(slug)}", params={"timeout": timeout}, headers=headers
        )
        return self._operation(data)

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
        """Provision ``slug`` and wait for it (cancelling this call cancels what it started); the
        same (slug, tier, driver) again returns the stored ref and records nothing, as ``Host``."""
        if key is None and isinstance(tier, str) and isinstance(driver, str):
            quick = await self._record(slug)
            if quick is not None and quick.ref is not None and same_ready(quick, tier, driver):
                return quick.ref
        ours = key or _own_key()
        ref = await self._verb(
            self.start_provision(slug, tier=tier, driver=driver, key=ours, reuse=reuse, timeout=timeout),
            ours,
            on_progress,
            ("provision", slug),
        )
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
        ref = await self._verb(
            self.start_upgrade(slug, tier=tier, key=ours, timeout=timeout),
            ours,
            on_progress,
            ("upgrade", slug),
        )
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
        """Irreversibly remove the workspace; a second teardown does nothing."""
        if key is None and teardown_done(await self._record(slug)):
            return
        ours = key or _own_key()
        await self._verb(
            self.start_teardown(slug, key=ours, timeout=timeout), ours, on_progress, ("teardown", slug)
        )

    def cancel_running(self, reason: str, *, outcome: str = "cancelled", again: bool = False) -> int:
        """Ask the daemon to cancel every operation this client's verbs started (and any it is
        starting now), recording ``reason``; the number asked. The CLI calls it on a signal.
        Through the daemon every such operation ends ``cancelled`` (``outcome`` is for
        ``Host``'s signature: the reason names the signal)."""
        self._cancel_reason = reason
        asked = 0
        for op in builtins.list(self._mine.values()):
            if not op.finished and op.id not in self._cancelling:
                self._cancelling[op.id] = asyncio.ensure_future(self._operation_cancel(op.id, reason))
                asked += 1
        return asked + self._starting

    async def _verb(
        self,
        start: Awaitable[Operation],
        key: str,
        on_progress: ProgressListener | None,
        what: tuple[str, str],
    ) -> DeploymentRef | None:
        """Start, then the result. A start cut short by a cancellation still lands (its
        request is shielded) and what it started is then cancelled; a cancelled caller
        cancels the operation if its own key started it (an operation it joined runs on)."""
        self._starting += 1
        starting = asyncio.ensure_future(start)
        try:
            op = await asyncio.shield(starting)
        except (DaemonUnavailable, Unanswered) as exc:  # the answer was lost, maybe not the start
            verb, slug = what
            raise type(exc)(
                f"{exc.message}; the {verb} of {slug!r} may have started there before the answer "
                f"was lost: 'hearth logs {slug}' shows it"
            ) from None
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                op = await asyncio.wait_for(starting, self.timeout)
                if op.key == key and not op.finished:
                    await self._operation_cancel(op.id, self._cancel_reason or "cancelled by the caller")
                    self.interruptions.append(
                        f"{op.verb} of {op.slug!r} was told to cancel before it began; the daemon "
                        "records how it ended ('hearth logs' shows it)"
                    )
            raise
        finally:
            self._starting -= 1
        if op.key == key:
            self._mine[op.id] = op
            if self._cancel_reason is not None and not op.finished:
                self.cancel_running(self._cancel_reason)
        relay = None
        if on_progress is not None and not op.finished:
            relay = asyncio.get_running_loop().create_task(self._relay(op.id, on_progress))
        try:
            return await self._operation_result(op.id, None)
        except (DaemonUnavailable, Unanswered) as exc:  # the daemon went away or went silent
            raise type(exc)(
                f"{exc.message}; operation #{op.id} ({op.verb} of {op.slug!r}) was started there and "
                f"may still run: 'hearth logs {op.slug}' shows how it ends"
            ) from None
        except asyncio.CancelledError:
            if op.key == key:
                pending = self._cancelling.get(op.id)
                if pending is None:
                    with contextlib.suppress(HearthError):
                        await asyncio.shield(self._operation_cancel(op.id, "cancelled by the caller"))
                self.interruptions.append(
                    f"{op.verb} of {op.slug!r} was told to cancel; the daemon finishes its rollback "
                    "('hearth logs' shows how it ended)"
                )
            raise
        except HearthError:
            if op.id in self._cancelling:
                await self._note_cancelled(op.id)
            raise
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(BaseException):
                    await relay

    async def _note_cancelled(self, ident: int) -> None:
        """One line in ``interruptions`` on what became of an operation this client cancelled,
        in the words ``Host`` uses for its own."""
        try:
            op = await self.operation(ident)
            record = await self._record(op.slug)
        except HearthError as exc:
            self.interruptions.append(f"operation #{ident} was told to cancel ({exc.kind}: {exc.message})")
            return
        note = f"{op.verb} of {op.slug!r}"
        error = op.error or {}
        state = record.state if record is not None else "nowhere (nothing changed)"
        if op.state == "succeeded":
            line = f"{note} had finished before the cancel took effect; it is recorded as done"
        elif record is not None and record.unconfirmed:
            line = f"{note} was told to cancel; its rollback is not confirmed (reconcile checks it)"
        elif op.verb == "teardown":
            line = f"{note} was cancelled; the workspace is recorded {state}"
        elif error.get("kind") not in ("cancelled", "interrupted"):
            line = (
                f"{note} was cancelled and the adapter answered with an error "
                f"({error.get('kind')}); the workspace is recorded {state}"
            )
        elif error.get("rolled_back") is False:
            line = f"{note} was cancelled; the adapter could not confirm its rollback (reconcile checks it)"
        else:
            before = (
                ""
                if record is None or op.verb == "provision"
                else f"; the workspace is {record.state} as before"
            )
            line = f"{note} was cancelled and rolled back{before}"
        self.interruptions.append(line)

    async def _relay(self, ident: int, on_progress: ProgressListener) -> None:
        async for event in self._operation_events(ident, 0):
            if event.kind == "progress":
                outcome = on_progress(event.as_progress())
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
        return (await self._operation_wait(ident, timeout)).settled()

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

    async def _record(self, slug: str) -> Deployment | None:
        try:
            return await self.deployment(slug)
        except NotFound:
            return None

    async def deployment(self, slug: str) -> Deployment:
        return Deployment.model_validate(await self._call("GET", f"/workspaces/{_seg(slug)}"))

    async def status(self, slug: str, *, timeout: float | None = None) -> StatusReport:
        """What the backend shows now; ``timeout`` bounds the adapter's answer (the daemon's
        ``[timeouts] status`` when left out)."""
        data = await self._call(
            "GET",
            f"/workspaces/{_seg(slug)}/status",
            params={"timeout": timeout},
            timeout=_longer(timeout, self),
        )
        return StatusReport.model_validate(data)

    async def logs(self, slug: str, *, limit: int | None = None) -> builtins.list[Operation]:
        found = await self._call("GET", f"/workspaces/{_seg(slug)}/logs", params={"limit": limit})
        return [self._operation(item) for item in found]

    async def tiers(self) -> builtins.list[Tier]:
        """The daemon's tiers (a coroutine here: it asks the daemon)."""
        from ._settings import Tier

        return _parse(list[Tier], await self._call("GET", "/tiers"))

    async def drivers(self) -> builtins.list[DriverInfo]:
        from ._adapters._discovery import DriverInfo

        return _parse(list[DriverInfo], await self._call("GET", "/drivers"))

    async def check(
        self, slug: str, verb: str, *, tier: str | None = None, driver: str | None = None
    ) -> CheckResult:
        body = {"slug": slug, "verb": verb, "tier": tier, "driver": driver}
        from ._models import CheckResult

        return CheckResult.model_validate(await self._call("POST", "/check", body=body))

    async def reconcile(
        self, slug: str | None = None, *, dry_run: bool = False, timeout: float | None = None
    ) -> ReconcileReport:
        body = {"slug": slug, "dry_run": bool(dry_run), "timeout": timeout}
        bound = _longer(timeout, self, RECONCILE_BOUND)
        return _report(await self._call("POST", "/reconcile", body=body, timeout=bound))

    async def plan(
        self, slug: str, *, tier: str, driver: str | None = None, timeout: float | None = None
    ) -> PlanResult:
        """What moving ``slug`` to ``tier`` would do (the adapter's ``plan``); changes nothing."""
        body = {"slug": slug, "tier": tier, "driver": driver, "timeout": timeout}
        data = await self._call("POST", "/plan", body=body, timeout=_longer(timeout, self))
        return PlanResult.model_validate(data)

    async def adopt(self, slug: str, *, driver: str, tier: str, timeout: float | None = None) -> Deployment:
        """Record a deployment the driver lists but hearth has no record of."""
        body = {"driver": driver, "tier": tier, "timeout": timeout}
        data = await self._call(
            "POST", f"/workspaces/{_seg(slug)}/adopt", body=body, timeout=_longer(timeout, self)
        )
        return Deployment.model_validate(data)

    async def forget(self, slug: str) -> Deployment:
        """Drop the record of ``slug`` and leave its backend alone; the record as it was."""
        return Deployment.model_validate(await self._call("POST", f"/workspaces/{_seg(slug)}/forget"))

    async def health(self) -> dict[str, Any]:
        """The daemon's ``/v1/health``: status, version, owner, running."""
        return dict(await self._call("GET", "/health"))


def _longer(timeout: float | None, remote: RemoteHost, default: float = 0.0) -> float | httpx.Timeout:
    """The HTTP bound of a call the daemon bounds itself: ``timeout`` plus ``MARGIN`` (the
    daemon answers its own timeout error by then), or without one the daemon's default, which
    this client does not know: ``default`` (else ``remote.timeout``) plus ``DAEMON_DEFAULTS``."""
    if timeout is not None:
        return timeout + MARGIN
    return httpx.Timeout(remote.timeout, read=(default or remote.timeout) + DAEMON_DEFAULTS)


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
