"""Protocol constants: version, size limit, error codes and their kinds.

Kept apart from the models so that both sides (and the codec) can import them
without pulling in pydantic.
"""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
NOT_INITIALIZED: Final = -32002
UNSUPPORTED_VERSION: Final = -32010
CONFLICT: Final = -32020
INVALID_TRANSITION: Final = -32021
UNSUPPORTED: Final = -32022
INVALID_PROFILE: Final = -32023
BACKEND_UNAVAILABLE: Final = -32030
BACKEND_FAILURE: Final = -32031
CANCELLED: Final = -32800

#: Every error code of the protocol and the ``kind`` its ``data`` carries.
ERROR_KINDS: Final[dict[int, str]] = {
    PARSE_ERROR: "parse_error",
    INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found",
    INVALID_PARAMS: "invalid_params",
    INTERNAL_ERROR: "internal",
    NOT_INITIALIZED: "not_initialized",
    UNSUPPORTED_VERSION: "unsupported_version",
    CONFLICT: "conflict",
    INVALID_TRANSITION: "invalid_transition",
    UNSUPPORTED: "unsupported",
    INVALID_PROFILE: "invalid_profile",
    BACKEND_UNAVAILABLE: "backend_unavailable",
    BACKEND_FAILURE: "backend_failure",
    CANCELLED: "cancelled",
}

VERBS: Final = ("provision", "status", "upgrade", "teardown")
OPTIONAL_METHODS: Final = ("list", "validate_profile")
#: The optional methods later revisions added, announced the same way: ``plan`` (1.1),
#: ``stop`` and ``start`` (1.3). Kept apart so that ``OPTIONAL_METHODS`` stays 1.0's list.
LATER_OPTIONAL_METHODS: Final = ("plan", "stop", "start")

SLUG_PATTERN: Final = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
DRIVER_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{0,39}$"
ADAPTER_PREFIX: Final = "hearth-adapter-"
PROTOCOL_ENV: Final = "HEARTH_PROTOCOL"


def kind_of(code: int) -> str:
    """The protocol kind for ``code``; codes outside the table are ``internal``."""
    return ERROR_KINDS.get(code, "internal")
