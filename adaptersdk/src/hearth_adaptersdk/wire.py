"""Pydantic models of every type and message of hearth adapter protocol version 1.

Both sides validate with these models, so the protocol page, the SDK and the host
cannot drift apart; the JSON Schema of the protocol is generated from them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    model_validator,
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


def non_finite_path(value: Any) -> str | None:
    """Where the first NaN or infinity in a JSON-like value is (``"a.0.b"``, ``""`` for the value
    itself), or None when there is none. JSON has no such numbers, so the wire refuses them."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # a loop, not recursion: a deeply nested value cannot exhaust the stack
        path, item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return path
        elif isinstance(item, dict):
            stack.extend((f"{path}.{key}" if path else str(key), child) for key, child in item.items())
        elif isinstance(item, list | tuple):
            stack.extend(
                (f"{path}.{index}" if path else str(index), child) for index, child in enumerate(item)
            )
    return None


def _finite(value: Any) -> Any:
    path = non_finite_path(value)
    if path is not None:
        where = f" at {path}" if path else ""
        raise ValueError(f"NaN and infinities are not allowed (found one{where})")
    return value


def _finite_extras(model: BaseModel) -> None:
    """Unknown keys kept by an ``extra="allow"`` model are free-form: check them here."""
    if model.model_extra:
        _finite(model.model_extra)


#: Free-form JSON objects on the wire (flags, config, details): any content but NaN or infinities.
JsonObject = Annotated[dict[str, Any], AfterValidator(_finite)]
#: Any JSON value but NaN or infinities.
JsonValue = Annotated[Any, AfterValidator(_finite)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)


class ResourceCaps(BaseModel):
    """Resource limits of a tier; unknown keys are kept so a driver can honour or refuse them."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True, allow_inf_nan=False)
    cpu: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, gt=0)
    storage_mb: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _extras_are_finite(self) -> Self:
        _finite_extras(self)
        return self


class ProvisioningProfile(_Model):
    """What to deploy: a tier's caps plus the flags for one driver."""

    tier: str = Field(min_length=1)
    driver: DriverName
    resource_caps: ResourceCaps = Field(default_factory=ResourceCaps)
    driver_flags: JsonObject = Field(default_factory=dict)


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
    details: JsonObject = Field(default_factory=dict)


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
    config: JsonObject = Field(default_factory=dict)
    data_dir: str | None = None


class InitializeResult(_Model):
    protocol_version: int
    adapter: PeerInfo
    driver: DriverName
    capabilities: Capabilities
    config_schema: JsonObject | None = None


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

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True, allow_inf_nan=False)
    kind: str

    @model_validator(mode="after")
    def _extras_are_finite(self) -> Self:
        _finite_extras(self)
        return self


class ErrorObject(_Model):
    code: int
    message: str
    data: ErrorData


class Request(_Model):
    jsonrpc: Literal["2.0"]
    id: int
    method: str
    params: JsonObject = Field(default_factory=dict)


class Notification(_Model):
    jsonrpc: Literal["2.0"]
    method: str
    params: JsonObject = Field(default_factory=dict)


class SuccessResponse(_Model):
    jsonrpc: Literal["2.0"]
    id: int
    result: JsonValue


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
