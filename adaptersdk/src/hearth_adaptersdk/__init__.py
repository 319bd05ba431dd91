"""hearth-adaptersdk: everything needed to write, run and test a hearth adapter.

Subclass ``Driver``, implement the four verbs, and call ``serve(MyDriver)`` from your
executable's entry point. Test in memory with ``hearth_adaptersdk.testing`` and against
the protocol's guarantees with ``hearth_adaptersdk.conformance``.
"""

import typing
from importlib.metadata import version as _version

from . import codes
from ._codec import FrameTooLarge, LineDecoder, Malformed, MessageTooLarge, Unencodable, encode
from ._connection import Closed, Connection
from ._driver import Driver, RequestContext
from ._errors import (
    BackendFailure,
    BackendUnavailable,
    Conflict,
    DriverError,
    InvalidProfile,
    InvalidTransition,
    Unsupported,
)
from ._subprocess import SubprocessConnection, child_environment
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
    from ._memory import MemoryConnection
    from ._session import DEFAULT_ROLLBACK_GRACE
    from ._stdio import ROLLBACK_GRACE_ENV, serve

#: The server side (jsonrpcserver and what it imports) loads only when one of these is used.
_LAZY = {
    "serve": "._stdio",
    "ROLLBACK_GRACE_ENV": "._stdio",
    "DEFAULT_ROLLBACK_GRACE": "._session",
    "MemoryConnection": "._memory",
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
