"""Pydantic models of every type and message of hearth adapter protocol version 1.

Both sides validate with these models, so the protocol page, the SDK and the host
cannot drift apart; the JSON Schema of the protocol is generated from them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
)

from .codes import DRIVER_PATTERN, SLUG_PATTERN

Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
DriverName = Annotated[str, StringConstraints(pattern=DRIVER_PATTERN)]
State = Literal["provisioning", "ready", "upgrading", "failed", "tearing_down", "tier_torn_down"]
ObservedState = Literal[
    "provisioning", "ready", "upgrading", "failed", "tearing_down", "tier_torn_down", "absent"
]
Level = Literal["info", "warning", "error"]


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


Timestamp = Annotated[AwareDatetime, PlainSerializer(_rfc3339, return_type=str)]


def utc_now() -> datetime:
    """The current time as an aware UTC datetime, as every timestamp on the wire is."""
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class ResourceCaps(BaseModel):
    """Resource limits of a tier; unknown keys are kept so a driver can honour or refuse them."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)
    cpu: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, gt=0)
    storage_mb: int | None = Field(default=None, gt=0)


class ProvisioningProfile(_Model):
    """What to deploy: a tier's caps plus the flags for one driver."""

    tier: str = Field(min_length=1)
    driver: DriverName
    resource_caps: ResourceCaps = Field(default_factory=ResourceCaps)
    driver_flags: dict[str, Any] = Field(default_factory=dict)


class DeploymentRef(_Model):
    """Everything a driver needs later to find its backend objects again."""

    workspace_slug: Slug
    tier: str
    driver: DriverName
    endpoint: str | None = None
    secrets_vault_path: str | None = None
    created: Timestamp
    last_status: State


class StatusReport(_Model):
    """What the adapter observes now; ``absent`` means no trace in the backend."""

    state: ObservedState
    endpoint: str | None = None
    message: str | None = None
    observed_at: Timestamp
    details: dict[str, Any] = Field(default_factory=dict)


class PeerInfo(_Model):
    name: str
    version: str


class Capabilities(_Model):
    methods: list[str]
    progress: bool = True
    cancel: bool = True


class InitializeParams(_Model):
    protocol_versions: list[int] = Field(min_length=1)
    host: PeerInfo
    config: dict[str, Any] = Field(default_factory=dict)
    data_dir: str | None = None


class InitializeResult(_Model):
    protocol_version: int
    adapter: PeerInfo
    driver: DriverName
    capabilities: Capabilities
    config_schema: dict[str, Any] | None = None


class ProvisionParams(_Model):
    slug: Slug
    profile: ProvisioningProfile


class RefParams(_Model):
    """Params of ``status`` and ``teardown``."""

    ref: DeploymentRef


class UpgradeParams(_Model):
    ref: DeploymentRef
    profile: ProvisioningProfile


class ProfileParams(_Model):
    """Params of ``validate_profile``."""

    profile: ProvisioningProfile


class EmptyParams(_Model):
    """Params of ``shutdown`` and ``list``."""


class ValidationResult(_Model):
    valid: bool
    errors: list[str] = Field(default_factory=list)


class Progress(_Model):
    """The ``progress`` notification's params (adapter → host)."""

    request_id: int
    message: str
    fraction: float | None = Field(default=None, ge=0, le=1)
    level: Level = "info"


class CancelParams(_Model):
    """The ``cancel`` notification's params (host → adapter)."""

    id: int


class ErrorData(BaseModel):
    """An error's ``data``: always an object with at least ``kind``."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)
    kind: str


class ErrorObject(_Model):
    code: int
    message: str
    data: ErrorData


class Request(_Model):
    jsonrpc: Literal["2.0"]
    id: int
    method: str
    params: dict[str, Any] = Field(default_factory=dict)


class Notification(_Model):
    jsonrpc: Literal["2.0"]
    method: str
    params: dict[str, Any] = Field(default_factory=dict)


class SuccessResponse(_Model):
    jsonrpc: Literal["2.0"]
    id: int
    result: Any


class ErrorResponse(_Model):
    jsonrpc: Literal["2.0"]
    id: int | None
    error: ErrorObject


#: Each request method: its params model and its result (a model, a one-item list for an array
#: of it, or None for null). The server validates params with these; the schema is built from them.
METHODS: dict[str, tuple[type[BaseModel], Any]] = {
    "initialize": (InitializeParams, InitializeResult),
    "provision": (ProvisionParams, DeploymentRef),
    "status": (RefParams, StatusReport),
    "upgrade": (UpgradeParams, DeploymentRef),
    "teardown": (RefParams, None),
    "shutdown": (EmptyParams, None),
    "list": (EmptyParams, [DeploymentRef]),
    "validate_profile": (ProfileParams, ValidationResult),
}


def validation_problems(exc: ValidationError) -> list[str]:
    """Pydantic's errors as short ``location: problem`` lines, for error data and messages."""
    return [
        f"{'.'.join(str(part) for part in err['loc']) or '(root)'}: {err['msg']}"
        for err in exc.errors(include_url=False)
    ]
