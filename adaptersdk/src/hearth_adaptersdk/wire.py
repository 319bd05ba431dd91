"""Pydantic models of every type and message of hearth adapter protocol version 1.

Both sides validate with these models, so the protocol page, the SDK and the host
cannot drift apart; the JSON Schema of the protocol is generated from them.

How strict a receiver is (docs/protocol.md, "How strict a receiver is"): members a model does
not know are ignored (forward compatibility, as in LSP, MCP and protobuf), while the types and
required members it knows are checked: an integer is a JSON number with no fractional part
(``1024.0`` is 1024), never a string or a boolean; a number is finite; a boolean is ``true`` or
``false``; a timestamp is an RFC 3339 string with a zone; ids are integers.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    StrictBool,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .codes import DRIVER_PATTERN, SLUG_PATTERN

Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
DriverName = Annotated[str, StringConstraints(pattern=DRIVER_PATTERN)]
#: ``stopping``, ``stopped`` and ``starting`` came with protocol 1.3 (``stop`` and ``start``).
State = Literal[
    "provisioning",
    "ready",
    "upgrading",
    "failed",
    "tearing_down",
    "tier_torn_down",
    "stopping",
    "stopped",
    "starting",
]
#: What ``status`` observes: a State, ``absent`` (the backend confirms there is nothing) or
#: ``unknown`` (protocol 1.1: the backend cannot be reached, or what it shows is ambiguous).
#: ``unknown`` is never read as ``absent``: it changes no record.
ObservedState = Literal[State, "absent", "unknown"]
Level = Literal["info", "warning", "error"]


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# RFC 3339 section 5.6 date-time: seconds required, any fractional precision, a zone required
# ("Z" or +hh:mm); "T" may be lowercase or a space, as the RFC's note allows.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?P<zone>[Zz]|[+-]\d{2}:\d{2})?", re.ASCII
)


def _rfc3339_text(value: Any) -> Any:
    """On the wire a timestamp is an RFC 3339 string with a zone (pydantic alone would also take
    Unix times, ``+hhmm`` zones and missing seconds); a datetime is checked for a zone later."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError(
            "rfc3339", "Input should be an RFC 3339 timestamp string, such as 2026-11-22T10:06:01Z"
        )
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise PydanticCustomError(
            "rfc3339", "Input should be an RFC 3339 timestamp, such as 2026-11-22T10:06:01.5Z"
        )
    if match["zone"] is None:
        raise PydanticCustomError(
            "timezone_aware", "Input should have timezone info (Z or +hh:mm): RFC 3339 requires a zone"
        )
    return value


#: An RFC 3339 timestamp with a zone, any fractional precision (kept to the microsecond);
#: written in UTC as ``2026-11-22T10:06:01.692914Z``.
Timestamp = Annotated[
    AwareDatetime, BeforeValidator(_rfc3339_text), PlainSerializer(_rfc3339, return_type=str)
]


def _not_text_or_bool(kind: str, what: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, bool | str | bytes | bytearray):
            found = "a boolean" if isinstance(value, bool) else "a string"
            raise PydanticCustomError(kind, f"Input should be {what}, not {found}")
        return value

    return BeforeValidator(check)


_INT_CHECK = _not_text_or_bool("int_type", "a valid integer")
#: An integer member: a JSON integer, or a number with no fractional part (``1024.0``, ``1e3``);
#: never ``1024.5``, a string (``"1024"``) or a boolean.
JsonInt = Annotated[int, _INT_CHECK]
#: A positive ``JsonInt`` (its bound before the check, so that the JSON Schema keeps it).
PositiveJsonInt = Annotated[int, Field(gt=0), _INT_CHECK]
#: A number member: any finite JSON number, integers included; never a string or a boolean.
JsonNumber = Annotated[float, Strict()]
#: A boolean member: ``true`` or ``false`` only (not ``1`` or ``"true"``).
JsonBool = StrictBool
#: A request id: an integer written as one (``7``, never ``7.0`` or ``"7"``).
RequestId = Annotated[int, Strict()]


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
    """A protocol object: unknown members are ignored (forward compatibility), known ones checked."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True, allow_inf_nan=False)


class ResourceCaps(BaseModel):
    """Resource limits of a tier; unknown keys are kept so a driver can honour or refuse them."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True, allow_inf_nan=False)
    cpu: JsonNumber | None = Field(default=None, gt=0)
    memory_mb: PositiveJsonInt | None = None
    storage_mb: PositiveJsonInt | None = None

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
    """What the adapter observes now: ``absent`` means the backend confirms there is no trace of
    the deployment; ``unknown`` (1.1) that the adapter cannot tell (unreachable or ambiguous)."""

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
    progress: JsonBool = True
    cancel: JsonBool = True


class InitializeParams(_Model):
    protocol_versions: list[JsonInt] = Field(min_length=1)
    host: PeerInfo
    config: JsonObject = Field(default_factory=dict)
    data_dir: str | None = None


class InitializeResult(_Model):
    protocol_version: JsonInt
    adapter: PeerInfo
    driver: DriverName
    capabilities: Capabilities
    config_schema: JsonObject | None = None


class ProvisionParams(_Model):
    slug: Slug
    profile: ProvisioningProfile


class RefParams(_Model):
    """Params of ``status``, ``teardown``, ``stop`` and ``start`` (1.3)."""

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
    valid: JsonBool
    errors: list[str] = Field(default_factory=list)


class Progress(_Model):
    """The ``progress`` notification's params (adapter → host)."""

    request_id: RequestId
    message: str
    fraction: JsonNumber | None = Field(default=None, ge=0, le=1)
    level: Level = "info"
    #: The backend's own id of what the request is creating (a container id, a VM name), sent
    #: as soon as it is known: the host stores it at once, so that what a host killed mid-verb
    #: left half created can be found. Optional; absent (null) on most events.
    backend_id: str | None = Field(default=None, min_length=1)


PlanActionKind = Literal["create", "update", "replace", "delete", "no_op"]


class PlanParams(_Model):
    """Params of ``plan``: what would provisioning ``slug`` (``ref`` null) or upgrading ``ref``
    to ``profile`` do?"""

    slug: Slug
    #: The deployment as it is (an upgrade's plan), or null for a new workspace (provision).
    ref: DeploymentRef | None = None
    profile: ProvisioningProfile

    @model_validator(mode="after")
    def _ref_is_the_slugs(self) -> Self:
        if self.ref is not None and self.ref.workspace_slug != self.slug:
            raise ValueError(f"ref.workspace_slug {self.ref.workspace_slug!r} is not the slug {self.slug!r}")
        return self


class PlanAction(_Model):
    """One thing a provision or upgrade would do to one backend resource."""

    action: PlanActionKind
    #: What it acts on, as the backend names it (``container hearth-alpha``, ``vm hearth-alpha``).
    resource: str
    reason: str
    #: Whether it destroys data (a disk, a volume): a host asks a person before it goes ahead.
    destructive: JsonBool


class PlanResult(_Model):
    """The answer to ``plan``: the actions, in the order the verb would take them."""

    actions: list[PlanAction]

    @property
    def destructive(self) -> bool:
        """Whether any action destroys data."""
        return any(action.destructive for action in self.actions)


class CancelParams(_Model):
    """The ``cancel`` notification's params (host → adapter)."""

    id: RequestId


class ErrorData(BaseModel):
    """An error's ``data``: always an object with at least ``kind``."""

    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True, allow_inf_nan=False)
    kind: str

    @model_validator(mode="after")
    def _extras_are_finite(self) -> Self:
        _finite_extras(self)
        return self


class ErrorObject(_Model):
    code: JsonInt
    message: str
    data: ErrorData


class Request(_Model):
    jsonrpc: Literal["2.0"]
    id: RequestId
    method: str
    params: JsonObject = Field(default_factory=dict)


class Notification(_Model):
    jsonrpc: Literal["2.0"]
    method: str
    params: JsonObject = Field(default_factory=dict)


class SuccessResponse(_Model):
    jsonrpc: Literal["2.0"]
    id: RequestId
    result: JsonValue


class ErrorResponse(_Model):
    jsonrpc: Literal["2.0"]
    # a string: the id of a request refused -32600 for it, echoed; null: no id could be read
    id: RequestId | Annotated[str, Strict()] | None
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
    "plan": (PlanParams, PlanResult),
    "stop": (RefParams, DeploymentRef),
    "start": (RefParams, DeploymentRef),
}


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """Pydantic's errors as short ``location: problem`` lines, for error data and messages.

    The location is the dotted path of the member (``profile.resource_caps.cpu``, list indices
    as numbers), after ``prefix`` when given (``config`` for the adapter's config); ``(root)``
    for the value itself when there is no prefix."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join([prefix, *(str(part) for part in err["loc"])] if prefix else map(str, err["loc"]))
        lines.append(f"{where or '(root)'}: {err['msg']}")
    return lines
