"""The docker driver: each workspace is a container with its own network and volume.

provision: network ``hearth-<slug>``, volume ``hearth-<slug>-data``, container ``hearth-<slug>``
from ``driver_flags.image``, limits from the caps, ``driver_flags.port`` published on
127.0.0.1. Ready means running and healthy when the image has a health check, else the
published port answers. A failure or a cancel removes what this call created.
upgrade: a new container on the same network and volume replaces the old one only once
ready; if it fails, the old one keeps serving (``rolled_back: true``).
plan: what provision or upgrade would do, read from the engine; it changes nothing. A container
is replaced by an upgrade, but its volume (``data_path``) stays, so no action is destructive.
Each new container's id is sent as ``backend_id`` in a progress event as soon as it exists.
stop (1.3): the same container gets its stop signal (SIGTERM unless the image says otherwise),
then SIGKILL after ``driver_flags.stop_timeout`` seconds (default the container's StopTimeout, else
10), as ``docker stop``; the container, its writable layer, network and volume are kept, and an
empty volume ``hearth-<slug>-stopped`` marks it stopped (an exited container alone looks failed;
one that exited by SIGTERM or SIGKILL, as ``docker stop`` by hand leaves it, is stopped too).
start (1.3): the same container starts again and is ready by provision's rule. A cancelled stop
kills and starts the container again; a cancelled or failed start stops it again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import importlib.metadata
import re
import secrets
from collections.abc import Callable, Coroutine
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import docker
import docker.errors
from docker.models.containers import Container
from pydantic import BaseModel, ConfigDict, Field

from hearth_adaptersdk import (
    BackendFailure,
    Conflict,
    DeploymentRef,
    Driver,
    DriverError,
    InvalidProfile,
    InvalidTransition,
    ObservedState,
    PlanAction,
    PlanResult,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    utc_now,
)
from hearth_adaptersdk.wire import PlanActionKind

from . import _engine as eng
from ._spec import DockerFlags, Limits, resolve

T = TypeVar("T")
POLL = 0.2


class DockerConfig(BaseModel):
    """``[adapters.docker]`` in .hearth/hearth.toml."""

    model_config = ConfigDict(extra="forbid")
    #: The engine, e.g. ``unix:///var/run/docker.sock``; default: as the docker SDK finds it.
    url: str | None = None
    #: Seconds for one engine API call.
    timeout: float = Field(default=60.0, gt=0)
    #: Environment variables the host passes to this adapter (e.g. ["DOCKER_HOST"]), which the
    #: docker SDK reads when ``url`` is not set.
    pass_env: list[str] = Field(default_factory=list)


class DockerDriver(Driver):
    name: ClassVar[str] = "docker"
    version: ClassVar[str] = importlib.metadata.version("hearth-adapter-docker")
    config_model: ClassVar[type[BaseModel] | None] = DockerConfig

    def __init__(self) -> None:
        self.engine = eng.Engine(None, 60.0)
        self._capacity: tuple[int, int] | None = None

    async def setup(self, config: Any, data_dir: Path | None) -> None:
        await super().setup(config, data_dir)
        settings: DockerConfig = config
        self.engine = eng.Engine(settings.url, settings.timeout)

    async def close(self) -> None:
        self.engine.close()

    async def _do(self, work: Callable[[docker.DockerClient], T]) -> T:
        return await asyncio.to_thread(self.engine.call, work)

    async def _resolve(self, profile: ProvisioningProfile) -> tuple[DockerFlags, Limits]:
        if self._capacity is None:
            self._capacity = await self._do(eng.capacity)
        try:
            return resolve(profile, *self._capacity)
        except ValueError as exc:
            raise InvalidProfile(
                "the docker driver cannot honour this profile", errors=list(exc.args[0])
            ) from None

    async def validate_profile(self, profile: ProvisioningProfile, ctx: RequestContext) -> builtins.list[str]:
        try:
            await self._resolve(profile)
        except InvalidProfile as exc:
            return exc.errors
        return []

    # --- provision ----------------------------------------------------------------------------
    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        flags, limits = await self._resolve(profile)
        existing, stopped = await self._do(lambda c: _look(c, slug))
        if existing is not None:
            ref = _ref(existing, stopped)
            if (ref.tier, ref.driver) == (profile.tier, profile.driver):
                ctx.progress("already provisioned", 1.0)
                return ref
            raise Conflict(f"workspace {slug!r} exists with tier {ref.tier!r}; use upgrade", existing=ref)
        created: list[Callable[[docker.DockerClient], None]] = []
        container_name, network, volume = eng.names(slug)
        labels = _labels(slug, profile.tier, utc_now(), flags)
        try:
            ctx.progress(f"checking image {flags.image}", 0.05)
            await self._do(lambda c: _ensure_image(c, flags.image))
            ctx.progress(f"creating network {network} and volume {volume}", 0.1)
            await self._step(
                ctx,
                created,
                lambda c: _create_network(c, network, labels),
                lambda made: (lambda c: eng.remove_quietly(c.networks.get(network).remove)) if made else None,
            )
            await self._step(
                ctx,
                created,
                lambda c: _create_volume(c, volume, labels),
                lambda made: (
                    (lambda c: eng.remove_quietly(lambda: c.volumes.get(volume).remove(force=True)))
                    if made
                    else None
                ),
            )
            ctx.progress(f"starting container {container_name}", 0.2)
            container = await self._start_ready(
                created, container_name, flags, limits, labels=labels, ctx=ctx
            )
        except BaseException as exc:
            await self._rollback(ctx, created)
            raise _as_failure(exc, f"provision of {slug!r} failed", []) from None
        ctx.progress("workspace ready", 1.0)
        return _ref(await self._do(lambda c: c.containers.get(container.id)))

    async def _step(
        self,
        ctx: RequestContext,
        created: list[Callable[[docker.DockerClient], None]],
        work: Callable[[docker.DockerClient], T],
        undo: Callable[[T], Callable[[docker.DockerClient], None] | None],
    ) -> T:
        """Run a step that creates something; its undo is recorded even if a cancel arrives
        while the engine is still working on it (the worker thread cannot be interrupted, so
        ``ctx.cleanup`` lets it finish before the cancel goes on)."""
        task = asyncio.ensure_future(self._do(work))
        try:
            return await ctx.cleanup(task)
        finally:
            if task.done() and not task.cancelled() and task.exception() is None:
                step = undo(task.result())
                if step is not None:
                    created.append(step)

    async def _start_ready(
        self,
        created: list[Callable[[docker.DockerClient], None]],
        name: str,
        flags: DockerFlags,
        limits: Limits,
        *,
        labels: dict[str, str],
        ctx: RequestContext,
    ) -> Container:
        """Create a container on the workspace's network and volume, start it, wait until ready;
        its removal is recorded in ``created`` as soon as it exists."""
        slug = labels[eng.SLUG_LABEL]
        _, network, volume = eng.names(slug)
        container: Container = await self._step(
            ctx,
            created,
            lambda c: _create(c, name, flags, limits, labels=labels, network=network, volume=volume),
            lambda made: lambda c: eng.remove_quietly(lambda: made.remove(force=True)),
        )
        ctx.progress(f"created container {name}", 0.2, backend_id=container.id)
        await self._do(lambda c: container.start())
        await self._wait_ready(container, flags.port, flags.ready_timeout, ctx)
        return container

    async def _rollback(
        self, ctx: RequestContext, created: list[Callable[[docker.DockerClient], None]]
    ) -> None:
        """Undo in reverse order, even when the request is being cancelled."""

        async def undo() -> None:
            for step in reversed(created):
                with contextlib.suppress(DriverError):
                    await self._do(step)

        await ctx.cleanup(undo())

    async def _wait_ready(
        self, container: Container, port: int | None, ready_timeout: float, ctx: RequestContext
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + ready_timeout
        while True:
            await self._do(lambda c: container.reload())
            state = container.attrs["State"]
            status = state.get("Status")
            health = (state.get("Health") or {}).get("Status")
            if status in ("exited", "dead"):
                raise _NotReady(
                    f"the container exited with code {state.get('ExitCode')} before it was ready",
                    await self._do(lambda c: eng.last_logs(container)),
                )
            if status == "running":
                if health == "healthy" or (
                    health is None and (port is None or await _answers(_host_port(container, port)))
                ):
                    return
                if health == "unhealthy":
                    raise _NotReady(
                        "the container's health check failed",
                        await self._do(lambda c: eng.last_logs(container)),
                    )
            elapsed = loop.time() - started
            if loop.time() >= deadline:
                raise _NotReady(
                    f"the container was not ready within {ready_timeout:g} s",
                    await self._do(lambda c: eng.last_logs(container)),
                )
            waiting = f"health {health}" if health else (f"port {port}" if port else status)
            ctx.progress(
                f"waiting for {container.name} ({waiting})",
                0.2 + 0.75 * min(1.0, elapsed / ready_timeout),
            )
            await asyncio.sleep(POLL)

    # --- status, list -----------------------------------------------------------------------
    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        slug = ref.workspace_slug
        container, stopped = await self._do(lambda c: _look(c, slug))
        if container is None:
            return StatusReport(
                state="absent", observed_at=utc_now(), message="no container labelled for this workspace"
            )
        state, message = _observed(container, stopped)
        return StatusReport(
            state=state,
            endpoint=None if state == "stopped" else _endpoint(container),
            message=message,
            observed_at=utc_now(),
            details={
                "container": container.name,
                "image": container.attrs["Config"]["Image"],
                "backend_id": container.id,
            },
        )

    async def list(self, ctx: RequestContext) -> builtins.list[DeploymentRef]:
        containers, stopped = await self._do(lambda c: (eng.containers_of(c), eng.stopped_ids(c)))
        return [_ref(c, _marked(c, stopped)) for c in containers if "-next-" not in (c.name or "")]

    # --- upgrade ------------------------------------------------------------------------------
    async def upgrade(
        self, ref: DeploymentRef, profile: ProvisioningProfile, ctx: RequestContext
    ) -> DeploymentRef:
        slug = ref.workspace_slug
        flags, limits = await self._resolve(profile)
        old, stopped = await self._do(lambda c: _look(c, slug))
        if old is None:
            raise InvalidTransition(f"workspace {slug!r} has no container to upgrade", state="absent")
        observed, _ = _observed(old, stopped)
        if observed != "ready":
            raise InvalidTransition(
                f"workspace {slug!r} is {observed}; only a ready workspace can be upgraded", state=observed
            )
        name, _, _ = eng.names(slug)
        labels = _labels(slug, profile.tier, _created(old), flags)
        next_name = f"{name}-next-{secrets.token_hex(3)}"
        created: list[Callable[[docker.DockerClient], None]] = []
        try:
            ctx.progress(f"checking image {flags.image}", 0.05)
            await self._do(lambda c: _ensure_image(c, flags.image))
            ctx.progress(f"starting the new container {next_name}", 0.2)
            new = await self._start_ready(created, next_name, flags, limits, labels=labels, ctx=ctx)
        except BaseException as exc:
            await self._rollback(ctx, created)
            raise _as_failure(
                exc, f"upgrade of {slug!r} failed; the previous container keeps serving", []
            ) from None
        ctx.progress(f"replacing {name}", 0.97)
        ready = new

        def swap(c: docker.DockerClient) -> Container:
            eng.remove_quietly(lambda: old.remove(force=True))
            ready.rename(name)
            return c.containers.get(ready.id)

        swapping = asyncio.ensure_future(self._do(swap))
        try:  # the swap is the commit point: never left half done by a cancel
            replaced = await ctx.cleanup(swapping)
        except asyncio.CancelledError:
            if not swapping.done() or swapping.cancelled() or swapping.exception() is not None:
                raise
            replaced = swapping.result()  # it took effect: the result wins over the cancel
        ctx.progress("upgrade done", 1.0)
        return _ref(replaced)

    # --- plan ---------------------------------------------------------------------------------
    async def plan(
        self, slug: str, ref: DeploymentRef | None, profile: ProvisioningProfile, ctx: RequestContext
    ) -> PlanResult:
        """What provision (``ref`` None) or upgrade would do, read from the engine; refuses as
        they would. Nothing is created, pulled or removed."""
        flags, limits = await self._resolve(profile)
        name, network, volume = eng.names(slug)

        def look(c: docker.DockerClient) -> tuple[tuple[Container | None, bool], bool, bool, bool]:
            return (
                _look(c, slug),
                _has_image(c, flags.image),
                bool(c.networks.list(names=[network])),
                _has_volume(c, volume),
            )

        (existing, stopped), has_image, has_network, has_volume = await self._do(look)
        actions: builtins.list[PlanAction] = []
        if ref is None and existing is not None:
            current = _ref(existing, stopped)
            if (current.tier, current.driver) != (profile.tier, profile.driver):
                raise Conflict(
                    f"workspace {slug!r} exists with tier {current.tier!r}; use upgrade", existing=current
                )
            done = f"already provisioned with tier {profile.tier!r}"
            return PlanResult(actions=[_action("no_op", f"container {name}", done)])
        if ref is not None:
            if existing is None:
                raise InvalidTransition(f"workspace {slug!r} has no container to upgrade", state="absent")
            observed, _ = _observed(existing, stopped)
            if observed != "ready":
                raise InvalidTransition(
                    f"workspace {slug!r} is {observed}; only a ready workspace can be upgraded",
                    state=observed,
                )
        mounted = f"mounted at {flags.data_path}"
        if not has_image:
            actions.append(_action("create", f"image {flags.image}", "not on the Docker engine: pulled"))
        if ref is None:
            actions.append(
                _action("no_op", f"network {network}", "exists: it is used as it is")
                if has_network
                else _action("create", f"network {network}", "the workspace's own bridge network")
            )
            actions.append(
                _action("no_op", f"volume {volume}", f"exists: {mounted}, with its data")
                if has_volume
                else _action("create", f"volume {volume}", f"the workspace's data, {mounted}")
            )
            actions.append(_action("create", f"container {name}", _container_summary(flags, limits)))
            return PlanResult(actions=actions)
        assert existing is not None
        changes = _differences(existing, profile.tier, flags, limits)
        actions.append(
            _action(
                "replace",
                f"container {name}",
                f"{'; '.join(changes) or 'the same settings'}: a new container starts on the same "
                "network and volume and takes the old one's place once ready (the old one serves "
                f"until then); what the old one kept outside {flags.data_path} is not carried over",
            )
        )
        actions.append(_action("no_op", f"network {network}", "kept"))
        actions.append(_action("no_op", f"volume {volume}", f"kept, with its data, {mounted}"))
        return PlanResult(actions=actions)

    # --- stop and start (1.3) -------------------------------------------------------------------
    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        """Stop the same container as ``docker stop`` does, marked stopped first so that status
        never calls it failed; a cancel or failure starts it again (the rollback)."""
        slug = ref.workspace_slug
        container = await self._current(slug, "stop", ready="stopped")
        if isinstance(container, DeploymentRef):
            return container
        timeout = _stop_timeout(container)
        ctx.progress(
            f"stopping {container.name} (its stop signal, SIGKILL after {timeout} s)",
            0.05,
            backend_id=container.id,
        )
        signalled = False
        try:
            await ctx.cleanup(self._mark(slug, container))
            signalled = True
            await self._halt(container, timeout, ctx)
        except BaseException as exc:
            await self._roll_back(ctx, exc, self._undo_stop(slug, container, signalled), f"stop of {slug!r}")
            raise _as_failure(exc, f"stop of {slug!r} failed; the container was started again", []) from None
        # no await from here: the container has exited, so a cancel now must not answer -32800
        ctx.progress(f"stopped {container.name}", 1.0, backend_id=container.id)
        return _ref(container, True)

    async def start(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        """Start the same container again, ready by provision's rule; a cancel or a failure
        stops it again and leaves it marked stopped (the rollback)."""
        slug = ref.workspace_slug
        container = await self._current(slug, "start", ready="ready")
        if isinstance(container, DeploymentRef):
            return container
        ctx.progress(f"starting {container.name}", 0.05, backend_id=container.id)
        try:
            await ctx.cleanup(self._do(lambda c: container.start()))
            await self._wait_ready(container, _label_port(container), _ready_timeout(container), ctx)
        except BaseException as exc:
            await self._roll_back(ctx, exc, self._undo_start(slug, container), f"start of {slug!r}")
            raise _as_failure(exc, f"start of {slug!r} failed; the container is stopped again", []) from None
        # the mark goes once ready (the commit point), so a failure above leaves it stopped
        name = eng.marker(slug)
        unmarking = asyncio.ensure_future(
            self._do(lambda c: eng.remove_quietly(lambda: c.volumes.get(name).remove()))
        )
        try:
            await ctx.cleanup(unmarking)
        except asyncio.CancelledError:
            if not unmarking.done() or unmarking.cancelled() or unmarking.exception() is not None:
                raise
        ctx.progress(f"{container.name} is ready", 1.0, backend_id=container.id)
        return _ref(container)

    async def _roll_back(
        self, ctx: RequestContext, exc: BaseException, undo: Coroutine[Any, Any, None], what: str
    ) -> None:
        """Run ``undo`` to its end even under a cancel; if it fails, the answer says the
        workspace is not as it was (a cancel's ``rolled_back`` is then false by the SDK)."""
        try:
            await ctx.cleanup(undo)
        except Exception as failed:
            if isinstance(exc, asyncio.CancelledError):
                raise exc from None
            message = failed.message if isinstance(failed, DriverError) else str(failed)
            raise BackendFailure(
                f"{what} failed and could not be undone: {message}", rolled_back=False
            ) from None

    async def _current(self, slug: str, verb: str, *, ready: str) -> Container | DeploymentRef:
        """The container ``verb`` acts on, or its ref when it is ``ready`` (the verb's end state)
        already: nothing to do; any state but the verb's start or end is refused."""
        container, stopped = await self._do(lambda c: _look(c, slug))
        if container is None:
            raise InvalidTransition(f"cannot {verb} workspace {slug!r}: it is absent", state="absent")
        state, _ = _observed(container, stopped)
        if state == ready:
            return _ref(container, stopped)
        if state != ("ready" if verb == "stop" else "stopped"):
            raise InvalidTransition(f"cannot {verb} workspace {slug!r}: it is {state}", state=state)
        return container

    async def _mark(self, slug: str, container: Container) -> None:
        """Mark ``container`` stopped (see ``eng.marker``), before its signal: a stop that dies
        half way then reads as ``stopping``/``stopped``, never ``failed``."""
        labels = {
            eng.SLUG_LABEL: slug,
            f"{eng.LABEL}.driver": "docker",
            f"{eng.LABEL}.managed": "true",
            eng.STOPPED_LABEL: str(container.id),
            eng.STOPPED_AT_LABEL: utc_now().isoformat(),
        }
        name = eng.marker(slug)

        def mark(c: docker.DockerClient) -> None:
            eng.remove_quietly(lambda: c.volumes.get(name).remove())  # a stale one, of another id
            c.volumes.create(name, labels=labels)

        await self._do(mark)

    async def _halt(self, container: Container, timeout: float, ctx: RequestContext | None) -> None:
        """``docker stop``, with progress and cancellable between polls: the container's stop
        signal, then SIGKILL once ``timeout`` seconds passed, until it has exited."""
        signal = (container.attrs.get("Config") or {}).get("StopSignal") or "SIGTERM"
        loop = asyncio.get_running_loop()
        started = loop.time()
        killed = False
        await self._do(lambda c: _signal(container, signal))
        pause = 0.02  # most containers exit within moments of their signal: look soon, then less
        while True:
            await self._do(lambda c: container.reload())
            status = container.attrs["State"].get("Status")
            if status not in ("running", "restarting", "paused"):
                return
            elapsed = loop.time() - started
            if not killed and elapsed >= timeout:
                await self._do(lambda c: _signal(container, "SIGKILL"))
                killed = True
            if ctx is not None:
                ctx.progress(
                    f"waiting for {container.name} to exit ({elapsed:.0f} s of {timeout} s, then SIGKILL)",
                    0.1 + 0.85 * min(1.0, elapsed / max(timeout, 1)),
                    backend_id=container.id,
                )
            await asyncio.sleep(pause)
            pause = min(POLL, pause * 2)

    async def _undo_stop(self, slug: str, container: Container, signalled: bool) -> None:
        """The rollback of a stop: what the signal left running is killed (it may be half way
        through its shutdown), the same container starts again and is ready, then the mark goes.
        Before any signal, only the mark goes."""
        name = eng.marker(slug)
        if not signalled:
            await self._do(lambda c: eng.remove_quietly(lambda: c.volumes.get(name).remove()))
            return
        await self._do(lambda c: container.reload())
        if container.attrs["State"].get("Status") in ("running", "restarting", "paused"):
            await self._halt_now(container)
        await self._do(lambda c: container.start())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _ready_timeout(container)
        port = _label_port(container)
        while True:  # provision's readiness rule, without a request to report progress to
            await self._do(lambda c: container.reload())
            state, _ = _observed(container)
            if state == "ready" and (port is None or await _answers(_host_port(container, port))):
                break
            if state == "failed" or loop.time() > deadline:
                raise BackendFailure(f"the container of {slug!r} did not start again", rolled_back=False)
            await asyncio.sleep(POLL)
        await self._do(lambda c: eng.remove_quietly(lambda: c.volumes.get(name).remove()))

    async def _undo_start(self, slug: str, container: Container) -> None:
        """The rollback of a start: stop it again (SIGKILL after at most 5 s) and mark it anew,
        since a mark older than the container's last start no longer counts."""
        await self._halt(container, min(_stop_timeout(container), 5), None)
        await self._mark(slug, container)

    async def _halt_now(self, container: Container) -> None:
        await self._do(lambda c: _signal(container, "SIGKILL"))
        while True:
            await self._do(lambda c: container.reload())
            if container.attrs["State"].get("Status") not in ("running", "restarting", "paused"):
                return
            await asyncio.sleep(POLL)

    # --- teardown -----------------------------------------------------------------------------
    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        slug = ref.workspace_slug
        _, network, volume = eng.names(slug)

        def remove_all(c: docker.DockerClient) -> None:
            for container in eng.containers_of(c, slug):
                eng.remove_quietly(partial(container.remove, force=True))
            eng.remove_quietly(lambda: c.networks.get(network).remove())
            eng.remove_quietly(lambda: c.volumes.get(volume).remove(force=True))
            eng.remove_quietly(lambda: c.volumes.get(eng.marker(slug)).remove(force=True))

        ctx.progress(f"removing the container, network {network} and volume {volume}", 0.1)
        await ctx.cleanup(self._do(remove_all))
        ctx.progress("removed", 1.0)


class _NotReady(Exception):
    def __init__(self, message: str, logs: list[str]) -> None:
        super().__init__(message)
        self.logs = logs


def _as_failure(exc: BaseException, what: str, logs: list[str]) -> BaseException:
    """After a rollback: the error to answer with (cancellation stays a cancellation)."""
    if isinstance(exc, asyncio.CancelledError | InvalidProfile | Conflict):
        return exc
    if isinstance(exc, _NotReady):
        return BackendFailure(f"{what}: {exc}", rolled_back=True, logs=exc.logs or logs)
    if isinstance(exc, BackendFailure):
        return BackendFailure(
            f"{what}: {exc.message}", rolled_back=True, logs=list(exc.extra.get("logs") or logs)
        )
    if isinstance(exc, DriverError):
        return exc
    return BackendFailure(f"{what}: {type(exc).__name__}: {exc}", rolled_back=True, logs=logs)


def _labels(slug: str, tier: str, created: datetime, flags: DockerFlags) -> dict[str, str]:
    """The labels of a new container (and its network and volume); what stop and start need of
    the profile, which they are not given, is kept here too."""
    labels = {
        eng.SLUG_LABEL: slug,
        f"{eng.LABEL}.tier": tier,
        f"{eng.LABEL}.driver": "docker",
        f"{eng.LABEL}.managed": "true",
        f"{eng.LABEL}.created": created.isoformat(),
    }
    if flags.port is not None:
        labels[f"{eng.LABEL}.port"] = str(flags.port)
    labels[f"{eng.LABEL}.ready_timeout"] = f"{flags.ready_timeout:g}"
    if flags.stop_timeout is not None:
        labels[f"{eng.LABEL}.stop_timeout"] = str(flags.stop_timeout)
    return labels


def _action(action: PlanActionKind, resource: str, reason: str) -> PlanAction:
    """A plan's action; no docker action destroys data (the volume outlives every container)."""
    return PlanAction(action=action, resource=resource, reason=reason, destructive=False)


def _has_image(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def _has_volume(client: docker.DockerClient, name: str) -> bool:
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        return False
    return True


def _container_summary(flags: DockerFlags, limits: Limits) -> str:
    parts = [f"from {flags.image}"]
    if limits.nano_cpus is not None:
        parts.append(f"{limits.nano_cpus / 1e9:g} CPUs")
    if limits.mem_bytes is not None:
        parts.append(f"{limits.mem_bytes // (1024 * 1024)} MiB")
    if flags.port is not None:
        parts.append(f"port {flags.port} published on 127.0.0.1")
    return ", ".join(parts)


def _differences(container: Container, tier: str, flags: DockerFlags, limits: Limits) -> list[str]:
    """What an upgrade to ``flags`` and ``limits`` changes in ``container``, in words."""
    config = container.attrs.get("Config") or {}
    host = container.attrs.get("HostConfig") or {}
    labels = container.labels

    def cpus(nano: int | None) -> str:
        return f"{nano / 1e9:g} CPUs" if nano else "no CPU limit"

    def memory(size: int | None) -> str:
        return f"{size // (1024 * 1024)} MiB" if size else "no memory limit"

    pairs = [
        ("tier", repr(labels.get(f"{eng.LABEL}.tier")), repr(tier)),
        ("image", str(config.get("Image")), flags.image),
        ("cpus", cpus(host.get("NanoCpus")), cpus(limits.nano_cpus)),
        ("memory", memory(host.get("Memory")), memory(limits.mem_bytes)),
        ("port", labels.get(f"{eng.LABEL}.port") or "none", str(flags.port or "none")),
    ]
    return [f"{what} {old} -> {new}" for what, old, new in pairs if old != new]


def _ensure_image(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(image)
    except docker.errors.APIError as exc:
        raise BackendFailure(
            f"image {image!r} is not present on the Docker engine and could not "
            f"be pulled: {exc.explanation or exc}",
            rolled_back=True,
        ) from None


def _create_network(client: docker.DockerClient, name: str, labels: dict[str, str]) -> bool:
    if client.networks.list(names=[name]):
        return False
    client.networks.create(name, driver="bridge", labels=labels)
    return True


def _create_volume(client: docker.DockerClient, name: str, labels: dict[str, str]) -> bool:
    try:
        client.volumes.get(name)
        return False
    except docker.errors.NotFound:
        client.volumes.create(name, labels=labels)
        return True


def _create(
    client: docker.DockerClient,
    name: str,
    flags: DockerFlags,
    limits: Limits,
    *,
    labels: dict[str, str],
    network: str,
    volume: str,
) -> Container:
    """Create (not start) the container, so a failed start still leaves it to roll back."""
    options: dict[str, Any] = {
        "name": name,
        "labels": labels,
        "network": network,
        "environment": flags.env,
        "volumes": {volume: {"bind": flags.data_path, "mode": "rw"}},
    }
    if flags.command is not None:
        options["command"] = flags.command
    if flags.port is not None:
        options["ports"] = {f"{flags.port}/tcp": ("127.0.0.1",)}
    if limits.nano_cpus is not None:
        options["nano_cpus"] = limits.nano_cpus
    if limits.mem_bytes is not None:
        options["mem_limit"] = limits.mem_bytes
    container: Container = client.containers.create(flags.image, **options)
    return container


def _host_port(container: Container, port: int) -> int | None:
    bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{port}/tcp")
    return int(bindings[0]["HostPort"]) if bindings else None


async def _answers(port: int | None) -> bool:
    """Does something serve on 127.0.0.1:port? Docker's proxy accepts every connection, so
    a connection it closes at once (nothing behind it yet) does not count."""
    if port is None:
        return False
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        data = await asyncio.wait_for(reader.read(1), 0.3)
        return bool(data)  # a banner: it serves; b"": closed by the proxy
    except TimeoutError:
        return True  # open and waiting for us to speak: it serves
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _endpoint(container: Container) -> str | None:
    port = container.labels.get(f"{eng.LABEL}.port")
    ports = container.attrs.get("NetworkSettings", {}).get("Ports") or {}
    for key, bindings in ports.items():
        if bindings and (port is None or key == f"{port}/tcp"):
            return f"http://127.0.0.1:{bindings[0]['HostPort']}"
    return None


def _signal(container: Container, signal: str) -> None:
    """Send ``signal``; a container that exited meanwhile is what was wanted (the engine answers
    409 "is not running")."""
    try:
        container.kill(signal=signal)
    except docker.errors.APIError as exc:
        if exc.status_code != 409 and "is not running" not in str(exc):
            raise


def _stop_timeout(container: Container) -> int:
    """As ``docker stop``: the profile's ``stop_timeout``, else the container's StopTimeout, else 10 s."""
    label = container.labels.get(f"{eng.LABEL}.stop_timeout")
    if label is not None:
        return int(label)
    configured = (container.attrs.get("Config") or {}).get("StopTimeout")
    return int(configured) if configured is not None else 10


def _ready_timeout(container: Container) -> float:
    return float(container.labels.get(f"{eng.LABEL}.ready_timeout") or 60.0)


def _label_port(container: Container) -> int | None:
    port = container.labels.get(f"{eng.LABEL}.port")
    return int(port) if port else None


def _created(container: Container) -> datetime:
    return datetime.fromisoformat(container.labels[f"{eng.LABEL}.created"])


def _look(client: docker.DockerClient, slug: str) -> tuple[Container | None, bool]:
    """The workspace's container, and whether ``stop`` stopped it (the mark names its id)."""
    container = eng.primary(eng.containers_of(client, slug), slug)
    return container, container is not None and _marked(container, eng.stopped_ids(client, slug))


def _marked(container: Container, marks: dict[str, str]) -> bool:
    """Is ``container`` stopped by ``stop`` (or being stopped)? Its mark counts unless it was
    started since the mark was made (``docker start`` by hand, or a ``start`` under way)."""
    if container.id not in marks:
        return False
    started, marked = _instant(container.attrs["State"].get("StartedAt")), _instant(marks[container.id])
    return started is None or marked is None or started <= marked


def _instant(text: str | None) -> datetime | None:
    """An engine or label timestamp (the engine's has nanoseconds, which Python does not take)."""
    found = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?", text or "")
    if found is None:
        return None
    return datetime.fromisoformat(found.group(1) + (found.group(2) or "")[:7] + "+00:00")


def _observed(container: Container, stopped: bool = False) -> tuple[ObservedState, str | None]:
    """The container's state as the protocol's; ``stopped``: ``stop`` marked it, so an exited
    container is ``stopped`` (kept to start again), not ``failed``."""
    state = container.attrs["State"]
    status = state.get("Status")
    health = (state.get("Health") or {}).get("Status")
    if stopped:
        if status in ("running", "restarting", "paused"):
            return "stopping", "the container has its stop signal and has not exited yet"
        return "stopped", "the container is stopped (hearth stop); hearth start starts it again"
    if status == "running":
        if health in (None, "healthy"):
            return "ready", None
        if health == "starting":
            return "provisioning", "the health check has not passed yet"
        return "failed", f"the container is {health}"
    if status in ("created", "restarting"):
        return "provisioning", f"the container is {status}"
    if status == "exited" and state.get("ExitCode") in (137, 143) and not state.get("OOMKilled"):
        # SIGKILL or SIGTERM from outside, not a crash nor the kernel's OOM killer: `docker stop`
        return "stopped", f"stopped outside hearth (exit code {state.get('ExitCode')}, as `docker stop`)"
    if status in ("exited", "dead"):
        return "failed", f"the container exited with code {state.get('ExitCode')}"
    return "failed", f"the container is {status}"


def _ref(container: Container, stopped: bool = False) -> DeploymentRef:
    state, _ = _observed(container, stopped)
    labels = container.labels
    return DeploymentRef(
        workspace_slug=labels[eng.SLUG_LABEL],
        tier=labels[f"{eng.LABEL}.tier"],
        driver="docker",
        endpoint=None if state == "stopped" else _endpoint(container),
        created=_created(container),
        last_status="failed" if state == "absent" else state,
    )
