"""What is applied: the objects of a workspace's namespace, as plain dicts.

Rendering is pure (but for running ``kubectl kustomize`` on an overlay): the namespace, the caps
as a ResourceQuota and a LimitRange, and either the overlay's objects or a Deployment (one
replica, ``Recreate``) and a Service made from an image. Every object gets the workspace's
labels (never in a selector, which a later upgrade could not change) and its namespace, and every
``ports`` entry gets ``protocol: TCP`` where it has none: server-side apply on a 1.20 server
refuses a port without its key field.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from pathlib import Path
from typing import Any

import yaml
from lightkube.codecs import resource_registry
from lightkube.core import resource as res
from lightkube.core.exceptions import LoadResourceError

from ._spec import Caps, KustomizeFlags

Obj = dict[str, Any]
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "hearth"
WORKSPACE = "hearth.dev/workspace"
TIER = "hearth.dev/tier"
#: The Secret that keeps the render last applied, so a failed upgrade can go back to it (a Secret,
#: not a ConfigMap: the render may hold the overlay's own Secrets).
RENDER = "hearth-render"
#: On a stopped workload: the replica count ``start`` restores, written by the same apply that
#: scales it to 0 (so a stop cut short never leaves a workload at 0 without its count).
SAVED_REPLICAS = "hearth.dev/stopped-replicas"
#: The name of the Deployment and Service rendered from an image, and of the quota and limits.
WORKLOAD = "workspace"
CAPS = "hearth-caps"
#: The selector of the rendered Deployment: never the workspace's labels (a selector is immutable).
SELECTOR = {"app.kubernetes.io/name": WORKLOAD}


def namespace_name(prefix: str, slug: str) -> str:
    return f"{prefix}{slug}"


def labels(slug: str, tier: str | None = None) -> dict[str, str]:
    found = {MANAGED_BY: MANAGER, WORKSPACE: slug}
    if tier is not None:
        found[TIER] = tier
    return found


def selector(slug: str) -> dict[str, str]:
    """The label selector of everything this driver applied for ``slug``."""
    return labels(slug)


def key(obj: Obj) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def describe(obj: Obj) -> str:
    """``Deployment workspace``: an object as a person names it."""
    return f"{obj['kind']} {obj['metadata']['name']}"


def namespace_object(name: str, slug: str, tier: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels(slug, tier)}}


def cap_objects(caps: Caps) -> list[Obj]:
    """The caps as a ResourceQuota (the namespace's total) and a LimitRange (what a container
    that says nothing gets: the whole cap, so a quota on cpu never refuses a pod for lack of a
    request). No caps: nothing."""
    hard: dict[str, str] = {}
    container: dict[str, str] = {}
    if caps.cpu:
        hard |= {"requests.cpu": caps.cpu, "limits.cpu": caps.cpu}
        container["cpu"] = caps.cpu
    if caps.memory:
        hard |= {"requests.memory": caps.memory, "limits.memory": caps.memory}
        container["memory"] = caps.memory
    if caps.storage:
        hard["requests.storage"] = caps.storage
    if not hard:
        return []
    objects: list[Obj] = [
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": CAPS}, "spec": {"hard": hard}}
    ]
    limits: list[Obj] = []
    if container:
        limits.append(
            {"type": "Container", "default": container, "defaultRequest": container, "max": container}
        )
    if caps.storage:
        limits.append({"type": "PersistentVolumeClaim", "max": {"storage": caps.storage}})
    objects.append(
        {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": CAPS}, "spec": {"limits": limits}}
    )
    return objects


def image_objects(flags: KustomizeFlags, caps: Caps) -> list[Obj]:
    """A Deployment of one replica (``Recreate``: a workspace never runs twice) and, with a port, a
    Service; the caps are the container's requests and limits."""
    assert flags.image is not None
    container: Obj = {"name": WORKLOAD, "image": flags.image}
    if isinstance(flags.command, str):
        container["command"] = ["sh", "-c", flags.command]
    elif flags.command is not None:
        container["command"] = list(flags.command)
    if flags.env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(flags.env.items())]
    if flags.port is not None:
        container["ports"] = [{"name": "http", "containerPort": flags.port, "protocol": "TCP"}]
    resources = {k: v for k, v in (("cpu", caps.cpu), ("memory", caps.memory)) if v}
    if resources:
        container["resources"] = {"requests": resources, "limits": resources}
    template_meta: Obj = {"labels": dict(SELECTOR)}
    if flags.annotations:
        template_meta["annotations"] = dict(flags.annotations)
    spec: Obj = {
        "replicas": 1,
        "strategy": {"type": "Recreate"},
        "selector": {"matchLabels": dict(SELECTOR)},
        "template": {"metadata": template_meta, "spec": {"containers": [container]}},
    }
    if flags.ready_timeout is not None:
        spec["progressDeadlineSeconds"] = max(1, int(flags.ready_timeout))
    objects: list[Obj] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": WORKLOAD}, "spec": spec}
    ]
    if flags.port is not None:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": WORKLOAD},
                "spec": {
                    "selector": dict(SELECTOR),
                    "ports": [
                        {"name": "http", "port": flags.port, "targetPort": flags.port, "protocol": "TCP"}
                    ],
                },
            }
        )
    return objects


def namespaced(obj: Obj) -> bool | None:
    """Whether the kind of ``obj`` lives in a namespace; None for a kind lightkube does not know."""
    try:
        kind = resource_registry.load(obj["apiVersion"], obj["kind"])
    except LoadResourceError:
        return None
    return issubclass(kind, res.NamespacedResource)


def finish(objects: list[Obj], *, namespace: str, slug: str, tier: str) -> list[Obj]:
    """The objects as applied: in ``namespace``, labelled, ports with a protocol. ValueError lists
    what a workspace cannot hold (another namespace, cluster-wide objects, unknown kinds)."""
    problems: list[str] = []
    done: list[Obj] = []
    seen: set[tuple[str, str, str]] = set()
    for original in objects:
        if not isinstance(original, dict) or not {"apiVersion", "kind", "metadata"} <= original.keys():
            problems.append("an object without apiVersion, kind or metadata")
            continue
        obj = copy.deepcopy(original)
        where = describe(obj)
        scope = namespaced(obj)
        if scope is None:
            problems.append(f"{where}: kind {obj['kind']} of {obj['apiVersion']} is not known to the adapter")
            continue
        if not scope:
            problems.append(
                f"{where}: a cluster-wide object; a workspace holds only objects of its namespace"
            )
            continue
        meta = obj["metadata"]
        if meta.get("namespace") not in (None, namespace):
            problems.append(f"{where}: in namespace {meta['namespace']!r}; the workspace's is {namespace!r}")
            continue
        if key(obj) in seen:
            problems.append(f"{where}: rendered twice")
            continue
        seen.add(key(obj))
        meta["namespace"] = namespace
        meta["labels"] = {**(meta.get("labels") or {}), **labels(slug, tier)}
        for template in _pod_templates(obj):
            template_meta = template.setdefault("metadata", {})
            template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels(slug)}
        fix_protocols(obj)
        done.append(obj)
    if problems:
        raise ValueError(problems)
    return done


def _pod_templates(obj: Obj) -> list[Obj]:
    spec = obj.get("spec") or {}
    if obj["kind"] == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    return [template] if isinstance(template, dict) else []


def _pod_specs(obj: Obj) -> list[Obj]:
    if obj["kind"] == "Pod":
        return [obj.get("spec") or {}]
    return [t.get("spec") or {} for t in _pod_templates(obj)]


def fix_protocols(obj: Obj) -> Obj:
    """Add ``protocol: TCP`` to every container and Service port that has none (in place)."""
    ports: list[Obj] = []
    for pod in _pod_specs(obj):
        for field in ("initContainers", "containers"):
            for container in pod.get(field) or []:
                ports += container.get("ports") or []
    if obj["kind"] == "Service":
        ports += (obj.get("spec") or {}).get("ports") or []
    for port in ports:
        port.setdefault("protocol", "TCP")
    return obj


def render_record(objects: list[Obj], tier: str, slug: str, namespace: str) -> Obj:
    """The Secret that keeps ``objects`` (what was applied), for an upgrade's rollback."""
    text = json.dumps(objects, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": RENDER, "namespace": namespace, "labels": labels(slug, tier)},
        "data": {
            "render.json": base64.b64encode(text.encode()).decode(),
            "tier": base64.b64encode(tier.encode()).decode(),
        },
    }


def read_record(secret: Obj | None) -> list[Obj]:
    if secret is None:
        return []
    encoded = (secret.get("data") or {}).get("render.json")
    if not encoded:
        return []
    loaded: list[Obj] = json.loads(base64.b64decode(encoded))
    return loaded


def endpoint(objects: list[Obj], namespace: str, domain: str) -> str | None:
    """An Ingress's first host, else the first Service's cluster DNS name and port (by name)."""
    ordered = sorted(objects, key=lambda o: o["metadata"]["name"])
    for obj in ordered:
        if obj["kind"] == "Ingress":
            spec = obj.get("spec") or {}
            for rule in spec.get("rules") or []:
                if host := rule.get("host"):
                    tls = any(host in (t.get("hosts") or []) for t in spec.get("tls") or [])
                    return f"{'https' if tls else 'http'}://{host}"
    for obj in ordered:
        if obj["kind"] == "Service":
            ports = (obj.get("spec") or {}).get("ports") or []
            if ports:
                return f"http://{obj['metadata']['name']}.{namespace}.svc.{domain}:{ports[0]['port']}"
    return None


async def kustomize_build(kubectl: str, folder: Path, timeout: float) -> list[Obj]:
    """``kubectl kustomize <folder>``; ValueError with its complaint when it fails."""
    if not await asyncio.to_thread(folder.is_dir):
        raise ValueError([f"driver_flags.kustomize: no folder {folder}"])
    try:
        process = await asyncio.create_subprocess_exec(
            kubectl,
            "kustomize",
            str(folder),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise ValueError(
            [
                f"driver_flags.kustomize: cannot run {kubectl!r} to render it ({exc.strerror or exc}); "
                "install kubectl, or name it as 'kubectl' in [adapters.kustomize]"
            ]
        ) from None
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()][-5:]
        raise ValueError([f"driver_flags.kustomize: kubectl kustomize {folder} failed: {' '.join(lines)}"])
    objects: list[Obj] = []
    for document in yaml.safe_load_all(out.decode()):
        if document is None:
            continue
        if isinstance(document, dict) and str(document.get("kind", "")).endswith("List"):
            objects += document.get("items") or []
        else:
            objects.append(document)
    return objects
