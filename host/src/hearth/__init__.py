"""hearth: deploy and manage workspaces through pluggable adapter executables.

``Host`` runs the workspace lifecycle on top of any adapter; ``AdapterClient`` talks to one
adapter; ``discover`` finds one. Errors form one tree
rooted at ``HearthError``; every public name is exported here.
"""

from importlib.metadata import version as _version

__version__ = _version("hearth")  # the one place it is written is host/pyproject.toml

from hearth_adaptersdk import DeploymentRef, Progress, ProvisioningProfile, StatusReport

from ._client import AdapterClient, Interruption
from ._discovery import Candidate, Discovered, discover, discover_all
from ._errors import (
    AdapterCrashed,
    AdapterError,
    AdapterNotFound,
    AdapterRefused,
    BackendFailure,
    BackendUnavailable,
    CallTimeout,
    Cancelled,
    ClientClosed,
    Conflict,
    HearthError,
    InvalidInput,
    InvalidProfile,
    InvalidTransition,
    ProtocolViolation,
    SlugLocked,
    StoreError,
    Unsupported,
)
from ._host import Host, ReconcileReport, find_project_dir
from ._settings import Tier
from ._store import Deployment, LogLine, Operation, SQLiteStore, Store

__all__ = [
    "AdapterClient",
    "AdapterCrashed",
    "AdapterError",
    "AdapterNotFound",
    "AdapterRefused",
    "BackendFailure",
    "BackendUnavailable",
    "CallTimeout",
    "Cancelled",
    "Candidate",
    "ClientClosed",
    "Conflict",
    "Deployment",
    "DeploymentRef",
    "Discovered",
    "HearthError",
    "Host",
    "Interruption",
    "InvalidInput",
    "InvalidProfile",
    "InvalidTransition",
    "LogLine",
    "Operation",
    "Progress",
    "ProtocolViolation",
    "ProvisioningProfile",
    "ReconcileReport",
    "SQLiteStore",
    "SlugLocked",
    "StatusReport",
    "Store",
    "StoreError",
    "Tier",
    "Unsupported",
    "__version__",
    "discover",
    "discover_all",
    "find_project_dir",
]
