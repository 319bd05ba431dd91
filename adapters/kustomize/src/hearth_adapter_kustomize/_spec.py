"""What a profile asks of Kubernetes: the flags, and the caps as quantities the API server
enforces (a ResourceQuota and a LimitRange in the workspace's namespace).

Every problem is collected, so one -32023 answer lists all that must change.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hearth_adaptersdk import ProvisioningProfile
from hearth_adaptersdk.wire import validation_problems


class KustomizeFlags(BaseModel):
    """``driver_flags`` of the kustomize driver: an overlay, or an image the driver renders."""

    model_config = ConfigDict(extra="forbid")
    #: An overlay folder (relative to the project folder) rendered with ``kubectl kustomize``.
    kustomize: str | None = Field(default=None, min_length=1)
    #: The image of the Deployment the driver renders when there is no overlay.
    image: str | None = Field(default=None, min_length=1)
    #: The container port, served by a Service of the same port.
    port: int | None = Field(default=None, ge=1, le=65535)
    command: list[str] | str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    #: Annotations of the rendered pod template.
    annotations: dict[str, str] = Field(default_factory=dict)
    #: Seconds a provision or upgrade may take to become ready (default: the config's).
    ready_timeout: float | None = Field(default=None, gt=0, le=3600)
    #: Let an upgrade delete PersistentVolumeClaims its new render no longer has.
    allow_destructive_upgrade: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> KustomizeFlags:
        if (self.kustomize is None) == (self.image is None):
            raise ValueError("give either 'kustomize' (an overlay folder) or 'image', not both nor neither")
        if self.kustomize is not None and (self.port or self.command or self.env or self.annotations):
            raise ValueError("'port', 'command', 'env' and 'annotations' go with 'image', not 'kustomize'")
        return self


class Caps(BaseModel):
    """The tier's caps as Kubernetes quantities (None: not capped)."""

    cpu: str | None = None
    memory: str | None = None
    storage: str | None = None


def cpu_quantity(cpu: float) -> str:
    """``1.5`` -> ``1500m``: millicores, which every server parses exactly."""
    return f"{max(1, round(cpu * 1000))}m"


def resolve(profile: ProvisioningProfile) -> tuple[KustomizeFlags, Caps]:
    """The flags and caps of ``profile``, or ValueError listing every problem."""
    problems: list[str] = []
    flags: KustomizeFlags | None = None
    try:
        flags = KustomizeFlags.model_validate(profile.driver_flags)
    except ValidationError as exc:
        problems += validation_problems(exc, "driver_flags")
    if profile.driver != "kustomize":
        problems.append(f"driver: this adapter serves 'kustomize', not {profile.driver!r}")
    caps_in: dict[str, Any] = profile.resource_caps.model_dump(exclude_none=True)
    caps = Caps()
    if (cpu := caps_in.pop("cpu", None)) is not None:
        caps.cpu = cpu_quantity(cpu)
    if (memory := caps_in.pop("memory_mb", None)) is not None:
        caps.memory = f"{memory}Mi"
    if (storage := caps_in.pop("storage_mb", None)) is not None:
        caps.storage = f"{storage}Mi"
    problems += [
        f"resource_caps.{key}: the kustomize driver caps only cpu, memory_mb and storage_mb"
        for key in sorted(caps_in)
    ]
    if problems:
        raise ValueError(problems)
    assert flags is not None
    return flags, caps
