"""The kustomize driver: rendering and the status mapping as pure functions, then the adapter
against a real API server (scripts/lib/kubernetes.sh; the ``kubeconfig`` fixture)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.apps_v1 import Deployment
from lightkube.types import PatchType

from hearth import Host
from hearth._server._app import create_app
from hearth_adapter_kustomize import KustomizeConfig, KustomizeDriver
from hearth_adapter_kustomize import _assess as look
from hearth_adapter_kustomize import _render as rnd
from hearth_adapter_kustomize._kube import Kube
from hearth_adapter_kustomize._spec import KustomizeFlags, resolve
from hearth_adaptersdk import DeploymentRef, PlanResult, ProvisioningProfile
from hearth_adaptersdk.conformance import KitOptions, run_conformance
from hearth_adaptersdk.testing import Peer, RemoteError, open_peer

IMAGE = "hearth-test/httpd:1"
#: The fake kubelet's fault injection (scripts/lib/fake_kubelet.py).
FAULT = "kubelet.hearth.dev/fault"
READY_AFTER = "kubelet.hearth.dev/ready-after"
DELETE_AFTER = "kubelet.hearth.dev/delete-after"


def _profile(tier: str = "solo", caps: dict[str, Any] | None = None, **flags: Any) -> ProvisioningProfile:
    return ProvisioningProfile(
        tier=tier,
        driver="kustomize",
        resource_caps={"cpu": 0.5, "memory_mb": 64} if caps is None else caps,
        driver_flags={"image": IMAGE, "port": 8080, **flags} if "kustomize" not in flags else flags,
    )


def _render(profile: ProvisioningProfile, slug: str = "alpha") -> list[dict[str, Any]]:
    flags, caps = resolve(profile)
    return rnd.finish(
        rnd.cap_objects(caps) + rnd.image_objects(flags, caps),
        namespace=f"hearth-{slug}",
        slug=slug,
        tier=profile.tier,
    )


# --- rendering ---------------------------------------------------------------------------------
def test_an_image_renders_quota_limits_a_recreate_deployment_and_a_service_all_labelled() -> None:
    objects = _render(_profile(env={"B": "2", "A": "1"}, command="serve --here"))
    assert [rnd.describe(o) for o in objects] == [
        "ResourceQuota hearth-caps",
        "LimitRange hearth-caps",
        "Deployment workspace",
        "Service workspace",
    ]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "hearth-alpha"
        assert obj["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "hearth",
            "hearth.dev/workspace": "alpha",
            "hearth.dev/tier": "solo",
        }
    quota, limits, deployment, service = objects
    assert quota["spec"]["hard"] == {
        "requests.cpu": "500m",
        "limits.cpu": "500m",
        "requests.memory": "64Mi",
        "limits.memory": "64Mi",
    }
    assert limits["spec"]["limits"][0]["default"] == {"cpu": "500m", "memory": "64Mi"}
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    # the workspace's labels are on the pods but never in the selector, which cannot change later
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": "workspace"}}
    assert spec["template"]["metadata"]["labels"]["hearth.dev/workspace"] == "alpha"
    assert "hearth.dev/tier" not in spec["template"]["metadata"]["labels"]
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "-c", "serve --here"]
    assert container["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "64Mi"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]
    assert rnd.endpoint(objects, "hearth-alpha", "cluster.local") == (
        "http://workspace.hearth-alpha.svc.cluster.local:8080"
    )


def test_storage_becomes_requests_storage_and_no_caps_render_no_quota() -> None:
    objects = _render(_profile(caps={"storage_mb": 1024}))
    assert objects[0]["spec"]["hard"] == {"requests.storage": "1024Mi"}
    assert objects[1]["spec"]["limits"] == [{"type": "PersistentVolumeClaim", "max": {"storage": "1024Mi"}}]
    assert [o["kind"] for o in _render(_profile(caps={}))] == ["Deployment", "Service"]


def test_ports_without_a_protocol_get_tcp_in_every_pod_template_and_service() -> None:
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {
            "jobTemplate": {
                "spec": {
                    "template": {"spec": {"containers": [{"name": "x", "ports": [{"containerPort": 1}]}]}}
                }
            }
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 80}]},
    }
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "template": {
                "spec": {
                    "initContainers": [{"name": "i", "ports": [{"containerPort": 2}]}],
                    "containers": [{"name": "c", "ports": [{"containerPort": 3}]}],
                }
            }
        },
    }
    done = rnd.finish([cronjob, service, deployment], namespace="hearth-a", slug="a", tier="t")
    template = done[0]["spec"]["jobTemplate"]["spec"]["template"]
    assert template["spec"]["containers"][0]["ports"] == [{"containerPort": 1, "protocol": "TCP"}]
    assert template["metadata"]["labels"] == rnd.labels("a")
    assert [p["protocol"] for p in done[1]["spec"]["ports"]] == ["UDP", "TCP"]
    pod = done[2]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["ports"][0]["protocol"] == "TCP"
    assert pod["containers"][0]["ports"][0]["protocol"] == "TCP"
    assert "protocol" not in deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]  # a copy


def test_what_a_workspace_namespace_cannot_hold_is_refused_with_every_reason() -> None:
    objects = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "god"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "kube-system"}},
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ok"}},
    ]
    with pytest.raises(ValueError, match="ClusterRole") as caught:
        rnd.finish(objects, namespace="hearth-a", slug="a", tier="t")
    problems = caught.value.args[0]
    assert len(problems) == 3
    assert "cluster-wide" in problems[0] and "kube-system" in problems[1] and "Widget" in problems[2]


def test_flags_and_caps_problems_are_listed_together() -> None:
    profile = ProvisioningProfile(
        tier="x",
        driver="docker",
        resource_caps={"cpu": 1, "gpu": 1},
        driver_flags={"image": "i", "kustomize": "overlay", "colour": "red"},
    )
    with pytest.raises(ValueError, match="colour") as caught:
        resolve(profile)
    problems = caught.value.args[0]
    assert any(p.startswith("driver_flags.colour") for p in problems), problems
    assert any(p.startswith("driver: ") for p in problems)
    assert any(p.startswith("resource_caps.gpu") for p in problems)
    both = ProvisioningProfile(tier="x", driver="kustomize", driver_flags={"image": "i", "kustomize": "o"})
    with pytest.raises(ValueError, match="either 'kustomize'"):
        resolve(both)
    assert KustomizeFlags(kustomize="k8s/overlay").image is None


def test_the_render_record_round_trips() -> None:
    objects = _render(_profile())
    record = rnd.render_record(objects, "solo", "alpha", "hearth-alpha")
    assert record["metadata"]["name"] == "hearth-render" and rnd.read_record(record) == objects
    assert rnd.read_record(None) == []


def test_an_ingress_host_is_the_endpoint() -> None:
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web"},
        "spec": {"rules": [{"host": "alpha.example.org"}], "tls": [{"hosts": ["alpha.example.org"]}]},
    }
    assert rnd.endpoint([*_render(_profile()), ingress], "hearth-alpha", "cluster.local") == (
        "https://alpha.example.org"
    )


@pytest.mark.subprocess
async def test_an_overlay_is_rendered_with_kubectl_kustomize(tmp_path: Path) -> None:
    if not await _has_kubectl():
        pytest.skip("kubectl is not installed (the kustomize mode needs it)")
    base = tmp_path / "k8s" / "base"
    base.mkdir(parents=True)
    (base / "kustomization.yaml").write_text("resources: [deploy.yaml]\n")
    (base / "deploy.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n"
        "  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n"
        "    spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}\n"
    )
    overlay = tmp_path / "k8s" / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text("resources: [../base]\nnamePrefix: dev-\n")
    objects = await rnd.kustomize_build("kubectl", overlay, 60)
    done = rnd.finish(objects, namespace="hearth-a", slug="a", tier="t")
    assert [rnd.describe(o) for o in done] == ["Deployment dev-web"]
    assert done[0]["spec"]["template"]["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80, "protocol": "TCP"}
    ]
    (overlay / "kustomization.yaml").write_text("resources: [../missing]\n")
    with pytest.raises(ValueError, match="kubectl kustomize"):
        await rnd.kustomize_build("kubectl", overlay, 60)


async def _has_kubectl() -> bool:
    import shutil

    return shutil.which("kubectl") is not None


# --- the status mapping ------------------------------------------------------------------------
def _deployment(
    *,
    generation: int = 1,
    observed: int = 1,
    updated: int = 1,
    available: int = 1,
    total: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": observed,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "readyReplicas": available,
        "replicas": total,
    }
    status |= extra
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "workspace", "generation": generation},
        "spec": {"replicas": 1},
        "status": status,
    }


def _pod(
    waiting: str | None = None, unschedulable: str | None = None, node: str | None = "n1", ready: bool = False
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": []}
    if waiting:
        status["containerStatuses"] = [
            {"name": "workspace", "state": {"waiting": {"reason": waiting, "message": "pull access denied"}}}
        ]
    if unschedulable:
        status["conditions"].append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    if ready:
        status["conditions"].append({"type": "Ready", "status": "True"})
    return {"metadata": {"name": "workspace-1"}, "spec": {"nodeName": node}, "status": status}


def test_a_deployment_is_ready_only_when_every_replica_is_updated_available_and_no_old_one_remains() -> None:
    assert look.assess([_deployment()], [_pod(ready=True)]).health == "ready"
    assert look.assess([_deployment(generation=2, observed=1)], []).health == "progressing"
    assert look.assess([_deployment(available=0)], [_pod()]).health == "progressing"
    # a status that lags its pods (a ReplicaSet's counts from before a scale to 0 and back, as CI
    # saw once after a cancelled stop): ready only once the pods are seen ready too
    lagging = look.assess([_deployment()], [_pod(node=None)])
    assert lagging.health == "progressing" and "0/1 pod(s) seen ready" in lagging.message, lagging
    assert look.assess([_deployment()], []).health == "progressing"
    terminating = _pod(ready=True)
    terminating["metadata"]["deletionTimestamp"] = "2026-12-07T07:52:56Z"
    assert look.assess([_deployment()], [terminating]).health == "progressing"
    old = look.assess([_deployment(total=2)], [])
    assert old.health == "progressing" and "1 old replica" in old.message
    assert look.assess([], []).health == "ready"  # an overlay without workloads is ready once applied


def test_back_off_unschedulable_and_a_passed_deadline_fail_with_the_reason() -> None:
    back_off = look.assess([_deployment(available=0)], [_pod(waiting="ImagePullBackOff")])
    assert back_off.health == "failed" and "ImagePullBackOff: pull access denied" in back_off.message
    why = "0/1 nodes are available: 1 Insufficient cpu."
    unschedulable = look.assess([_deployment(available=0)], [_pod(unschedulable=why, node=None)])
    assert unschedulable.health == "failed" and why in unschedulable.message
    deadline = _deployment(
        available=0,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "too slow",
            }
        ],
    )
    failed = look.assess([deadline], [])
    assert failed.health == "failed" and "ProgressDeadlineExceeded: too slow" in failed.message
    quota = _deployment(
        available=0,
        conditions=[
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": "exceeded quota",
            }
        ],
    )
    assert look.assess([quota], []).message == "Deployment workspace: FailedCreate: exceeded quota"  # no time
    refused = quota["status"]["conditions"][0]
    refused["lastTransitionTime"] = "2026-01-01T00:00:00Z"
    moment = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)  # 5 s: the controller retries
    retrying = look.assess([quota], [], now=moment)
    assert retrying.health == "progressing" and "(the controller retries)" in retrying.message
    assert look.assess([quota], [], now=moment + timedelta(seconds=15)).health == "failed"
    # a pod being deleted says nothing about the workspace
    leaving = _pod(waiting="CrashLoopBackOff")
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert look.pod_problem(leaving) is None


def test_status_maps_namespace_and_workloads_to_observed_states() -> None:
    namespace: dict[str, Any] = {"metadata": {"name": "hearth-a"}, "status": {"phase": "Active"}}
    ready = look.assess([_deployment()], [_pod(ready=True)])
    progressing = look.assess([_deployment(available=0)], [_pod()])
    failed = look.assess([_deployment(available=0)], [_pod(waiting="CrashLoopBackOff")])
    assert look.observed_state(None, None, upgrade=False)[0] == "absent"
    assert look.observed_state(namespace, ready, upgrade=False) == ("ready", None)
    assert look.observed_state(namespace, progressing, upgrade=False)[0] == "provisioning"
    assert look.observed_state(namespace, progressing, upgrade=True)[0] == "upgrading"
    state, message = look.observed_state(namespace, failed, upgrade=False)
    assert state == "failed" and message is not None and "CrashLoopBackOff" in message
    stuck = {
        "metadata": {"name": "hearth-a"},
        "status": {
            "phase": "Terminating",
            "conditions": [
                {
                    "type": "NamespaceFinalizersRemaining",
                    "status": "True",
                    "message": "a.org/keep in 1",
                },
                {"type": "NamespaceDeletionDiscoveryFailure", "status": "False", "message": "fine"},
            ],
        },
    }
    assert look.observed_state(stuck, ready, upgrade=False) == (
        "tearing_down",
        "NamespaceFinalizersRemaining: a.org/keep in 1",
    )
    revised = _deployment()
    revised["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "2"}
    assert look.upgrading([revised]) and not look.upgrading([_deployment()])


def test_a_stopped_workspace_is_stopped_never_ready_failed_or_provisioning() -> None:
    namespace: dict[str, Any] = {"metadata": {"name": "hearth-a"}, "status": {"phase": "Active"}}

    def stopped(saved: str | None, replicas: int, total: int = 0) -> dict[str, Any]:
        workload = _deployment(updated=total, available=total, total=total)
        workload["spec"]["replicas"] = replicas
        if saved is not None:
            workload["metadata"]["annotations"] = {rnd.SAVED_REPLICAS: saved}
        return workload

    terminating = _pod()
    terminating["metadata"] |= {
        "deletionTimestamp": "2026-01-01T00:00:00Z",
        "ownerReferences": [{"kind": "ReplicaSet", "name": "workspace-1"}],
    }
    # every workload at 0 with its saved count and no pod left: stopped, whatever assess says
    at_zero = [stopped("2", 0)]
    assert look.assess(at_zero, []).health == "ready"  # 0/0: why the stop rule comes first
    state, message = look.observed_state(
        namespace, look.assess(at_zero, []), upgrade=False, stop=look.stop_phase(at_zero, [])
    )
    assert state == "stopped" and message is not None and "Deployment workspace: 2" in message
    # its pods still going, or one workload not yet scaled: stopping
    half = [stopped("1", 0), {**stopped(None, 1, total=1), "kind": "StatefulSet"}]
    for workloads, pods in ((at_zero, [terminating]), (half, [])):
        phase = look.stop_phase(workloads, pods)
        assert phase is not None and phase[0] == "stopping", phase
    # scaled back to its saved count, which a start keeps until ready: starting
    phase = look.stop_phase([stopped("2", 2, total=2)], [])
    assert phase is not None and phase[0] == "starting", phase
    # no saved count: not stopped, by the other rules (a person's scale to 0 is not a stop)
    assert look.stop_phase([stopped(None, 0)], []) is None
    assert look.stop_phase([_deployment()], []) is None
    assert look.saved_replicas(stopped("x", 0)) is None


def test_plan_helpers_ignore_what_the_server_changes_and_name_what_differs() -> None:
    live = _deployment()
    live["metadata"] |= {"resourceVersion": "7", "uid": "u", "managedFields": [{}]}
    dry = _deployment(generation=1)
    dry["metadata"]["resourceVersion"] = "8"
    assert look.changed_paths(look.comparable(live), look.comparable(dry)) == []
    dry["spec"]["replicas"] = 2
    assert look.changed_paths(look.comparable(live), look.comparable(dry)) == [".spec.replicas"]
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"}}
    record = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hearth-render"}}
    assert look.prunable([claim, record, live], {("apps/v1", "Deployment", "workspace")}) == [claim]
    assert look.destroys_data(claim)


@pytest.mark.timeout(30)
async def test_a_request_cancelled_in_its_tls_handshake_closes_its_socket(tmp_path: Path) -> None:
    """A watch the driver stops while it connects (an observer leaving early) must not leave its
    socket to the garbage collector, as httpcore2 alone does (CI saw the ResourceWarning)."""
    in_handshake = asyncio.Event()
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the ClientHello: the client now waits for the server's answer
        in_handshake.set()
        while await reader.read(4096):
            pass
        closed.set()  # end of stream: the client closed its socket
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    kube = Kube(KustomizeConfig(kubeconfig=str(kubeconfig)))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            request = asyncio.create_task(kube.get("v1", "Namespace", "x"))
            await in_handshake.wait()
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            del request
            gc.collect()  # what was left to the collector is closed (and warned about) now
            await closed.wait()
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    finally:
        await kube.close()
        server.close()
        await server.wait_closed()


# --- against a real API server (scripts/lib/kubernetes.sh) --------------------------------------
def _config(kubeconfig: str, **more: Any) -> dict[str, Any]:
    return {"kubeconfig": kubeconfig, "delete_timeout": 60.0, **more}


#: A verb waits for readiness and a rollback for a namespace's deletion (seconds, not the 10 s
#: of the peer's typed helpers).
BOUND = 120.0


async def _provision(peer: Peer, slug: str, profile: ProvisioningProfile) -> DeploymentRef:
    reply = await peer.request("provision", {"slug": slug, "profile": _json(profile)}, timeout=BOUND)
    return DeploymentRef.model_validate(reply.result)


async def _upgrade(peer: Peer, ref: DeploymentRef, profile: ProvisioningProfile) -> DeploymentRef:
    reply = await peer.request("upgrade", {"ref": _json(ref), "profile": _json(profile)}, timeout=BOUND)
    return DeploymentRef.model_validate(reply.result)


async def _teardown(peer: Peer, ref: DeploymentRef) -> None:
    reply = await peer.request("teardown", {"ref": _json(ref)}, timeout=BOUND)
    assert reply.result is None


async def _plan(peer: Peer, slug: str, ref: DeploymentRef | None, profile: ProvisioningProfile) -> PlanResult:
    params = {"slug": slug, "ref": _json(ref) if ref else None, "profile": _json(profile)}
    return PlanResult.model_validate((await peer.request("plan", params, timeout=BOUND)).result)


def _json(model: Any) -> Any:
    return model.model_dump(mode="json")


def _kube(kubeconfig: str) -> Kube:
    return Kube(KustomizeConfig(kubeconfig=kubeconfig))


async def _fresh(kubeconfig: str, *slugs: str) -> None:
    """No namespace of ``slugs`` left from an earlier run that failed half way."""
    kube = _kube(kubeconfig)
    try:
        for slug in slugs:
            await kube.delete("v1", "Namespace", f"hearth-{slug}")
    finally:
        await kube.close()
    for slug in slugs:
        await _until_namespace(kubeconfig, f"hearth-{slug}", present=False)


async def _namespace(kubeconfig: str, slug: str) -> dict[str, Any] | None:
    kube = _kube(kubeconfig)
    try:
        return await kube.get("v1", "Namespace", f"hearth-{slug}")
    finally:
        await kube.close()


@pytest.mark.subprocess
@pytest.mark.timeout(600)
async def test_the_conformance_kit_passes_on_a_real_api_server(kubeconfig: str, venv_bin: Path) -> None:
    options = KitOptions(
        config=_config(kubeconfig),
        profile=_profile("conformance", caps={"cpu": 0.1, "memory_mb": 32}).model_dump(mode="json"),
        refused_profile=_profile("huge", caps={"cpu": 1, "gpu": 1}).model_dump(mode="json"),
        failing_profile=_profile("broken", annotations={FAULT: "ImagePullBackOff"}).model_dump(mode="json"),
        slow_profile=_profile("slow", annotations={READY_AFTER: "120"}).model_dump(mode="json"),
        # its pods take 20 s to go, so the stop is under way when the kit cancels it
        slow_stop_profile=_profile(
            # no quota: a terminating pod counts against one, and the rollback's pod must fit
            "slowstop",
            caps={},
            annotations={DELETE_AFTER: "20"},
        ).model_dump(mode="json"),
        timeout=120,
    )
    report = await run_conformance(venv_bin / "hearth-adapter-kustomize", options)
    assert report.passed, report.render()
    assert all(check.outcome == "pass" for check in report.checks), report.render()


@pytest.mark.timeout(180)
async def test_provision_applies_caps_the_api_server_enforces_and_teardown_leaves_nothing(
    kubeconfig: str,
) -> None:
    await _fresh(kubeconfig, "web")
    seen: list[dict[str, Any]] = []
    async with open_peer(KustomizeDriver(), config=_config(kubeconfig)) as peer:
        peer.on_progress = lambda event: seen.append(event["params"])
        ref = await _provision(peer, "web", _profile())
        assert ref.endpoint == "http://workspace.hearth-web.svc.cluster.local:8080"
        namespace = await _namespace(kubeconfig, "web")
        assert namespace is not None
        assert namespace["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "hearth"
        assert [e.get("backend_id") for e in seen if e.get("backend_id")] == [namespace["metadata"]["uid"]]
        assert any("ready" in e["message"] for e in seen)
        kube = _kube(kubeconfig)
        try:
            quota = await kube.get("v1", "ResourceQuota", "hearth-caps", "hearth-web")
            assert quota is not None and quota["status"]["hard"]["limits.cpu"] == "500m"
        finally:
            await kube.close()
        status = await peer.status(ref)
        assert status.state == "ready" and status.details["namespace"] == "hearth-web"
        assert await _provision(peer, "web", _profile()) == ref  # the same again changes nothing
        assert [r.workspace_slug for r in await peer.list() if r.workspace_slug == "web"] == ["web"]
        await _teardown(peer, ref)
        assert await _namespace(kubeconfig, "web") is None
        await _teardown(peer, ref)  # idempotent
        assert (await peer.status(ref)).state == "absent"


@pytest.mark.timeout(180)
async def test_an_unschedulable_pod_fails_the_provision_with_the_schedulers_reason_and_rolls_back(
    kubeconfig: str,
) -> None:
    async with open_peer(KustomizeDriver(), config=_config(kubeconfig)) as peer:
        with pytest.raises(RemoteError) as caught:
            await _provision(peer, "huge", _profile("huge", caps={"cpu": 8, "memory_mb": 64}))
        assert caught.value.code == -32031
        assert "Insufficient cpu" in caught.value.message, caught.value.message
        assert caught.value.data["rolled_back"] is True
        assert await _namespace(kubeconfig, "huge") is None


@pytest.mark.timeout(180)
async def test_image_pull_back_off_fails_with_the_reason_and_rolls_back(kubeconfig: str) -> None:
    async with open_peer(KustomizeDriver(), config=_config(kubeconfig)) as peer:
        with pytest.raises(RemoteError) as caught:
            await _provision(peer, "pull", _profile(annotations={FAULT: "ImagePullBackOff"}))
        assert caught.value.code == -32031
        assert "ImagePullBackOff" in caught.value.message
        assert caught.value.data["rolled_back"] is True
        assert await _namespace(kubeconfig, "pull") is None


@pytest.mark.subprocess  # kubectl kustomize
@pytest.mark.timeout(240)
async def test_upgrade_prunes_plans_by_dry_run_and_a_failed_upgrade_serves_the_previous_render(
    kubeconfig: str, tmp_path: Path
) -> None:
    _overlays(tmp_path)
    for tier, patch in (
        # the pod crash-loops (the fake kubelet's fault)
        (
            "bad",
            f"patches:\n- target: {{kind: Deployment, name: app}}\n  patch: |-\n"
            "    - op: add\n      path: /spec/template/metadata/annotations\n"
            f"      value: {{{FAULT}: CrashLoopBackOff}}\n",
        ),
        # commonLabels go into the selector too, which cannot change in place
        ("moved", "commonLabels: {variant: moved}\n"),
    ):
        (tmp_path / "k8s" / tier).mkdir()
        (tmp_path / "k8s" / tier / "kustomization.yaml").write_text(f"resources: [../base]\n{patch}")

    def overlay(tier: str) -> ProvisioningProfile:
        return _profile(tier, kustomize=f"k8s/{tier}")

    config = _config(kubeconfig, project_dir=str(tmp_path))
    await _fresh(kubeconfig, "up")
    async with open_peer(KustomizeDriver(), config=config) as peer:
        ref = await _provision(peer, "up", overlay("solo"))
        assert ref.endpoint == "http://app.hearth-up.svc.cluster.local:80"
        plan = await _plan(peer, "up", ref, overlay("team"))
        by_resource = {a.resource: a for a in plan.actions}
        assert by_resource["ConfigMap notes"].action == "delete", plan
        # only the tier label changes on the Deployment: no rollout
        deployment_plan = by_resource["Deployment app"]
        assert deployment_plan.action == "update", plan
        assert deployment_plan.reason == "changed in place: metadata.labels.hearth.dev/tier", plan
        assert by_resource["Namespace hearth-up"].action == "update", plan
        assert (await peer.status(ref)).state == "ready"  # the plan changed nothing
        upgraded = await _upgrade(peer, ref, overlay("team"))
        assert upgraded.tier == "team"
        kube = _kube(kubeconfig)
        try:
            assert await kube.get("v1", "ConfigMap", "notes", "hearth-up") is None  # pruned
            with pytest.raises(RemoteError) as caught:
                await _upgrade(peer, upgraded, overlay("bad"))
            assert caught.value.code == -32031 and caught.value.data["rolled_back"] is True
            assert "CrashLoopBackOff" in caught.value.message
            status = await peer.status(upgraded)
            assert status.state == "ready" and status.details["tier"] == "team"
            deployment = await kube.get("apps/v1", "Deployment", "app", "hearth-up")
            assert deployment is not None
            assert FAULT not in (deployment["spec"]["template"]["metadata"].get("annotations") or {})
            # a selector cannot change in place: plan says replace, and the upgrade replaces it
            plan = await _plan(peer, "up", upgraded, overlay("moved"))
            replaced = {a.resource: a for a in plan.actions}["Deployment app"]
            assert replaced.action == "replace" and not replaced.destructive, plan
            assert "immutable" in replaced.reason
            moved = await _upgrade(peer, upgraded, overlay("moved"))
            deployment = await kube.get("apps/v1", "Deployment", "app", "hearth-up")
            assert deployment is not None
            assert deployment["spec"]["selector"]["matchLabels"] == {"app": "app", "variant": "moved"}
            assert (await peer.status(moved)).state == "ready"
        finally:
            await kube.close()
        await _teardown(peer, upgraded)
        assert await _namespace(kubeconfig, "up") is None


@pytest.mark.timeout(180)
async def test_drift_by_another_field_manager_is_refused_naming_it(kubeconfig: str) -> None:
    await _fresh(kubeconfig, "drift")
    async with open_peer(KustomizeDriver(), config=_config(kubeconfig)) as peer:
        ref = await _provision(peer, "drift", _profile())
        kube = _kube(kubeconfig)
        try:  # a person raises the quota by hand
            raised = {
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": "hearth-caps", "namespace": "hearth-drift"},
                "spec": {"hard": {"limits.cpu": "2"}},
            }
            await kube.client().patch(
                type(await _quota_type()),
                "hearth-caps",
                raised,
                namespace="hearth-drift",
                patch_type=PatchType.APPLY,
                field_manager="kubectl-edit",
                force=True,
            )
        finally:
            await kube.close()
        plan = await _plan(peer, "drift", ref, _profile("team", caps={"cpu": 1, "memory_mb": 64}))
        assert any("kubectl-edit" in a.reason for a in plan.actions), plan
        with pytest.raises(RemoteError) as caught:
            await _upgrade(peer, ref, _profile("team", caps={"cpu": 1, "memory_mb": 64}))
        assert caught.value.code == -32031
        assert '"kubectl-edit"' in caught.value.message, caught.value.message
        assert caught.value.data["rolled_back"] is True
        status = await peer.status(ref)
        assert status.state == "ready" and status.details["tier"] == "solo"
        await _teardown(peer, ref)


async def _quota_type() -> Any:
    from lightkube.resources.core_v1 import ResourceQuota

    return ResourceQuota()


async def test_an_unreachable_api_server_is_backend_unavailable_never_absent(tmp_path: Path) -> None:
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    secret = "token-that-must-never-show"
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        f"clusters: [{{name: gone, cluster: {{server: 'https://127.0.0.1:{port}', "
        "insecure-skip-tls-verify: true}}]\n"
        f"users: [{{name: gone, user: {{token: {secret}}}}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: gone}}]\n"
    )
    ref = {"ref": _made_up_ref("gone")}
    calls: list[tuple[str, dict[str, Any]]] = [
        ("status", ref),
        ("list", {}),
        ("provision", {"slug": "gone", "profile": _json(_profile())}),
        ("plan", {"slug": "gone", "ref": None, "profile": _json(_profile())}),
        ("teardown", ref),
    ]
    async with open_peer(KustomizeDriver(), config={"kubeconfig": str(path)}) as peer:
        for method, params in calls:
            reply = await peer.request(method, params, timeout=BOUND)
            assert reply.error is not None, (method, reply.response)
            assert reply.error["code"] == -32030, (method, reply.error)
            assert f"127.0.0.1:{port}" in reply.error["message"]
            assert secret not in str(reply.error)
    async with open_peer(KustomizeDriver(), config={"kubeconfig": str(tmp_path / "none")}) as peer:
        with pytest.raises(RemoteError) as caught:
            await peer.list()
        assert caught.value.code == -32030 and "[adapters.kustomize]" in caught.value.message
    broken = tmp_path / "broken"
    broken.write_text(f"users: [{{name: x, user: {{token: {secret}\n  - ]: [\n")
    async with open_peer(KustomizeDriver(), config={"kubeconfig": str(broken)}) as peer:
        with pytest.raises(RemoteError) as caught:
            await peer.list()
        assert caught.value.code == -32030 and "not valid YAML" in caught.value.message
        assert secret not in str(caught.value) and secret not in str(caught.value.data)


def _made_up_ref(slug: str) -> dict[str, Any]:
    return {
        "workspace_slug": slug,
        "tier": "solo",
        "driver": "kustomize",
        "endpoint": None,
        "secrets_vault_path": None,
        "created": "2026-01-01T00:00:00Z",
        "last_status": "ready",
    }


def _overlays(project: Path) -> None:
    """k8s/base (a Deployment and a Service), k8s/solo (plus a ConfigMap), k8s/team (without)."""
    base = project / "k8s" / "base"
    base.mkdir(parents=True)
    (base / "kustomization.yaml").write_text("resources: [app.yaml]\n")
    (base / "app.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec:\n"
        "  strategy: {type: Recreate}\n"
        "  selector: {matchLabels: {app: app}}\n  template:\n    metadata: {labels: {app: app}}\n"
        "    spec: {containers: [{name: app, image: 'hearth-test/app:1', ports: [{containerPort: 80}]}]}\n"
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: app}\n"
        "spec: {selector: {app: app}, ports: [{port: 80}]}\n"
    )
    (project / "k8s" / "solo").mkdir()
    (project / "k8s" / "solo" / "kustomization.yaml").write_text("resources: [../base, notes.yaml]\n")
    (project / "k8s" / "solo" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata: {a: b}\n"
    )
    (project / "k8s" / "team").mkdir()
    (project / "k8s" / "team" / "kustomization.yaml").write_text("resources: [../base]\n")


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_the_cli_runs_the_lifecycle_on_kubernetes_and_adopts_an_orphan(
    kubeconfig: str, venv_bin: Path, tmp_path: Path
) -> None:
    import json
    import os
    import subprocess

    import yaml

    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    _overlays(project)
    (project / ".hearth" / "hearth.toml").write_text(
        "[tiers.solo]\nresource_caps = { cpu = 0.5, memory_mb = 64 }\n"
        '[tiers.solo.driver_flags.kustomize]\nkustomize = "k8s/solo"\n'
        "[tiers.team]\nresource_caps = { cpu = 1, memory_mb = 96 }\n"
        '[tiers.team.driver_flags.kustomize]\nkustomize = "k8s/team"\n'
        '[adapters.kustomize]\npass_env = ["KUBECONFIG"]\n'
    )
    home = tmp_path / "home"
    # the kubeconfig comes through KUBECONFIG, which the host passes because pass_env names it
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "KUBECONFIG": kubeconfig}
    secrets = [
        str(user["user"][field])
        for user in yaml.safe_load(Path(kubeconfig).read_text())["users"]
        for field in ("token", "client-key-data", "client-certificate-data")
        if field in user["user"]
    ]
    assert secrets, "the test cluster's kubeconfig names no credential to look for"
    outputs: list[str] = []

    def hearth(*args: str, ok: bool = True) -> Any:
        done = subprocess.run(
            [str(venv_bin / "hearth"), *args, "--json", "--home", str(home)],
            capture_output=True,
            text=True,
            env=env,
            cwd=project,  # overlays are relative to the project folder, the adapter's working folder
            timeout=180,
            check=False,
        )
        outputs.append(done.stdout + done.stderr)
        if ok:
            assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    asyncio.run(_fresh(kubeconfig, "cli"))
    ref = hearth("provision", "cli", "--tier", "solo", "--driver", "kustomize")
    assert ref["endpoint"] == "http://app.hearth-cli.svc.cluster.local:80"
    assert hearth("status", "cli")["state"] == "ready"
    assert hearth("stop", "cli")["last_status"] == "stopped"
    assert hearth("status", "cli")["state"] == "stopped"
    assert asyncio.run(_replicas(kubeconfig, "cli", "Deployment", "app")) == (0, "1")
    assert hearth("start", "cli")["last_status"] == "ready"
    assert hearth("status", "cli")["state"] == "ready"
    assert asyncio.run(_replicas(kubeconfig, "cli", "Deployment", "app")) == (1, None)
    planned = hearth("plan", "cli", "--tier", "team")
    actions = {a["resource"]: a["action"] for a in planned["actions"]}
    assert actions["ConfigMap notes"] == "delete", planned
    assert actions["ResourceQuota hearth-caps"] == "update", planned
    assert hearth("upgrade", "cli", "--tier", "team")["tier"] == "team"
    assert asyncio.run(_exists(kubeconfig, "v1", "ConfigMap", "notes", "hearth-cli")) is False  # pruned
    assert hearth("teardown", "cli")["state"] == "tier_torn_down"
    assert asyncio.run(_namespace(kubeconfig, "cli")) is None
    # the slug is free again
    again = hearth("provision", "cli", "--tier", "solo", "--driver", "kustomize", "--reuse")
    assert again["endpoint"] == ref["endpoint"]
    # forgotten, it is an orphan reconcile reports and adopt takes back
    hearth("forget", "cli", "--yes")
    report = hearth("reconcile", ok=False)
    assert [o["workspace_slug"] for o in report["orphans"]] == ["cli"], report
    adopted = hearth("adopt", "cli", "--driver", "kustomize", "--tier", "solo")
    assert adopted["state"] == "ready"
    assert hearth("stop", "cli")["last_status"] == "stopped"  # a stopped workspace is torn down too
    assert hearth("teardown", "cli")["state"] == "tier_torn_down"
    assert asyncio.run(_namespace(kubeconfig, "cli")) is None
    for secret in secrets:
        assert all(secret not in text for text in outputs)
        for path in home.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


async def _exists(kubeconfig: str, api_version: str, kind: str, name: str, namespace: str) -> bool:
    kube = _kube(kubeconfig)
    try:
        return await kube.get(api_version, kind, name, namespace) is not None
    finally:
        await kube.close()


async def _until_namespace(kubeconfig: str, name: str, *, present: bool, bound: float = 90.0) -> None:
    """Until namespace ``name`` exists (or is gone), as a watch of it reports."""
    kube = _kube(kubeconfig)
    fields = {"metadata.name": name}

    async def watch() -> None:
        found, version = await kube.list("v1", "Namespace", fields=fields)
        if bool(found) == present:
            return
        async for operation, _ in kube.watch("v1", "Namespace", fields=fields, resource_version=version):
            if (operation == "DELETED") != present:
                return

    try:
        await asyncio.wait_for(watch(), bound)
    finally:
        await kube.close()


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_ctrl_c_mid_provision_rolls_back_and_a_host_killed_mid_provision_heals(
    kubeconfig: str, venv_bin: Path, tmp_path: Path
) -> None:
    import json
    import os
    import signal
    import subprocess

    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(
        "[tiers.solo]\nresource_caps = { cpu = 0.5, memory_mb = 64 }\n"
        f'[tiers.solo.driver_flags.kustomize]\nimage = "{IMAGE}"\nport = 8080\n'
        "[tiers.slow]\nresource_caps = { cpu = 0.5, memory_mb = 64 }\n"
        f'[tiers.slow.driver_flags.kustomize]\nimage = "{IMAGE}"\nport = 8080\n'
        f'annotations = {{ "{READY_AFTER}" = "600" }}\n'
        f'[adapters.kustomize]\nkubeconfig = "{kubeconfig}"\n'
    )
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}

    def argv(*args: str) -> list[str]:
        return [
            str(venv_bin / "hearth"),
            *args,
            "--json",
            "--home",
            str(tmp_path / "home"),
            "--project",
            str(project),
        ]

    def hearth(*args: str) -> Any:
        done = subprocess.run(argv(*args), capture_output=True, text=True, env=env, timeout=180, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else None

    def started(slug: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            argv("provision", slug, "--tier", "slow", "--driver", "kustomize"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        asyncio.run(_until_namespace(kubeconfig, f"hearth-{slug}", present=True))
        return process

    asyncio.run(_fresh(kubeconfig, "ctrlc", "killed"))
    # Ctrl-C: the provision is cancelled, the namespace deleted and waited for, nothing recorded
    process = started("ctrlc")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "was cancelled and rolled back" in err, err
    assert asyncio.run(_namespace(kubeconfig, "ctrlc")) is None
    assert hearth("ls") == []

    # kill -9 of the host: the adapter sees its parent die and rolls back; reconcile settles the
    # record from status, and once torn down the slug provisions again
    process = started("killed")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    asyncio.run(_until_namespace(kubeconfig, "hearth-killed", present=False))
    hearth("reconcile")
    [record] = hearth("ls")
    assert record["last_status"] == "failed", record  # what a dead host left, settled from status
    assert hearth("teardown", "killed")["state"] == "tier_torn_down"
    ref = hearth("provision", "killed", "--tier", "solo", "--driver", "kustomize", "--reuse")
    assert ref["last_status"] == "ready"
    assert hearth("status", "killed")["state"] == "ready"
    assert hearth("teardown", "killed")["state"] == "tier_torn_down"


@pytest.mark.subprocess  # kubectl kustomize
@pytest.mark.timeout(180)
async def test_a_teardown_that_sticks_says_why_and_never_strips_finalizers(
    kubeconfig: str, tmp_path: Path
) -> None:
    overlay = tmp_path / "k8s" / "kept"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text("resources: [kept.yaml]\n")
    (overlay / "kept.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kept, finalizers: [hearth.dev/test-keep]}\n"
    )
    await _fresh(kubeconfig, "stuck")
    config = _config(kubeconfig, project_dir=str(tmp_path), delete_timeout=8.0)
    async with open_peer(KustomizeDriver(), config=config) as peer:
        ref = await _provision(peer, "stuck", _profile("kept", kustomize="k8s/kept"))
        assert (await peer.status(ref)).state == "ready"  # no workload: ready once applied
        with pytest.raises(RemoteError) as caught:
            await _teardown(peer, ref)
        assert caught.value.code == -32031
        assert "still terminating" in caught.value.message
        assert "hearth.dev/test-keep" in caught.value.message, caught.value.message
        status = await peer.status(ref)
        assert status.state == "tearing_down" and "hearth.dev/test-keep" in (status.message or "")
        kube = _kube(kubeconfig)
        try:  # the finalizer is still there: the driver never strips it; its owner does
            kept = await kube.get("v1", "ConfigMap", "kept", "hearth-stuck")
            assert kept is not None and kept["metadata"]["finalizers"] == ["hearth.dev/test-keep"]
            from lightkube.resources.core_v1 import ConfigMap

            await kube.client().patch(
                ConfigMap,
                "kept",
                {"metadata": {"finalizers": None}},
                namespace="hearth-stuck",
                patch_type=PatchType.MERGE,
            )
        finally:
            await kube.close()
        await _teardown(peer, ref)
        assert (await peer.status(ref)).state == "absent"


@pytest.mark.timeout(180)
async def test_status_says_provisioning_while_it_waits_and_a_cancel_rolls_back(kubeconfig: str) -> None:
    await _fresh(kubeconfig, "wait")
    slow = _profile(annotations={READY_AFTER: "600"}).model_dump(mode="json")
    async with open_peer(KustomizeDriver(), config=_config(kubeconfig)) as peer:
        waiting = asyncio.Event()
        peer.on_progress = lambda event: waiting.set() if "pod(s)" in event["params"]["message"] else None
        sent, answer = await peer.start_request("provision", {"slug": "wait", "profile": slow})
        await asyncio.wait_for(waiting.wait(), 60)  # the pod runs, not ready: progress says so
        status = await peer.status(DeploymentRef.model_validate(_made_up_ref("wait")))
        assert status.state == "provisioning", status
        assert status.message is not None and "0/1 ready" in status.message
        await peer.notify("cancel", {"id": sent["id"]})
        reply = await peer.finish(sent, answer, BOUND)
        assert reply.error is not None and reply.error["code"] == -32800
        assert reply.error["data"]["rolled_back"] is True
        assert await _namespace(kubeconfig, "wait") is None


@pytest.mark.timeout(120)
async def test_a_namespace_hearth_does_not_manage_is_left_alone(kubeconfig: str) -> None:
    await _fresh(kubeconfig, "foreign")
    kube = _kube(kubeconfig)
    try:
        await kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hearth-foreign"}})
        async with open_peer(KustomizeDriver(), config=_config(kubeconfig)) as peer:
            for method, params in (
                ("provision", {"slug": "foreign", "profile": _json(_profile())}),
                ("plan", {"slug": "foreign", "ref": None, "profile": _json(_profile())}),
            ):
                reply = await peer.request(method, params, timeout=BOUND)
                assert reply.error is not None and reply.error["code"] == -32031, (method, reply.response)
                assert "is not this workspace's" in reply.error["message"]
            ref = DeploymentRef.model_validate(_made_up_ref("foreign"))
            assert (await peer.status(ref)).state == "absent"
            assert "foreign" not in [r.workspace_slug for r in await peer.list()]
            await _teardown(peer, ref)
        assert await kube.get("v1", "Namespace", "hearth-foreign") is not None  # untouched
        await kube.delete("v1", "Namespace", "hearth-foreign")
    finally:
        await kube.close()


@pytest.mark.subprocess  # kubectl kustomize
@pytest.mark.timeout(180)
async def test_claims_are_capped_by_the_quota_and_pruned_only_when_the_tier_allows_it(
    kubeconfig: str, tmp_path: Path
) -> None:
    claim = (
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\n"
        "spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: %s}}}\n"
    )
    for name, size in (("small", "64Mi"), ("big", "2Gi"), ("none", None)):
        folder = tmp_path / "k8s" / name
        folder.mkdir(parents=True)
        resources = "[data.yaml]" if size else "[]"
        (folder / "kustomization.yaml").write_text(f"resources: {resources}\n")
        if size:
            (folder / "data.yaml").write_text(claim % size)

    def tier(name: str, **flags: Any) -> ProvisioningProfile:
        return _profile(name, caps={"storage_mb": 1024}, kustomize=f"k8s/{name}", **flags)

    await _fresh(kubeconfig, "claims", "toobig")
    config = _config(kubeconfig, project_dir=str(tmp_path))
    async with open_peer(KustomizeDriver(), config=config) as peer:
        # 2 GiB asked, 1 GiB allowed: the API server (the LimitRange) refuses it, nothing is left
        with pytest.raises(RemoteError) as caught:
            await _provision(peer, "toobig", tier("big"))
        assert caught.value.code == -32031, caught.value
        assert "maximum storage usage per PersistentVolumeClaim is 1Gi" in caught.value.message
        assert caught.value.data["rolled_back"] is True
        ref = await _provision(peer, "claims", tier("small"))
        plan = await _plan(peer, "claims", ref, tier("none"))
        kept = {a.resource: a for a in plan.actions}["PersistentVolumeClaim data"]
        assert (kept.action, kept.destructive) == ("no_op", False), plan
        ref = await _upgrade(peer, ref, tier("none"))
        assert await _exists(kubeconfig, "v1", "PersistentVolumeClaim", "data", "hearth-claims")
        allowed = tier("none", allow_destructive_upgrade=True)
        plan = await _plan(peer, "claims", ref, allowed)
        pruned = {a.resource: a for a in plan.actions}["PersistentVolumeClaim data"]
        assert (pruned.action, pruned.destructive) == ("delete", True), plan
        await _upgrade(peer, ref, allowed)
        await _teardown(peer, ref)
    assert await _namespace(kubeconfig, "claims") is None
    assert await _namespace(kubeconfig, "toobig") is None


async def _replicas(kubeconfig: str, slug: str, kind: str, name: str) -> tuple[int, str | None]:
    """A workload's ``spec.replicas`` and the count a stop saved on it (None: not stopped)."""
    kube = _kube(kubeconfig)
    try:
        found = await kube.get("apps/v1", kind, name, f"hearth-{slug}")
    finally:
        await kube.close()
    assert found is not None
    annotations = found["metadata"].get("annotations") or {}
    return int(found["spec"]["replicas"]), annotations.get(rnd.SAVED_REPLICAS)


async def _pods(kubeconfig: str, slug: str) -> list[str]:
    kube = _kube(kubeconfig)
    try:
        pods, _ = await kube.list("v1", "Pod", namespace=f"hearth-{slug}")
    finally:
        await kube.close()
    return [p["metadata"]["name"] for p in pods]


def _claim_overlay(folder: Path) -> None:
    """A Deployment of 2 replicas, a StatefulSet of 1 and a claim, none of them capped by a quota."""
    folder.mkdir(parents=True)
    (folder / "kustomization.yaml").write_text("resources: [app.yaml]\n")
    template = (
        "  selector: {matchLabels: {app: %s}}\n  template:\n    metadata: {labels: {app: %s}}\n"
        "    spec: {containers: [{name: main, image: 'hearth-test/app:1'}]}\n"
    )
    (folder / "app.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n"
        + template % ("web", "web")
        + "---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  replicas: 1\n"
        "  serviceName: db\n"
        + template
        % ("db", "db")
        + "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\n"
        "spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}\n"
    )


@pytest.mark.subprocess  # kubectl kustomize
@pytest.mark.timeout(240)
async def test_stop_scales_to_zero_keeping_the_claim_and_start_restores_the_saved_counts(
    kubeconfig: str, tmp_path: Path
) -> None:
    _claim_overlay(tmp_path / "k8s" / "kept")
    profile = _profile("kept", caps={"storage_mb": 1024}, kustomize="k8s/kept")
    await _fresh(kubeconfig, "kept")
    async with open_peer(KustomizeDriver(), config=_config(kubeconfig, project_dir=str(tmp_path))) as peer:
        ref = await _provision(peer, "kept", profile)
        uid = (await peer.status(ref)).details["uid"]
        assert len(await _pods(kubeconfig, "kept")) == 3
        replies: list[Any] = []
        for attempt in range(2):  # the second stop changes nothing
            reply = await peer.request("stop", {"ref": _json(ref)}, timeout=BOUND)
            replies.append(reply)
            assert DeploymentRef.model_validate(reply.result).last_status == "stopped"
            assert await _replicas(kubeconfig, "kept", "Deployment", "web") == (0, "2"), attempt
            assert await _replicas(kubeconfig, "kept", "StatefulSet", "db") == (0, "1"), attempt
            assert await _pods(kubeconfig, "kept") == []
            status = await peer.status(ref)
            assert (status.state, status.details["uid"]) == ("stopped", uid), status
            assert await _exists(kubeconfig, "v1", "PersistentVolumeClaim", "data", "hearth-kept")
        first, second = ([str(e.get("params", e).get("message")) for e in r.progress] for r in replies)
        assert second == ["namespace hearth-kept is stopped already"], second
        assert any("scaling Deployment web to 0 (2 replica(s) saved)" in w for w in first), first
        for attempt in range(2):  # the second start changes nothing
            reply = await peer.request("start", {"ref": _json(ref)}, timeout=BOUND)
            assert DeploymentRef.model_validate(reply.result).last_status == "ready"
            assert await _replicas(kubeconfig, "kept", "Deployment", "web") == (2, None), attempt
            assert await _replicas(kubeconfig, "kept", "StatefulSet", "db") == (1, None), attempt
            status = await peer.status(ref)
            assert (status.state, status.details["uid"], status.details["ready"]) == ("ready", uid, "3/3")
        assert await _exists(kubeconfig, "v1", "PersistentVolumeClaim", "data", "hearth-kept")
        await peer.request("stop", {"ref": _json(ref)}, timeout=BOUND)
        await _teardown(peer, ref)  # a stopped workspace is torn down like any other
    assert await _namespace(kubeconfig, "kept") is None


@pytest.mark.timeout(180)
async def test_a_stop_is_refused_naming_the_autoscaler_that_owns_replicas(kubeconfig: str) -> None:
    await _fresh(kubeconfig, "scaled")
    async with open_peer(KustomizeDriver(), config=_config(kubeconfig)) as peer:
        ref = await _provision(peer, "scaled", _profile(caps={}))
        # an autoscaler takes replicas over, as an HPA does through the scale subresource
        autoscaler = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="test-autoscaler")
        try:
            await autoscaler.patch(
                Deployment,
                rnd.WORKLOAD,
                {"spec": {"replicas": 2}},
                namespace="hearth-scaled",
                patch_type=PatchType.MERGE,
            )
            fields = (await autoscaler.get(Deployment, rnd.WORKLOAD, namespace="hearth-scaled")).metadata
        finally:
            await autoscaler.close()
        assert fields is not None and fields.managedFields is not None
        managers = {(m.manager, m.operation) for m in fields.managedFields}
        assert ("test-autoscaler", "Update") in managers, managers
        with pytest.raises(RemoteError) as caught:
            _ = (await peer.request("stop", {"ref": _json(ref)}, timeout=BOUND)).result
        assert caught.value.code == -32031
        assert '"test-autoscaler"' in caught.value.message, caught.value.message
        assert caught.value.data["rolled_back"] is True
        async with asyncio.timeout(30):  # the autoscaler's second replica becomes ready
            while (state := (await peer.status(ref)).state) != "ready":
                assert state == "provisioning", state
                await asyncio.sleep(0.2)
        assert await _replicas(kubeconfig, "scaled", "Deployment", rnd.WORKLOAD) == (2, None)
        assert await _replicas_owners(kubeconfig, "scaled") == ["test-autoscaler"]  # nothing changed
        await _teardown(peer, ref)


async def _replicas_owners(kubeconfig: str, slug: str) -> list[str]:
    """The field managers owning the workspace Deployment's ``spec.replicas``."""
    kube = _kube(kubeconfig)
    try:
        found = await kube.get("apps/v1", "Deployment", rnd.WORKLOAD, f"hearth-{slug}")
    finally:
        await kube.close()
    assert found is not None
    return sorted(
        str(entry["manager"])
        for entry in found["metadata"]["managedFields"]
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    )


@pytest.mark.subprocess  # kubectl kustomize
@pytest.mark.timeout(120)
async def test_a_workspace_without_workloads_is_refused_a_stop(kubeconfig: str, tmp_path: Path) -> None:
    folder = tmp_path / "k8s" / "bare"
    folder.mkdir(parents=True)
    (folder / "kustomization.yaml").write_text("resources: [notes.yaml]\n")
    (folder / "notes.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n")
    await _fresh(kubeconfig, "bare")
    async with open_peer(KustomizeDriver(), config=_config(kubeconfig, project_dir=str(tmp_path))) as peer:
        ref = await _provision(peer, "bare", _profile("bare", caps={}, kustomize="k8s/bare"))
        with pytest.raises(RemoteError) as caught:
            _ = (await peer.request("stop", {"ref": _json(ref)}, timeout=BOUND)).result
        assert caught.value.code == -32031
        assert "runs no Deployment or StatefulSet" in caught.value.message, caught.value.message
        assert caught.value.data["rolled_back"] is True
        assert (await peer.status(ref)).state == "ready"
        await _teardown(peer, ref)


@pytest.mark.timeout(180)
async def test_a_cancelled_start_scales_to_zero_again_and_answers_after_it(kubeconfig: str) -> None:
    await _fresh(kubeconfig, "restart")
    # each pod turns ready 4 s after it starts: the start is still waiting when it is cancelled
    slow = _profile(caps={}, annotations={READY_AFTER: "4"})
    async with open_peer(KustomizeDriver(), config=_config(kubeconfig)) as peer:
        ref = await _provision(peer, "restart", slow)
        _ = (await peer.request("stop", {"ref": _json(ref)}, timeout=BOUND)).result
        waiting = asyncio.Event()
        peer.on_progress = lambda event: waiting.set() if "pod(s)" in event["params"]["message"] else None
        sent, answer = await peer.start_request("start", {"ref": _json(ref)})
        await asyncio.wait_for(waiting.wait(), 60)  # the pod runs, not ready yet
        assert await _replicas(kubeconfig, "restart", "Deployment", rnd.WORKLOAD) == (1, "1")
        assert (await peer.status(ref)).state == "starting"
        await peer.notify("cancel", {"id": sent["id"]})
        reply = await peer.finish(sent, answer, BOUND)
        assert reply.error is not None and reply.error["code"] == -32800, reply
        assert reply.error["data"]["rolled_back"] is True
        # answered only once it is stopped again, with the count saved as before
        assert await _replicas(kubeconfig, "restart", "Deployment", rnd.WORKLOAD) == (0, "1")
        assert await _pods(kubeconfig, "restart") == []
        assert (await peer.status(ref)).state == "stopped"
        await _teardown(peer, ref)


@pytest.mark.subprocess
@pytest.mark.timeout(300)
async def test_the_api_stops_and_starts_a_workspace_on_kubernetes(kubeconfig: str, tmp_path: Path) -> None:
    """Issue 25 through the API v1 (what a console does): stop scales to 0, start brings it back,
    the same namespace throughout."""
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(
        "[tiers.solo]\nresource_caps = { cpu = 0.5, memory_mb = 64 }\n"
        f'[tiers.solo.driver_flags.kustomize]\nimage = "{IMAGE}"\nport = 8080\n'
        f'[adapters.kustomize]\nkubeconfig = "{kubeconfig}"\ndelete_timeout = 60\n'
    )
    async with Host(project_dir=project, home=tmp_path / "home") as host:
        transport = httpx.ASGITransport(app=create_app(host))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as api:
            made = await api.post(
                "/v1/workspaces",
                json={"slug": "api", "tier": "solo", "driver": "kustomize"},
                params={"wait": 100},
            )
            assert made.status_code == 200 and made.json()["state"] == "succeeded", made.text
            namespace = (await api.get("/v1/workspaces/api")).json()["backend_id"]
            assert namespace, made.text
            for verb, state in (("stop", "stopped"), ("start", "ready")):
                done = await api.post(f"/v1/workspaces/api/{verb}", params={"wait": 100})
                assert done.status_code == 200 and done.json()["state"] == "succeeded", done.text
                status = await api.get("/v1/workspaces/api/status")
                assert status.json()["state"] == state, status.text
                record = (await api.get("/v1/workspaces/api")).json()
                assert (record["state"], record["backend_id"]) == (state, namespace)
            gone = await api.delete("/v1/workspaces/api", params={"wait": 100})
            assert gone.status_code == 200 and gone.json()["state"] == "succeeded", gone.text
