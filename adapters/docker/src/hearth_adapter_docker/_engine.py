"""The Docker engine, through the docker SDK: the one place its exceptions are translated.

The SDK is synchronous, so the driver calls these functions in a worker thread. Every
object this adapter makes carries the ``hearth.*`` labels; it never touches others.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from hearth_adaptersdk import BackendFailure, BackendUnavailable

T = TypeVar("T")
LABEL = "hearth"
SLUG_LABEL = f"{LABEL}.workspace_slug"


STOPPED_LABEL = f"{LABEL}.stopped"
STOPPED_AT_LABEL = f"{LABEL}.stopped_at"


def names(slug: str) -> tuple[str, str, str]:
    """The container, network and volume of ``slug``."""
    return f"hearth-{slug}", f"hearth-{slug}", f"hearth-{slug}-data"


def marker(slug: str) -> str:
    """The empty volume whose presence says ``slug``'s container was stopped by ``stop``: an
    exited container alone cannot tell a stop from a crash, and a container's labels cannot be
    changed, so the mark lives on the engine beside it (labelled with the container's id)."""
    return f"hearth-{slug}-stopped"


def stopped_ids(client: docker.DockerClient, slug: str | None = None) -> dict[str, str]:
    """The containers (of one slug, or all) that ``stop`` marked: id -> when (ISO 8601, UTC)."""
    labels = [f"{LABEL}.managed=true", STOPPED_LABEL]
    if slug is not None:
        labels.append(f"{SLUG_LABEL}={slug}")
    return {
        str(v.attrs["Labels"][STOPPED_LABEL]): str(v.attrs["Labels"].get(STOPPED_AT_LABEL) or "")
        for v in client.volumes.list(filters={"label": labels})
    }


class Engine:
    """A lazily connected docker client; ``url`` None means the SDK's default (DOCKER_HOST)."""

    def __init__(self, url: str | None, timeout: float) -> None:
        self.url = url
        self._timeout = timeout
        self._client: docker.DockerClient | None = None

    @property
    def where(self) -> str:
        return self.url or "the default Docker socket (DOCKER_HOST or /var/run/docker.sock)"

    def call(self, work: Callable[[docker.DockerClient], T]) -> T:
        """Run ``work`` with a client; engine errors become the protocol's errors here."""
        try:
            if self._client is None:
                self._client = (
                    docker.DockerClient(base_url=self.url, timeout=int(self._timeout))
                    if self.url
                    else docker.from_env(timeout=int(self._timeout))
                )
            return work(self._client)
        except (requests.exceptions.ConnectionError, FileNotFoundError, ConnectionError) as exc:
            self.close()
            error = self._unreachable(exc)
            _release(exc)
            raise error from None
        except docker.errors.APIError as exc:
            raise BackendFailure(
                f"the Docker engine refused: {_short(exc.explanation or exc)}", rolled_back=False
            ) from None
        except docker.errors.DockerException as exc:
            if "Connection" in str(exc) or "No such file" in str(exc):
                self.close()
                error = self._unreachable(exc)
                _release(exc)
                raise error from None
            raise BackendFailure(f"the Docker engine refused: {_short(exc)}", rolled_back=False) from None

    def _unreachable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(
            f"cannot reach the Docker engine at {self.where}: {_short(exc)}. Is dockerd running? "
            "Set its address as 'url' in [adapters.docker] of .hearth/hearth.toml"
        )

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None


def _release(exc: BaseException) -> None:
    """docker-py leaves the socket of a failed connect open in its frames (unixconn creates it,
    the connect raises, nothing closes it); clear those frames now, so it is closed here and
    not at some later garbage collection, with a ResourceWarning in whatever runs then."""
    seen: BaseException | None = exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        while seen is not None:
            if seen.__traceback__ is not None:
                traceback.clear_frames(seen.__traceback__)
            seen = seen.__context__ or seen.__cause__


def capacity(client: docker.DockerClient) -> tuple[int, int]:
    info: dict[str, Any] = client.info()
    return int(info.get("NCPU", 1)), int(info.get("MemTotal", 0))


def containers_of(client: docker.DockerClient, slug: str | None = None) -> list[Container]:
    """This adapter's containers (of one slug, or all), running or not."""
    labels = [f"{LABEL}.managed=true", f"{LABEL}.driver=docker"]
    if slug is not None:
        labels.append(f"{SLUG_LABEL}={slug}")
    found: list[Container] = client.containers.list(all=True, filters={"label": labels})
    return found


def primary(containers: list[Container], slug: str) -> Container | None:
    """The workspace's serving container (during an upgrade there may briefly be two)."""
    name, _, _ = names(slug)
    for container in containers:
        if container.name == name:
            return container
    return containers[0] if containers else None


def last_logs(container: Container | None, lines: int = 20) -> list[str]:
    if container is None:
        return []
    with contextlib.suppress(Exception):
        raw: bytes = container.logs(tail=lines)
        return [line for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]
    return []


def remove_quietly(remove: Callable[[], Any]) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        remove()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
