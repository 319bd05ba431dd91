"""The API v1's own shapes: the request and response models, the error body
(``{"error": {"kind", "message", ...}}``) and the HTTP status of each error kind (``STATUS``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .._errors import AdapterError, HearthError

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
    "store_error": 500,
    "interrupted": 500,
    "closed": 503,
    "unavailable": 503,
    "error": 500,
}
#: The longest ``?wait=`` or ``/wait?timeout=`` (seconds).
WAIT_MAX = 3600.0
#: The largest ``limit``, ``after`` or ``Last-Event-ID``: the store's largest integer (2^63 - 1).
NUMBER_MAX = 2**63 - 1


# --- the API's own models ------------------------------------------------------------------------
class _Body(BaseModel):
    """A request body: unknown keys refused, and JSON types taken strictly (a boolean is
    ``true`` or ``false``, never ``"yes"`` or ``1``; a number is a JSON number, never ``true``
    or ``"5"``; a string is a string), else 400 ``invalid_input``."""

    model_config = ConfigDict(extra="forbid", strict=True)


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
        (408, "invalid_input: the request was not whole within [serve] request_timeout"),
        (409, "conflict, invalid_transition or busy"),
        (413, "invalid_input: the body is larger than [serve] max_body"),
        (422, "invalid_profile or unsupported"),
        (423, "slug_locked"),
        (502, "the adapter failed"),
        (
            503,
            "backend_unavailable; unavailable: a start while the daemon drains (Retry-After); "
            "daemon_unavailable when the listener holds [serve] max_connections",
        ),
        (504, "timeout"),
    )
}
#: ``Location`` of a started operation.
LOCATION = {"Location": {"description": "/v1/operations/{id}", "schema": {"type": "string"}}}


def error_response(kind: str, message: str, status: int | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"kind": kind, "message": message, **extra}}, status_code=status or STATUS.get(kind, 500)
    )


def status_of(error: HearthError) -> int:
    if error.kind in STATUS:
        return STATUS[error.kind]
    return 502 if isinstance(error, AdapterError) else 500
