"""hearth: deploy and manage workspaces through pluggable adapter executables.

``AdapterClient`` talks to one adapter; ``discover`` finds one. Errors form one tree
rooted at ``HearthError`` (see ``hearth.errors``).
"""

__version__ = "0.1.0"

from hearth_adaptersdk import DeploymentRef, Progress, ProvisioningProfile, StatusReport

from .client import AdapterClient
from .discovery import Candidate, Discovered, discover, discover_all
from .errors import (
    AdapterCrashed,
    AdapterError,
    AdapterNotFound,
    AdapterRefused,
    BackendFailure,
    BackendUnavailable,
    CallTimeout,
    Cancelled,
    Conflict,
    HearthError,
    InvalidInput,
    InvalidProfile,
    InvalidTransition,
    ProtocolViolation,
    SlugLocked,
    Unsupported,
)

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
    "Conflict",
    "DeploymentRef",
    "Discovered",
    "HearthError",
    "InvalidInput",
    "InvalidProfile",
    "InvalidTransition",
    "Progress",
    "ProtocolViolation",
    "ProvisioningProfile",
    "SlugLocked",
    "StatusReport",
    "Unsupported",
    "__version__",
    "discover",
    "discover_all",
]
