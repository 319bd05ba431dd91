"""hearth-adaptersdk: everything needed to write, run and test a hearth adapter.

Subclass ``Driver``, implement the four verbs, and call ``serve(MyDriver)`` from your
executable's entry point. Test in memory with ``hearth_adaptersdk.testing`` and against
the protocol's guarantees with ``hearth_adaptersdk.conformance``. Every name loads on first
use (PEP 562): a host importing ``codes`` or the models never pays for the server side
(jsonrpcserver), and ``codes`` costs nothing.
"""

import importlib
import typing

from . import codes

if typing.TYPE_CHECKING:
    __version__: str
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
    from ._memory import MemoryConnection
    from ._session import DEFAULT_ROLLBACK_GRACE
    from ._stdio import ROLLBACK_GRACE_ENV, serve
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
        PlanAction,
        PlanParams,
        PlanResult,
        Progress,
        ProvisioningProfile,
        ResourceCaps,
        State,
        StatusReport,
        ValidationResult,
        utc_now,
    )

#: Where each public name lives; ``__getattr__`` imports it on first use.
_EXPORTS = {
    "BackendFailure": "._errors",
    "BackendUnavailable": "._errors",
    "CancelParams": ".wire",
    "Capabilities": ".wire",
    "Closed": "._connection",
    "Conflict": "._errors",
    "Connection": "._connection",
    "DEFAULT_ROLLBACK_GRACE": "._session",
    "DeploymentRef": ".wire",
    "Driver": "._driver",
    "DriverError": "._errors",
    "ErrorData": ".wire",
    "FrameTooLarge": "._codec",
    "InitializeParams": ".wire",
    "InitializeResult": ".wire",
    "InvalidProfile": "._errors",
    "InvalidTransition": "._errors",
    "LineDecoder": "._codec",
    "Malformed": "._codec",
    "MemoryConnection": "._memory",
    "MessageTooLarge": "._codec",
    "ObservedState": ".wire",
    "PeerInfo": ".wire",
    "PlanAction": ".wire",
    "PlanParams": ".wire",
    "PlanResult": ".wire",
    "Progress": ".wire",
    "ProvisioningProfile": ".wire",
    "ROLLBACK_GRACE_ENV": "._stdio",
    "RequestContext": "._driver",
    "ResourceCaps": ".wire",
    "State": ".wire",
    "StatusReport": ".wire",
    "SubprocessConnection": "._subprocess",
    "Unencodable": "._codec",
    "Unsupported": "._errors",
    "ValidationResult": ".wire",
    "child_environment": "._subprocess",
    "encode": "._codec",
    "serve": "._stdio",
    "utc_now": ".wire",
}


def __getattr__(name: str) -> typing.Any:
    if name == "__version__":
        from importlib.metadata import version

        value: typing.Any = version("hearth-adaptersdk")  # written once, in its pyproject.toml
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The lazy names too, for ``dir()`` and completion in a REPL."""
    return sorted({*globals(), *__all__})


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
    "PlanAction",
    "PlanParams",
    "PlanResult",
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
    "__version__",
    "child_environment",
    "codes",
    "encode",
    "serve",
    "utc_now",
]
