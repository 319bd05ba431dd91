"""The test cluster of scripts/lib/kubernetes.sh is real: what the kustomize driver's tests rely on.

A real API server (admission, server-side apply), controller-manager (Deployments, namespaces,
quota, garbage collection) and scheduler, with the fake kubelet of scripts/lib/fake_kubelet.py in
place of a node. Every wait is on a watch, bounded by the test's timeout.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.core.resource import NamespacedResource
from lightkube.models.core_v1 import Container, PodSpec, ResourceQuotaSpec, ResourceRequirements
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, Pod, ResourceQuota, ServiceAccount
from lightkube.types import CascadeType, PatchType

pytestmark = pytest.mark.timeout(90)

FIELD_MANAGER = "hearth"
NODE = "hearth-node-0"

R = TypeVar("R", Namespace, Pod, Deployment, ResourceQuota, ServiceAccount)


@asynccontextmanager
async def cluster(kubeconfig: str) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(config=KubeConfig.from_file(kubeconfig), field_manager=FIELD_MANAGER)
    try:
        yield client
    finally:
        await client.close()


async def until(
    client: AsyncClient,
    kind: type[R],
    name: str,
    done: Callable[[R], bool],
    *,
    namespace: str | None = None,
    seconds: float = 60,
) -> R:
    """The object once ``done`` holds for it: a list, then a watch from the list's version."""
    fields = {"metadata.name": name}
    async with asyncio.timeout(seconds):
        if issubclass(kind, NamespacedResource):
            listing = client.list(kind, namespace=namespace, fields=fields)  # type: ignore[arg-type]
        else:
            listing = client.list(kind, fields=fields)  # type: ignore[arg-type]
        last: R | None = None
        async for item in listing:
            last = item
        if last is not None and done(last):
            return last
        watch = (
            client.watch(kind, namespace=namespace, fields=fields, resource_version=listing.resourceVersion)  # type: ignore[arg-type]
            if issubclass(kind, NamespacedResource)
            else client.watch(kind, fields=fields, resource_version=listing.resourceVersion)  # type: ignore[arg-type]
        )
        async for event, obj in watch:
            if event != "DELETED" and done(obj):
                return obj
    raise AssertionError("unreachable")


@asynccontextmanager
async def namespace(client: AsyncClient) -> AsyncIterator[str]:
    """A namespace of the test's own, usable for pods (its ``default`` ServiceAccount has its
    token), deleted afterwards without waiting."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    await client.create(Namespace(metadata=ObjectMeta(name=name)))
    try:
        await until(
            client, ServiceAccount, "default", lambda sa: bool(sa.secrets), namespace=name, seconds=30
        )
        yield name
    finally:
        try:
            await client.delete(Namespace, name)
        except ApiError as error:
            if error.status.code != 404:
                raise


def pod(name: str, namespace: str, *, cpu: str = "100m", annotations: dict[str, str] | None = None) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name, namespace=namespace, annotations=annotations or {}),
        spec=PodSpec(
            containers=[
                Container(
                    name="main",
                    image="hearth-test/httpd:1",
                    resources=ResourceRequirements(requests={"cpu": cpu, "memory": "16Mi"}),
                )
            ]
        ),
    )


def condition(obj: Any, kind: str) -> Any:
    for entry in (obj.status.conditions if obj.status else None) or []:
        if entry.type == kind:
            return entry
    return None


def waiting_reason(p: Pod) -> str | None:
    statuses = (p.status.containerStatuses if p.status else None) or []
    waiting = statuses[0].state.waiting if statuses and statuses[0].state else None
    return waiting.reason if waiting else None


def web(namespace: str, *, cpu: str = "250m") -> dict[str, Any]:
    """A Deployment as the kustomize driver writes one: 1 replica, Recreate, a named TCP port."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace, "labels": {"app": "web"}},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "hearth-test/httpd:1",
                            # 1.20's server-side apply needs the protocol of every port
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }


async def apply(client: AsyncClient, manifest: dict[str, Any]) -> Deployment:
    return await client.patch(
        Deployment,
        manifest["metadata"]["name"],
        manifest,
        namespace=manifest["metadata"]["namespace"],
        patch_type=PatchType.APPLY,
        field_manager=FIELD_MANAGER,
    )


def rolled_out(generation: int | None) -> Callable[[Deployment], bool]:
    """Available, with one ready replica of the given generation's template and no other."""

    def done(d: Deployment) -> bool:
        entry = condition(d, "Available")
        status = d.status
        return bool(
            entry
            and entry.status == "True"
            and status
            and status.observedGeneration == generation
            and status.replicas == status.updatedReplicas == status.readyReplicas == 1
        )

    return done


async def test_a_deployment_applied_server_side_becomes_available(kubeconfig: str) -> None:
    async with cluster(kubeconfig) as client, namespace(client) as ns:
        applied = await apply(client, web(ns))
        assert applied.metadata is not None
        managers = {entry.manager for entry in applied.metadata.managedFields or []}
        assert FIELD_MANAGER in managers

        started = time.monotonic()
        ready = await until(client, Deployment, "web", rolled_out(applied.metadata.generation), namespace=ns)
        assert ready.status is not None and ready.status.availableReplicas == 1
        pods = [p async for p in client.list(Pod, namespace=ns, labels={"app": "web"})]
        assert len(pods) == 1
        assert pods[0].spec is not None and pods[0].spec.nodeName == NODE
        assert pods[0].status is not None and pods[0].status.phase == "Running" and pods[0].status.podIP
        assert time.monotonic() - started < 30

        # an identical re-apply changes nothing the controllers act on
        again = await apply(client, web(ns))
        assert again.metadata is not None and again.metadata.generation == applied.metadata.generation


async def test_a_recreate_rollout_replaces_the_pod(kubeconfig: str) -> None:
    async with cluster(kubeconfig) as client, namespace(client) as ns:
        first = await apply(client, web(ns, cpu="250m"))
        assert first.metadata is not None
        await until(client, Deployment, "web", rolled_out(first.metadata.generation), namespace=ns)
        before = {p.metadata.name async for p in client.list(Pod, namespace=ns) if p.metadata}

        changed = await apply(client, web(ns, cpu="500m"))  # a tier change
        assert changed.metadata is not None and changed.metadata.generation != first.metadata.generation
        await until(client, Deployment, "web", rolled_out(changed.metadata.generation), namespace=ns)
        pods = [p async for p in client.list(Pod, namespace=ns)]
        assert len(pods) == 1  # the old pod went first (Recreate), deleted by the fake kubelet
        assert pods[0].metadata is not None and pods[0].metadata.name not in before
        assert pods[0].spec is not None and pods[0].status is not None
        resources = pods[0].spec.containers[0].resources
        assert resources is not None and resources.requests == {"cpu": "500m", "memory": "64Mi"}
        assert pods[0].status.phase == "Running"


async def test_a_pod_asking_more_cpu_than_the_node_has_stays_pending(kubeconfig: str) -> None:
    async with cluster(kubeconfig) as client, namespace(client) as ns:
        await client.create(pod("greedy", ns, cpu="64"))

        def unschedulable(p: Pod) -> bool:
            entry = condition(p, "PodScheduled")
            return bool(entry and entry.status == "False" and entry.reason == "Unschedulable")

        stuck = await until(client, Pod, "greedy", unschedulable, namespace=ns)
        entry = condition(stuck, "PodScheduled")
        assert "Insufficient cpu" in entry.message
        assert stuck.status is not None and stuck.status.phase == "Pending"
        assert stuck.spec is not None and not stuck.spec.nodeName


@pytest.mark.parametrize(
    ("fault", "phase"), [("ImagePullBackOff", "Pending"), ("CrashLoopBackOff", "Running")]
)
async def test_a_fault_asked_by_annotation_shows_as_the_containers_waiting_reason(
    kubeconfig: str, fault: str, phase: str
) -> None:
    async with cluster(kubeconfig) as client, namespace(client) as ns:
        await client.create(pod("faulty", ns, annotations={"kubelet.hearth.dev/fault": fault}))
        shown = await until(client, Pod, "faulty", lambda p: waiting_reason(p) == fault, namespace=ns)
        assert shown.status is not None and shown.status.phase == phase
        assert condition(shown, "Ready").status == "False"
        assert condition(shown, "ContainersReady").status == "False"


async def test_a_pod_turns_ready_only_after_the_seconds_its_annotation_asks(kubeconfig: str) -> None:
    async with cluster(kubeconfig) as client, namespace(client) as ns:
        await client.create(pod("slow", ns, annotations={"kubelet.hearth.dev/ready-after": "2"}))
        running = await until(
            client, Pod, "slow", lambda p: bool(p.status and p.status.phase == "Running"), namespace=ns
        )
        assert condition(running, "Ready").status == "False"
        ready = await until(
            client,
            Pod,
            "slow",
            lambda p: getattr(condition(p, "Ready"), "status", "") == "True",
            namespace=ns,
        )
        assert ready.status is not None and ready.status.startTime is not None
        ready_at = condition(ready, "Ready").lastTransitionTime
        assert (ready_at - ready.status.startTime).total_seconds() >= 2


async def test_a_pod_deletion_finishes_only_after_the_seconds_its_annotation_asks(kubeconfig: str) -> None:
    async with cluster(kubeconfig) as client, namespace(client) as ns:
        await client.create(pod("lingering", ns, annotations={"kubelet.hearth.dev/delete-after": "2"}))
        await until(
            client, Pod, "lingering", lambda p: bool(p.status and p.status.phase == "Running"), namespace=ns
        )
        asked = time.monotonic()
        await client.delete(Pod, "lingering", namespace=ns)
        await asyncio.sleep(1)
        still = await client.get(Pod, "lingering", namespace=ns)
        assert still.metadata is not None and still.metadata.deletionTimestamp is not None
        version = still.metadata.resourceVersion
        async with asyncio.timeout(30):
            async for event, _ in client.watch(
                Pod, namespace=ns, fields={"metadata.name": "lingering"}, resource_version=version
            ):
                if event == "DELETED":
                    break
        assert time.monotonic() - asked >= 2


async def test_a_namespace_deleted_in_the_foreground_disappears(kubeconfig: str) -> None:
    async with cluster(kubeconfig) as client, namespace(client) as ns:
        applied = await apply(client, web(ns))
        assert applied.metadata is not None
        await until(client, Deployment, "web", rolled_out(applied.metadata.generation), namespace=ns)
        await client.delete(Namespace, ns, cascade=CascadeType.FOREGROUND)
        # a namespace being deleted refuses new objects
        with pytest.raises(ApiError) as refused:
            await client.create(pod("late", ns))
        assert refused.value.status.code == 403
        assert "being terminated" in (refused.value.status.message or "")
        await gone(client, ns, seconds=60)
        # then it is gone for good: the same name may be provisioned again
        await client.create(Namespace(metadata=ObjectMeta(name=ns)))
        await client.delete(Namespace, ns)


async def gone(client: AsyncClient, name: str, *, seconds: float) -> None:
    """Return once the namespace ``name`` no longer exists (a DELETED event, or a 404)."""
    async with asyncio.timeout(seconds):
        while True:
            try:
                found = await client.get(Namespace, name)
            except ApiError as error:
                if error.status.code == 404:
                    return
                raise
            version = found.metadata.resourceVersion if found.metadata else None
            async for event, _ in client.watch(
                Namespace, fields={"metadata.name": name}, resource_version=version
            ):
                if event == "DELETED":
                    return


async def test_a_resource_quota_refuses_an_over_quota_pod(kubeconfig: str) -> None:
    async with cluster(kubeconfig) as client, namespace(client) as ns:
        await client.create(
            ResourceQuota(
                metadata=ObjectMeta(name="caps", namespace=ns),
                spec=ResourceQuotaSpec(hard={"requests.cpu": "1", "requests.memory": "1Gi", "pods": "2"}),
            )
        )
        # admission uses the usage the quota controller computed: wait for it
        await until(
            client,
            ResourceQuota,
            "caps",
            lambda q: bool(q.status and q.status.hard and q.status.used is not None),
            namespace=ns,
        )
        await client.create(pod("fits", ns, cpu="500m"))
        with pytest.raises(ApiError) as refused:
            await client.create(pod("too-big", ns, cpu="2"))
        assert refused.value.status.code == 403
        assert "exceeded quota" in (refused.value.status.message or "")
        assert "requests.cpu" in (refused.value.status.message or "")
