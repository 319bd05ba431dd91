"""hearth: deploy and manage workspaces through pluggable adapter executables.

``Host`` runs the workspace lifecycle on top of any adapter; ``AdapterClient`` talks to one
adapter; ``discover`` finds one. Errors form one tree rooted at ``HearthError``; every public
name is exported here, and loaded on first use (PEP 562), so that a command such as
``hearth ls`` pays only for what it uses.
"""

import importlib
import typing

if typing.TYPE_CHECKING:
    __version__: str
    from hearth_adaptersdk import (
        DeploymentRef,
        PlanAction,
        PlanResult,
        Progress,
        ProvisioningProfile,
        StatusReport,
    )

    from ._adapters._client import AdapterClient, Interruption
    from ._adapters._discovery import Candidate, Discovered, DriverInfo, discover, discover_all
    from ._api import HostAPI
    from ._dirs import find_project_dir
    from ._errors import (
        AdapterCrashed,
        AdapterError,
        AdapterNotFound,
        AdapterRefused,
        BackendFailure,
        BackendUnavailable,
        Busy,
        CallTimeout,
        Cancelled,
        ClientClosed,
        Conflict,
        DaemonUnavailable,
        Forbidden,
        HearthError,
        Interrupted,
        InvalidInput,
        InvalidProfile,
        InvalidTransition,
        NotFound,
        ProtocolViolation,
        SlugLocked,
        StoreError,
        Unauthorized,
        Unavailable,
        Unsupported,
    )
    from ._lifecycle._host import Host
    from ._models import CheckResult, Deployment, Event, LogLine, Operation, ReconcileReport
    from ._remote import RemoteHost
    from ._settings import Tier
    from ._store._base import Store
    from ._store._sqlite import SQLiteStore

#: Where each public name lives; ``__getattr__`` imports it on first use.
_EXPORTS = {
    "AdapterClient": "._adapters._client",
    "AdapterCrashed": "._errors",
    "AdapterError": "._errors",
    "AdapterNotFound": "._errors",
    "AdapterRefused": "._errors",
    "BackendFailure": "._errors",
    "BackendUnavailable": "._errors",
    "Busy": "._errors",
    "CallTimeout": "._errors",
    "Cancelled": "._errors",
    "Candidate": "._adapters._discovery",
    "CheckResult": "._models",
    "ClientClosed": "._errors",
    "Conflict": "._errors",
    "DaemonUnavailable": "._errors",
    "Deployment": "._models",
    "DeploymentRef": "hearth_adaptersdk",
    "Discovered": "._adapters._discovery",
    "DriverInfo": "._adapters._discovery",
    "Event": "._models",
    "Forbidden": "._errors",
    "HearthError": "._errors",
    "HostAPI": "._api",
    "Host": "._lifecycle._host",
    "Interrupted": "._errors",
    "Interruption": "._adapters._client",
    "InvalidInput": "._errors",
    "InvalidProfile": "._errors",
    "InvalidTransition": "._errors",
    "LogLine": "._models",
    "NotFound": "._errors",
    "Operation": "._models",
    "PlanAction": "hearth_adaptersdk",
    "PlanResult": "hearth_adaptersdk",
    "Progress": "hearth_adaptersdk",
    "ProtocolViolation": "._errors",
    "ProvisioningProfile": "hearth_adaptersdk",
    "ReconcileReport": "._models",
    "RemoteHost": "._remote",
    "SQLiteStore": "._store._sqlite",
    "SlugLocked": "._errors",
    "StatusReport": "hearth_adaptersdk",
    "Store": "._store._base",
    "StoreError": "._errors",
    "Tier": "._settings",
    "Unauthorized": "._errors",
    "Unavailable": "._errors",
    "Unsupported": "._errors",
    "discover": "._adapters._discovery",
    "discover_all": "._adapters._discovery",
    "find_project_dir": "._dirs",
}


def __getattr__(name: str) -> typing.Any:
    if name == "__version__":
        from importlib.metadata import version

        value: typing.Any = version("hearth")  # written once, in host/pyproject.toml
    elif name in _EXPORTS:
        module = _EXPORTS[name]
        value = getattr(importlib.import_module(module, __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The lazy names too, for ``dir()`` and completion in a REPL."""
    return sorted({*globals(), *__all__})


__all__ = [
    "AdapterClient",
    "AdapterCrashed",
    "AdapterError",
    "AdapterNotFound",
    "AdapterRefused",
    "BackendFailure",
    "BackendUnavailable",
    "Busy",
    "CallTimeout",
    "Cancelled",
    "Candidate",
    "CheckResult",
    "ClientClosed",
    "Conflict",
    "DaemonUnavailable",
    "Deployment",
    "DeploymentRef",
    "Discovered",
    "DriverInfo",
    "Event",
    "Forbidden",
    "HearthError",
    "Host",
    "HostAPI",
    "Interrupted",
    "Interruption",
    "InvalidInput",
    "InvalidProfile",
    "InvalidTransition",
    "LogLine",
    "NotFound",
    "Operation",
    "PlanAction",
    "PlanResult",
    "Progress",
    "ProtocolViolation",
    "ProvisioningProfile",
    "ReconcileReport",
    "RemoteHost",
    "SQLiteStore",
    "SlugLocked",
    "StatusReport",
    "Store",
    "StoreError",
    "Tier",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
    "__version__",
    "discover",
    "discover_all",
    "find_project_dir",
]
