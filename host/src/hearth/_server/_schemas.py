"""The API v1's own shapes: the request and response models, the error body
(``{"error": {"kind", "message", ...}}``) and the HTTP status of each error kind (``STATUS``)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .._error_json import ErrorDetail
from .._errors import AdapterError, HearthError, Unavailable, retryable_kind
from .._models import Operation

API = "/v1"
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
    "forbidden": 403,
    "store_error": 500,
    "interrupted": 500,
    "closed": 503,
    "unavailable": 503,
    "error": 500,
}
#: ``Retry-After`` (seconds) of the 503 and 423 answers whose error says no time of its own
#: (``unavailable`` says the drain grace left): a backend out of reach is asked again in a
#: while; a closing daemon (``closed``) and a slug's lock held elsewhere (``slug_locked``)
#: pass sooner; a listener at its ``[serve] max_connections`` (``daemon_unavailable``, written by
#: ``_limits``) frees a connection in a moment. The rest of 503s (``store_error`` from
#: ``/v1/ready``) take ``RETRY_AFTER_ANY``.
RETRY_AFTER: dict[str, int] = {
    "backend_unavailable": 10,
    "closed": 5,
    "slug_locked": 5,
    "daemon_unavailable": 1,
    "unavailable": 5,
}
RETRY_AFTER_ANY = 5
#: The statuses whose answers carry ``Retry-After``.
RETRY_STATUSES: frozenset[int] = frozenset({423, 503})
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds after which asking again makes sense: the drain grace left "
        "(unavailable, closed while draining), else backend_unavailable 10, slug_locked 5, "
        "closed 5, daemon_unavailable 1, any other 5",
        "schema": {"type": "integer", "minimum": 1},
    }
}
#: The most problems of an invalid request listed in its ``invalid_input``'s ``errors``.
VALIDATION_PROBLEMS = 20
#: The longest ``?wait=`` or ``/wait?timeout=`` (seconds).
WAIT_MAX = 3600.0
#: The largest ``limit``, ``after`` or ``Last-Event-ID``: the store's largest integer (2^63 - 1).
NUMBER_MAX = 2**63 - 1


# --- the API's own models ------------------------------------------------------------------------
def _defaults_in_words(schema: dict[str, Any]) -> None:
    """A field's default said in its description, not as ``default``: openapi-typescript (by
    its ``defaultNonNullable``) makes every property with a ``default`` required, and a client
    would have to send ``reuse`` or ``dry_run``. Not being in ``required`` says it is optional."""
    for prop in schema.get("properties", {}).values():
        default = prop.pop("default", None)
        if default is not None:
            said = f"Default: {json.dumps(default)}."
            prop["description"] = f"{prop['description']} {said}" if "description" in prop else said


class _Body(BaseModel):
    """A request body: unknown keys refused, and JSON types taken strictly (a boolean is
    ``true`` or ``false``, never ``"yes"`` or ``1``; a number is a JSON number, never ``true``
    or ``"5"``; a string is a string), else 400 ``invalid_input``."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_defaults_in_words)


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
    #: The new workspace's labels (Kubernetes label syntax, at most 64); merged into a failed
    #: one's when it is provisioned again; a provision with nothing to do changes none.
    labels: dict[str, str] | None = None


class LabelChange(_Body):
    """``PATCH /v1/workspaces/{slug}``: set the labels mapped to a value, remove those mapped
    to null."""

    labels: dict[str, str | None]


class NewTier(_Body):
    """``POST /v1/workspaces/{slug}/upgrade``."""

    tier: str
    timeout: Deadline = None


class RunChange(_Body):
    """``POST /v1/workspaces/{slug}/stop`` and ``/start`` (the body may be left out)."""

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
    verb: Literal["provision", "upgrade", "teardown", "stop", "start"]
    tier: str | None = None
    driver: str | None = None


class ReconcileRequest(_Body):
    """``POST /v1/reconcile``: every workspace, or ``slug``; ``dry_run`` changes nothing."""

    slug: str | None = None
    dry_run: bool = False
    timeout: Deadline = None


class Health(BaseModel):
    #: ``stopping`` from the first SIGTERM on: the daemon drains (starts refused), then exits.
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


class Ready(BaseModel):
    """``GET /v1/ready``: the store was checked and can be used (else 503 with the error body)."""

    status: Literal["ready"]
    #: The bound of the check (seconds, ``[timeouts] store``).
    within: float


class ErrorBody(BaseModel):
    """Every error: ``{"error": {"kind", "message", ...}}`` (the library's JSON error)."""

    error: ErrorDetail


#: What each status an error can have means (the kinds it carries, and when).
_ERROR_TEXT: dict[int, str] = {
    400: "invalid_input: the request, or the project's hearth.toml, is not valid",
    401: "unauthorized: a TCP listener (hearth serve --listen) needs its bearer token; "
    "a Unix socket never answers 401",
    403: "forbidden: the token (or the Unix socket, narrowed by --socket-scopes) lacks the scope "
    "this route needs (read, operate or admin; `scope` names it)",
    404: "not_found",
    408: "invalid_input: the request was not whole within [serve] request_timeout",
    409: "conflict, invalid_transition or busy",
    413: "invalid_input: the body is larger than [serve] max_body",
    422: "invalid_profile or unsupported",
    423: "slug_locked: another process holds the slug's lock longer than [timeouts] lock_wait "
    "(with Retry-After)",
    500: "store_error, interrupted, or error (a fault of the daemon; the message says what)",
    502: "the adapter failed: adapter_not_found, adapter_refused, adapter_crashed, "
    "protocol_violation, backend_failure or cancelled",
    503: "backend_unavailable or closed; unavailable: a start while the daemon drains; "
    "daemon_unavailable when the listener holds [serve] max_connections (each with Retry-After)",
    504: "timeout",
}
#: What any request can be answered, whatever its route: no token on a TCP listener, a token
#: without the route's scope, a request not whole in time, a fault of the daemon or its store,
#: a full listener or a stopping daemon.
ALWAYS: tuple[int, ...] = (401, 403, 408, 500, 503)


def errors(*codes: int, streams: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error responses of a route that can answer ``codes`` besides ``ALWAYS``, each with
    the error body: the document lists what a route answers, so a generated client's error
    types are the real ones. A route that ``streams`` names the body's media type itself, as
    FastAPI would give it the stream's."""
    body: dict[str, Any] = (
        {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        if streams
        else {"model": ErrorBody}
    )
    listed: dict[int | str, dict[str, Any]] = {
        code: {**body, "description": _ERROR_TEXT[code]} for code in sorted({*codes, *ALWAYS})
    }
    listed[401]["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
    for code in RETRY_STATUSES & set(listed):
        listed[code]["headers"] = RETRY_AFTER_HEADER
    return listed


#: Every status an error can have: for a route not yet told its own (prefer ``errors()``).
ERRORS = errors(*_ERROR_TEXT)
#: ``Location`` of a started operation.
LOCATION = {"Location": {"description": "/v1/operations/{id}", "schema": {"type": "string"}}}


def started(operation_id: str, *codes: int) -> dict[str, Any]:
    """The route options of a start (provision, upgrade, teardown): 202 while the operation
    runs, 200 once it finished; the operation and ``Location`` on both."""
    return {
        "operation_id": operation_id,
        "status_code": 202,
        "responses": {
            **errors(*codes),
            200: {
                "model": Operation,
                "description": "The operation, finished (within ?wait, or before this request)",
                "headers": LOCATION,
            },
            202: {"description": "The operation, still running", "headers": LOCATION},
        },
    }


def error_json_response(error: dict[str, Any], status: int, retry_after: int | None = None) -> JSONResponse:
    """The error body of ``error`` (a ``to_json()``), with ``retryable`` if it says none, and a
    503 or 423 with ``Retry-After``: ``retry_after``, else the kind's (``RETRY_AFTER``)."""
    kind = str(error.get("kind") or "error")
    body = error if "retryable" in error else {**error, "retryable": retryable_kind(kind)}
    response = JSONResponse({"error": body}, status_code=status)
    if status in RETRY_STATUSES:
        after = retry_after if retry_after is not None else RETRY_AFTER.get(kind, RETRY_AFTER_ANY)
        response.headers["Retry-After"] = str(after)
    return response


def error_response(kind: str, message: str, status: int | None = None, **extra: Any) -> JSONResponse:
    return error_json_response({"kind": kind, "message": message, **extra}, status or STATUS.get(kind, 500))


def hearth_error_response(error: HearthError, status: int | None = None) -> JSONResponse:
    """A ``HearthError``'s answer: its body, its status by kind (or ``status``), and
    ``Retry-After`` on a 503 or 423 (an ``unavailable``'s own ``retry_after``)."""
    after = error.retry_after if isinstance(error, Unavailable) else None
    return error_json_response(error.to_json(), status or status_of(error), after)


def status_of(error: HearthError) -> int:
    if error.kind in STATUS:
        return STATUS[error.kind]
    return 502 if isinstance(error, AdapterError) else 500
