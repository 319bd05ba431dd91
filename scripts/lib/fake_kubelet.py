"""A fake kubelet for the test cluster of scripts/lib/kubernetes.sh: pods "run" without containers.

It does what KWOK's default stages do, with lightkube:

- node-initialize: registers one Node (``--node-name``, 4 cpu, 8Gi memory, 110 pods, 100Gi
  ephemeral-storage) and patches ``nodes/status``: ``Ready=True``, address 127.0.0.1, nodeInfo.
- node-heartbeat: applies a Lease named after the node in ``kube-node-lease`` every 10 s, so that
  the node-lifecycle controller keeps the node Ready.
- pod-ready: every pod bound to the node gets ``pods/status`` patched to phase Running with the
  conditions PodScheduled, Initialized, ContainersReady and Ready, each container ``running``,
  init containers ``terminated`` (Completed), and a pod IP (10.244.x.y; 127.0.0.1 with hostNetwork).
- pod-delete: a pod with a ``deletionTimestamp`` is deleted with grace period 0 (what lets
  ReplicaSet scale-down, ``Recreate`` rollouts, foreground cascades and namespace deletion finish).

Faults on request, by pod annotation (they are read again at every change of the pod):

``kubelet.hearth.dev/fault: ImagePullBackOff``
    every container waits with reason ``ImagePullBackOff``; the pod stays Pending, not ready.
``kubelet.hearth.dev/fault: CrashLoopBackOff``
    every container waits with reason ``CrashLoopBackOff`` (restartCount 1, last state terminated
    with exit code 1); the pod is Running but not ready.
``kubelet.hearth.dev/ready-after: "<seconds>"``
    the containers run at once, but the pod turns Ready only <seconds> after it started.
``kubelet.hearth.dev/delete-after: "<seconds>"``
    a deletion of the pod finishes only <seconds> after its ``deletionTimestamp`` was set (a
    container slow to exit), so a scale-down or a namespace deletion can be watched under way.

Not covered: images, probes, exit codes, volumes, the Service dataplane, exec, logs, port-forward.

Usage: ``fake_kubelet.py --kubeconfig FILE [--node-name hearth-node-0]``. It logs to stderr,
retries until the API server answers, relists on a watch that expired (410 Gone) and exits 0 on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.operators import BinaryOperator, SequenceOperator
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node, NodeStatus, Pod, PodStatus
from lightkube.types import PatchType

FAULT = "kubelet.hearth.dev/fault"
READY_AFTER = "kubelet.hearth.dev/ready-after"
DELETE_AFTER = "kubelet.hearth.dev/delete-after"
FAULTS = ("ImagePullBackOff", "CrashLoopBackOff")
FIELD_MANAGER = "hearth-fake-kubelet"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
CAPACITY = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "100Gi"}

log = logging.getLogger("fake-kubelet")
T = TypeVar("T")
Json = dict[str, Any]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: datetime.datetime | str | None) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def retrying(what: str, call: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T:
    """Call until it succeeds: the API server may not be up yet, or restart under us."""
    delay = 0.1
    while True:
        try:
            return await call()
        except Exception as error:  # a connection refused, a 5xx, a timeout: all worth a retry
            if isinstance(error, ApiError) and error.status.code in (400, 403, 404, 422):
                raise
            log.debug("%s: %s; retrying in %.1f s", what, error, delay)
        await wait_or_stop(stop, delay)
        if stop.is_set():
            raise asyncio.CancelledError
        delay = min(delay * 2, 2.0)


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class FakeKubelet:
    def __init__(self, client: AsyncClient, node: str, stop: asyncio.Event) -> None:
        self.client = client
        self.node = node
        self.stop = stop
        self.pod_ips: dict[str, str] = {}
        self.next_ip = 2
        self.timers: dict[str, asyncio.Task[None]] = {}
        #: When each pod's deletion was first seen (monotonic): deletionTimestamp has whole seconds.
        self.deleting: dict[str, float] = {}

    # -- the node ---------------------------------------------------------------------------

    async def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "fake-kubelet",
        }

        async def create() -> None:
            try:
                await self.client.create(Node(metadata=ObjectMeta(name=self.node, labels=labels)))
            except ApiError as error:
                if error.status.code != 409:  # already there: a restart of ours
                    raise

        await retrying("registering the node", create, self.stop)
        transition = now()
        conditions = [
            self.node_condition(
                "Ready", "True", "KubeletReady", "kubelet is posting ready status", transition
            ),
            self.node_condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "", transition),
            self.node_condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "", transition),
            self.node_condition("PIDPressure", "False", "KubeletHasSufficientPID", "", transition),
        ]
        status: Json = {
            "status": {
                "capacity": CAPACITY,
                "allocatable": CAPACITY,
                "conditions": conditions,
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.node},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": "hearth-fake",
                    "systemUUID": "hearth-fake",
                    "bootID": "hearth-fake",
                    "kernelVersion": "fake",
                    "osImage": "hearth fake kubelet",
                    "containerRuntimeVersion": "fake://0",
                    "kubeletVersion": "v1.20.2",
                    "kubeProxyVersion": "v1.20.2",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            }
        }
        await retrying(
            "patching the node's status",
            lambda: self.client.patch(NodeStatus, self.node, status, patch_type=PatchType.STRATEGIC),
            self.stop,
        )
        log.info("node %s registered and Ready", self.node)

    @staticmethod
    def node_condition(kind: str, status: str, reason: str, message: str, transition: str) -> Json:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": transition,
            "lastTransitionTime": transition,
        }

    async def heartbeat(self) -> None:
        while not self.stop.is_set():
            lease: Json = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": self.node,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": now_micro(),
                },
            }
            try:
                await self.client.patch(
                    Lease,
                    self.node,
                    lease,
                    namespace="kube-node-lease",
                    patch_type=PatchType.APPLY,
                    field_manager=FIELD_MANAGER,
                    force=True,
                )
            except Exception as error:
                log.warning("renewing the node's lease: %s", error)
                await wait_or_stop(self.stop, 1.0)
                continue
            await wait_or_stop(self.stop, HEARTBEAT_SECONDS)

    # -- the pods ---------------------------------------------------------------------------

    async def run_pods(self) -> None:
        """List, then watch from the list's version; relist when the watch expired (410 Gone)."""
        fields: dict[str, str | BinaryOperator | SequenceOperator] = {"spec.nodeName": self.node}
        while not self.stop.is_set():
            try:
                listing = self.client.list(Pod, namespace=ALL_NS, fields=fields)
                async for pod in listing:
                    await self.sync(pod)
                version = listing.resourceVersion
                log.info("listed the node's pods at version %s; watching", version)
                async for kind, pod in self.client.watch(
                    Pod, namespace=ALL_NS, fields=fields, resource_version=version
                ):
                    if kind == "DELETED":
                        self.forget(pod)
                    else:
                        await self.sync(pod)
            except ApiError as error:
                if error.status.code == 410:
                    log.info("the watch expired (410 Gone): relisting")
                    continue
                log.warning("watching pods: %s", error)
            except Exception as error:  # the connection dropped: relist after a pause
                log.warning("watching pods: %s: %s", type(error).__name__, error)
            await wait_or_stop(self.stop, 0.5)

    def forget(self, pod: Pod) -> None:
        uid = pod.metadata.uid if pod.metadata else None
        if uid:
            self.pod_ips.pop(uid, None)
            self.deleting.pop(uid, None)
            timer = self.timers.pop(uid, None)
            if timer is not None:
                timer.cancel()

    async def sync(self, pod: Pod) -> None:
        meta, spec = pod.metadata, pod.spec
        if meta is None or spec is None or spec.nodeName != self.node or not meta.name:
            return
        name, namespace = meta.name, meta.namespace or "default"
        try:
            if meta.deletionTimestamp is not None:
                if (remaining := self.deletion_due(pod)) > 0:
                    self.ready_later(pod, remaining)  # the same timer syncs it again then
                    return
                log.info("deleting pod %s/%s", namespace, name)
                self.forget(pod)
                await self.client.delete(Pod, name, namespace=namespace, grace_period=0)
                return
            desired = self.desired_status(pod)
            if summary(desired) == summary(current_status(pod)):
                return
            await self.client.patch(PodStatus, name, {"status": without_nulls(desired)}, namespace=namespace)
            log.info("pod %s/%s: %s", namespace, name, summary(desired))
        except ApiError as error:
            if error.status.code in (404, 409):  # gone meanwhile, or a stale version: the watch brings news
                return
            log.warning("pod %s/%s: %s", namespace, name, error)

    def deletion_due(self, pod: Pod) -> float:
        """Seconds until a deletion asked by ``delete-after`` may finish (0: now), counted from
        when this kubelet first saw it (``deletionTimestamp`` is whole seconds, and grace-shifted)."""
        meta = pod.metadata
        assert meta is not None
        delay = (meta.annotations or {}).get(DELETE_AFTER)
        if not delay:
            return 0.0
        try:
            seconds = float(delay)
        except ValueError:
            log.warning("bad %s %r on %s/%s: ignored", DELETE_AFTER, delay, meta.namespace, meta.name)
            return 0.0
        now = asyncio.get_running_loop().time()
        seen = self.deleting.setdefault(meta.uid or "", now)
        return max(0.0, seen + seconds - now)

    def desired_status(self, pod: Pod) -> Json:
        meta, spec = pod.metadata, pod.spec
        assert meta is not None and spec is not None
        annotations = meta.annotations or {}
        fault = annotations.get(FAULT, "")
        if fault and fault not in FAULTS:
            log.warning("unknown %s %r on %s/%s: ignored", FAULT, fault, meta.namespace, meta.name)
            fault = ""
        status = pod.status
        started = parse_time(status.startTime if status else None) or datetime.datetime.now(datetime.UTC)
        started_text = started.strftime("%Y-%m-%dT%H:%M:%SZ")
        ready = not fault
        ready_after = annotations.get(READY_AFTER)
        if ready and ready_after:
            try:
                due = started + datetime.timedelta(seconds=float(ready_after))
            except ValueError:
                log.warning(
                    "bad %s %r on %s/%s: ignored", READY_AFTER, ready_after, meta.namespace, meta.name
                )
            else:
                remaining = (due - datetime.datetime.now(datetime.UTC)).total_seconds()
                if remaining > 0:
                    ready = False
                    self.ready_later(pod, remaining)
        running = fault != "ImagePullBackOff"
        old = {c.get("type"): c for c in current_status(pod).get("conditions", [])}

        def condition(kind: str, value: bool, reason: str | None = None) -> Json:
            text = "True" if value else "False"
            previous = old.get(kind, {})
            entry: Json = {
                "type": kind,
                "status": text,
                "lastProbeTime": None,
                "lastTransitionTime": previous.get("lastTransitionTime")
                if previous.get("status") == text
                else now(),
            }
            if reason:
                entry["reason"] = reason
                entry["message"] = "containers with unready status"
            return entry

        not_ready = None if ready else "ContainersNotReady"
        containers = []
        for container in spec.containers:
            state: Json
            extra: Json = {}
            if fault == "ImagePullBackOff":
                state = {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{container.image}"',
                    }
                }
            elif fault == "CrashLoopBackOff":
                state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off 10s restarting failed container={container.name}",
                    }
                }
                extra = {
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "startedAt": started_text,
                            "finishedAt": started_text,
                        }
                    }
                }
            else:
                state = {"running": {"startedAt": started_text}}
            containers.append(
                {
                    "name": container.name,
                    "image": container.image or "",
                    "imageID": "",
                    "containerID": f"fake://{meta.uid}/{container.name}" if running else None,
                    "ready": ready,
                    "started": fault == "",
                    "restartCount": 1 if fault == "CrashLoopBackOff" else 0,
                    "state": state,
                    **extra,
                }
            )
        init_containers = [
            {
                "name": container.name,
                "image": container.image or "",
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": started_text,
                        "finishedAt": started_text,
                    }
                },
            }
            for container in spec.initContainers or []
        ]
        pod_ip = self.pod_ip(pod)
        return {
            "phase": "Pending" if fault == "ImagePullBackOff" else "Running",
            "conditions": [
                condition("Initialized", True),
                condition("Ready", ready, not_ready),
                condition("ContainersReady", ready, not_ready),
                condition("PodScheduled", True),
            ],
            "hostIP": "127.0.0.1",
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": started_text,
            "containerStatuses": containers,
            "initContainerStatuses": init_containers,
            "qosClass": status.qosClass if status and status.qosClass else None,
        }

    def pod_ip(self, pod: Pod) -> str:
        assert pod.metadata is not None and pod.spec is not None
        if pod.spec.hostNetwork:
            return "127.0.0.1"
        if pod.status and pod.status.podIP:
            return pod.status.podIP
        uid = pod.metadata.uid or ""
        if uid not in self.pod_ips:
            number = self.next_ip
            self.next_ip += 1
            self.pod_ips[uid] = f"10.244.{number // 250}.{number % 250 + 2}"
        return self.pod_ips[uid]

    def ready_later(self, pod: Pod, seconds: float) -> None:
        assert pod.metadata is not None
        uid, name, namespace = pod.metadata.uid or "", pod.metadata.name or "", pod.metadata.namespace
        if uid in self.timers and not self.timers[uid].done():
            return

        async def later() -> None:
            await asyncio.sleep(seconds + 0.05)
            self.timers.pop(uid, None)
            try:
                fresh = await self.client.get(Pod, name, namespace=namespace)
            except ApiError:
                return
            if fresh.metadata and fresh.metadata.uid == uid:
                await self.sync(fresh)

        self.timers[uid] = asyncio.create_task(later())


def current_status(pod: Pod) -> Json:
    if pod.status is None:
        return {}
    encoded: Json = pod.status.to_dict()
    return encoded


def without_nulls(value: Any) -> Any:
    """A strategic merge patch deletes a field given as null: leave such fields out instead."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def summary(status: Json) -> str:
    """What the kubelet decides, without timestamps: equal summaries need no patch."""
    conditions = sorted((c.get("type"), c.get("status")) for c in status.get("conditions") or [])
    containers = [
        (c.get("name"), bool(c.get("ready")), sorted((c.get("state") or {}).keys()), waiting_reason(c))
        for c in status.get("containerStatuses") or []
    ]
    inits = [c.get("name") for c in status.get("initContainerStatuses") or []]
    return json.dumps([status.get("phase"), status.get("podIP"), conditions, containers, inits])


def waiting_reason(container: Json) -> str | None:
    waiting = (container.get("state") or {}).get("waiting")
    return waiting.get("reason") if isinstance(waiting, dict) else None


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", required=True, help="the cluster's kubeconfig")
    parser.add_argument("--node-name", default="hearth-node-0", help="the Node to register")
    parser.add_argument("--verbose", action="store_true", help="log every retry")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s fake-kubelet %(levelname)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    client = AsyncClient(config=KubeConfig.from_file(args.kubeconfig), field_manager=FIELD_MANAGER)
    kubelet = FakeKubelet(client, args.node_name, stop)
    tasks: list[asyncio.Task[None]] = []
    try:
        await kubelet.register()
        tasks = [asyncio.create_task(kubelet.heartbeat()), asyncio.create_task(kubelet.run_pods())]
        await stop.wait()
    except asyncio.CancelledError:
        pass  # stopped while still registering
    finally:
        for task in [*tasks, *kubelet.timers.values()]:
            task.cancel()
        await asyncio.gather(*tasks, *kubelet.timers.values(), return_exceptions=True)
        await client.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
