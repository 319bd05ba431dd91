"""The JSON Schema and the OpenRPC document of the protocol, generated from the wire models
(never written by hand).

``hearth-adaptersdk schema`` prints the JSON Schema and ``hearth-adaptersdk schema --openrpc``
the OpenRPC 1.3 document; the repository commits them as ``docs/protocol.schema.json`` and
``docs/protocol.openrpc.json``, and tests fail when a committed file drifts from the models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from . import codes
from .wire import (
    METHODS,
    CancelParams,
    DeploymentRef,
    ErrorResponse,
    Notification,
    Progress,
    ProvisioningProfile,
    Request,
    StatusReport,
    SuccessResponse,
)

NOTIFICATIONS: dict[str, type[BaseModel]] = {"progress": Progress, "cancel": CancelParams}
ENVELOPES = (Request, Notification, SuccessResponse, ErrorResponse)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/$defs/{model.__name__}"}


def _result(shape: Any) -> dict[str, Any]:
    if shape is None:
        return {"type": "null"}
    if isinstance(shape, list):
        return {"type": "array", "items": _ref(shape[0])}
    return _ref(shape)


def protocol_schema() -> dict[str, Any]:
    """One JSON Schema document: every type and message of protocol version 1."""
    models: list[type[BaseModel]] = [ProvisioningProfile, DeploymentRef, StatusReport, *ENVELOPES]
    for params, result in METHODS.values():
        models.append(params)
        if isinstance(result, type):
            models.append(result)
    models += list(NOTIFICATIONS.values())
    unique = list(dict.fromkeys(models))
    _, top = models_json_schema([(model, "validation") for model in unique], ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hearth adapter protocol",
        "description": "Generated from hearth_adaptersdk.wire by 'hearth-adaptersdk schema'.",
        "protocol_version": codes.PROTOCOL_VERSION,
        "max_message_bytes": codes.MAX_MESSAGE_BYTES,
        "methods": {
            name: {"params": _ref(params), "result": _result(result)}
            for name, (params, result) in METHODS.items()
        },
        "notifications": {name: {"params": _ref(model)} for name, model in NOTIFICATIONS.items()},
        "errors": {str(code): kind for code, kind in codes.ERROR_KINDS.items()},
        "$defs": dict(sorted(top.get("$defs", {}).items())),
    }


# --- OpenRPC ---------------------------------------------------------------------------------

#: The OpenRPC version the document follows (1.3: a method without ``result`` is a notification).
OPENRPC_VERSION = "1.3.2"
_SCHEMAS = "#/components/schemas/"
_ERRORS = "#/components/errors/"


class _ErrorDataBase(BaseModel):
    """Every error's ``data``: an object with at least ``kind``; unknown members are ignored."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True, allow_inf_nan=False)


class ParseErrorData(_ErrorDataBase):
    """-32700: a line that is not JSON. The response's id is null."""

    kind: Literal["parse_error"]
    reason: str | None = Field(default=None, description="Why the line is not JSON.")


class InvalidRequestData(_ErrorDataBase):
    """-32600: not a JSON-RPC 2.0 request, a second initialize, an id already in flight, or a
    request after shutdown."""

    kind: Literal["invalid_request"]
    reason: str | None = Field(default=None, description="What is wrong with the request.")


class MethodNotFoundData(_ErrorDataBase):
    """-32601: an unknown method, or an optional one the adapter did not announce."""

    kind: Literal["method_not_found"]
    method: str | None = Field(default=None, description="The method asked for.")


class InvalidParamsData(_ErrorDataBase):
    """-32602: params (or initialize's config) that do not fit the method."""

    kind: Literal["invalid_params"]
    errors: list[str] = Field(default_factory=list, description="One 'location: problem' line each.")


class InternalErrorData(_ErrorDataBase):
    """-32603: an unexpected failure in a handler; the adapter lives on."""

    kind: Literal["internal"]
    type: str | None = Field(default=None, description="The name of the failure's type.")


class NotInitializedData(_ErrorDataBase):
    """-32002: a request before initialize succeeded."""

    kind: Literal["not_initialized"]


class UnsupportedVersionData(_ErrorDataBase):
    """-32010: no protocol version both sides speak."""

    kind: Literal["unsupported_version"]
    supported: list[int] = Field(default_factory=list, description="The versions the adapter speaks.")


class ConflictData(_ErrorDataBase):
    """-32020: the slug exists with another tier or driver."""

    kind: Literal["conflict"]
    existing: DeploymentRef | None = Field(default=None, description="The deployment that exists.")


class InvalidTransitionData(_ErrorDataBase):
    """-32021: the deployment's state forbids the verb."""

    kind: Literal["invalid_transition"]
    state: str | None = Field(default=None, description="The state the adapter observes.")


class UnsupportedData(_ErrorDataBase):
    """-32022: the backend cannot do this."""

    kind: Literal["unsupported"]
    reason: str | None = Field(default=None, description="Why not.")


class InvalidProfileData(_ErrorDataBase):
    """-32023: the driver cannot honour the profile."""

    kind: Literal["invalid_profile"]
    errors: list[str] = Field(default_factory=list, description="One 'location: problem' line each.")


class BackendUnavailableData(_ErrorDataBase):
    """-32030: the backend cannot be reached; nothing is known about the deployment."""

    kind: Literal["backend_unavailable"]


class BackendFailureData(_ErrorDataBase):
    """-32031: the backend failed the operation."""

    kind: Literal["backend_failure"]
    rolled_back: bool | None = Field(
        default=None, description="Whether the partial work was undone (absent: it was not)."
    )
    logs: list[str] = Field(
        default_factory=list, description="The backend's own output (not the progress already sent)."
    )


class CancelledData(_ErrorDataBase):
    """-32800: the request was cancelled."""

    kind: Literal["cancelled"]
    rolled_back: bool | None = Field(
        default=None,
        description="Whether the rollback finished before the answer (absent: read as true).",
    )


#: Each error code: the short message of its OpenRPC error object and the model of its ``data``.
ERROR_DATA: dict[int, tuple[str, type[BaseModel]]] = {
    codes.PARSE_ERROR: ("Parse error", ParseErrorData),
    codes.INVALID_REQUEST: ("Invalid Request", InvalidRequestData),
    codes.METHOD_NOT_FOUND: ("Method not found", MethodNotFoundData),
    codes.INVALID_PARAMS: ("Invalid params", InvalidParamsData),
    codes.INTERNAL_ERROR: ("Internal error", InternalErrorData),
    codes.NOT_INITIALIZED: ("Not initialized", NotInitializedData),
    codes.UNSUPPORTED_VERSION: ("No common protocol version", UnsupportedVersionData),
    codes.CONFLICT: ("Conflict", ConflictData),
    codes.INVALID_TRANSITION: ("Invalid transition", InvalidTransitionData),
    codes.UNSUPPORTED: ("Unsupported", UnsupportedData),
    codes.INVALID_PROFILE: ("Invalid profile", InvalidProfileData),
    codes.BACKEND_UNAVAILABLE: ("Backend unavailable", BackendUnavailableData),
    codes.BACKEND_FAILURE: ("Backend failure", BackendFailureData),
    codes.CANCELLED: ("Request cancelled", CancelledData),
}

#: What each method does, for the OpenRPC document (the protocol page has the whole story).
_SUMMARIES: dict[str, str] = {
    "initialize": "The handshake: the first request; agrees on a protocol version.",
    "provision": "Create the deployment of a slug (idempotent on slug, tier and driver).",
    "status": "What the backend shows now (read-only).",
    "upgrade": "Move a deployment to another profile, keeping its slug.",
    "teardown": "Remove a deployment (irreversible, idempotent).",
    "shutdown": "Take no new requests, cancel those in flight, then exit on stdin EOF.",
    "list": "Every deployment of this driver the adapter sees in its backend.",
    "validate_profile": "Whether the driver could honour a profile, changing nothing.",
    "plan": "What provision (ref null) or upgrade (ref given) would do, changing nothing.",
    "stop": "Stop a ready deployment, keeping its disk and backend id (idempotent).",
    "start": "Start a stopped deployment again, the same backend objects (idempotent).",
    "progress": "Progress of a request still in flight.",
    "cancel": "Stop the named request, undo its partial work, and still answer it.",
}
_NOTIFICATION_DIRECTION = {"progress": "adapter to host", "cancel": "host to adapter"}


def _openrpc_params(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A params model's JSON Schema as by-name content descriptors, required ones first."""
    required = set(schema.get("required", []))
    params = [
        {
            "name": name,
            **({"description": prop["description"]} if "description" in prop else {}),
            "required": name in required,
            "schema": prop,
        }
        for name, prop in schema.get("properties", {}).items()
    ]
    return sorted(params, key=lambda param: not param["required"])


def _openrpc_result(name: str, shape: Any) -> dict[str, Any]:
    if shape is None:
        schema: dict[str, Any] = {"type": "null"}
    elif isinstance(shape, list):
        schema = {"type": "array", "items": {"$ref": _SCHEMAS + shape[0].__name__}}
    else:
        schema = {"$ref": _SCHEMAS + shape.__name__}
    return {"name": f"{name}_result", "required": True, "schema": schema}


_DOMAIN_ERRORS = (
    codes.CONFLICT,
    codes.INVALID_TRANSITION,
    codes.UNSUPPORTED,
    codes.INVALID_PROFILE,
    codes.BACKEND_UNAVAILABLE,
    codes.BACKEND_FAILURE,
)
_STATE_ERRORS = tuple(code for code in _DOMAIN_ERRORS if code != codes.INVALID_PROFILE)
#: The protocol's own errors each method may be answered with, beyond the JSON-RPC ones.
_METHOD_ERRORS: dict[str, tuple[int, ...]] = {
    "initialize": (codes.UNSUPPORTED_VERSION,),
    "provision": _DOMAIN_ERRORS,
    "status": (codes.BACKEND_UNAVAILABLE, codes.BACKEND_FAILURE),
    "upgrade": _DOMAIN_ERRORS,
    # never refused for the deployment's state (failed, half created, torn down, unknown)
    "teardown": (codes.UNSUPPORTED, codes.BACKEND_UNAVAILABLE, codes.BACKEND_FAILURE),
    "shutdown": (),
    "list": (codes.UNSUPPORTED, codes.BACKEND_UNAVAILABLE, codes.BACKEND_FAILURE),
    "validate_profile": (codes.BACKEND_UNAVAILABLE,),
    "plan": _DOMAIN_ERRORS,
    # no profile: never invalid_profile
    "stop": _STATE_ERRORS,
    "start": _STATE_ERRORS,
}


def _method_errors(name: str, optional: bool) -> list[dict[str, str]]:
    """References to the errors a request may be answered with (parse_error answers none)."""
    found = [codes.INVALID_REQUEST]
    if optional:
        found.append(codes.METHOD_NOT_FOUND)
    found += [codes.INVALID_PARAMS, codes.INTERNAL_ERROR]
    if name != "initialize":
        found.append(codes.NOT_INITIALIZED)
    found += _METHOD_ERRORS.get(name, _DOMAIN_ERRORS)
    if name not in ("shutdown", "initialize"):  # the host never waits for -32800 to either
        found.append(codes.CANCELLED)
    return [{"$ref": _ERRORS + codes.kind_of(code)} for code in dict.fromkeys(found)]


def protocol_openrpc() -> dict[str, Any]:
    """The protocol as an OpenRPC 1.3 document: the requests with their by-name params, results
    and errors, the notifications as methods without a result, and every type under
    ``components/schemas`` (generated from the same models as ``protocol_schema``)."""
    models: list[type[BaseModel]] = [ProvisioningProfile, DeploymentRef, StatusReport]
    for params, result in METHODS.values():
        models.append(params)
        if isinstance(result, type):
            models.append(result)
        elif isinstance(result, list):
            models.append(result[0])
    models += list(NOTIFICATIONS.values())
    models += [model for _, model in ERROR_DATA.values()]
    unique = list(dict.fromkeys(models))
    keyed, top = models_json_schema(
        [(model, "validation") for model in unique], ref_template=_SCHEMAS + "{model}"
    )
    schemas: dict[str, Any] = top.get("$defs", {})

    def inline(model: type[BaseModel]) -> dict[str, Any]:
        ref = keyed[(model, "validation")]["$ref"]
        found: dict[str, Any] = schemas[ref.removeprefix(_SCHEMAS)]
        return found

    optional = set(codes.OPTIONAL_METHODS) | set(codes.LATER_OPTIONAL_METHODS)
    methods: list[dict[str, Any]] = []
    for name, (params, result) in METHODS.items():
        method: dict[str, Any] = {
            "name": name,
            "summary": _SUMMARIES.get(name, name),
            "paramStructure": "by-name",
            "params": _openrpc_params(inline(params)),
            "result": _openrpc_result(name, result),
            "errors": _method_errors(name, name in optional),
        }
        if name in optional:
            method["description"] = (
                "Optional: an adapter announces it in initialize's capabilities.methods; "
                "calling it when it is not announced is -32601."
            )
            method["x-optional"] = True
        methods.append(method)
    for name, model in NOTIFICATIONS.items():
        direction = _NOTIFICATION_DIRECTION.get(name, "")
        methods.append(
            {
                "name": name,
                "summary": _SUMMARIES.get(name, name),
                "description": (
                    f"A notification ({direction}): sent without an id and never answered, "
                    "so this method has no result and no errors. Unknown notifications are ignored."
                ),
                "paramStructure": "by-name",
                "params": _openrpc_params(inline(model)),
                "x-notification": True,
                "x-direction": direction,
            }
        )
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {
            "title": "hearth adapter protocol",
            "version": str(codes.PROTOCOL_VERSION),
            "description": (
                "JSON-RPC 2.0 between the hearth host and an adapter executable, one message per "
                "line on the adapter's stdin and stdout. Generated from hearth_adaptersdk.wire by "
                "'hearth-adaptersdk schema --openrpc'; docs/protocol.md is the complete contract. "
                "Requests go from host to adapter; 'progress' goes from adapter to host. Each "
                "error's data member holds a reference to the JSON Schema of that error's data."
            ),
        },
        "methods": methods,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "errors": {
                codes.kind_of(code): {
                    "code": code,
                    "message": message,
                    "data": {"$ref": _SCHEMAS + model.__name__},
                }
                for code, (message, model) in ERROR_DATA.items()
            },
        },
        "x-protocol-version": codes.PROTOCOL_VERSION,
        "x-max-message-bytes": codes.MAX_MESSAGE_BYTES,
    }
