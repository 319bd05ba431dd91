"""``hearth serve``'s API v1 on a ``Host`` (FastAPI): ``create_app(host)`` and its routes.

A start answers with the operation and ``Location: /v1/operations/{id}``: 202 while it is
queued or running, 200 when the answer is finished (a start with nothing to do answers the
operation that made the workspace, a replay of a finished operation's key, ``?wait=SECONDS``
that saw it finish). Errors are ``{"error": {"kind", "message", ...}}`` with a status by kind
(``_schemas.STATUS``). While the daemon drains (``AppState.drain``) the starts answer 503
``unavailable`` with ``Retry-After``; the rest is answered as ever. The daemon that serves it is
``_daemon``.

Needs the ``serve`` extra (``pip install 'hearth[serve]'``): fastapi and uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, cast

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth_adaptersdk import PlanResult, State, StatusReport

from .._actors import ON_BEHALF_OF_HEADER, ON_BEHALF_OF_MAX
from .._adapters._discovery import DriverInfo
from .._errors import HearthError, InvalidInput, Unauthorized, Unavailable
from .._lifecycle._checks import KEY_MAX
from .._lifecycle._host import Host
from .._models import CheckResult, Deployment, Event, Operation, OperationState, ReconcileReport
from .._settings import Tier
from ._auth import (
    DEFAULT_TOKEN,
    PRINCIPAL,
    SCOPES,
    Authenticate,
    Credentials,
    Principal,
    Token,
)
from ._metrics import Metrics
from ._schemas import (
    API,
    NUMBER_MAX,
    RETRY_AFTER_HEADER,
    STATUS,
    VALIDATION_PROBLEMS,
    WAIT_MAX,
    AdoptRequest,
    CheckRequest,
    ErrorBody,
    Health,
    LabelChange,
    NewTier,
    NewWorkspace,
    PlanRequest,
    Ready,
    ReconcileRequest,
    RunChange,
    error_json_response,
    error_response,
    errors,
    hearth_error_response,
    started,
)

#: Seconds of quiet after which a stream shows it is alive (SSE: a comment; NDJSON: an empty line).
HEARTBEAT = 10.0
#: Once the daemon really stops, a stream still sends what comes within this many seconds of
#: quiet (the final events of the work the drain just ended), at most ``LAST_CALL_MAX`` in all.
LAST_CALL = 0.3
LAST_CALL_MAX = 2.0

log = logging.getLogger("hearth.serve")


# --- plumbing ------------------------------------------------------------------------------------
class _Lines:
    """Each event's JSON, made once for every stream that sends it (the last ``SIZE`` kept)."""

    SIZE = 4096

    def __init__(self) -> None:
        self._json: dict[int, str] = {}

    def __call__(self, event: Event) -> str:
        text = self._json.get(event.seq)
        if text is None:
            text = self._json[event.seq] = event.model_dump_json()
            if len(self._json) > self.SIZE:
                del self._json[next(iter(self._json))]
        return text


@dataclass
class AppState:
    host: Host
    #: Set when the daemon stops: streams and waits end so uvicorn can shut down.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: The events' JSON, shared by the streams.
    lines: _Lines = field(default_factory=_Lines)
    #: Set on the daemon's first SIGTERM, before ``stopping``: while the work in flight drains,
    #: reads, cancels, waits and streams are answered, and starts are refused (``admit``).
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    #: When (loop time) the drain grace is spent, for ``Retry-After``.
    drain_ends: float = 0.0
    #: The event streams served now (``hearth_event_streams``).
    stream_count: int = 0
    #: ``/metrics``: set by ``create_app``.
    metrics: Metrics | None = None
    #: Who may ask what (the daemon's tokens, the socket's scopes; ``_auth``).
    credentials: Credentials = field(default_factory=Credentials)
    #: The open event streams of each token (by name): set to end them (``revoke``).
    streams: dict[str, set[asyncio.Event]] = field(default_factory=dict)

    def revoke(self, names: set[str]) -> int:
        """End the open streams of the tokens ``names`` (removed or changed on SIGHUP); how many."""
        ended = 0
        for name in names:
            for ending in self.streams.get(name, ()):
                ending.set()
                ended += 1
        return ended

    @contextlib.contextmanager
    def stream_of(self, principal: Principal | None) -> Iterator[asyncio.Event]:
        """An event set when the stream of ``principal`` is to end (its token was revoked)."""
        ending = asyncio.Event()
        name = principal.token if principal is not None else None
        if name is None:
            yield ending
            return
        self.streams.setdefault(name, set()).add(ending)
        if principal is not None and self.credentials.tokens.get(name) != principal.credential:
            ending.set()  # revoked between the request and its stream's start
        try:
            yield ending
        finally:
            held = self.streams.get(name)
            if held is not None:
                held.discard(ending)
                if not held:
                    del self.streams[name]

    def drain(self, grace: float) -> None:
        """The daemon drains: from now on starts answer 503 ``unavailable``."""
        if not self.draining.is_set():
            self.drain_ends = asyncio.get_running_loop().time() + grace
            self.draining.set()

    def admit(self) -> None:
        """Raise ``Unavailable`` while the daemon drains or stops: a start then would be work
        the drain has to wait for or cut short. ``retry_after``: the drain grace left (at
        least 1 s), by when this daemon has ended its work and a new one may serve."""
        if self.draining.is_set() or self.stopping.is_set():
            left = self.drain_ends - asyncio.get_running_loop().time()
            raise Unavailable(
                "the daemon is stopping: it finishes the work in flight and starts none; ask again later",
                retry_after=max(1, math.ceil(left)),
            )


class _Unexpected:
    """Any exception no handler took (a bug) answers 500 with the JSON error body, kind
    ``error`` and a one-line message, and is logged with its traceback; never Starlette's
    plain-text 500. One raised after the response began (a stream) is left to the server,
    which logs it and ends the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = False

        async def sending(message: Message) -> None:
            nonlocal began
            began = began or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if began:
                raise
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            line = (str(exc).strip().splitlines() or [""])[0][:200]
            message = f"unexpected error: {type(exc).__name__}" + (f": {line}" if line else "")
            await error_response("error", message, 500)(scope, receive, send)


class _Position:
    """``Hearth-Seq`` on every answer but liveness and readiness: the store's last event ``seq``,
    read before the request is handled, so that a console that lists what it shows and then
    streams ``after=`` that number misses nothing (an event it also saw in the list is
    harmless to apply twice). A store that cannot say leaves the header out; the request's own
    answer says what is wrong."""

    def __init__(self, app: ASGIApp, host: Host) -> None:
        self.app = app
        self.host = host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _STORELESS:
            await self.app(scope, receive, send)
            return
        try:
            seq: int | None = await self.host.last_seq()
        except HearthError:
            seq = None
        if seq is None:
            await self.app(scope, receive, send)
            return
        header = (b"hearth-seq", str(seq).encode())

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, sending)


#: ``Hearth-Seq`` as the document describes it on every 2xx answer but liveness and readiness.
HEARTH_SEQ: dict[str, Any] = {
    "description": "the seq of the store's last event when the answer was read: stream "
    "/v1/events?after= it to miss nothing that came after",
    "schema": {"type": "integer", "minimum": 0},
}
#: The scrape's path: outside the API v1, as Prometheus expects it.
METRICS = "/metrics"
#: Paths answered without the store (liveness), or that judge it themselves (readiness, and
#: the scrape, which leaves out what the store cannot say): no ``Hearth-Seq``, answered while
#: hearth.toml is invalid.
_STORELESS = frozenset({f"{API}/health", f"{API}/ready", METRICS})


class _TooLarge(HTTPException):
    """A request body beyond the limit (413, kind ``invalid_input``)."""

    def __init__(self, limit: int) -> None:
        why = f"the request body is larger than the limit of {limit} bytes ([serve] max_body)"
        super().__init__(413, why)


class _BodyLimit:
    """Request bodies are bounded (``limit()`` bytes, ``[serve] max_body``): one whose
    ``Content-Length`` is larger answers 413 at once, its body never read; one sent in chunks is
    counted as it arrives, and the first chunk past the limit ends the request with 413 (the
    app's answer to it, if any, is dropped for ours)."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = dict(scope.get("headers") or []).get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        received = 0
        exceeded = began = False

        async def counting() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _TooLarge(limit)
            return message

        async def sending(message: Message) -> None:
            nonlocal began
            if exceeded and not began:
                return  # the app's answer to a body cut short: ours follows
            began = began or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, sending)
        except Exception:
            if not exceeded or began:
                raise
        if exceeded and not began:
            await _too_large(limit)(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    response = error_response("invalid_input", str(_TooLarge(limit).detail), 413)
    response.headers["Connection"] = "close"  # the rest of the body is not read
    return response


def _state(request: Request) -> AppState:
    return cast(AppState, request.app.state.hearth)


def _principal(request: Request) -> Principal | None:
    found = request.scope.get(PRINCIPAL)
    return found if isinstance(found, Principal) else None


async def _until_stopped(
    state: AppState, batches: AsyncIterator[list[Event]], ending: asyncio.Event | None = None
) -> AsyncIterator[list[Event] | None]:
    """The batches of events, with None after ``HEARTBEAT`` seconds of quiet; ends when the
    daemon stops, and at once when ``ending`` is set (the token that opened it was revoked). A
    client that leaves cancels this generator: its pending read is cancelled, nothing else."""
    pending: asyncio.Future[list[Event] | None] | None = None
    stopping: asyncio.Future[Any] = asyncio.ensure_future(state.stopping.wait())
    state.stream_count += 1
    revoked: asyncio.Future[Any] = asyncio.ensure_future((ending or asyncio.Event()).wait())
    try:
        while not state.stopping.is_set():
            pending = pending or asyncio.ensure_future(anext(batches, None))
            done, _ = await asyncio.wait(
                {pending, stopping, revoked}, timeout=HEARTBEAT, return_when="FIRST_COMPLETED"
            )
            if revoked in done:
                return  # no more for a token the daemon no longer accepts, not even what came
            if pending not in done:
                if stopping in done:
                    break
                yield None
                continue
            batch, pending = pending.result(), None
            if batch is None:
                return
            yield batch
        # the daemon stops once its drain ended: what that work wrote last is still sent
        loop = asyncio.get_running_loop()
        end = loop.time() + LAST_CALL_MAX
        while (left := min(LAST_CALL, end - loop.time())) > 0:
            pending = pending or asyncio.ensure_future(anext(batches, None))
            done, _ = await asyncio.wait({pending}, timeout=left)
            if not done:
                return
            batch, pending = pending.result(), None
            if batch is None:
                return
            yield batch
    finally:
        state.stream_count -= 1
        stopping.cancel()
        revoked.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(batches, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


def _ndjson(state: AppState, batches: AsyncIterator[list[Event]], request: Request) -> StreamingResponse:
    """One Event per line; an empty line after ``HEARTBEAT`` seconds of quiet, so that a client
    tells a quiet stream from a dead peer (readers skip empty lines)."""
    principal = _principal(request)

    async def lines() -> AsyncIterator[str]:
        with state.stream_of(principal) as ending:
            async for batch in _until_stopped(state, batches, ending):
                yield "\n" if batch is None else "".join(f"{state.lines(event)}\n" for event in batch)

    return StreamingResponse(
        lines(), media_type="application/x-ndjson", headers={"Cache-Control": "no-cache"}
    )


def _sse(state: AppState, batches: AsyncIterator[list[Event]], request: Request) -> StreamingResponse:
    principal = _principal(request)

    async def lines() -> AsyncIterator[str]:
        with state.stream_of(principal) as ending:
            async for batch in _until_stopped(state, batches, ending):
                if batch is None:
                    yield ": keep-alive\n\n"
                else:
                    yield "".join(
                        f"id: {event.seq}\nevent: {event.kind}\ndata: {state.lines(event)}\n\n"
                        for event in batch
                    )

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)


async def _waited(state: AppState, op: Operation, wait: float | None, request: Request) -> Operation:
    """``op`` once finished, or when ``wait`` seconds passed (or the daemon stops). A wait is
    held like a stream: the token that asked for it revoked meanwhile (SIGHUP), it ends at once
    with 401 ``unauthorized`` rather than answer what that token may no longer read."""
    if not wait or op.finished:
        return op
    with state.stream_of(_principal(request)) as ending:
        waiting = asyncio.ensure_future(op.wait(timeout=wait))
        stopping = asyncio.ensure_future(state.stopping.wait())
        revoked = asyncio.ensure_future(ending.wait())
        try:
            await asyncio.wait({waiting, stopping, revoked}, return_when="FIRST_COMPLETED")
        finally:
            stopping.cancel()
            revoked.cancel()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        if ending.is_set():
            raise Unauthorized(
                "the token this wait was asked with was revoked (the daemon re-read its tokens)"
            )
    return waiting.result() if waiting.done() and not waiting.cancelled() else op


def _started(op: Operation, response: Response) -> Operation:
    """The status says whether the answer is finished (200) or the work goes on (202)."""
    response.status_code = 200 if op.finished else 202
    response.headers["Location"] = f"{API}/operations/{op.id}"
    return op


KeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=KEY_MAX,
        description=f"maps to the operation's key (1 to {KEY_MAX} printable characters): the same key "
        "with the same arguments answers the same operation",
    ),
]


def _on_behalf_of(
    value: Annotated[
        str | None,
        Header(
            alias=ON_BEHALF_OF_HEADER,
            description=f"whom the caller acts for (a console's end user; 1 to {ON_BEHALF_OF_MAX} printable "
            "characters, sent as UTF-8): recorded on the operation as `on_behalf_of`, never used to decide "
            "anything",
        ),
    ] = None,
) -> str | None:
    """The header's value: HTTP carries its bytes, which Starlette hands over as Latin-1; the
    header is UTF-8 (``zoë@example.com``), so they are decoded again (checked by the host)."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise InvalidInput(f"{ON_BEHALF_OF_HEADER} must be UTF-8") from None


OnBehalfOf = Annotated[str | None, Depends(_on_behalf_of)]
Wait = Annotated[
    float | None,
    Query(gt=0, le=WAIT_MAX, description="answer once finished (200) or after this many seconds (202)"),
]
#: ``limit`` and ``after`` (an id) are bounded by what the store holds (``NUMBER_MAX``).
Limit = Annotated[int | None, Query(ge=0, le=NUMBER_MAX)]
LabelQuery = Annotated[
    list[str] | None,
    Query(
        alias="label",
        description="KEY=VALUE: only workspaces carrying this label (repeat it: all of them must match)",
    ),
]


def _labels(given: list[str] | None) -> dict[str, str] | None:
    """``?label=KEY=VALUE`` (repeated) as a dict; a malformed one is ``invalid_input``."""
    if not given:
        return None
    wanted = {}
    for item in given:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise InvalidInput(f"label {item[:80]!r} is not KEY=VALUE")
        wanted[key] = value
    return wanted


QueryDeadline = Annotated[
    float | None, Query(gt=0, le=WAIT_MAX * 24, description="deadline for the adapter's work (seconds)")
]


# --- the document --------------------------------------------------------------------------------
DESCRIPTION = """\
A start (provision, upgrade, teardown, stop, start) answers 202 with the operation and `Location:
/v1/operations/{id}`, or 200 once it finished (`?wait=SECONDS`). Every error is `{"error":
{"kind", "message", "retryable", ...}}` with a status by kind: `ErrorDetail`, one schema per
`kind` with its own fields (a `conflict`'s `reason`, a `busy`'s `operation`, ...). Switch on
`kind` and `reason`, never on `message`. Every 503 and 423 answer has `Retry-After`.

Through the daemon's Unix socket no credential is needed (the socket's file mode guards it; the
daemon knows the peer's uid). A TCP listener (`hearth serve --listen`) needs `Authorization: Bearer
<token>` on every request, else 401. Each token has scopes (`read`: every GET and the event
streams; `operate`: provision, upgrade, teardown, stop, start, activity, labels, cancel; `admin`:
adopt, forget, reconcile); a request whose token lacks the route's scope gets 403 `forbidden` naming it. Every
operation records its `actor` (who asked, as the daemon authenticated them) and the
`on_behalf_of` a caller passes in `Hearth-On-Behalf-Of`.
"""
#: The bearer token a TCP listener asks for (``_Token``); the Unix socket needs none.
BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "A token of the daemon (HEARTH_TOKEN), needed on a TCP listener (hearth serve "
    "--listen), with the scope the route needs (read, operate or admin); a request through the "
    "Unix socket needs none.",
}


class NDJSONResponse(JSONResponse):
    """The media type of ``/v1/events`` for the document: lines of JSON, each an ``Event`` (a
    JSON class, so that FastAPI writes the item's schema alone, not beside ``type: string``);
    the route answers its own ``StreamingResponse``."""

    media_type = "application/x-ndjson"


def _operation_id(route: APIRoute) -> str:
    """A route's operationId when it names none: its handler's name in camelCase (every route
    of the API v1 names its own, ``provisionWorkspace``, ``getOperation``, ...)."""
    first, *rest = route.name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the bearer scheme: optional (``{}``), as the Unix socket
    needs none. Without FastAPI's 422 ``HTTPValidationError``, which no route answers: a request
    it finds invalid answers 400 ``invalid_input`` with the error body."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        for route, path in document["paths"].items():
            for operation in path.values():
                if "HTTPValidationError" in json.dumps(operation["responses"].get("422", {})):
                    del operation["responses"]["422"]
                if route in _STORELESS:
                    continue
                for status, response in operation["responses"].items():
                    if status.startswith("2"):
                        response.setdefault("headers", {})["Hearth-Seq"] = HEARTH_SEQ
        for name in ("HTTPValidationError", "ValidationError"):
            document["components"]["schemas"].pop(name, None)
        document.setdefault("components", {})["securitySchemes"] = {"bearerAuth": BEARER}
        document["security"] = [{"bearerAuth": []}, {}]
        app.openapi_schema = document
    return app.openapi_schema


# --- the app -------------------------------------------------------------------------------------
def create_app(  # noqa: PLR0915 - the routes
    host: Host, *, token: str | None = None, credentials: Credentials | None = None
) -> FastAPI:
    """The API v1 on ``host`` (open it first, close it after the app stops). With ``token`` (a
    token named ``default`` with every scope) or ``credentials`` (named tokens with scopes, the
    Unix socket's scopes; ``_auth``), every request that does not come through a Unix socket
    needs ``Authorization: Bearer`` and the scope its route needs."""
    from .. import __version__

    async def settings_valid(request: Request) -> None:
        """Every call but ``/health`` and ``/ready`` fails ``invalid_input`` while hearth.toml is
        invalid, as the CLI does run locally: never an answer from settings that are no longer
        the file's."""
        if request.url.path not in _STORELESS:
            _state(request).host.reload_settings()

    app = FastAPI(
        title="hearth",
        version=__version__,
        summary="Workspaces through pluggable adapters: the hearth daemon's API v1.",
        description=DESCRIPTION,
        dependencies=[Depends(settings_valid)],
        generate_unique_id_function=_operation_id,
    )
    app.openapi = functools.partial(_document, app)  # type: ignore[method-assign]
    if credentials is None:
        tokens = {} if token is None else {DEFAULT_TOKEN: Token.of(DEFAULT_TOKEN, token, SCOPES)}
        credentials = Credentials(tokens)
    app.state.hearth = state = AppState(host, credentials=credentials)
    state.metrics = Metrics(host, lambda: state.stream_count)
    host.observe(state.metrics)
    app.add_middleware(_Position, host=host)
    app.add_middleware(_Unexpected)
    app.add_middleware(_BodyLimit, limit=lambda: host.settings.serve.max_body)
    app.add_middleware(Authenticate, credentials=credentials, routes=lambda: app.router.routes)

    @app.exception_handler(HearthError)
    async def heartherror_response(request: Request, exc: Exception) -> JSONResponse:
        return hearth_error_response(cast(HearthError, exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        problems = cast(RequestValidationError, exc).errors()
        where = "; ".join(
            f"{'.'.join(str(part) for part in p.get('loc', ()))}: {p.get('msg', '')}" for p in problems[:5]
        )
        listed = [
            {
                "loc": [part if isinstance(part, int) else str(part) for part in p.get("loc", ())],
                "msg": str(p.get("msg", "")),
            }
            for p in problems[:VALIDATION_PROBLEMS]
        ]
        return error_response("invalid_input", f"invalid request: {where}", 400, errors=listed)

    @app.exception_handler(StarletteHTTPException)
    async def httperror_response(request: Request, exc: Exception) -> JSONResponse:
        error = cast(StarletteHTTPException, exc)
        # every 4xx the framework raises has a documented kind: a body that is not UTF-8 or
        # nests too deep for the JSON parser (400), a wrong method (405), ... are invalid_input
        code = error.status_code
        kind = {401: "unauthorized", 404: "not_found"}.get(code) or (
            "invalid_input" if 400 <= code < 500 else "error"
        )
        response = error_response(kind, str(error.detail), code)
        response.headers.update(error.headers or {})  # 405's Allow
        return response

    # --- workspaces ------------------------------------------------------------------------------
    @app.get(f"{API}/workspaces", operation_id="listWorkspaces", responses=errors(400))
    async def workspaces(
        request: Request,
        *,
        state: State | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: Limit = None,
        after: str | None = None,
        labels: LabelQuery = None,
    ) -> list[Deployment]:
        """The records by slug; ``after``: the last slug of the previous page; ``label``: only
        those carrying each."""
        return await _state(request).host.deployments(
            state=state,
            driver=driver,
            include_torn_down=include_torn_down,
            limit=limit,
            after=after,
            labels=_labels(labels),
        )

    @app.get(f"{API}/workspaces/{{slug}}", operation_id="getWorkspace", responses=errors(400, 404))
    async def workspace(slug: str, request: Request) -> Deployment:
        return await _state(request).host.deployment(slug)

    @app.patch(
        f"{API}/workspaces/{{slug}}", operation_id="labelWorkspace", responses=errors(400, 404, 409, 413)
    )
    async def label(slug: str, body: LabelChange, request: Request) -> Deployment:
        """Set the labels mapped to a value and remove those mapped to null; the record as it
        now is (one ``workspace`` event). ``busy`` (409) while an operation runs on the slug."""
        return await _state(request).host.label(slug, body.labels)

    @app.post(
        f"{API}/workspaces/{{slug}}/activity", operation_id="touchWorkspace", responses=errors(400, 404)
    )
    async def touch(slug: str, request: Request) -> Deployment:
        """Record activity on the workspace now (a console calls it while its user works; README
        "Autostop"): one store write, no adapter, no event; the record as it now is, with its
        ``last_activity`` and ``autostop_at``."""
        return await _state(request).host.touch(slug)

    @app.get(
        f"{API}/workspaces/{{slug}}/status",
        operation_id="getWorkspaceStatus",
        responses=errors(400, 404, 422, 502, 504),
    )
    async def workspace_status(slug: str, request: Request, timeout: QueryDeadline = None) -> StatusReport:
        """What the backend shows now (asks the adapter)."""
        return await _state(request).host.status(slug, timeout=timeout)

    @app.get(f"{API}/workspaces/{{slug}}/logs", operation_id="getWorkspaceLogs", responses=errors(400, 404))
    async def workspace_logs(slug: str, request: Request, limit: Limit = None) -> list[Operation]:
        """The operations run on the slug, each with its log."""
        return await _state(request).host.logs(slug, limit=limit)

    @app.post(f"{API}/workspaces", **started("provisionWorkspace", 400, 409, 413, 422, 502, 504))
    async def provision(
        body: NewWorkspace,
        request: Request,
        *,
        response: Response,
        key: KeyHeader = None,
        wait: Wait = None,
        on_behalf_of: OnBehalfOf = None,
    ) -> Operation:
        """Provision: the operation (``Location`` names it), 202 while it runs, 200 when the
        answer is finished (nothing to do: the operation that made the workspace, recorded
        nothing new; a finished operation's key)."""
        state = _state(request)
        state.admit()
        op = await state.host.start_provision(
            body.slug,
            tier=body.tier,
            driver=body.driver,
            key=key,
            reuse=body.reuse,
            timeout=body.timeout,
            labels=body.labels,
            on_behalf_of=on_behalf_of,
        )
        return _started(await _waited(state, op, wait, request), response)

    @app.post(
        f"{API}/workspaces/{{slug}}/upgrade", **started("upgradeWorkspace", 400, 404, 409, 413, 422, 502, 504)
    )
    async def upgrade(
        slug: str,
        body: NewTier,
        request: Request,
        *,
        response: Response,
        key: KeyHeader = None,
        wait: Wait = None,
        on_behalf_of: OnBehalfOf = None,
    ) -> Operation:
        state = _state(request)
        state.admit()
        op = await state.host.start_upgrade(
            slug, tier=body.tier, key=key, timeout=body.timeout, on_behalf_of=on_behalf_of
        )
        return _started(await _waited(state, op, wait, request), response)

    @app.post(
        f"{API}/workspaces/{{slug}}/stop", **started("stopWorkspace", 400, 404, 409, 413, 422, 502, 504)
    )
    async def stop(
        slug: str,
        request: Request,
        body: RunChange | None = None,
        *,
        response: Response,
        key: KeyHeader = None,
        wait: Wait = None,
        on_behalf_of: OnBehalfOf = None,
    ) -> Operation:
        """Stop a ready workspace, keeping its disk (``unsupported``, 422, naming the driver
        when its adapter cannot); a stopped one answers the operation that stopped it."""
        state = _state(request)
        state.admit()
        timeout = None if body is None else body.timeout
        op = await state.host.start_stop(slug, key=key, timeout=timeout, on_behalf_of=on_behalf_of)
        return _started(await _waited(state, op, wait, request), response)

    @app.post(
        f"{API}/workspaces/{{slug}}/start", **started("startWorkspace", 400, 404, 409, 413, 422, 502, 504)
    )
    async def start(
        slug: str,
        request: Request,
        body: RunChange | None = None,
        *,
        response: Response,
        key: KeyHeader = None,
        wait: Wait = None,
        on_behalf_of: OnBehalfOf = None,
    ) -> Operation:
        """Start a stopped workspace again (the same backend objects); a ready one answers the
        operation that made it ready."""
        state = _state(request)
        state.admit()
        timeout = None if body is None else body.timeout
        op = await state.host.start_start(slug, key=key, timeout=timeout, on_behalf_of=on_behalf_of)
        return _started(await _waited(state, op, wait, request), response)

    @app.delete(f"{API}/workspaces/{{slug}}", **started("teardownWorkspace", 400, 404, 409, 502, 504))
    async def teardown(
        slug: str,
        request: Request,
        *,
        response: Response,
        key: KeyHeader = None,
        wait: Wait = None,
        timeout: QueryDeadline = None,
        on_behalf_of: OnBehalfOf = None,
    ) -> Operation:
        """Teardown (irreversible)."""
        state = _state(request)
        state.admit()
        op = await state.host.start_teardown(slug, key=key, timeout=timeout, on_behalf_of=on_behalf_of)
        return _started(await _waited(state, op, wait, request), response)

    @app.post(
        f"{API}/workspaces/{{slug}}/adopt",
        operation_id="adoptWorkspace",
        responses=errors(400, 404, 409, 413, 422, 423, 502, 504),
    )
    async def adopt(
        slug: str, body: AdoptRequest, request: Request, on_behalf_of: OnBehalfOf = None
    ) -> Deployment:
        """Record a deployment the driver lists but hearth has no record of (recorded as an
        operation); the new record."""
        _state(request).admit()
        host = _state(request).host
        return await host.adopt(
            slug, driver=body.driver, tier=body.tier, timeout=body.timeout, on_behalf_of=on_behalf_of
        )

    @app.post(
        f"{API}/workspaces/{{slug}}/forget",
        operation_id="forgetWorkspace",
        responses=errors(400, 404, 409, 423),
    )
    async def forget(slug: str, request: Request, on_behalf_of: OnBehalfOf = None) -> Deployment:
        """Drop the record of ``slug`` and leave its backend alone; the record as it was (the
        forget recorded as an operation)."""
        _state(request).admit()
        return await _state(request).host.forget(slug, on_behalf_of=on_behalf_of)

    # --- operations ------------------------------------------------------------------------------
    @app.get(f"{API}/operations", operation_id="listOperations", responses=errors(400))
    async def operations(
        request: Request,
        *,
        slug: str | None = None,
        state: OperationState | None = None,
        limit: Limit = None,
        after: Annotated[int | None, Query(ge=0, le=NUMBER_MAX)] = None,
        actor: Annotated[
            str | None,
            Query(min_length=1, max_length=200, description="only the operations this actor asked for"),
        ] = None,
    ) -> list[Operation]:
        """Operations by id, without their logs (``log`` is empty: read one by id, or the slug's
        ``/logs``); ``after``: the last id of the previous page (exclusive); ``actor``: only
        those that actor asked for (``unix:1000(ann)``, ``token:console``, exactly)."""
        host = _state(request).host
        return await host.operations(slug=slug, state=state, limit=limit, after=after, actor=actor)

    @app.get(f"{API}/operations/{{ident}}", operation_id="getOperation", responses=errors(400, 404))
    async def operation(ident: int, request: Request) -> Operation:
        """The operation, with its log."""
        return await _state(request).host.operation(ident)

    @app.get(
        f"{API}/operations/{{ident}}/wait",
        operation_id="waitOperation",
        responses={
            **errors(400, 404),
            200: {"description": "The operation, finished"},
            202: {"description": "The operation, still running after the timeout", "model": Operation},
        },
    )
    async def operation_wait(
        ident: int,
        request: Request,
        response: Response,
        timeout: Annotated[float, Query(gt=0, le=WAIT_MAX)] = 30.0,
    ) -> Operation:
        """The operation once finished (200), or after ``timeout`` seconds (202); with its log."""
        state = _state(request)
        op = await _waited(state, await state.host.operation(ident), timeout, request)
        response.status_code = 200 if op.finished else 202
        return op

    @app.delete(
        f"{API}/operations/{{ident}}",
        operation_id="cancelOperation",
        status_code=202,
        responses={
            **errors(400, 404, 409),
            202: {"description": "The operation, its cancel asked for (its rollback follows)"},
        },
    )
    async def operation_cancel(
        ident: int, request: Request, reason: str = "cancelled through the API"
    ) -> Operation:
        """Ask for the operation to be cancelled (its rollback follows; watch it or wait). A
        finished operation has nothing left to cancel: 409 ``invalid_transition``."""
        op = await _state(request).host.operation(ident)
        return await op.cancel(reason=reason)

    # --- events ----------------------------------------------------------------------------------
    @app.get(
        f"{API}/events",
        operation_id="watchEvents",
        response_model=None,
        response_class=NDJSONResponse,
        responses={
            **errors(400, streams=True),
            200: {
                "model": Event,
                "description": "one Event per line (NDJSON), kept open; Server-Sent Events "
                "(id: seq, event: kind, data: the Event) with Accept: text/event-stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
        },
    )
    async def events(
        request: Request,
        *,
        after: Annotated[int, Query(ge=0, le=NUMBER_MAX)] = 0,
        slug: str | None = None,
        labels: LabelQuery = None,
        accept: Annotated[str | None, Header()] = None,
        last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=NUMBER_MAX)] = None,
    ) -> StreamingResponse:
        """Every event of every process on the home after ``after`` (or ``Last-Event-ID``). A
        client that falls 1,000 events behind is ended: resume after the last ``seq`` it read.
        ``label``: only events of workspaces that carried each label when the event was written
        (a ``workspace`` event: before or after it, so a workspace leaving the set is seen)."""
        state = _state(request)
        stream = state.host.watch_batches(
            after=after if last_event_id is None else last_event_id, slug=slug, labels=_labels(labels)
        )
        if accept is not None and "text/event-stream" in accept:
            return _sse(state, stream, request)
        return _ndjson(state, stream, request)

    @app.get(
        f"{API}/operations/{{ident}}/events",
        operation_id="watchOperationEvents",
        response_model=None,
        response_class=NDJSONResponse,
        responses={
            **errors(400, 404, streams=True),
            200: {
                "model": Event,
                "description": "the operation's events, one per line (NDJSON), ending after its final "
                "event (at once for a finished operation once its events are sent); Server-Sent Events "
                "(id: seq, event: kind, data: the Event) with Accept: text/event-stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
        },
    )
    async def operation_events(
        ident: int,
        request: Request,
        after: Annotated[int, Query(ge=0, le=NUMBER_MAX)] = 0,
        accept: Annotated[str | None, Header()] = None,
        last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=NUMBER_MAX)] = None,
    ) -> StreamingResponse:
        """One operation's events after ``after`` (or ``Last-Event-ID``; exclusive), from its
        first by default, until its final event: a console follows one start without filtering
        the slug's stream or guessing when a finished one is over. Resume a dropped stream after
        the last ``seq`` read."""
        state = _state(request)
        op = await state.host.operation(ident)  # 404 for one that does not exist, before the stream
        if op.finished:  # an access settles what a dead host left, whose final event waits for it
            with contextlib.suppress(HearthError):
                await state.host.deployment(op.slug)
        position = after if last_event_id is None else last_event_id
        stream = state.host.watch_batches(after=position, operation=ident)
        if accept is not None and "text/event-stream" in accept:
            return _sse(state, stream, request)
        return _ndjson(state, stream, request)

    # --- the rest --------------------------------------------------------------------------------
    @app.get(f"{API}/tiers", operation_id="listTiers", responses=errors(400))
    async def tiers(request: Request) -> list[Tier]:
        return await _state(request).host.tiers()

    @app.get(f"{API}/drivers", operation_id="listDrivers", responses=errors(400))
    async def drivers(request: Request) -> list[DriverInfo]:
        """What discovery finds for each driver (path, version, refusals) and the in-process ones."""
        return await _state(request).host.drivers()

    @app.post(f"{API}/check", operation_id="checkVerb", responses=errors(400, 413, 502, 504))
    async def check(body: CheckRequest, request: Request) -> CheckResult:
        return await _state(request).host.check(body.slug, body.verb, tier=body.tier, driver=body.driver)

    @app.post(
        f"{API}/plan", operation_id="planWorkspace", responses=errors(400, 404, 409, 413, 422, 502, 504)
    )
    async def plan(body: PlanRequest, request: Request) -> PlanResult:
        """The adapter's plan; ``unsupported`` (422) when it does not announce ``plan``."""
        host = _state(request).host
        return await host.plan(body.slug, tier=body.tier, driver=body.driver, timeout=body.timeout)

    @app.post(f"{API}/reconcile", operation_id="reconcileWorkspaces", responses=errors(400, 404, 413))
    async def reconcile(body: ReconcileRequest, request: Request) -> ReconcileReport:
        if not body.dry_run:  # one that changes records is new work; a dry run is a read
            _state(request).admit()
        host = _state(request).host
        return await host.reconcile(body.slug, dry_run=body.dry_run, timeout=body.timeout)

    @app.get(f"{API}/health", operation_id="getHealth", responses=errors())
    async def health(request: Request) -> Health:
        """Liveness: answers at once, from memory, without touching the store (whether the
        store can be used is ``/v1/ready``'s question)."""
        state = _state(request)
        stopping = state.draining.is_set() or state.stopping.is_set()
        status: Literal["ok", "stopping"] = "stopping" if stopping else "ok"
        host = state.host
        return Health(
            status=status,
            version=__version__,
            owner=host.owner,
            running=host.running,
            project=str(host.project_dir),
            cancel_grace=host.timeouts.cancel_grace,
        )

    @app.get(
        f"{API}/ready",
        operation_id="getReadiness",
        response_model=Ready,
        responses={
            **errors(),
            503: {
                "model": ErrorBody,
                "description": "store_error (what is wrong), invalid_input or closed; daemon_unavailable "
                "when the listener holds [serve] max_connections",
                "headers": RETRY_AFTER_HEADER,
            },
        },
    )
    async def ready(request: Request) -> Ready | JSONResponse:
        """Readiness, for a load balancer or systemd: checks the store within ``[timeouts] store``
        (SQLite: the file reads and ``quick_check`` finds its pages whole; PostgreSQL: a query is
        answered). 503 with the error body when it cannot be used, while hearth.toml is invalid
        (``invalid_input``), or while the daemon stops (``closed``)."""
        state = _state(request)
        if state.draining.is_set() or state.stopping.is_set():
            left = state.drain_ends - asyncio.get_running_loop().time()
            return error_json_response(
                {"kind": "closed", "message": "the daemon is stopping"}, 503, max(1, math.ceil(left))
            )
        host = state.host
        try:
            host.reload_settings()  # an invalid hearth.toml fails every call: not ready
            await host.ready()
        except HearthError as exc:
            return hearth_error_response(exc, 503)
        return Ready(status="ready", within=host.timeouts.store)

    @app.get(
        METRICS,
        operation_id="getMetrics",
        response_class=PlainTextResponse,
        responses={
            **errors(streams=True),  # its errors are JSON, its answer text
            200: {
                "description": "Prometheus' text format (OpenMetrics when Accept asks for "
                "application/openmetrics-text), written by prometheus-client",
                "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}},
                },
            },
        },
    )
    async def metrics(request: Request) -> Response:
        """This daemon's metrics, for Prometheus to scrape: its operations, adapters,
        reconcile rounds, streams and store calls since it started, and the workspaces by
        state and driver (one grouped read of the store; no adapter is asked). The README's
        Metrics section lists each; a TCP listener needs the bearer token, as every path."""
        metrics = _state(request).metrics
        assert metrics is not None
        body, content_type = await metrics.scrape(request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    return app


def openapi_document(app: FastAPI) -> str:
    """The OpenAPI document as committed in docs/openapi.json."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


__all__ = ["API", "STATUS", "create_app", "openapi_document"]
