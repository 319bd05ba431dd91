"""The JSON Schema of the protocol, generated from the wire models (never written by hand).

``hearth-adaptersdk schema`` prints it; the repository commits it as ``docs/protocol.schema.json``
and a test fails when the committed file drifts from the models.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
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
