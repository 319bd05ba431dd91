"""What the cluster's objects say, read from their conditions: ready, still progressing, or
failed with the reason the controllers, the scheduler or the kubelet gave. Pure functions of
the objects, so that the watch during a verb and ``status`` judge alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from hearth_adaptersdk import ObservedState

from ._render import RENDER, SAVED_REPLICAS, describe

Obj = dict[str, Any]
Health = Literal["ready", "progressing", "failed"]
#: A container waiting for one of these will not become ready by waiting.
BACK_OFF = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
WORKLOADS = ("Deployment", "StatefulSet")
#: Seconds a Deployment's ``ReplicaFailure`` (its pods refused at creation) must last to fail it.
REPLICA_FAILURE_GRACE = 15.0


@dataclass(frozen=True)
class Assessment:
    health: Health
    #: For a person: why it failed, or what it waits for.
    message: str
    ready: int
    desired: int


def _conditions(obj: Obj) -> dict[str, Obj]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def _since(stamp: Any, now: datetime | None) -> float | None:
    """Seconds from ``stamp`` (RFC 3339, or a datetime) to ``now`` (default: the clock)."""
    if not stamp:
        return None
    when = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return ((now or datetime.now(UTC)) - when).total_seconds()


def workload_health(obj: Obj, now: datetime | None = None) -> tuple[Health, str, int, int]:
    """A Deployment is ready when the controller saw its generation, every replica is updated
    and available and no old one remains; failed when ``Progressing`` is False (its deadline
    passed) or ``ReplicaFailure`` is True (a quota refused its pods), once the controller saw the
    current generation (a condition of the previous one says nothing). A StatefulSet is ready
    when every replica is ready on the update revision."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    desired = int(spec.get("replicas", 1))
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    ready = int(status.get("readyReplicas") or 0)
    where = describe(obj)
    replica_failure = _conditions(obj).get("ReplicaFailure")
    if observed >= generation and replica_failure is not None and replica_failure.get("status") == "True":
        # the controller cannot even create the pods: a quota, a LimitRange, admission. A quota
        # the controller has not yet seen freed (a pod just deleted) refuses for a moment, and the
        # controller retries: only a refusal that lasts is a failure.
        reason = replica_failure.get("reason") or "ReplicaFailure"
        said = f"{where}: {reason}: {replica_failure.get('message') or ''}".rstrip(": ")
        since = _since(replica_failure.get("lastTransitionTime"), now)
        if since is None or since >= REPLICA_FAILURE_GRACE:
            return "failed", said, ready, desired
        return "progressing", f"{said} (the controller retries)", ready, desired
    if obj["kind"] == "Deployment":
        progressing = _conditions(obj).get("Progressing")
        if observed >= generation and progressing is not None and progressing.get("status") == "False":
            reason = progressing.get("reason") or "not progressing"
            return (
                "failed",
                f"{where}: {reason}: {progressing.get('message') or ''}".rstrip(": "),
                ready,
                desired,
            )
        available = int(status.get("availableReplicas") or 0)
        updated = int(status.get("updatedReplicas") or 0)
        total = int(status.get("replicas") or 0)
        if observed >= generation and updated == desired and available == desired and total == desired:
            return "ready", f"{where}: {available}/{desired} ready", available, desired
        if observed < generation:
            return (
                "progressing",
                f"{where}: the controller has not seen generation {generation} yet",
                ready,
                desired,
            )
        old = total - updated
        waiting = f", {old} old replica(s) still there" if old > 0 else ""
        return "progressing", f"{where}: {available}/{desired} ready{waiting}", available, desired
    updated = int(status.get("updatedReplicas") or 0)
    same_revision = status.get("currentRevision") == status.get("updateRevision")
    if observed >= generation and ready == desired and updated == desired and same_revision:
        return "ready", f"{where}: {ready}/{desired} ready", ready, desired
    return "progressing", f"{where}: {ready}/{desired} ready", ready, desired


def pod_problem(pod: Obj) -> str | None:
    """Why ``pod`` will not become ready without a change: back-off, or no node fits it."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    name = meta.get("name", "?")
    for field in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(field) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in BACK_OFF:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                return f"pod {name}, container {container.get('name')}: {waiting['reason']}{detail}"
    scheduled = _conditions(pod).get("PodScheduled")
    if (
        scheduled is not None
        and scheduled.get("status") == "False"
        and scheduled.get("reason") == "Unschedulable"
    ):
        return f"pod {name} cannot be scheduled: {scheduled.get('message') or 'Unschedulable'}"
    return None


def pod_words(pods: list[Obj]) -> str:
    """Where the pods are, for progress: scheduled, pulling, ready."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    if not live:
        return "no pod yet"
    scheduled = sum(1 for p in live if (p.get("spec") or {}).get("nodeName"))
    ready = sum(1 for p in live if _conditions(p).get("Ready", {}).get("status") == "True")
    pulling = 0
    for pod in live:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("ContainerCreating", "PodInitializing", "Pulling"):
                pulling += 1
    parts = [f"{len(live)} pod(s)", f"{scheduled} scheduled"]
    if pulling:
        parts.append(f"{pulling} pulling")
    parts.append(f"{ready} ready")
    return ", ".join(parts)


def _revision(obj: Obj) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    found: str | None = annotations.get("deployment.kubernetes.io/revision")
    return found


def current_pods(workloads: list[Obj], replicasets: list[Obj], pods: list[Obj]) -> list[Obj]:
    """The pods of each Deployment's current revision (and every pod no Deployment owns): a
    crashing pod of a revision being replaced says nothing about the one replacing it."""
    revisions = {w["metadata"]["name"]: _revision(w) for w in workloads if w.get("kind") == "Deployment"}
    old: set[str] = set()
    for replicaset in replicasets:
        meta = replicaset.get("metadata") or {}
        owners = [o.get("name") for o in meta.get("ownerReferences") or [] if o.get("kind") == "Deployment"]
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if (
            template_hash
            and owners
            and owners[0] in revisions
            and _revision(replicaset) != revisions[owners[0]]
        ):
            old.add(template_hash)
    return [
        p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get("pod-template-hash") not in old
    ]


def assess(
    workloads: list[Obj], pods: list[Obj], replicasets: list[Obj] | None = None, now: datetime | None = None
) -> Assessment:
    """The workspace as a whole: failed if any workload or current pod is, ready if every
    workload is. Pods are judged only once the controllers saw every workload's generation."""
    settled = all(
        int((w.get("status") or {}).get("observedGeneration") or 0)
        >= int((w.get("metadata") or {}).get("generation") or 0)
        for w in workloads
    )
    if settled:
        for pod in current_pods(workloads, replicasets or [], pods):
            if (problem := pod_problem(pod)) is not None:
                return Assessment("failed", problem, 0, len(pods))
    verdicts = [workload_health(w, now) for w in workloads if w.get("kind") in WORKLOADS]
    ready = sum(v[2] for v in verdicts)
    desired = sum(v[3] for v in verdicts)
    for health, message, _, _ in verdicts:
        if health == "failed":
            return Assessment("failed", message, ready, desired)
    waiting = [message for health, message, _, _ in verdicts if health == "progressing"]
    if waiting:
        return Assessment("progressing", f"{'; '.join(waiting)} ({pod_words(pods)})", ready, desired)
    # A workload's status can lag its pods for a moment (a ReplicaSet's counts from before a scale
    # to 0 and back): ready only once that many current pods are seen ready too.
    live = [p for p in current_pods(workloads, replicasets or [], pods) if _live_and_ready(p)]
    if len(live) < desired:
        message = f"{len(live)}/{desired} pod(s) seen ready ({pod_words(pods)})"
        return Assessment("progressing", message, len(live), desired)
    return Assessment("ready", f"ready {ready}/{desired}", ready, desired)


def _live_and_ready(pod: Obj) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return bool(_conditions(pod).get("Ready", {}).get("status") == "True")


def upgrading(workloads: list[Obj]) -> bool:
    """A rollout after a workload's first is an upgrade under way."""
    for obj in workloads:
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if int(annotations.get("deployment.kubernetes.io/revision", "1") or 1) > 1:
            return True
    return False


def saved_replicas(workload: Obj) -> int | None:
    """The replica count a stop saved on ``workload``; None when it is not stopped."""
    annotations = (workload.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(SAVED_REPLICAS)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _owned_pods(pods: list[Obj]) -> list[Obj]:
    """Pods a workload's controller made: the ones a scale to 0 removes."""
    return [
        p
        for p in pods
        if any(
            o.get("kind") in ("ReplicaSet", "StatefulSet")
            for o in (p.get("metadata") or {}).get("ownerReferences") or []
        )
    ]


StopPhase = tuple[Literal["stopped", "stopping", "starting"], str]


def stop_phase(workloads: list[Obj], pods: list[Obj]) -> StopPhase | None:
    """``stopped`` when every workload is at 0 replicas with its saved count and no pod of
    theirs is left; ``starting`` while a start keeps the count on a workload scaled back to it
    (it drops it once ready); ``stopping`` while any carries a saved count but neither is so (a
    stop under way, or one cut short); None when none does (running, by the other rules)."""
    saved = [w for w in workloads if saved_replicas(w) is not None]
    if not saved:
        return None
    if any(int((w.get("spec") or {}).get("replicas", 1)) == saved_replicas(w) != 0 for w in saved):
        return "starting", assess(workloads, pods).message
    counts = ", ".join(f"{describe(w)}: {saved_replicas(w)}" for w in saved)
    scaled = all(
        saved_replicas(w) is not None and int((w.get("spec") or {}).get("replicas", 1)) == 0
        for w in workloads
    )
    left = _owned_pods(pods)
    settled = all(
        int((w.get("status") or {}).get("replicas") or 0) == 0
        and int((w.get("status") or {}).get("observedGeneration") or 0)
        >= int((w.get("metadata") or {}).get("generation") or 0)
        for w in workloads
    )
    if scaled and settled and not left:
        return "stopped", f"scaled to 0; start restores {counts}"
    terminating = sum(1 for p in left if (p.get("metadata") or {}).get("deletionTimestamp"))
    if not scaled:
        return "stopping", f"{len(saved)} of {len(workloads)} workload(s) scaled to 0 ({pod_words(pods)})"
    return (
        "stopping",
        f"0/{sum(saved_replicas(w) or 0 for w in saved)}: {len(left)} pod(s) left, {terminating} terminating",
    )


def observed_state(
    namespace: Obj | None,
    assessment: Assessment | None,
    *,
    upgrade: bool,
    stop: StopPhase | None = None,
) -> tuple[ObservedState, str | None]:
    """What ``status`` answers: no namespace is ``absent``, a terminating one ``tearing_down``, one
    whose workloads a stop scaled to 0 ``stopped`` (or ``stopping`` until their pods are gone,
    ``starting`` while a start waits for them)."""
    if namespace is None:
        return "absent", "no namespace for this workspace"
    if (namespace.get("status") or {}).get("phase") == "Terminating":
        return "tearing_down", stuck_reason(namespace) or "the namespace is being deleted"
    if stop is not None:
        return stop
    if assessment is None:
        return "provisioning", "nothing applied yet"
    if assessment.health == "ready":
        return "ready", None
    if assessment.health == "failed":
        return "failed", assessment.message
    return ("upgrading" if upgrade else "provisioning"), assessment.message


def stuck_reason(namespace: Obj) -> str | None:
    """Why a terminating namespace is not gone, from its conditions (the namespace controller's)."""
    reasons = [
        f"{c.get('type')}: {c.get('message') or c.get('reason')}"
        for c in (namespace.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    ]
    return "; ".join(reasons) or None


# --- plan -------------------------------------------------------------------------------------
#: Set by the server on every write: never a difference a person asked for.
_VOLATILE_META = ("resourceVersion", "managedFields", "generation", "uid", "creationTimestamp", "selfLink")


def comparable(obj: Obj) -> Obj:
    """``obj`` without what the server changes on its own (status, versions, field owners)."""
    trimmed = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _VOLATILE_META}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != "deployment.kubernetes.io/revision"
    }
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    trimmed["metadata"] = meta
    return trimmed


def destroys_data(obj: Obj) -> bool:
    """Replacing or deleting it loses data: a claim, or a StatefulSet's claim templates."""
    if obj["kind"] == "PersistentVolumeClaim":
        return True
    return obj["kind"] == "StatefulSet" and bool((obj.get("spec") or {}).get("volumeClaimTemplates"))


def changed_paths(before: Any, after: Any, path: str = "") -> list[str]:
    """The dotted paths at which two JSON values differ (the first few), for a plan's reason."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for k in sorted(set(before) | set(after)):
            found += changed_paths(before.get(k), after.get(k), f"{path}.{k}")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        found = []
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            found += changed_paths(b, a, f"{path}[{i}]")
        return found
    return [] if before == after else [path or "."]


def prunable(live: list[Obj], wanted: set[tuple[str, str, str]]) -> list[Obj]:
    """Live labelled objects the render no longer has (the render's own record aside)."""
    return [
        obj
        for obj in live
        if (obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) not in wanted
        and not (obj["kind"] == "Secret" and obj["metadata"]["name"] == RENDER)
    ]
