"""The JSON an error has (``HearthError.to_json()``, the daemon's ``{"error": ...}``, an
operation's ``error``), as models for the OpenAPI document: one per kind, each with its own
fields, joined in ``ErrorDetail``, a union discriminated by ``kind``.

Every error carries ``kind``, ``message`` and ``retryable`` (``_errors.RETRYABLE``); one an
operation recorded may carry ``changed_nothing`` (the verb left the record as it was). Each
model allows other members: an adapter's error carries its ``data`` as well, and a newer hearth
may add fields (only add: a client ignores what it does not know). ``tests/test_openapi.py``
checks that every kind of the error tree has its model here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from hearth_adaptersdk import DeploymentRef


def _optional_in_words(schema: dict[str, Any]) -> None:
    """No ``default`` in the schema (openapi-typescript would make such a property required):
    a property not in ``required`` may be left out, and is when it has nothing to say."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class _Error(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=_optional_in_words)

    message: str = Field(
        description="What happened, for a person (a console switches on `kind` and its fields, never this)."
    )
    retryable: bool = Field(
        description="Whether asking the same thing again later may succeed with nothing else changed."
    )
    changed_nothing: bool | None = Field(
        default=None,
        description="On an operation's error: the verb left the record (and the backend) as it was.",
    )


class _AdapterError(_Error):
    code: int | None = Field(
        default=None,
        description=(
            "The protocol's error code the adapter answered (absent on one the host recorded itself)."
        ),
    )


class ValidationProblem(BaseModel):
    """One problem pydantic found in a request: where (``loc``, the path into the request:
    ``body``, ``query``, then field names and indexes) and what (``msg``)."""

    loc: list[str | int]
    msg: str


class ErrorInvalidInput(_Error):
    """400 (408 for a request not whole in time, 413 for a body too large, 405 for a method a
    route does not answer): the request, or the project's hearth.toml, is not valid."""

    kind: Literal["invalid_input"]
    errors: list[ValidationProblem] | None = Field(
        default=None, description="A request body or query pydantic refused: each problem, where and what."
    )


class ErrorNotFound(_Error):
    """404: no such workspace or operation (or route)."""

    kind: Literal["not_found"]


class ErrorBusy(_Error):
    """409: another operation runs on the slug and does something else; retryable."""

    kind: Literal["busy"]
    operation: int | None = Field(description="The slug's running operation (its id), to watch or wait for.")


class ErrorInterrupted(_Error):
    """500 (or an operation's error): its host stopped before it finished."""

    kind: Literal["interrupted"]
    rolled_back: bool | None = None


class ErrorAdapterNotFound(_Error):
    """502: no ``hearth-adapter-<driver>`` anywhere."""

    kind: Literal["adapter_not_found"]


class ErrorAdapterRefused(_Error):
    """502: an adapter was found, but is unsafe or not the driver's."""

    kind: Literal["adapter_refused"]


class ErrorAdapterCrashed(_Error):
    """502: the adapter's process died."""

    kind: Literal["adapter_crashed"]
    exit_code: int | None
    stderr_tail: list[str] = Field(description="The last lines it wrote to stderr (at most 20).")


class ErrorProtocolViolation(_Error):
    """502: the adapter broke the wire contract."""

    kind: Literal["protocol_violation"]


class ErrorTimeout(_Error):
    """504: no answer within the bound; retryable."""

    kind: Literal["timeout"]
    rolled_back: bool | None = Field(
        description=(
            "What the adapter confirmed after the cancel: true (it undid its work), false (it could not),"
            " null (it never answered)."
        ),
    )


class ErrorSlugLocked(_Error):
    """423 (with ``Retry-After``): another process holds the slug's lock too long; retryable."""

    kind: Literal["slug_locked"]


class ErrorClosed(_Error):
    """503 (with ``Retry-After``): the daemon, or the host under it, is closing; retryable."""

    kind: Literal["closed"]


class ErrorStoreError(_Error):
    """500 (503 from ``/v1/ready``): the store or the home cannot be used; retryable (an
    outage passes; a corrupt file or a newer schema does not: the message names the path)."""

    kind: Literal["store_error"]


class ErrorDaemonUnavailable(_Error):
    """503 (with ``Retry-After``): the listener holds ``[serve] max_connections``; a client's
    own when no daemon answers; retryable."""

    kind: Literal["daemon_unavailable"]


class ErrorUnauthorized(_Error):
    """401: a TCP listener needs its bearer token."""

    kind: Literal["unauthorized"]


class ErrorForbidden(_Error):
    """403: the token (or the Unix socket, narrowed by ``--socket-scopes``) lacks the scope the
    route needs; ``scope`` names it."""

    kind: Literal["forbidden"]
    scope: Literal["read", "operate", "admin"] | None = Field(
        default=None, description="The scope the request needs and its credential lacks."
    )


class ErrorUnavailable(_Error):
    """503 (with ``Retry-After``): the daemon drains; it starts no new work; retryable."""

    kind: Literal["unavailable"]
    retry_after: int | None = Field(
        description="Seconds after which asking again makes sense (as `Retry-After`)."
    )


class ErrorConflict(_AdapterError):
    """409: the request conflicts with what exists; ``reason`` says how."""

    kind: Literal["conflict"]
    reason: Literal["key_reused", "other_tier", "other_driver", "recorded", "backend"] = Field(
        description=(
            "`key_reused`: the idempotency key was used for a request with other arguments (`operation`);"
            " `other_tier`: the workspace, or the deployment to adopt, has another tier; `other_driver`: "
            "the workspace is on another driver; `recorded`: adopt of a slug with a live record; "
            "`backend`: the adapter's backend holds it otherwise (`existing`)."
        ),
    )
    existing: DeploymentRef | None = Field(
        default=None, description="What exists in the way (the workspace's ref), when known."
    )
    operation: int | None = Field(
        default=None, description="The operation the idempotency key was used for (`key_reused`)."
    )


class ErrorInvalidTransition(_AdapterError):
    """409: the verb does not apply to the record's (or operation's) state."""

    kind: Literal["invalid_transition"]
    state: str | None = Field(
        default=None,
        description="The state that refuses it: the record's, or for a refused cancel the operation's.",
    )
    operation: int | None = Field(default=None, description="A refused cancel: the operation (finished).")


class ErrorUnsupported(_AdapterError):
    """422: the adapter cannot do it."""

    kind: Literal["unsupported"]
    reason: str | None = None
    method: str | None = Field(default=None, description="The method the adapter does not announce.")


class ErrorInvalidProfile(_AdapterError):
    """422: the adapter refused the tier's profile."""

    kind: Literal["invalid_profile"]
    errors: list[str] | None = Field(default=None, description="Each problem, as the adapter words it.")


class ErrorBackendUnavailable(_AdapterError):
    """503 (with ``Retry-After``): the adapter cannot reach its backend; retryable."""

    kind: Literal["backend_unavailable"]


class ErrorBackendFailure(_AdapterError):
    """502: the backend failed the verb."""

    kind: Literal["backend_failure"]
    rolled_back: bool | None = Field(
        default=None, description="The adapter undid its work (the record stays as it was)."
    )
    logs: list[str] | None = Field(default=None, description="The backend's output.")


class ErrorCancelled(_AdapterError):
    """502 (or an operation's error): the work was cancelled."""

    kind: Literal["cancelled"]
    rolled_back: bool | None = Field(
        default=None, description="What the adapter confirmed: true, it undid its work; false, it could not."
    )


class ErrorAdapterProtocol(_AdapterError):
    """502: the adapter answered another error of its protocol."""

    kind: Literal[
        "parse_error",
        "invalid_request",
        "method_not_found",
        "invalid_params",
        "internal",
        "not_initialized",
        "unsupported_version",
    ]


class ErrorFault(_Error):
    """500: a fault of the daemon (a bug); the message says what."""

    kind: Literal["error"]


#: Every error's model, by kind.
ErrorOfKind = Annotated[
    ErrorInvalidInput
    | ErrorNotFound
    | ErrorBusy
    | ErrorInterrupted
    | ErrorAdapterNotFound
    | ErrorAdapterRefused
    | ErrorAdapterCrashed
    | ErrorProtocolViolation
    | ErrorTimeout
    | ErrorSlugLocked
    | ErrorClosed
    | ErrorStoreError
    | ErrorDaemonUnavailable
    | ErrorUnauthorized
    | ErrorForbidden
    | ErrorUnavailable
    | ErrorConflict
    | ErrorInvalidTransition
    | ErrorUnsupported
    | ErrorInvalidProfile
    | ErrorBackendUnavailable
    | ErrorBackendFailure
    | ErrorCancelled
    | ErrorAdapterProtocol
    | ErrorFault,
    Field(discriminator="kind"),
]


class ErrorDetail(RootModel[ErrorOfKind]):
    """An error as JSON (``HearthError.to_json()``): its ``kind``, its ``message``, whether it
    is ``retryable``, and the kind's own fields (``busy``'s ``operation``, ``conflict``'s
    ``reason`` and ``existing``, ...): one schema per kind, discriminated by ``kind``."""
