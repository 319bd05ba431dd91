"""What a profile asks of Docker: the flags, and the caps as limits the engine can enforce.

Every problem is collected, so one -32023 answer lists all that must change.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hearth_adaptersdk import ProvisioningProfile
from hearth_adaptersdk.wire import validation_problems


class DockerFlags(BaseModel):
    """``driver_flags`` of the docker driver."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(min_length=1)
    #: The container port published on 127.0.0.1; the endpoint is http://127.0.0.1:<host port>.
    port: int | None = Field(default=None, ge=1, le=65535)
    command: list[str] | str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    #: Where the workspace's volume is mounted in the container.
    data_path: str = Field(default="/data", pattern=r"^/")
    #: How long a new container may take to become ready.
    ready_timeout: float = Field(default=60.0, gt=0, le=3600)
    #: Seconds ``stop`` waits after the container's stop signal before SIGKILL, as ``docker stop
    #: -t`` (kept as a label, read at stop time); default: the container's StopTimeout, else 10.
    stop_timeout: int | None = Field(default=None, ge=0, le=600)


class Limits(BaseModel):
    nano_cpus: int | None = None
    mem_bytes: int | None = None


def resolve(profile: ProvisioningProfile, engine_cpus: int, engine_memory: int) -> tuple[DockerFlags, Limits]:
    """The flags and limits of ``profile``, or ValueError listing every problem."""
    problems: list[str] = []
    flags: DockerFlags | None = None
    try:
        flags = DockerFlags.model_validate(profile.driver_flags)
    except ValidationError as exc:
        problems += [f"driver_flags.{problem}" for problem in validation_problems(exc)]
    if profile.driver != "docker":
        problems.append(f"driver: this adapter serves 'docker', not {profile.driver!r}")
    caps: dict[str, Any] = profile.resource_caps.model_dump(exclude_none=True)
    limits = Limits()
    cpu = caps.pop("cpu", None)
    if cpu is not None:
        if cpu > engine_cpus:
            problems.append(f"resource_caps.cpu: {cpu:g} CPUs asked, the Docker engine has {engine_cpus}")
        limits.nano_cpus = int(cpu * 1e9)
    memory = caps.pop("memory_mb", None)
    if memory is not None:
        if memory * 1024 * 1024 > engine_memory:
            problems.append(
                f"resource_caps.memory_mb: {memory} MiB asked, the Docker engine has "
                f"{engine_memory // (1024 * 1024)} MiB"
            )
        elif memory < 6:
            problems.append("resource_caps.memory_mb: Docker needs at least 6 MiB")
        limits.mem_bytes = memory * 1024 * 1024
    if "storage_mb" in caps:
        caps.pop("storage_mb")
        problems.append(
            "resource_caps.storage_mb: the docker driver cannot limit the size of a "
            "local volume; leave it out of the tier's caps"
        )
    problems += [f"resource_caps.{key}: the docker driver cannot honour it" for key in sorted(caps)]
    if problems:
        raise ValueError(problems)
    assert flags is not None
    return flags, limits
