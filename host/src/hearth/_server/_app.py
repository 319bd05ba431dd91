"""``hearth serve``: the daemon, a JSON-over-HTTP API v1 on a ``Host`` (FastAPI on uvicorn).

``create_app(host)`` is the API on an open host; ``serve(...)`` runs it on the home's Unix socket
(mode 0600; one daemon per home, held by a lock file for the daemon's life) and, with
``listen=``, on a TCP port that asks for a bearer token. A mutating call answers 202 with the
operation and ``Location: /v1/operations/{id}``; ``?wait=SECONDS`` answers 200 once it finished.
Errors are ``{"error": {"kind", "message", ...}}`` with a status by kind (``STATUS``).

Needs the ``serve`` extra (``pip install 'hearth[serve]'``): fastapi and uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import hmac
import json
import logging
import os
import random
import signal
import socket
import ssl
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal, cast

import uvicorn
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth_adaptersdk import PlanResult, StatusReport

from .._adapters._discovery import DriverInfo
from .._dirs import SERVE_LOCK_FILE, SOCKET_FILE, find_project_dir, state_dir
from .._errors import AdapterError, HearthError, InvalidInput
from .._lifecycle._host import Host
from .._models import CheckResult, Deployment, Event, Operation, ReconcileReport
from .._settings import Tier

log = logging.getLogger("hearth.serve")

API = "/v1"
LOCK_FILE = SERVE_LOCK_FILE
#: HTTP status of each error kind; an adapter's other failures are 502, the host's 500.
STATUS: dict[str, int] = {
    "invalid_input": 400,
    "not_found": 404,
    "conflict": 409,
    "invalid_transition": 409,
    "busy": 409,
    "invalid_profile": 422,
    "unsupported": 422,
    "slug_locked": 423,
    "backend_unavailable": 503,
    "timeout": 504,
    "adapter_not_found": 502,
    "adapter_refused": 502,
    "adapter_crashed": 502,
    "protocol_violation": 502,
    "backend_failure": 502,
    "cancelled": 502,
    "unauthorized": 401,
    "store_error": 500,
    "interrupted": 500,
    "closed": 503,
    "error": 500,
}
#: Seconds of quiet after which a Server-Sent Events stream sends a comment.
HEARTBEAT = 10.0
#: The longest ``?wait=`` or ``/wait?timeout=`` (seconds).
WAIT_MAX = 3600.0
#: How long uvicorn lets requests in flight finish after SIGTERM (streams end at once).
GRACEFUL = 5
#: The longest path a Unix socket may have (sun_path is 108 bytes with its NUL).
SUN_PATH_MAX = 107


# --- the API's own models ------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: A deadline in seconds for the adapter's work (the verb's default from ``[timeouts]`` when
#: left out); when it passes, the adapter is told to cancel, as the CLI's ``--timeout`` does.
Deadline = Annotated[float | None, Field(gt=0, le=WAIT_MAX * 24)]


class NewWorkspace(_Body):
    """``POST /v1/workspaces``: provision ``slug``."""

    slug: str
    tier: str
    driver: str
    #: Provision a torn-down slug again (its old record is archived).
    reuse: bool = False
    timeout: Deadline = None


class NewTier(_Body):
    """``POST /v1/workspaces/{slug}/upgrade``."""

    tier: str
    timeout: Deadline = None


class PlanRequest(_Body):
    """``POST /v1/plan``: what provision or upgrade of ``slug`` to ``tier`` would do; changes
    nothing (``driver`` is needed for a new workspace)."""

    slug: str
    tier: str
    driver: str | None = None
    timeout: Deadline = None


class AdoptRequest(_Body):
    """``POST /v1/workspaces/{slug}/adopt``: record a deployment the driver lists."""

    driver: str
    tier: str
    timeout: Deadline = None


class CheckRequest(_Body):
    """``POST /v1/check``: whether the verb would be accepted now; starts nothing."""

    slug: str
    verb: Literal["provision", "upgrade", "teardown"]
    tier: str | None = None
    driver: str | None = None


class ReconcileRequest(_Body):
    """``POST /v1/reconcile``: every workspace, or ``slug``; ``dry_run`` changes nothing."""

    slug: str | None = None
    dry_run: bool = False
    timeout: Deadline = None


class Health(BaseModel):
    status: Literal["ok", "stopping"]
    version: str
    #: The host process that runs this daemon's operations (``host:pid:token``).
    owner: str
    #: Operations this daemon runs now.
    running: int
    #: The project whose hearth.toml and adapters the daemon uses.
    project: str | None = None
    #: How long a cancelled operation waits for its adapter's rollback (seconds).
    cancel_grace: float | None = None


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: str
    message: str


class ErrorBody(BaseModel):
    """Every error: ``{"error": {"kind", "message", ...}}`` (the library's JSON error)."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "invalid_input"),
        (404, "not_found"),
        (409, "conflict, invalid_transition or busy"),
        (422, "invalid_profile or unsupported"),
        (423, "slug_locked"),
        (502, "the adapter failed"),
        (503, "backend_unavailable"),
        (504, "timeout"),
    )
}
#: ``Location`` of a started operation.
LOCATION = {"Location": {"description": "/v1/operations/{id}", "schema": {"type": "string"}}}


def _error(kind: str, message: str, status: int | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"kind": kind, "message": message, **extra}}, status_code=status or STATUS.get(kind, 500)
    )


def _status_of(error: HearthError) -> int:
    if error.kind in STATUS:
        return STATUS[error.kind]
    return 502 if isinstance(error, AdapterError) else 500


# --- plumbing ------------------------------------------------------------------------------------
@dataclass
class _State:
    host: Host
    #: Set when the daemon stops: streams and waits end so uvicorn can shut down.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class _Token:
    """Bearer-token check for TCP listeners (compared in constant time); a Unix socket's
    connections (``scope["server"]`` has no port) need none."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server is not None and server[1] is not None:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, credential = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.expected):
                why = (
                    "this token is not the daemon's"
                    if scheme.lower() == b"bearer"
                    else "a bearer token is needed (Authorization: Bearer ...; HEARTH_TOKEN for the CLI)"
                )
                response = _error("unauthorized", why)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _state(request: Request) -> _State:
    return cast(_State, request.app.state.hearth)


async def _until_stopped(state: _State, events: AsyncIterator[Event]) -> AsyncIterator[Event | None]:
    """The events, with None after ``HEARTBEAT`` seconds of quiet; ends when the daemon stops.
    A client that leaves cancels this generator: its pending read is cancelled, nothing else."""
    pending: asyncio.Future[Event | None] | None = None
    stopping: asyncio.Future[Any] = asyncio.ensure_future(state.stopping.wait())
    try:
        while not state.stopping.is_set():
            pending = pending or asyncio.ensure_future(anext(events, None))
            done, _ = await asyncio.wait(
                {pending, stopping}, timeout=HEARTBEAT, return_when="FIRST_COMPLETED"
            )
            if pending not in done:
                if stopping in done:
                    return
                yield None
                continue
            event, pending = pending.result(), None
            if event is None:
                return
            yield event
    finally:
        stopping.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(events, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


def _ndjson(state: _State, events: AsyncIterator[Event]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for event in _until_stopped(state, events):
            if event is not None:
                yield event.model_dump_json() + "\n"

    return StreamingResponse(
        lines(), media_type="application/x-ndjson", headers={"Cache-Control": "no-cache"}
    )


def _sse(state: _State, events: AsyncIterator[Event]) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        async for event in _until_stopped(state, events):
            if event is None:
                yield ": keep-alive\n\n"
            else:
                yield f"id: {event.seq}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)


async def _waited(state: _State, op: Operation, wait: float | None) -> Operation:
    """``op`` once finished, or when ``wait`` seconds passed (or the daemon stops)."""
    if not wait or op.finished:
        return op
    waiting = asyncio.ensure_future(op.wait(timeout=wait))
    stopping = asyncio.ensure_future(state.stopping.wait())
    try:
        await asyncio.wait({waiting, stopping}, return_when="FIRST_COMPLETED")
    finally:
        stopping.cancel()
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
    return waiting.result() if waiting.done() and not waiting.cancelled() else op


def _started(op: Operation, response: Response) -> Operation:
    response.status_code = 200 if op.finished else 202
    response.headers["Location"] = f"{API}/operations/{op.id}"
    return op


KeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", description="maps to the operation's key (1 to 200 characters)"),
]
Wait = Annotated[
    float | None,
    Query(gt=0, le=WAIT_MAX, description="answer once finished (200) or after this many seconds (202)"),
]
Limit = Annotated[int | None, Query(ge=0)]
QueryDeadline = Annotated[
    float | None, Query(gt=0, le=WAIT_MAX * 24, description="deadline for the adapter's work (seconds)")
]


# --- the app -------------------------------------------------------------------------------------
def create_app(host: Host, *, token: str | None = None) -> FastAPI:  # noqa: PLR0915 - the routes
    """The API v1 on ``host`` (open it first, close it after the app stops). With ``token``,
    every request that does not come through a Unix socket needs ``Authorization: Bearer``."""
    from .. import __version__

    async def settings_valid(request: Request) -> None:
        """Every call but ``/health`` fails ``invalid_input`` while hearth.toml is invalid, as
        the CLI does run locally: never an answer from settings that are no longer the file's."""
        if request.url.path != f"{API}/health":
            _state(request).host.reload_settings()

    app = FastAPI(
        title="hearth",
        version=__version__,
        summary="Workspaces through pluggable adapters: the hearth daemon's API v1.",
        responses=cast(dict[int | str, dict[str, Any]], {500: {"model": ErrorBody}}),
        dependencies=[Depends(settings_valid)],
    )
    app.state.hearth = _State(host)
    if token is not None:
        app.add_middleware(_Token, token=token)

    @app.exception_handler(HearthError)
    async def hearth_error(request: Request, exc: Exception) -> JSONResponse:
        error = cast(HearthError, exc)
        return JSONResponse({"error": error.to_json()}, status_code=_status_of(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        problems = cast(RequestValidationError, exc).errors()
        where = "; ".join(
            f"{'.'.join(str(part) for part in p.get('loc', ()))}: {p.get('msg', '')}" for p in problems[:5]
        )
        return _error("invalid_input", f"invalid request: {where}", 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        error = cast(StarletteHTTPException, exc)
        kind = {404: "not_found", 405: "invalid_input"}.get(error.status_code, "error")
        response = _error(kind, str(error.detail), error.status_code)
        response.headers.update(error.headers or {})  # 405's Allow
        return response

    router_options: dict[str, Any] = {"responses": ERRORS}

    # --- workspaces ------------------------------------------------------------------------------
    @app.get(f"{API}/workspaces", **router_options)
    async def workspaces(
        request: Request,
        *,
        state: str | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: Limit = None,
        after: str | None = None,
    ) -> list[Deployment]:
        """The records by slug; ``after``: the last slug of the previous page."""
        return await _state(request).host.deployments(
            state=state, driver=driver, include_torn_down=include_torn_down, limit=limit, after=after
        )

    @app.get(f"{API}/workspaces/{{slug}}", **router_options)
    async def workspace(slug: str, request: Request) -> Deployment:
        return await _state(request).host.deployment(slug)

    @app.get(f"{API}/workspaces/{{slug}}/status", **router_options)
    async def workspace_status(slug: str, request: Request, timeout: QueryDeadline = None) -> StatusReport:
        """What the backend shows now (asks the adapter)."""
        return await _state(request).host.status(slug, timeout=timeout)

    @app.get(f"{API}/workspaces/{{slug}}/logs", **router_options)
    async def workspace_logs(slug: str, request: Request, limit: Limit = None) -> list[Operation]:
        """The operations run on the slug, each with its log."""
        return await _state(request).host.logs(slug, limit=limit)

    started: dict[str, Any] = {
        "status_code": 202,
        "responses": {**ERRORS, 200: {"description": "finished within ?wait", "headers": LOCATION}},
    }

    @app.post(f"{API}/workspaces", **started)
    async def provision(
        body: NewWorkspace, request: Request, response: Response, key: KeyHeader = None, wait: Wait = None
    ) -> Operation:
        """Provision: 202 with the operation (``Location`` names it)."""
        state = _state(request)
        op = await state.host.start_provision(
            body.slug, tier=body.tier, driver=body.driver, key=key, reuse=body.reuse, timeout=body.timeout
        )
        return _started(await _waited(state, op, wait), response)

    @app.post(f"{API}/workspaces/{{slug}}/upgrade", **started)
    async def upgrade(
        slug: str,
        body: NewTier,
        request: Request,
        *,
        response: Response,
        key: KeyHeader = None,
        wait: Wait = None,
    ) -> Operation:
        state = _state(request)
        op = await state.host.start_upgrade(slug, tier=body.tier, key=key, timeout=body.timeout)
        return _started(await _waited(state, op, wait), response)

    @app.delete(f"{API}/workspaces/{{slug}}", **started)
    async def teardown(
        slug: str,
        request: Request,
        *,
        response: Response,
        key: KeyHeader = None,
        wait: Wait = None,
        timeout: QueryDeadline = None,
    ) -> Operation:
        """Teardown (irreversible)."""
        state = _state(request)
        op = await state.host.start_teardown(slug, key=key, timeout=timeout)
        return _started(await _waited(state, op, wait), response)

    @app.post(f"{API}/workspaces/{{slug}}/adopt", **router_options)
    async def adopt(slug: str, body: AdoptRequest, request: Request) -> Deployment:
        """Record a deployment the driver lists but hearth has no record of (recorded as an
        operation); the new record."""
        host = _state(request).host
        return await host.adopt(slug, driver=body.driver, tier=body.tier, timeout=body.timeout)

    @app.post(f"{API}/workspaces/{{slug}}/forget", **router_options)
    async def forget(slug: str, request: Request) -> Deployment:
        """Drop the record of ``slug`` and leave its backend alone; the record as it was."""
        return await _state(request).host.forget(slug)

    # --- operations ------------------------------------------------------------------------------
    @app.get(f"{API}/operations", **router_options)
    async def operations(
        request: Request,
        slug: str | None = None,
        state: str | None = None,
        limit: Limit = None,
        after: Annotated[int | None, Query(ge=0)] = None,
    ) -> list[Operation]:
        """Operations by id; ``after``: the last id of the previous page."""
        return await _state(request).host.operations(slug=slug, state=state, limit=limit, after=after)

    @app.get(f"{API}/operations/{{ident}}", **router_options)
    async def operation(ident: int, request: Request) -> Operation:
        return await _state(request).host.operation(ident)

    @app.get(
        f"{API}/operations/{{ident}}/wait",
        responses={**ERRORS, 202: {"description": "still running after the timeout", "model": Operation}},
    )
    async def operation_wait(
        ident: int,
        request: Request,
        response: Response,
        timeout: Annotated[float, Query(gt=0, le=WAIT_MAX)] = 30.0,
    ) -> Operation:
        """The operation once finished (200), or after ``timeout`` seconds (202)."""
        state = _state(request)
        op = await _waited(state, await state.host.operation(ident), timeout)
        response.status_code = 200 if op.finished else 202
        return op

    @app.delete(f"{API}/operations/{{ident}}", status_code=202, **router_options)
    async def operation_cancel(
        ident: int, request: Request, reason: str = "cancelled through the API"
    ) -> Operation:
        """Ask for the operation to be cancelled (its rollback follows; watch it or wait)."""
        op = await _state(request).host.operation(ident)
        return await op.cancel(reason=reason)

    # --- events ----------------------------------------------------------------------------------
    @app.get(
        f"{API}/events",
        response_model=None,
        responses={
            **ERRORS,
            200: {
                "description": "one Event per line (NDJSON), kept open; Server-Sent Events "
                "(id: seq) with Accept: text/event-stream",
                "content": {
                    "application/x-ndjson": {"schema": {"$ref": "#/components/schemas/Event"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
        },
    )
    async def events(
        request: Request,
        after: Annotated[int, Query(ge=0)] = 0,
        slug: str | None = None,
        accept: Annotated[str | None, Header()] = None,
        last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0)] = None,
    ) -> StreamingResponse:
        """Every event of every process on the home after ``after`` (or ``Last-Event-ID``)."""
        state = _state(request)
        stream = state.host.watch(after=after if last_event_id is None else last_event_id, slug=slug)
        if accept is not None and "text/event-stream" in accept:
            return _sse(state, stream)
        return _ndjson(state, stream)

    # --- the rest --------------------------------------------------------------------------------
    @app.get(f"{API}/tiers", **router_options)
    async def tiers(request: Request) -> list[Tier]:
        return await _state(request).host.tiers()

    @app.get(f"{API}/drivers", **router_options)
    async def drivers(request: Request) -> list[DriverInfo]:
        """What discovery finds for each driver (path, version, refusals) and the in-process ones."""
        return await _state(request).host.drivers()

    @app.post(f"{API}/check", **router_options)
    async def check(body: CheckRequest, request: Request) -> CheckResult:
        return await _state(request).host.check(body.slug, body.verb, tier=body.tier, driver=body.driver)

    @app.post(f"{API}/plan", **router_options)
    async def plan(body: PlanRequest, request: Request) -> PlanResult:
        """The adapter's plan; ``unsupported`` (422) when it does not announce ``plan``."""
        host = _state(request).host
        return await host.plan(body.slug, tier=body.tier, driver=body.driver, timeout=body.timeout)

    @app.post(f"{API}/reconcile", **router_options)
    async def reconcile(body: ReconcileRequest, request: Request) -> ReconcileReport:
        host = _state(request).host
        return await host.reconcile(body.slug, dry_run=body.dry_run, timeout=body.timeout)

    @app.get(f"{API}/health")
    async def health(request: Request) -> Health:
        state = _state(request)
        running = len(await state.host.operations(state="running"))
        status: Literal["ok", "stopping"] = "stopping" if state.stopping.is_set() else "ok"
        host = state.host
        return Health(
            status=status,
            version=__version__,
            owner=host.owner,
            running=running,
            project=str(host.project_dir),
            cancel_grace=host.timeouts.cancel_grace,
        )

    return app


def openapi_document(app: FastAPI) -> str:
    """The OpenAPI document as committed in docs/openapi.json."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


# --- the daemon ----------------------------------------------------------------------------------
class ServeError(HearthError):
    """The daemon cannot start (another one runs, a socket or token problem)."""

    kind = "serve_error"


def default_socket(home: str | Path | None = None) -> Path:
    return state_dir(home) / SOCKET_FILE


@contextlib.contextmanager
def _held(path: Path, what: str, project: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block (the daemon's life), with our pid and the
    project we serve in it (the CLI reads them to choose between the daemon and itself)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ServeError(f"cannot lock {path} for {what}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = (os.pread(fd, 32, 0).decode(errors="replace").splitlines() or ["?"])[0].strip() or "?"
            raise ServeError(f"another hearth daemon (pid {other}) already serves {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{project}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _unix_socket(path: Path, group: str | None = None) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 (0660 and owned by ``group`` when given);
    a stale file there (we hold the lock, so no live daemon owns it) is replaced."""
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ServeError(f"--socket-group {group[:80]!r}: no such group") from None
    if len(str(path)) > SUN_PATH_MAX:
        raise ServeError(f"the socket path {path} is longer than {SUN_PATH_MAX} bytes; use --socket")
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ServeError(f"{path} exists and is not a socket; remove it or choose another --socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(previous)
    try:
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, 0o600 if gid is None else 0o660)
    except OSError as exc:
        sock.close()
        path.unlink(missing_ok=True)
        raise ServeError(f"cannot give the socket {path} to group {group}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def read_token(path: str | Path) -> str:
    """The bearer token in ``path``: a regular file of ours, mode 0600 (no group or other bits)."""
    file = Path(path)
    try:
        info = file.stat()
    except OSError as exc:
        raise ServeError(f"the token file {file} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ServeError(f"the token file {file} is not a regular file")
    if info.st_mode & 0o077:
        raise ServeError(f"the token file {file} is mode {stat.S_IMODE(info.st_mode):o}; make it 0600")
    if info.st_uid != os.getuid():
        raise ServeError(f"the token file {file} is not yours")
    token = file.read_text().strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ServeError(f"the token in {file} must be one word of at least 16 characters")
    return token


def _tcp_socket(listen: str) -> socket.socket:
    address, _, port = listen.rpartition(":")
    address = address.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ServeError(f"--listen {listen[:80]!r}: expected HOST:PORT")
    try:
        family = socket.getaddrinfo(address, int(port), type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, int(port)))
    except OSError as exc:
        raise ServeError(f"cannot listen on {listen[:80]}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLines() if log_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class _Server(uvicorn.Server):
    """uvicorn, which also ends the app's streams and waits, and stops the daemon's other
    listener, when it is told to stop."""

    def __init__(self, config: uvicorn.Config, state: _State, ready: str = "") -> None:
        super().__init__(config)
        self.hearth = state
        self.loop = asyncio.get_running_loop()
        self.siblings: list[uvicorn.Server] = []
        #: Logged once listening, with uvicorn's signal handlers in place: from then on a
        #: SIGTERM stops the daemon (one that came earlier is acted on here).
        self.ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.ready:
            log.info("%s", self.ready)
        if _early:
            self.handle_exit(_early[0], None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("%s: stopping; operations in flight get the drain grace", signal.Signals(sig).name)
        self.loop.call_soon_threadsafe(self.hearth.stopping.set)
        super().handle_exit(sig, frame)
        for sibling in self.siblings:
            sibling.should_exit = True


class _Sibling(uvicorn.Server):
    """The TCP listener's server (its own config: TLS applies to it alone); the Unix socket's
    server takes the signals and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


#: A SIGTERM or SIGINT that came before uvicorn took the signals over.
_early: list[int] = []


def _noted(signum: int, frame: FrameType | None) -> None:
    """Until uvicorn takes the signals over, a signal is kept for it to act on once it has
    started; after it stopped, what it re-raises is already handled (the host drains next)."""
    _early.append(signum)


async def _reconcile_periodically(host: Host, stopping: asyncio.Event, reload: asyncio.Event) -> None:
    """The daemon's self-healing: ``reconcile`` once at start (what a dead daemon left is
    settled before anyone asks), then every ``[serve] reconcile_interval`` seconds, each wait
    varied by ``reconcile_jitter`` so that replicas do not run in step; a SIGHUP (``reload``)
    makes a new interval count at once. It changes what reconcile changes (records a dead host
    left; ghosts marked failed) and logs it; an orphan is logged once."""
    orphans: set[tuple[str, str]] = set()
    delay = 0.0  # the first one at once
    while True:
        reload.clear()
        if await _woken(stopping, reload, delay):
            if stopping.is_set():
                return
            delay = _next_delay(host, _interval(host))  # reloaded: the new interval counts
            continue
        interval = _interval(host)
        delay = _next_delay(host, interval)
        if not interval:
            continue  # off (0), or no settings to go by: look again later
        try:
            report = await host.reconcile()
        except HearthError as exc:
            log.warning("reconcile failed: %s: %s", exc.kind, exc.message)
            continue
        except Exception:
            log.exception("reconcile failed unexpectedly")
            continue
        found = [
            f"{slug}: {old} -> {new}" if old != new else f"{slug}: {old}, now confirmed"
            for slug, old, new in report.resolved
        ] + [f"ghost {slug}" for slug in report.ghosts]
        for ref in report.orphans:
            if (ref.workspace_slug, ref.driver) not in orphans:
                orphans.add((ref.workspace_slug, ref.driver))
                found.append(f"orphan {ref.workspace_slug} on {ref.driver} (no record; left in place)")
        found += [f"unreachable {driver}: {why}" for driver, why in report.unreachable.items()]
        if found:
            log.info("reconcile: %s", "; ".join(found))


def _interval(host: Host) -> float:
    try:
        return host.reload_settings().serve.reconcile_interval
    except HearthError as exc:
        log.warning("reconcile: the settings cannot be read (%s); trying again in 60 s", exc.message)
        return 0.0


def _next_delay(host: Host, interval: float) -> float:
    """The wait before the next reconcile: the interval, varied by the settings' jitter (60 s
    when off, to look at the settings again)."""
    jitter = host.settings.serve.reconcile_jitter
    return (interval or 60.0) * (1 + random.uniform(-jitter, jitter))


async def _woken(stopping: asyncio.Event, reload: asyncio.Event, timeout: float) -> bool:
    """Whether the daemon is stopping or was told to reload within ``timeout`` seconds."""
    waiting = {asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(reload.wait())}
    try:
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for task in waiting:
            task.cancel()
    return bool(done)


def _on_sighup(host: Host, reload: asyncio.Event) -> None:
    try:
        host.reload_settings()
    except HearthError as exc:
        log.error("SIGHUP: the settings are invalid and every call fails until fixed: %s", exc.message)
    else:
        log.info("SIGHUP: settings re-read from %s", host.settings.source or "the built-in defaults")
    reload.set()


async def _run(
    *,
    project: str | None,
    home: str | None,
    store_url: str | None,
    unix: socket.socket,
    tcp: socket.socket | None,
    tls: tuple[str, str] | None,
    token: str | None,
    where: str,
) -> None:
    loop = asyncio.get_running_loop()
    async with Host(project_dir=project, home=home, idle_timeout=None, store_url=store_url) as host:
        app = create_app(host, token=token)
        state = cast(_State, app.state.hearth)
        options: dict[str, Any] = {
            "log_config": None,
            "timeout_graceful_shutdown": GRACEFUL,
            "lifespan": "off",
            "access_log": True,
        }
        ready = f"hearth daemon {host.owner} serving {where} (home {host.state_dir})"
        server = _Server(uvicorn.Config(app, **options), state, ready)
        servers: list[uvicorn.Server] = [server]
        serving = [server.serve(sockets=[unix])]
        if tcp is not None:
            certificate: dict[str, Any] = (
                {} if tls is None else {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]}
            )
            sibling = _Sibling(uvicorn.Config(app, **options, **certificate))
            server.siblings.append(sibling)
            servers.append(sibling)
            serving.append(sibling.serve(sockets=[tcp]))
        reload = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, _on_sighup, host, reload)
        healing = loop.create_task(
            _reconcile_periodically(host, state.stopping, reload), name="hearth-reconcile"
        )
        failed: list[BaseException] = []
        try:
            for done in asyncio.as_completed(serving):
                try:
                    await done
                except Exception as exc:  # one listener down: the daemon stops, and says why
                    log.error("a listener failed: %r; stopping", exc)
                    failed.append(exc)
                    state.stopping.set()
                    for each in servers:
                        each.should_exit = True
        finally:
            state.stopping.set()
            for each in servers:
                each.should_exit = True
            healing.cancel()
            with contextlib.suppress(BaseException):
                await healing
            loop.remove_signal_handler(signal.SIGHUP)
            log.info("stopped serving; closing the host (drain grace %s s)", host.timeouts.drain_grace)
    log.info("hearth daemon stopped")
    if failed:
        raise ServeError(f"a listener failed: {failed[0]!r}")


def _readable_file(path: str | Path, what: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise ServeError(f"the {what} {file} is not a readable file")
    return str(file)


def serve(
    *,
    socket_path: str | Path | None = None,
    listen: str | None = None,
    token_file: str | Path | None = None,
    home: str | Path | None = None,
    project: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    socket_group: str | None = None,
    store_url: str | None = None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT; ``ServeError`` when it cannot start."""
    if listen is not None and token_file is None:
        raise ServeError("--listen needs --token-file (a file of mode 0600 holding the bearer token)")
    if token_file is not None and listen is None:
        raise InvalidInput("--token-file is only for --listen")
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    if tls_cert is not None and listen is None:
        raise InvalidInput("--tls-cert and --tls-key are for --listen (the Unix socket needs no TLS)")
    tls = None
    if tls_cert is not None and tls_key is not None:
        tls = (_readable_file(tls_cert, "certificate"), _readable_file(tls_key, "key"))
        if Path(tls[1]).stat().st_mode & 0o077:
            raise ServeError(f"the TLS key {tls[1]} is readable by others; make it 0600")
        try:  # what uvicorn will load: a bad pair is refused now, not when a client connects
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls[0], tls[1])
        except (ssl.SSLError, OSError) as exc:
            raise ServeError(f"--tls-cert {tls[0]} and --tls-key {tls[1]} cannot be used: {exc}") from None
    token = read_token(token_file) if token_file is not None else None
    folder = state_dir(home)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ServeError(f"the hearth home {folder} cannot be created: {exc.strerror or exc}") from None
    project_dir = find_project_dir(project)
    path = Path(socket_path) if socket_path is not None else folder / SOCKET_FILE
    _early.clear()
    previous = {signum: signal.signal(signum, _noted) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_held(folder / LOCK_FILE, f"the home {folder}", project_dir))
            # the socket's own lock, whichever home it belongs to: a daemon never takes over a
            # socket another one serves, even from another home
            lock = path.with_name(path.name + ".lock")
            stack.enter_context(_held(lock, f"the socket {path}", project_dir))
            unix = _unix_socket(path, socket_group)
            stack.callback(lambda: path.unlink(missing_ok=True))
            stack.callback(unix.close)
            where = f"unix:{path}"
            tcp = None
            if listen is not None:
                tcp = _tcp_socket(listen)
                stack.callback(tcp.close)
                where += f" and {'https' if tls else 'http'}://{listen} (bearer token)"
            asyncio.run(
                _run(
                    project=str(project_dir),
                    home=None if home is None else str(home),
                    store_url=store_url,
                    unix=unix,
                    tcp=tcp,
                    tls=tls,
                    token=token,
                    where=where,
                )
            )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


__all__ = [
    "ServeError",
    "create_app",
    "default_socket",
    "openapi_document",
    "read_token",
    "serve",
]
