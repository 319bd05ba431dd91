"""``RemoteHost``: the ``Host`` API through a ``hearth serve`` daemon (its HTTP API v1), over httpx.

``RemoteHost(socket=...)`` talks to the daemon's Unix socket, ``RemoteHost(url=..., token=...)`` to
a TCP listener with a bearer token; with neither it reads ``HEARTH_URL`` (``unix:///path/to.sock``
or ``http(s)://host:port``, the token in ``HEARTH_TOKEN``), else uses the home's default socket.
The daemon's JSON errors come back as the same typed ``HearthError``; a daemon that does not
answer is ``DaemonUnavailable``. A console switches from embedding to the daemon by changing
``Host(...)`` to ``RemoteHost(...)``: both are a ``hearth.HostAPI`` (``tests/test_hostapi.py``).
What it reads off the wire (answers, errors, the event stream) is in ``_remote_wire``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import httpx

from hearth_adaptersdk import DeploymentRef, PlanResult, StatusReport

from ._actors import ON_BEHALF_OF_HEADER, check_on_behalf_of
from ._address import CLIENT_TIMEOUT, RECONNECT, address_from_env
from ._api import ProgressListener
from ._dirs import SOCKET_FILE, TOKEN_ENV, state_dir
from ._errors import CallTimeout, DaemonUnavailable, HearthError, InvalidInput, NotFound, Unavailable
from ._models import Deployment, Event, Operation, synthesized_ref
from ._remote_wire import (
    QUIET,
    decode,
    error_of,
    label_params,
    longer,
    operation_events,
    outage,
    own_key,
    parse,
    relay,
    report,
    seg,
    stream,
)
from ._settings import positive_seconds
from ._states import cancel_note, cancel_outcome_recorded, same_ready, teardown_done

API = "/v1"
#: The longest single ``/wait`` the client asks for (seconds); a longer wait asks again.
WAIT_CHUNK = 30.0
#: The read bound of a ``reconcile`` given no deadline (one list per driver, a status per
#: uncertain record: it may take long).
RECONCILE_BOUND = 3600.0
#: The page size ``list()`` reads the records in.
PAGE = 500
if TYPE_CHECKING:  # loaded where used: a CLI command through the daemon does not pay for them
    from ._adapters._discovery import DriverInfo
    from ._models import CheckResult, ReconcileReport
    from ._settings import Tier


class Unanswered(CallTimeout):
    """The daemon did not answer within the call's bound (kind ``timeout``)."""


class RemoteHost:
    """The ``Host`` API on a hearth daemon: verbs, ``start_*``, ``Operation``, ``watch``, queries.

    Use it as an async context manager (or call ``aclose``). ``timeout`` bounds each request
    (a wait for an operation asks the daemon in steps, each bounded by it). ``reconnect``
    bounds an outage a wait rides through (``watch()``, an operation's ``events()`` and
    ``result()``, the verbs): a daemon restarting is asked again, after the last event seen,
    until it has not answered for that many seconds; then ``DaemonUnavailable``. A keyed start
    (the verbs, ``start_*`` with a ``key``) that a draining daemon refuses (503 ``unavailable``)
    is asked again after its ``Retry-After``, within the same bound; then ``Unavailable``.
    """

    def __init__(
        self,
        socket: str | Path | None = None,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = CLIENT_TIMEOUT,
        reconnect: float = RECONNECT,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``verify``: for an ``https://`` url, an ``ssl.SSLContext`` that trusts the daemon's
        certificate (``ssl.create_default_context(cafile=...)`` for a private CA); the system's
        CAs by default."""
        if socket is not None and url is not None:
            raise InvalidInput("give a RemoteHost either a socket or a url, not both")
        if socket is None and url is None:
            socket, url = address_from_env()
            if url is not None and token is None:
                token = os.environ.get(TOKEN_ENV) or None
            if socket is None and url is None:
                socket = state_dir() / SOCKET_FILE
        if url is not None and not url.startswith(("http://", "https://")):
            raise InvalidInput(f"{url[:80]!r} is not an http(s):// URL")
        self.socket = Path(socket) if socket is not None else None
        self.url = url.rstrip("/") if url is not None else None
        self.timeout = float(timeout)
        self.reconnect = positive_seconds(reconnect, "reconnect")
        self._verify = verify
        self._token = token
        self._client: httpx.AsyncClient | None = None
        #: Whether a daemon was there once (it answered, or a connection was made): then a
        #: wait, or a keyed start, rides out an outage for ``reconnect`` seconds.
        self._reached = False
        #: Operations this client's verbs started, by id, and the cancels it asked for.
        self._mine: dict[int, Operation] = {}
        self._cancelling: dict[int, asyncio.Future[Operation]] = {}
        self._cancel_reason: str | None = None
        self._starting = 0
        #: The tasks that relay an operation's progress to an ``on_progress`` of ``start_*``.
        self._relays: set[asyncio.Task[None]] = set()
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
        """Close the connection (operations started run on in the daemon) and stop relaying
        their progress."""
        relays = builtins.list(self._relays)  # each leaves the set as it ends
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
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
        headers: httpx.Headers | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> Any:
        """The JSON of a 2xx answer; the daemon's error as its typed ``HearthError``. A
        ``timeout`` the caller passed is checked here, as ``Host`` checks it, before any request."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        for given in (query, body if isinstance(body, dict) else {}):
            if given.get("timeout") is not None:
                positive_seconds(given["timeout"], "timeout")
        bound: float | httpx.Timeout = self.timeout if timeout is None else timeout
        try:
            response = await self.client().request(
                method, API + path, params=query, json=body, headers=headers, timeout=bound
            )
        except httpx.TimeoutException as exc:
            raise Unanswered(
                f"the hearth daemon at {self.address} did not answer {method} {API}{path}: {exc!r}"
            ) from None
        except httpx.TransportError as exc:
            self._reached = self._reached or not isinstance(exc, httpx.ConnectError)
            raise self._unavailable(exc) from None
        self._reached = True
        if response.is_success:
            return decode(response)
        raise error_of(response)

    def _operation(self, data: Any) -> Operation:
        return Operation.model_validate(data).bound(self)

    # --- operations: start ---------------------------------------------------------------------
    async def _started(
        self,
        method: str,
        path: str,
        key: str | None,
        on_progress: ProgressListener | None,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        headers = _behalf(on_behalf_of)
        if key is not None:
            headers["Idempotency-Key"] = key
        down_since, pause = None, 0.1
        while True:  # a keyed start is asked again through an outage: the key makes it one operation
            try:
                data = await self._call(method, path, body=body, params=params, headers=headers)
                break
            except DaemonUnavailable as exc:
                if key is None or not self._reached:  # no daemon was ever there: say so at once
                    raise
                down_since, pause = await outage(self, exc, down_since, pause, None)
            except Unavailable as exc:  # it drains to stop: asked again after its Retry-After
                if key is None:
                    raise
                later = max(pause, float(exc.retry_after or 1))
                down_since, pause = await outage(self, exc, down_since, later, None)
        op = self._operation(data)
        if on_progress is not None:
            self._follow(op, on_progress)
        return op

    def _follow(self, op: Operation, on_progress: ProgressListener) -> asyncio.Task[None] | None:
        """Relay ``op``'s progress to ``on_progress`` in a task that ends with the operation's
        final event, or when this client closes; none for an operation already finished."""
        if op.finished:
            return None
        task = asyncio.get_running_loop().create_task(
            relay(operation_events(self, op.id, 0), on_progress, op.id), name=f"hearth-progress-{op.id}"
        )
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)
        return task

    async def start_provision(
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        key: str | None = None,
        reuse: bool = False,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        labels: Mapping[str, str] | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        """Provision ``slug`` on the daemon; the operation, at once. ``timeout`` is the
        deadline of the adapter's work, kept by the daemon (as ``Host``'s is); ``on_progress``
        is called with each of its progress events, as they come, until it ends;
        ``on_behalf_of`` goes in ``Hearth-On-Behalf-Of`` (every verb takes it)."""
        body: dict[str, Any] = {
            "slug": slug,
            "tier": tier,
            "driver": driver,
            "reuse": bool(reuse),
            "timeout": timeout,
        }
        if labels:
            body["labels"] = dict(labels)
        return await self._started(
            "POST", "/workspaces", key, on_progress, body=body, on_behalf_of=on_behalf_of
        )

    async def start_upgrade(
        self,
        slug: str,
        *,
        tier: str,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        body = {"tier": tier, "timeout": timeout}
        path = f"/workspaces/{seg(slug)}/upgrade"
        return await self._started("POST", path, key, on_progress, body=body, on_behalf_of=on_behalf_of)

    async def start_teardown(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        path = f"/workspaces/{seg(slug)}"
        params = {"timeout": timeout}
        return await self._started("DELETE", path, key, on_progress, params=params, on_behalf_of=on_behalf_of)

    async def start_stop(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        path = f"/workspaces/{seg(slug)}/stop"
        body = {"timeout": timeout}
        return await self._started("POST", path, key, on_progress, body=body, on_behalf_of=on_behalf_of)

    async def start_start(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        path = f"/workspaces/{seg(slug)}/start"
        body = {"timeout": timeout}
        return await self._started("POST", path, key, on_progress, body=body, on_behalf_of=on_behalf_of)

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
        labels: Mapping[str, str] | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef:
        """Provision ``slug`` and wait for it (cancelling this call cancels what it started); the
        same (slug, tier, driver) again returns the stored ref and records nothing, as ``Host``."""
        if key is None and isinstance(tier, str) and isinstance(driver, str):
            quick = await self._record(slug)
            if quick is not None and quick.ref is not None and same_ready(quick, tier, driver):
                return quick.ref
        ours = key or own_key()
        ref = await self._verb(
            self.start_provision(
                slug,
                tier=tier,
                driver=driver,
                key=ours,
                reuse=reuse,
                timeout=timeout,
                labels=labels,
                on_behalf_of=on_behalf_of,
            ),
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
        on_behalf_of: str | None = None,
    ) -> DeploymentRef:
        ours = key or own_key()
        ref = await self._verb(
            self.start_upgrade(slug, tier=tier, key=ours, timeout=timeout, on_behalf_of=on_behalf_of),
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
        on_behalf_of: str | None = None,
    ) -> None:
        """Irreversibly remove the workspace; a second teardown does nothing."""
        if key is None and teardown_done(await self._record(slug)):
            return
        ours = key or own_key()
        await self._verb(
            self.start_teardown(slug, key=ours, timeout=timeout, on_behalf_of=on_behalf_of),
            ours,
            on_progress,
            ("teardown", slug),
        )

    async def stop(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef:
        """Stop a ready workspace, keeping its disk; a stopped one is returned as it is."""
        ours = key or own_key()
        ref = await self._verb(
            self.start_stop(slug, key=ours, timeout=timeout, on_behalf_of=on_behalf_of),
            ours,
            on_progress,
            ("stop", slug),
        )
        assert ref is not None
        return ref

    async def start(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef:
        """Start a stopped workspace again; a ready one is returned as it is."""
        ours = key or own_key()
        ref = await self._verb(
            self.start_start(slug, key=ours, timeout=timeout, on_behalf_of=on_behalf_of),
            ours,
            on_progress,
            ("start", slug),
        )
        assert ref is not None
        return ref

    def cancel_running(self, reason: str, *, outcome: str = "cancelled", again: bool = False) -> int:
        """Ask the daemon to cancel every operation this client's verbs started (and any it is
        starting now), recording ``reason``; the number asked. The CLI calls it on a signal.
        Through the daemon every such operation ends ``cancelled`` (``outcome`` is for
        ``Host``'s signature: the reason names the signal)."""
        self._cancel_reason = reason
        asked = 0
        for op in builtins.list(self._mine.values()):
            if not op.finished and op.id not in self._cancelling:
                asking = asyncio.ensure_future(self._operation_cancel(op.id, reason))
                asking.add_done_callback(_asked)  # one that finished first is refused: nothing to do
                self._cancelling[op.id] = asking
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
        relaying = None if on_progress is None else self._follow(op, on_progress)
        try:
            result = await self._operation_result(op.id, None)
            if relaying is not None:  # the progress still on its way, as Host's comes before
                await asyncio.wait({relaying}, timeout=QUIET)
            return result
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
            if relaying is not None:
                relaying.cancel()
                with contextlib.suppress(BaseException):
                    await relaying

    async def _note_cancelled(self, ident: int) -> None:
        """One line in ``interruptions`` on what became of an operation this client cancelled,
        in the words ``Host`` uses for its own."""
        try:
            op = await self.operation(ident)
            record = await self._record(op.slug)
        except HearthError as exc:
            self.interruptions.append(f"operation #{ident} was told to cancel ({exc.kind}: {exc.message})")
            return
        error = op.error or {}
        unconfirmed = record is not None and record.unconfirmed
        how = cancel_outcome_recorded(op.state, op.verb, unconfirmed=unconfirmed, error=error)
        recorded = None if record is None else record.state
        previous = None if op.verb == "provision" else recorded
        kind = error.get("kind")
        note = cancel_note(op.verb, op.slug, how, recorded=recorded, error_kind=kind, previous=previous)
        self.interruptions.append(note)

    # --- operations: find, wait, cancel, events --------------------------------------------------
    async def operation(self, ident: int) -> Operation:
        if isinstance(ident, bool) or not isinstance(ident, int) or not 0 < ident < 2**63:
            raise InvalidInput(f"{ident!r:.80} is not an operation id")
        return self._operation(await self._call("GET", f"/operations/{ident}"))

    async def operations(
        self,
        *,
        slug: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: int | None = None,
        actor: str | None = None,
    ) -> builtins.list[Operation]:
        params = {"slug": slug, "state": state, "limit": limit, "after": after, "actor": actor}
        found = await self._call("GET", "/operations", params=params)
        return [self._operation(item) for item in found]

    async def _operation_wait(self, ident: int, timeout: float | None) -> Operation:
        if timeout is not None:
            timeout = positive_seconds(timeout, "timeout")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        down_since, pause = None, 0.1
        while True:
            chunk = min(WAIT_CHUNK, self.timeout)  # a daemon gone silent is noticed within 2 bounds
            step = chunk if deadline is None else min(chunk, deadline - loop.time())
            if step <= 0:
                return await self.operation(ident)
            try:
                data = await self._call(
                    "GET",
                    f"/operations/{int(ident)}/wait",
                    params={"timeout": round(max(step, 0.001), 3)},
                    timeout=step + self.timeout,
                )
            except DaemonUnavailable as exc:  # restarting, perhaps: ask again, within the bound
                down_since, pause = await outage(self, exc, down_since, pause, deadline)
                continue
            down_since, pause = None, 0.1
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
        return operation_events(self, ident, after)

    # --- events --------------------------------------------------------------------------------
    def watch(
        self, after: int = 0, slug: str | None = None, labels: Mapping[str, str] | None = None
    ) -> AsyncIterator[Event]:
        """Every event after sequence number ``after`` (``slug`` and ``labels`` narrow it, as on
        ``Host``), as they come; a
        dropped connection is reopened from the last ``seq`` seen, so nothing is lost or
        repeated, through an outage (a restart) of up to ``reconnect`` seconds; past it
        ``DaemonUnavailable``. A daemon never reached is ``DaemonUnavailable`` at once."""
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InvalidInput(f"after must be a whole number of at least 0, not {after!r}")
        return stream(self, after, slug, labels=label_params(labels))

    # --- queries -------------------------------------------------------------------------------
    async def deployments(
        self,
        *,
        state: str | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: int | None = None,
        after: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> builtins.list[Deployment]:
        params = {
            "state": state,
            "driver": driver,
            "include_torn_down": "true" if include_torn_down else "false",
            "limit": limit,
            "after": after,
            "label": label_params(labels),
        }
        return parse(list[Deployment], await self._call("GET", "/workspaces", params=params))

    async def list(self) -> builtins.list[DeploymentRef]:
        """Every current deployment's ref, with ``last_status`` as the daemon recorded it (as
        ``Host.list()``): the records read page by page."""
        refs: builtins.list[DeploymentRef] = []
        after: str | None = None
        while True:
            page = await self.deployments(limit=PAGE, after=after)
            refs += [(d.ref or synthesized_ref(d)).model_copy(update={"last_status": d.state}) for d in page]
            if len(page) < PAGE:
                return refs
            after = page[-1].slug

    async def _record(self, slug: str) -> Deployment | None:
        try:
            return await self.deployment(slug)
        except NotFound:
            return None

    async def deployment(self, slug: str) -> Deployment:
        return Deployment.model_validate(await self._call("GET", f"/workspaces/{seg(slug)}"))

    async def status(self, slug: str, *, timeout: float | None = None) -> StatusReport:
        """What the backend shows now; ``timeout`` bounds the adapter's answer (the daemon's
        ``[timeouts] status`` when left out)."""
        data = await self._call(
            "GET",
            f"/workspaces/{seg(slug)}/status",
            params={"timeout": timeout},
            timeout=longer(timeout, self.timeout),
        )
        return StatusReport.model_validate(data)

    async def logs(self, slug: str, *, limit: int | None = None) -> builtins.list[Operation]:
        found = await self._call("GET", f"/workspaces/{seg(slug)}/logs", params={"limit": limit})
        return [self._operation(item) for item in found]

    def tiers(self) -> Awaitable[builtins.list[Tier]]:
        """The daemon's tiers, by name: ``await remote.tiers()`` (as ``Host.tiers()``, a plain
        function that returns an awaitable)."""
        return self._tiers()

    async def _tiers(self) -> builtins.list[Tier]:
        from ._settings import Tier

        return parse(builtins.list[Tier], await self._call("GET", "/tiers"))

    async def drivers(self) -> builtins.list[DriverInfo]:
        from ._adapters._discovery import DriverInfo

        return parse(list[DriverInfo], await self._call("GET", "/drivers"))

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
        bound = longer(timeout, self.timeout, RECONCILE_BOUND)
        return report(await self._call("POST", "/reconcile", body=body, timeout=bound))

    async def plan(
        self, slug: str, *, tier: str, driver: str | None = None, timeout: float | None = None
    ) -> PlanResult:
        """What moving ``slug`` to ``tier`` would do (the adapter's ``plan``); changes nothing."""
        body = {"slug": slug, "tier": tier, "driver": driver, "timeout": timeout}
        data = await self._call("POST", "/plan", body=body, timeout=longer(timeout, self.timeout))
        return PlanResult.model_validate(data)

    async def adopt(
        self,
        slug: str,
        *,
        driver: str,
        tier: str,
        timeout: float | None = None,
        on_behalf_of: str | None = None,
    ) -> Deployment:
        """Record a deployment the driver lists but hearth has no record of."""
        body = {"driver": driver, "tier": tier, "timeout": timeout}
        data = await self._call(
            "POST",
            f"/workspaces/{seg(slug)}/adopt",
            body=body,
            headers=_behalf(on_behalf_of),
            timeout=longer(timeout, self.timeout),
        )
        return Deployment.model_validate(data)

    async def forget(self, slug: str, *, on_behalf_of: str | None = None) -> Deployment:
        """Drop the record of ``slug`` and leave its backend alone; the record as it was."""
        path = f"/workspaces/{seg(slug)}/forget"
        return Deployment.model_validate(await self._call("POST", path, headers=_behalf(on_behalf_of)))

    async def label(self, slug: str, labels: Mapping[str, str | None]) -> Deployment:
        """Set the labels ``labels`` maps to a value and remove those it maps to None; the
        record as it now is (``PATCH /v1/workspaces/{slug}``)."""
        body = {"labels": dict(labels) if isinstance(labels, Mapping) else labels}
        return Deployment.model_validate(await self._call("PATCH", f"/workspaces/{seg(slug)}", body=body))

    async def touch(self, slug: str) -> Deployment:
        """Record activity on ``slug`` now (``POST /v1/workspaces/{slug}/activity``); the record
        as it now is, with ``last_activity`` and ``autostop_at``."""
        return Deployment.model_validate(await self._call("POST", f"/workspaces/{seg(slug)}/activity"))

    async def health(self) -> dict[str, Any]:
        """The daemon's ``/v1/health``: status, version, owner, running."""
        return dict(await self._call("GET", "/health"))

    async def ready(self) -> None:
        """The daemon's ``/v1/ready``: returns when its store can be used now; else the error
        it answered (``store_error`` saying what is wrong, ``closed`` while it stops)."""
        await self._call("GET", "/ready")


def _behalf(on_behalf_of: str | None) -> httpx.Headers:
    """The headers that say whom a call acts for (checked here, as ``Host`` checks it). The
    header is UTF-8 (httpx would send a ``str`` only if it were ASCII)."""
    whom = check_on_behalf_of(on_behalf_of)
    return httpx.Headers({} if whom is None else {ON_BEHALF_OF_HEADER.encode(): whom.encode("utf-8")})


def _asked(future: asyncio.Future[Operation]) -> None:
    """A cancel ``cancel_running`` asked for has its answer read: a refusal (the operation
    finished first, ``invalid_transition``) or a lost daemon is what the wait then says."""
    if not future.cancelled():
        future.exception()


__all__ = ["DaemonUnavailable", "RemoteHost"]
