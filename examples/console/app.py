"""A small web console on ``hearth.HostAPI``: REST endpoints, and progress as Server-Sent Events.

Every uvicorn worker opens its own ``Host`` on the same hearth home (``$HEARTH_HOME``) and project
(``$HEARTH_PROJECT``, default: the nearest folder upward holding ``.hearth/``). The store is
shared, so any worker answers for any operation: it reads it, waits for it, streams its events
and cancels it, whichever worker runs it. Run it with (see README.md):

    HEARTH_HOME=/tmp/hearth uvicorn app:app --workers 2 --uds /tmp/console.sock

With ``$HEARTH_URL`` set (``unix:///path/to.sock``, or ``http(s)://host:port`` with the token in
``$HEARTH_TOKEN``), each worker is a ``RemoteHost`` on that ``hearth serve`` daemon instead: the
code below is written against ``HostAPI``, which both offer, so nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, TypeAdapter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth import Event, HearthError, Host, HostAPI, RemoteHost, Tier

#: HTTP status of each error kind, as the daemon's API v1 answers (``hearth serve``); the
#: adapter's other failures are 502.
STATUS = {
    "invalid_input": 400,
    "not_found": 404,
    "busy": 409,
    "conflict": 409,
    "invalid_transition": 409,
    "invalid_profile": 422,
    "unsupported": 422,
    "slug_locked": 423,
    "backend_unavailable": 503,
    "timeout": 504,
    "store_error": 500,
    "error": 500,
}
#: Seconds of quiet after which an event stream sends a comment (keeps proxies from closing it).
HEARTBEAT = 10.0
TIERS = TypeAdapter(list[Tier])


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One host per worker process, open for the worker's whole life: a ``RemoteHost`` on the
    daemon ``$HEARTH_URL`` names, else a ``Host`` of its own. ``owner`` is who runs the work."""
    async with contextlib.AsyncExitStack() as stack:
        host: HostAPI
        if os.environ.get("HEARTH_URL"):
            remote = await stack.enter_async_context(RemoteHost())
            host, owner = remote, str((await remote.health())["owner"])
        else:
            project, home = os.environ.get("HEARTH_PROJECT") or None, os.environ.get("HEARTH_HOME") or None
            local = await stack.enter_async_context(Host(project_dir=project, home=home, idle_timeout=None))
            host, owner = local, local.owner
        app.state.host, app.state.owner = host, owner
        yield


class WorkerHeader:
    """Names the worker that answered (its host's owner id; the daemon's, on a ``RemoteHost``)
    in ``X-Hearth-Worker``; an operation's ``owner`` names the worker that runs it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                owner = scope["app"].state.owner.encode()
                message["headers"] = [*message.get("headers", []), (b"x-hearth-worker", owner)]
            await send(message)

        await self.app(scope, receive, named if scope["type"] == "http" else send)


app = FastAPI(title="hearth console", lifespan=lifespan)
app.add_middleware(WorkerHeader)


@app.exception_handler(HearthError)
async def hearth_error(request: Request, exc: Exception) -> JSONResponse:
    """``{"error": {"kind", "message", ...}}``, the CLI's JSON error, with a status by kind."""
    error = cast(HearthError, exc)
    return JSONResponse({"error": error.to_json()}, status_code=STATUS.get(error.kind, 502))


def get_host(request: Request) -> HostAPI:
    return cast(HostAPI, request.app.state.host)


HostDep = Annotated[HostAPI, Depends(get_host)]
KeyHeader = Annotated[str | None, Header(alias="Idempotency-Key")]
LastEventId = Annotated[int | None, Header(alias="Last-Event-ID", ge=0)]


def sse(events: AsyncIterator[Event]) -> StreamingResponse:
    """Events as Server-Sent Events: ``id: seq``, ``event: kind``, ``data: <event JSON>``; a
    client resumes with ``Last-Event-ID``. The stream ends when ``events`` does."""

    async def lines() -> AsyncIterator[str]:
        pending: asyncio.Future[Event | None] | None = None
        try:
            while True:
                pending = pending or asyncio.ensure_future(anext(events, None))
                done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT)
                if not done:
                    yield ": keep-alive\n\n"
                    continue
                event, pending = pending.result(), None
                if event is None:
                    return
                yield f"id: {event.seq}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n"
        finally:
            if pending is not None:  # the client left: stop waiting for its next event
                pending.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)


class NewWorkspace(BaseModel):
    slug: str
    tier: str
    driver: str
    reuse: bool = False


class NewTier(BaseModel):
    tier: str


# --- routes --------------------------------------------------------------------------------------
@app.get("/")
async def about(request: Request, host: HostDep) -> dict[str, Any]:
    """Which worker answers, and the tiers it offers."""
    owner = request.app.state.owner
    return {"worker": owner, "tiers": TIERS.dump_python(await host.tiers(), mode="json")}


@app.post("/workspaces", status_code=202)
async def provision(body: NewWorkspace, host: HostDep, key: KeyHeader = None) -> dict[str, Any]:
    op = await host.start_provision(body.slug, tier=body.tier, driver=body.driver, key=key, reuse=body.reuse)
    return op.model_dump(mode="json")


@app.post("/workspaces/{slug}/upgrade", status_code=202)
async def upgrade(slug: str, body: NewTier, host: HostDep, key: KeyHeader = None) -> dict[str, Any]:
    return (await host.start_upgrade(slug, tier=body.tier, key=key)).model_dump(mode="json")


@app.delete("/workspaces/{slug}", status_code=202)
async def teardown(slug: str, host: HostDep, key: KeyHeader = None) -> dict[str, Any]:
    return (await host.start_teardown(slug, key=key)).model_dump(mode="json")


@app.get("/workspaces")
async def workspaces(
    *,
    host: HostDep,
    state: str | None = None,
    driver: str | None = None,
    include_torn_down: bool = True,
    limit: Annotated[int | None, Query(ge=0)] = None,
    after: str | None = None,
) -> list[dict[str, Any]]:
    found = await host.deployments(
        state=state, driver=driver, include_torn_down=include_torn_down, limit=limit, after=after
    )
    return [deployment.model_dump(mode="json") for deployment in found]


@app.get("/workspaces/{slug}")
async def workspace(slug: str, host: HostDep) -> dict[str, Any]:
    return (await host.deployment(slug)).model_dump(mode="json")


@app.get("/workspaces/{slug}/status")
async def status(slug: str, host: HostDep) -> dict[str, Any]:
    """What the backend shows now (asks the adapter)."""
    return (await host.status(slug)).model_dump(mode="json")


@app.get("/operations")
async def operations(
    host: HostDep,
    slug: str | None = None,
    state: str | None = None,
    limit: Annotated[int | None, Query(ge=0)] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> list[dict[str, Any]]:
    found = await host.operations(slug=slug, state=state, limit=limit, after=after)
    return [op.model_dump(mode="json") for op in found]


@app.get("/operations/{ident}")
async def operation(
    ident: int, host: HostDep, wait: Annotated[float | None, Query(gt=0, le=60)] = None
) -> dict[str, Any]:
    """The operation; with ``?wait=SECONDS``, once it finished or when the seconds passed."""
    op = await host.operation(ident)
    return (await op.wait(timeout=wait) if wait else op).model_dump(mode="json")


@app.delete("/operations/{ident}", status_code=202)
async def cancel(ident: int, host: HostDep, reason: str = "cancelled through the console") -> dict[str, Any]:
    """Ask for the operation to be cancelled; whichever worker runs it acts on it."""
    op = await host.operation(ident)
    return (await op.cancel(reason=reason)).model_dump(mode="json")


@app.get("/operations/{ident}/events")
async def operation_events(
    ident: int, host: HostDep, last_event_id: LastEventId = None, after: Annotated[int, Query(ge=0)] = 0
) -> StreamingResponse:
    """The operation's events after ``Last-Event-ID`` (or ``?after=``); ends with its last."""
    op = await host.operation(ident)
    start = after if last_event_id is None else last_event_id
    return sse(op.events(after=start))


@app.get("/events")
async def events(
    host: HostDep,
    last_event_id: LastEventId = None,
    after: Annotated[int, Query(ge=0)] = 0,
    slug: str | None = None,
) -> StreamingResponse:
    """Every event of every worker (and any other process on the home), as they come."""
    return sse(host.watch(after=after if last_event_id is None else last_event_id, slug=slug))
