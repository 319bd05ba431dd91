"""hearth-adaptersdk: everything needed to write, run and test a hearth adapter.

Subclass ``Driver``, implement the four verbs, and call ``serve(MyDriver)`` from your
executable's entry point. Test in memory with ``hearth_adaptersdk.testing`` and against
the protocol's guarantees with ``hearth_adaptersdk.conformance``.
"""

import typing
from importlib.metadata import version as _version

from . import codes
from .codec import FrameTooLarge, LineDecoder, Malformed, MessageTooLarge, Unencodable, encode
from .connection import Closed, Connection
from .driver import Driver, RequestContext
from .errors import (
    BackendFailure,
    BackendUnavailable,
    Conflict,
    DriverError,
    InvalidProfile,
    InvalidTransition,
    Unsupported,
)
from .subprocess_transport import SubprocessConnection, child_environment
from .wire import (
    CancelParams,
    Capabilities,
    DeploymentRef,
    ErrorData,
    InitializeParams,
    InitializeResult,
    ObservedState,
    PeerInfo,
    Progress,
    ProvisioningProfile,
    ResourceCaps,
    State,
    StatusReport,
    ValidationResult,
    utc_now,
)

if typing.TYPE_CHECKING:  # loaded on first use (PEP 562): a host never pays for the server side
    from .memory import MemoryConnection
    from .session import DEFAULT_ROLLBACK_GRACE
    from .stdio import ROLLBACK_GRACE_ENV, serve

#: The server side (jsonrpcserver and what it imports) loads only when one of these is used.
_LAZY = {
    "serve": ".stdio",
    "ROLLBACK_GRACE_ENV": ".stdio",
    "DEFAULT_ROLLBACK_GRACE": ".session",
    "MemoryConnection": ".memory",
}


def __getattr__(name: str) -> typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = _version("hearth-adaptersdk")  # from adaptersdk/pyproject.toml

__all__ = [
    "DEFAULT_ROLLBACK_GRACE",
    "ROLLBACK_GRACE_ENV",
    "BackendFailure",
    "BackendUnavailable",
    "CancelParams",
    "Capabilities",
    "Closed",
    "Conflict",
    "Connection",
    "DeploymentRef",
    "Driver",
    "DriverError",
    "ErrorData",
    "FrameTooLarge",
    "InitializeParams",
    "InitializeResult",
    "InvalidProfile",
    "InvalidTransition",
    "LineDecoder",
    "Malformed",
    "MemoryConnection",
    "MessageTooLarge",
    "ObservedState",
    "PeerInfo",
    "Progress",
    "ProvisioningProfile",
    "RequestContext",
    "ResourceCaps",
    "State",
    "StatusReport",
    "SubprocessConnection",
    "Unencodable",
    "Unsupported",
    "ValidationResult",
    "child_environment",
    "codes",
    "encode",
    "serve",
    "utc_now",
]
