"""The kustomize driver: each workspace is a namespace ``<prefix><slug>`` on a Kubernetes cluster.

provision: the namespace, the caps as a ResourceQuota and a LimitRange, then the render (a
kustomize overlay, or a Deployment and a Service made from an image), all by server-side apply
as the field manager ``hearth`` without force, so a field another manager owns is refused with
its name. Ready is read from the objects' conditions as the watch reports them, with progress
(scheduled, pulling, back-off, ready n/m); back-off, an unschedulable pod or a Deployment past
its progress deadline fail at once, and a failed or cancelled provision deletes the namespace it
created and waits until it is gone. ``backend_id`` is the namespace's UID.
upgrade: apply (an object whose change is immutable is deleted and applied anew, one that
holds data only with ``allow_destructive_upgrade``), wait, prune what the new render dropped
(claims only with ``allow_destructive_upgrade``); on failure or cancel the objects it changed
are applied again as the previous render (kept in the namespace as the Secret
``hearth-render``) and waited for.
stop: each Deployment and StatefulSet applied again as last rendered but at 0 replicas, its
count saved on it (annotation ``hearth.dev/stopped-replicas``) by the same apply, then watched
until their pods are gone; claims and the namespace stay. start: the saved counts applied back,
ready by provision's rule, then the annotation dropped. Either, failed or cancelled, applies the
counts it changed back and waits for that.
teardown: foreground deletion of the namespace, waited for until it is gone; a namespace that
sticks is reported with its conditions (finalizers are never stripped).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import importlib.metadata
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from hearth_adaptersdk import (
    BackendFailure,
    BackendUnavailable,
    Conflict,
    DeploymentRef,
    Driver,
    DriverError,
    InvalidProfile,
    InvalidTransition,
    PlanAction,
    PlanResult,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    utc_now,
)
from hearth_adaptersdk.wire import PlanActionKind

from . import _assess as look
from . import _render as rnd
from ._config import KustomizeConfig
from ._kube import Kube, Obj, Refused
from ._spec import KustomizeFlags, resolve

log = logging.getLogger("hearth_adapter_kustomize")
#: What a workspace's namespace is watched for while a verb waits.
WATCHED = (("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("apps/v1", "ReplicaSet"), ("v1", "Pod"))
#: Kinds looked for when pruning and planning deletes, beside those the renders name.
PRUNED = (
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "ServiceAccount"),
    ("networking.k8s.io/v1", "Ingress"),
)


@dataclass
class Rendered:
    flags: KustomizeFlags
    namespace: str
    namespace_object: Obj
    objects: list[Obj]
    ready_timeout: float

    def keys(self) -> set[tuple[str, str, str]]:
        return {rnd.key(obj) for obj in self.objects}


@dataclass
class Seen:
    """A workspace's namespace and what runs in it, as listed once."""

    namespace: Obj
    workloads: list[Obj]
    pods: list[Obj]
    exposed: list[Obj]
    replicasets: list[Obj]

    def assessment(self) -> look.Assessment:
        return look.assess(self.workloads, self.pods, self.replicasets)

    def stop(self) -> look.StopPhase | None:
        return look.stop_phase(self.workloads, self.pods)


class KustomizeDriver(Driver):
    name: ClassVar[str] = "kustomize"
    version: ClassVar[str] = importlib.metadata.version("hearth-adapter-kustomize")
    config_model: ClassVar[type[BaseModel] | None] = KustomizeConfig

    def __init__(self) -> None:
        self.settings = KustomizeConfig()
        self.kube = Kube(self.settings)

    async def setup(self, config: Any, data_dir: Path | None) -> None:
        await super().setup(config, data_dir)
        self.settings = config
        self.kube = Kube(config)

    async def close(self) -> None:
        await self.kube.close()

    # --- rendering ----------------------------------------------------------------------------
    async def _render(self, slug: str, profile: ProvisioningProfile) -> Rendered:
        """The profile as objects, before anything touches the cluster; -32023 lists every problem."""
        try:
            flags, caps = resolve(profile)
        except ValueError as exc:
            raise InvalidProfile(
                "the kustomize driver cannot honour this profile", errors=list(exc.args[0])
            ) from None
        namespace = rnd.namespace_name(self.settings.namespace_prefix, slug)
        try:
            if len(namespace) > 63:
                raise ValueError(
                    [f"driver: namespace {namespace!r} is longer than 63 characters; shorten the slug"]
                )
            if flags.kustomize is not None:
                folder = _overlay(self.settings, flags.kustomize)
                objects = await rnd.kustomize_build(
                    self.settings.kubectl, folder, self.settings.request_timeout
                )
            else:
                objects = rnd.image_objects(flags, caps)
            body = rnd.finish(
                rnd.cap_objects(caps) + objects, namespace=namespace, slug=slug, tier=profile.tier
            )
        except ValueError as exc:
            errors = [
                e if e.startswith(("driver", "resource_caps")) else f"driver_flags: {e}" for e in exc.args[0]
            ]
            raise InvalidProfile("the kustomize driver cannot honour this profile", errors=errors) from None
        return Rendered(
            flags=flags,
            namespace=namespace,
            namespace_object=rnd.namespace_object(namespace, slug, profile.tier),
            objects=body,
            ready_timeout=flags.ready_timeout or self.settings.ready_timeout,
        )

    async def validate_profile(self, profile: ProvisioningProfile, ctx: RequestContext) -> builtins.list[str]:
        try:
            await self._render("validate", profile)
        except InvalidProfile as exc:
            return exc.errors
        return []

    # --- reading ------------------------------------------------------------------------------
    def _namespace(self, slug: str) -> str:
        return rnd.namespace_name(self.settings.namespace_prefix, slug)

    async def _seen(self, namespace: Obj) -> Seen:
        name = namespace["metadata"]["name"]
        lists = await asyncio.gather(
            self.kube.list("apps/v1", "Deployment", namespace=name),
            self.kube.list("apps/v1", "StatefulSet", namespace=name),
            self.kube.list("v1", "Pod", namespace=name),
            self.kube.list("v1", "Service", namespace=name),
            self.kube.list("networking.k8s.io/v1", "Ingress", namespace=name),
            self.kube.list("apps/v1", "ReplicaSet", namespace=name),
        )
        deployments, statefulsets, pods, services, ingresses, replicasets = (found for found, _ in lists)
        return Seen(namespace, deployments + statefulsets, pods, services + ingresses, replicasets)

    def _ref(self, seen: Seen) -> DeploymentRef:
        meta = seen.namespace["metadata"]
        labels = meta.get("labels") or {}
        state, _ = look.observed_state(
            seen.namespace, seen.assessment(), upgrade=look.upgrading(seen.workloads), stop=seen.stop()
        )
        return DeploymentRef(
            workspace_slug=labels[rnd.WORKSPACE],
            tier=labels.get(rnd.TIER, ""),
            driver="kustomize",
            endpoint=rnd.endpoint(seen.exposed, meta["name"], self.settings.cluster_domain),
            created=_timestamp(meta.get("creationTimestamp")),
            last_status="failed" if state in ("absent", "unknown") else state,
        )

    def _ours(self, namespace: Obj, slug: str) -> bool:
        labels = namespace["metadata"].get("labels") or {}
        return labels.get(rnd.MANAGED_BY) == rnd.MANAGER and labels.get(rnd.WORKSPACE) == slug

    # --- provision ----------------------------------------------------------------------------
    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        ctx.progress(f"rendering the {profile.tier!r} tier", 0.02)
        rendered = await self._render(slug, profile)
        name = rendered.namespace
        existing = await self.kube.get("v1", "Namespace", name)
        if existing is not None and _terminating(existing):
            ctx.progress(f"namespace {name} is still being deleted; waiting until it is gone", 0.03)
            await self._wait_gone(name, ctx, self.settings.delete_timeout)
            existing = None
        if existing is not None:
            if not self._ours(existing, slug):
                raise _not_ours(name, slug)
            seen = await self._seen(existing)
            current = self._ref(seen)
            if current.tier != profile.tier:
                raise Conflict(
                    f"workspace {slug!r} exists with tier {current.tier!r}; use upgrade", existing=current
                )
            if seen.assessment().health == "ready":
                ctx.progress("already provisioned", 1.0)
                return current
            try:  # left provisioning or failed: applied and waited for anew (protocol decision 10)
                await self._apply_all(rendered, ctx, [])
                await self._wait_ready(name, ctx, rendered.ready_timeout)
                await self.kube.apply(rnd.render_record(rendered.objects, profile.tier, slug, name))
            except BaseException as exc:
                raise _as_failure(exc, f"provision of {slug!r} failed", rolled_back=False) from None
            return await self._ready_ref(name)
        try:
            ctx.progress(f"creating namespace {name}", 0.05)
            created = await self.kube.apply(rendered.namespace_object)
            ctx.progress(f"created namespace {name}", 0.1, backend_id=created["metadata"]["uid"])
            await self._apply_all(rendered, ctx, [])
            await self._wait_ready(name, ctx, rendered.ready_timeout)
            await self.kube.apply(rnd.render_record(rendered.objects, profile.tier, slug, name))
        except BaseException as exc:
            rolled_back = await self._undo_namespace(name, ctx)
            raise _as_failure(exc, f"provision of {slug!r} failed", rolled_back=rolled_back) from None
        ctx.progress("workspace ready", 1.0)
        return await self._ready_ref(name)

    async def _ready_ref(self, name: str) -> DeploymentRef:
        namespace = await self.kube.get("v1", "Namespace", name)
        if namespace is None:
            raise BackendFailure(f"namespace {name} vanished right after it was ready", rolled_back=False)
        return self._ref(await self._seen(namespace))

    async def _apply_all(
        self,
        rendered: Rendered,
        ctx: RequestContext,
        changed: builtins.list[Obj],
        *,
        replace: bool = False,
    ) -> None:
        """Apply every object in order; each one applied is appended to ``changed`` at once.
        ``replace`` (an upgrade): an object whose change the server calls immutable is deleted
        and applied anew, as ``plan`` says (one that holds data only with
        ``allow_destructive_upgrade``)."""
        total = len(rendered.objects)
        for index, obj in enumerate(rendered.objects):
            ctx.progress(f"applying {rnd.describe(obj)}", 0.1 + 0.2 * index / max(1, total))
            changed.append(obj)  # before the call: a cancel may cut it short after it took effect
            try:
                await self._apply(obj, ctx, replace=replace, destroy=rendered.flags.allow_destructive_upgrade)
            except Refused as refused:
                changed.pop()  # refused: nothing of it changed, nothing to restore
                raise _Refusal(obj, refused) from None

    async def _apply(self, obj: Obj, ctx: RequestContext, *, replace: bool, destroy: bool) -> None:
        try:
            await self.kube.apply(obj)
        except Refused as refused:
            if not (replace and _immutable(refused)):
                raise
            if look.destroys_data(obj) and not destroy:
                raise Refused(
                    refused.code,
                    refused.reason,
                    f"{refused.message}; replacing it would lose its data: set allow_destructive_upgrade "
                    "in the tier's driver_flags to accept that",
                ) from None
            meta = obj["metadata"]
            ctx.progress(f"replacing {rnd.describe(obj)}: {refused.message}", None)
            # foreground: gone only once its pods are, so the new one fits the same quota
            await self.kube.delete(
                obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"), foreground=True
            )
            await self._wait_gone(
                meta["name"],
                ctx,
                self.settings.delete_timeout,
                kind=(obj["apiVersion"], obj["kind"]),
                namespace=meta.get("namespace"),
            )
            await self.kube.apply(obj)

    async def _undo_namespace(self, name: str, ctx: RequestContext) -> bool:
        """Delete the namespace this call created and wait until it is gone (through
        ``ctx.cleanup``, so a cancel waits for it). True once it is gone."""
        try:
            await ctx.cleanup(self._remove_namespace(name, ctx, self.settings.delete_timeout))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("rollback of namespace %s not confirmed: %s", name, exc)
            return False
        return True

    async def _remove_namespace(self, name: str, ctx: RequestContext, timeout: float) -> None:
        ctx.progress(f"deleting namespace {name} (foreground) and waiting until it is gone", None)
        if await self.kube.delete("v1", "Namespace", name, foreground=True):
            await self._wait_gone(name, ctx, timeout)

    async def _wait_gone(
        self,
        name: str,
        ctx: RequestContext,
        timeout: float,
        *,
        kind: tuple[str, str] = ("v1", "Namespace"),
        namespace: str | None = None,
    ) -> None:
        """Until the object (a namespace by default) is gone, watched; BackendFailure naming a
        namespace's conditions if it sticks."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fields = {"metadata.name": name}
        api_version, kind_name = kind
        found, version = await self.kube.list(api_version, kind_name, namespace=namespace, fields=fields)
        last: Obj | None = found[0] if found else None
        if last is None:
            return

        async def follow() -> None:
            nonlocal last
            # closed here, not when collected: its HTTP stream is shut before the answer is sent
            async with contextlib.aclosing(
                self.kube.watch(
                    api_version, kind_name, namespace=namespace, fields=fields, resource_version=version
                )
            ) as events:
                async for operation, obj in events:
                    if operation == "DELETED":
                        return
                    last = obj

        try:
            await asyncio.wait_for(follow(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            why = look.stuck_reason(last) or "its finalizers have not finished"
            raise BackendFailure(
                f"{kind_name} {name} is still terminating after {timeout:g} s: {why}", rolled_back=False
            ) from None

    async def _wait_ready(self, name: str, ctx: RequestContext, timeout: float) -> look.Assessment:
        """Watch the namespace's workloads and pods until the assessment is ready or failed."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with _Observer(self.kube, name) as observer:
            said = ""
            while True:
                verdict = look.assess(observer.workloads(), observer.pods(), observer.replicasets())
                elapsed = loop.time() - started
                if verdict.message != said:
                    said = verdict.message
                    ctx.progress(said, 0.3 + 0.65 * min(1.0, elapsed / timeout))
                if verdict.health == "ready":
                    return verdict
                if verdict.health == "failed":
                    raise _NotReady(verdict.message, await self._warnings(name))
                if elapsed >= timeout:
                    raise _NotReady(
                        f"not ready within {timeout:g} s: {verdict.message}", await self._warnings(name)
                    )
                # a refusal the controller retries is judged again as its grace runs out
                recheck = 1.0 if "(the controller retries)" in verdict.message else timeout - elapsed
                await observer.changed(min(timeout - elapsed, recheck))

    async def _warnings(self, name: str) -> builtins.list[str]:
        """The namespace's last warning events: the cluster's own words about a failure."""
        with contextlib.suppress(DriverError, Refused):
            events, _ = await self.kube.list("v1", "Event", namespace=name)
            warnings = [e for e in events if e.get("type") == "Warning"]
            warnings.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
            return [f"{_involved(e)}: {e.get('reason')}: {e.get('message')}" for e in warnings[-10:]]
        return []

    # --- status, list -------------------------------------------------------------------------
    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        name = self._namespace(ref.workspace_slug)
        namespace = await self.kube.get("v1", "Namespace", name)
        if namespace is None or not self._ours(namespace, ref.workspace_slug):
            message = None if namespace is None else f"namespace {name} exists but is not this workspace's"
            state, said = look.observed_state(None, None, upgrade=False)
            return StatusReport(state=state, observed_at=utc_now(), message=message or said)
        details: dict[str, Any] = {
            "namespace": name,
            "uid": namespace["metadata"].get("uid"),
            "tier": (namespace["metadata"].get("labels") or {}).get(rnd.TIER),
        }
        if _terminating(namespace):
            state, said = look.observed_state(namespace, None, upgrade=False)
            return StatusReport(state=state, observed_at=utc_now(), message=said, details=details)
        seen = await self._seen(namespace)
        verdict = seen.assessment()
        state, said = look.observed_state(
            namespace, verdict, upgrade=look.upgrading(seen.workloads), stop=seen.stop()
        )
        details["ready"] = f"{verdict.ready}/{verdict.desired}"
        return StatusReport(
            state=state,
            endpoint=rnd.endpoint(seen.exposed, name, self.settings.cluster_domain),
            message=said,
            observed_at=utc_now(),
            details=details,
        )

    async def list(self, ctx: RequestContext) -> builtins.list[DeploymentRef]:
        namespaces, _ = await self.kube.list("v1", "Namespace", labels={rnd.MANAGED_BY: rnd.MANAGER})
        refs = []
        for namespace in namespaces:
            slug = (namespace["metadata"].get("labels") or {}).get(rnd.WORKSPACE)
            if not slug or namespace["metadata"]["name"] != self._namespace(slug):
                continue
            refs.append(self._ref(await self._seen(namespace)))
        return refs

    # --- upgrade ------------------------------------------------------------------------------
    async def _ready_for_upgrade(self, slug: str) -> tuple[Obj, Seen]:
        name = self._namespace(slug)
        namespace = await self.kube.get("v1", "Namespace", name)
        if namespace is None or not self._ours(namespace, slug):
            raise InvalidTransition(f"workspace {slug!r} has no namespace to upgrade", state="absent")
        if _terminating(namespace):
            raise InvalidTransition(f"workspace {slug!r} is being torn down", state="tearing_down")
        seen = await self._seen(namespace)
        state, _ = look.observed_state(
            namespace, seen.assessment(), upgrade=look.upgrading(seen.workloads), stop=seen.stop()
        )
        if state != "ready":
            raise InvalidTransition(
                f"workspace {slug!r} is {state}; only a ready workspace can be upgraded", state=state
            )
        return namespace, seen

    async def upgrade(
        self, ref: DeploymentRef, profile: ProvisioningProfile, ctx: RequestContext
    ) -> DeploymentRef:
        slug = ref.workspace_slug
        rendered = await self._render(slug, profile)
        name = rendered.namespace
        namespace, _ = await self._ready_for_upgrade(slug)
        previous_tier = (namespace["metadata"].get("labels") or {}).get(rnd.TIER, "")
        previous = rnd.read_record(await self.kube.get("v1", "Secret", rnd.RENDER, name))
        changed: builtins.list[Obj] = []
        try:
            ctx.progress(f"applying the {profile.tier!r} tier to namespace {name}", 0.05)
            changed.append(rendered.namespace_object)
            await self.kube.apply(rendered.namespace_object)
            await self._apply_all(rendered, ctx, changed, replace=True)
            await self._wait_ready(name, ctx, rendered.ready_timeout)
            await self._prune(slug, rendered, previous, ctx)
            await self.kube.apply(rnd.render_record(rendered.objects, profile.tier, slug, name))
        except BaseException as exc:
            restore = self._restore(
                slug=slug,
                name=name,
                tier=previous_tier,
                previous=previous,
                changed=changed,
                ctx=ctx,
                timeout=rendered.ready_timeout,
            )
            rolled_back = True
            try:
                await ctx.cleanup(restore)
            except asyncio.CancelledError:
                raise
            except Exception as failure:
                log.warning("the upgrade's rollback of %s failed: %s", slug, failure)
                rolled_back = False
            what = f"upgrade of {slug!r} failed" + (
                "; the previous render serves again" if rolled_back else ""
            )
            raise _as_failure(exc, what, rolled_back=rolled_back) from None
        ctx.progress("upgrade done", 1.0)
        return await self._ready_ref(name)

    async def _restore(
        self,
        *,
        slug: str,
        name: str,
        tier: str,
        previous: builtins.list[Obj],
        changed: builtins.list[Obj],
        ctx: RequestContext,
        timeout: float,
    ) -> None:
        """Apply again the previous render's version of each object the upgrade changed, delete
        those it added, and wait until ready: raises when the old state is not back."""
        if not changed:
            return
        ctx.progress("applying the previous render again", None)
        before = {rnd.key(obj): obj for obj in previous}
        await self.kube.apply(rnd.namespace_object(name, slug, tier))
        for obj in changed:
            if obj["kind"] == "Namespace":
                continue
            if (old := before.get(rnd.key(obj))) is not None:
                await self._apply(old, ctx, replace=True, destroy=True)
            else:
                meta = obj["metadata"]
                await self.kube.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        await self._wait_ready(name, ctx, timeout)

    async def _live(self, name: str, slug: str, kinds: set[tuple[str, str]]) -> builtins.list[Obj]:
        """Every object of ``kinds`` in the namespace that carries the workspace's labels."""
        found: builtins.list[Obj] = []
        for api_version, kind in sorted(kinds):
            items, _ = await self.kube.list(api_version, kind, namespace=name, labels=rnd.selector(slug))
            for item in items:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
            found += items
        return found

    def _kinds(self, *renders: builtins.list[Obj]) -> set[tuple[str, str]]:
        kinds = set(PRUNED)
        for render in renders:
            kinds |= {(o["apiVersion"], o["kind"]) for o in render}
        return kinds

    async def _prune(
        self, slug: str, rendered: Rendered, previous: builtins.list[Obj], ctx: RequestContext
    ) -> None:
        live = await self._live(rendered.namespace, slug, self._kinds(rendered.objects, previous))
        for obj in look.prunable(live, rendered.keys()):
            if look.destroys_data(obj) and not rendered.flags.allow_destructive_upgrade:
                continue
            meta = obj["metadata"]
            ctx.progress(f"pruning {rnd.describe(obj)}, which the new render no longer has", 0.97)
            await self.kube.delete(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))

    # --- plan ---------------------------------------------------------------------------------
    async def plan(
        self, slug: str, ref: DeploymentRef | None, profile: ProvisioningProfile, ctx: RequestContext
    ) -> PlanResult:
        """Server-side dry runs of each rendered object: nothing is changed."""
        rendered = await self._render(slug, profile)
        name = rendered.namespace
        actions: builtins.list[PlanAction] = []
        if ref is None:
            namespace = await self.kube.get("v1", "Namespace", name)
            if namespace is not None and self._ours(namespace, slug) and not _terminating(namespace):
                seen = await self._seen(namespace)
                current = self._ref(seen)
                if current.tier != profile.tier:
                    raise Conflict(
                        f"workspace {slug!r} exists with tier {current.tier!r}; use upgrade", existing=current
                    )
                if seen.assessment().health == "ready":
                    return PlanResult(
                        actions=[
                            _action(
                                "no_op",
                                f"namespace {name}",
                                f"already provisioned with tier {profile.tier!r}",
                            )
                        ]
                    )
            else:
                if namespace is not None and not _terminating(namespace):
                    raise _not_ours(name, slug)
                waits = " (after the terminating one is gone)" if namespace is not None else ""
                actions.append(
                    _action("create", f"namespace {name}", f"the workspace's own namespace{waits}")
                )
                actions += [
                    _action("create", rnd.describe(o), "new in the workspace's namespace")
                    for o in rendered.objects
                ]
                return PlanResult(actions=actions)
        else:
            await self._ready_for_upgrade(slug)
        previous = rnd.read_record(await self.kube.get("v1", "Secret", rnd.RENDER, name))
        for obj in [rendered.namespace_object, *rendered.objects]:
            actions.append(await self._plan_one(obj))
        live = await self._live(name, slug, self._kinds(rendered.objects, previous))
        for obj in look.prunable(live, rendered.keys()):
            if look.destroys_data(obj) and not rendered.flags.allow_destructive_upgrade:
                actions.append(
                    _action(
                        "no_op",
                        rnd.describe(obj),
                        "no longer rendered, kept: it holds data (allow_destructive_upgrade would delete it)",
                    )
                )
            else:
                actions.append(
                    _action(
                        "delete",
                        rnd.describe(obj),
                        "no longer rendered: pruned",
                        destructive=look.destroys_data(obj),
                    )
                )
        return PlanResult(actions=actions)

    async def _plan_one(self, obj: Obj) -> PlanAction:
        meta = obj["metadata"]
        what = rnd.describe(obj)
        live = await self.kube.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
        if live is None:
            return _action("create", what, "not in the cluster yet")
        try:
            dry = await self.kube.apply(obj, dry_run=True)
        except Refused as refused:
            if _immutable(refused):
                data = look.destroys_data(obj)
                return _action(
                    "replace",
                    what,
                    f"a field that cannot change in place changes ({refused.message}); it is deleted "
                    "and made again" + (", losing its data" if data else ""),
                    destructive=data,
                )
            if refused.code == 409:
                return _action("update", what, f"the upgrade would be refused: {_conflict_words(refused)}")
            raise BackendFailure(
                f"{what}: the API server refused a dry run: {refused.message}", rolled_back=True
            ) from None
        paths = look.changed_paths(look.comparable(live), look.comparable(dry))
        if not paths:
            return _action("no_op", what, "unchanged")
        shown = ", ".join(p.lstrip(".") for p in paths[:5]) + (
            f" and {len(paths) - 5} more" if len(paths) > 5 else ""
        )
        return _action("update", what, f"changed in place: {shown}")

    # --- stop, start ----------------------------------------------------------------------------
    async def _scaling(self, slug: str, verb: str) -> tuple[str, Seen, dict[tuple[str, str], Obj]]:
        """The namespace, what runs in it, and each live workload's body as last applied (from
        ``hearth-render``): stop and start apply that body with only ``replicas`` (and the saved
        count) changed, so hearth's apply keeps owning exactly the fields it owned."""
        name = self._namespace(slug)
        namespace = await self.kube.get("v1", "Namespace", name)
        if namespace is None or not self._ours(namespace, slug):
            raise InvalidTransition(f"workspace {slug!r} has no namespace to {verb}", state="absent")
        if _terminating(namespace):
            raise InvalidTransition(f"workspace {slug!r} is being torn down", state="tearing_down")
        seen = await self._seen(namespace)
        if not seen.workloads:  # nothing would show it stopped: refused rather than pretended
            raise BackendFailure(
                f"cannot {verb} {slug!r}: namespace {name} runs no Deployment or StatefulSet to scale",
                rolled_back=True,
            )
        record = {
            (o["kind"], o["metadata"]["name"]): o
            for o in rnd.read_record(await self.kube.get("v1", "Secret", rnd.RENDER, name))
            if o["kind"] in look.WORKLOADS
        }
        bodies: dict[tuple[str, str], Obj] = {}
        for live in seen.workloads:
            key = (live["kind"], live["metadata"]["name"])
            if key not in record:
                raise BackendFailure(
                    f"cannot {verb} {slug!r}: {rnd.describe(live)} is not in the render hearth last "
                    f"applied (Secret {rnd.RENDER}); upgrade or provision it again first",
                    rolled_back=True,
                )
            bodies[key] = record[key]
        return name, seen, bodies

    async def _scale(self, body: Obj, replicas: int, saved: int | None) -> None:
        """Apply ``body`` at ``replicas``, with the saved count (a stop) or without it (a start).
        Without force: another manager owning ``replicas`` (an autoscaler) is a refusal naming it."""
        scaled = copy.deepcopy(body)
        scaled.setdefault("spec", {})["replicas"] = replicas
        annotations = scaled["metadata"].setdefault("annotations", {})
        if saved is None:
            annotations.pop(rnd.SAVED_REPLICAS, None)
        else:
            annotations[rnd.SAVED_REPLICAS] = str(saved)
        try:
            await self.kube.apply(scaled)
        except Refused as refused:
            raise _Refusal(scaled, refused) from None

    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        """Each Deployment and StatefulSet scaled to 0, its replica count saved on it by the same
        apply; waits, watching, until their pods are gone. Claims and the namespace stay. A
        failed or cancelled stop scales back what it scaled down and waits until ready."""
        slug = ref.workspace_slug
        name, seen, bodies = await self._scaling(slug, "stop")
        # a workload stopped already keeps the count its first stop saved (idempotence)
        counts: dict[tuple[str, str], int] = {}
        for workload in seen.workloads:
            kept = look.saved_replicas(workload)
            live = int((workload.get("spec") or {}).get("replicas", 1))
            counts[(workload["kind"], workload["metadata"]["name"])] = live if kept is None else kept
        if (phase := seen.stop()) is not None and phase[0] == "stopped":
            ctx.progress(f"namespace {name} is stopped already", 1.0)
            return self._ref(seen)
        changed: builtins.list[tuple[str, str]] = []
        try:
            for key, count in counts.items():
                ctx.progress(f"scaling {key[0]} {key[1]} to 0 ({count} replica(s) saved)", 0.1)
                changed.append(key)  # before the call: a cancel may cut it short after it took effect
                try:
                    await self._scale(bodies[key], 0, count)
                except _Refusal:
                    changed.pop()  # refused: nothing of it changed, nothing to scale back
                    raise
            await self._wait_stopped(name, ctx, self.settings.delete_timeout)
        except BaseException as exc:
            undo = self._scale_back(name, [(bodies[k], counts[k]) for k in changed], ctx)
            rolled_back = await self._confirmed(undo, ctx, slug, "stop")
            what = f"stop of {slug!r} failed" + ("; it runs again as before" if rolled_back else "")
            raise _as_failure(exc, what, rolled_back=rolled_back) from None
        ctx.progress("workspace stopped", 1.0)
        return await self._ready_ref(name)

    async def start(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        """Each stopped workload scaled back to the count its stop saved, then ready by the same
        rule as a provision, watched. A failed or cancelled start scales them to 0 again."""
        slug = ref.workspace_slug
        name, seen, bodies = await self._scaling(slug, "start")
        saved = {
            (w["kind"], w["metadata"]["name"]): count
            for w in seen.workloads
            if (count := look.saved_replicas(w)) is not None
        }
        if not saved and seen.assessment().health == "ready":
            ctx.progress(f"namespace {name} runs already", 1.0)
            return self._ref(seen)
        changed: builtins.list[tuple[str, str]] = []
        try:
            for key, count in saved.items():
                ctx.progress(f"scaling {key[0]} {key[1]} to its saved {count} replica(s)", 0.1)
                changed.append(key)
                try:  # the count stays on it until ready: status says starting meanwhile
                    await self._scale(bodies[key], count, count)
                except _Refusal:
                    changed.pop()
                    raise
            await self._wait_ready(name, ctx, self.settings.ready_timeout)
            for key, count in saved.items():
                await self._scale(bodies[key], count, None)
            # a Deployment's annotations are copied to its ReplicaSets: a change of them is a new
            # generation, ready again only once the controller saw it
            await self._wait_ready(name, ctx, self.settings.ready_timeout)
        except BaseException as exc:
            undo = self._stop_again(name, [(bodies[k], saved[k]) for k in changed], ctx)
            rolled_back = await self._confirmed(undo, ctx, slug, "start")
            what = f"start of {slug!r} failed" + ("; it is stopped again" if rolled_back else "")
            raise _as_failure(exc, what, rolled_back=rolled_back) from None
        ctx.progress("workspace ready", 1.0)
        return await self._ready_ref(name)

    async def _confirmed(
        self, undo: Coroutine[Any, Any, None], ctx: RequestContext, slug: str, verb: str
    ) -> bool:
        """Run a rollback through ``ctx.cleanup`` (a cancel waits for it); True once confirmed."""
        try:
            await ctx.cleanup(undo)
        except asyncio.CancelledError:
            raise
        except Exception as failure:
            log.warning("the rollback of the %s of %s failed: %s", verb, slug, failure)
            return False
        return True

    async def _scale_back(
        self, name: str, scaled: builtins.list[tuple[Obj, int]], ctx: RequestContext
    ) -> None:
        if not scaled:
            return
        ctx.progress("scaling back up what the stop scaled down", None)
        for body, count in scaled:
            await self._scale(body, count, None)
        await self._wait_ready(name, ctx, self.settings.ready_timeout)

    async def _stop_again(
        self, name: str, scaled: builtins.list[tuple[Obj, int]], ctx: RequestContext
    ) -> None:
        if not scaled:
            return
        ctx.progress("scaling to 0 again what the start scaled up", None)
        for body, count in scaled:
            await self._scale(body, 0, count)
        await self._wait_stopped(name, ctx, self.settings.delete_timeout)

    async def _wait_stopped(self, name: str, ctx: RequestContext, timeout: float) -> None:
        """Watch the namespace's workloads and pods until every workload is at 0 with its pods
        gone (the kubelet finished their deletions)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with _Observer(self.kube, name) as observer:
            said = ""
            while True:
                phase = look.stop_phase(observer.workloads(), observer.pods())
                elapsed = loop.time() - started
                if phase is not None and phase[0] == "stopped":
                    return
                message = phase[1] if phase is not None else "waiting for the controllers"
                if message != said:
                    said = message
                    ctx.progress(said, 0.3 + 0.65 * min(1.0, elapsed / timeout))
                if elapsed >= timeout:
                    raise _NotReady(f"not stopped within {timeout:g} s: {said}", await self._warnings(name))
                await observer.changed(timeout - elapsed)

    # --- teardown -----------------------------------------------------------------------------
    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        slug = ref.workspace_slug
        name = self._namespace(slug)
        namespace = await self.kube.get("v1", "Namespace", name)
        if namespace is None:
            ctx.progress(f"namespace {name} is already gone", 1.0)
            return
        if not self._ours(namespace, slug):
            ctx.progress(f"namespace {name} is not this workspace's: left alone", 1.0)
            return
        await ctx.cleanup(self._remove_namespace(name, ctx, self.settings.delete_timeout))
        ctx.progress(f"namespace {name} is gone", 1.0)


class _Observer:
    """A small informer: lists the namespace's workloads and pods, then follows their watches,
    so each change is seen as it happens (no polling)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.objects: dict[str, dict[str, Obj]] = {kind: {} for _, kind in WATCHED}
        self._changed = asyncio.Event()
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._error: BaseException | None = None

    async def __aenter__(self) -> _Observer:
        listed = await asyncio.gather(*(self.kube.list(a, k, namespace=self.namespace) for a, k in WATCHED))
        for (api_version, kind), (items, version) in zip(WATCHED, listed, strict=True):
            self.objects[kind] = {o["metadata"]["name"]: o for o in items}
            self._tasks.append(asyncio.create_task(self._follow(api_version, kind, version)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, api_version: str, kind: str, version: str | None) -> None:
        try:
            async with contextlib.aclosing(
                self.kube.watch(api_version, kind, namespace=self.namespace, resource_version=version)
            ) as events:
                async for operation, obj in events:
                    obj.setdefault("kind", kind)
                    if operation == "DELETED":
                        self.objects[kind].pop(obj["metadata"]["name"], None)
                    else:
                        self.objects[kind][obj["metadata"]["name"]] = obj
                    self._changed.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            self._changed.set()

    def workloads(self) -> builtins.list[Obj]:
        return [*self.objects["Deployment"].values(), *self.objects["StatefulSet"].values()]

    def pods(self) -> builtins.list[Obj]:
        return list(self.objects["Pod"].values())

    def replicasets(self) -> builtins.list[Obj]:
        return list(self.objects["ReplicaSet"].values())

    async def changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))
        self._changed.clear()
        if self._error is not None:
            raise self._error


class _NotReady(Exception):
    def __init__(self, message: str, logs: builtins.list[str]) -> None:
        super().__init__(message)
        self.logs = logs


class _Refusal(Exception):
    """The API server refused to apply one object."""

    def __init__(self, obj: Obj, refused: Refused) -> None:
        words = _conflict_words(refused) if refused.code == 409 else refused.message
        super().__init__(f"{rnd.describe(obj)}: {words}")


def _conflict_words(refused: Refused) -> str:
    """A server-side apply conflict, naming the manager that owns the field (the server's words
    already do: ``conflict with "kubectl-edit" using apps/v1: .spec.replicas``)."""
    return (
        f"another field manager owns what hearth would change ({refused.message}); hearth does not "
        "force it: undo that manager's change, or make the tier agree with it"
    )


def _as_failure(exc: BaseException, what: str, *, rolled_back: bool) -> BaseException:
    """After a rollback: the error to answer with (a cancel stays a cancel)."""
    if isinstance(exc, asyncio.CancelledError | InvalidProfile | Conflict | InvalidTransition):
        return exc
    if isinstance(exc, _NotReady):
        return BackendFailure(f"{what}: {exc}", rolled_back=rolled_back, logs=exc.logs)
    if isinstance(exc, BackendUnavailable):
        return BackendFailure(f"{what}: {exc.message}", rolled_back=rolled_back)
    if isinstance(exc, DriverError):
        return BackendFailure(
            f"{what}: {exc.message}", rolled_back=rolled_back, logs=list(exc.extra.get("logs") or [])
        )
    if isinstance(exc, _Refusal | Refused):
        return BackendFailure(f"{what}: {exc}", rolled_back=rolled_back)
    return BackendFailure(f"{what}: {type(exc).__name__}: {exc}", rolled_back=rolled_back)


def _action(action: PlanActionKind, resource: str, reason: str, *, destructive: bool = False) -> PlanAction:
    return PlanAction(action=action, resource=resource, reason=reason, destructive=destructive)


def _not_ours(name: str, slug: str) -> BackendFailure:
    return BackendFailure(
        f"namespace {name} exists and is not this workspace's (no {rnd.MANAGED_BY}=hearth, "
        f"{rnd.WORKSPACE}={slug} labels); hearth leaves it alone",
        rolled_back=True,
    )


def _immutable(refused: Refused) -> bool:
    """The server refused a change to a field that cannot change in place."""
    return refused.code == 422 and "immutable" in refused.message


def _involved(event: Obj) -> str:
    about = event.get("involvedObject") or {}
    return f"{about.get('kind')} {about.get('name')}"


def _terminating(namespace: Obj) -> bool:
    return (namespace.get("status") or {}).get("phase") == "Terminating" or bool(
        namespace["metadata"].get("deletionTimestamp")
    )


def _overlay(settings: KustomizeConfig, flag: str) -> Path:
    """The overlay folder a tier names, relative to the project folder."""
    folder = Path(flag).expanduser()
    return folder if folder.is_absolute() else settings.project_path() / folder


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
