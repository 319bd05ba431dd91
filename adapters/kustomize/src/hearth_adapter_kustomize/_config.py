"""``[adapters.kustomize]``: which cluster, how objects are named and owned, and the bounds.

The kubeconfig is read by path only; its tokens and keys stay inside the HTTP client and are
never put in a message, a log line or an error.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class KustomizeConfig(BaseModel):
    """``[adapters.kustomize]`` in .hearth/hearth.toml."""

    model_config = ConfigDict(extra="forbid")
    #: The kubeconfig file; default ``$KUBECONFIG`` (which the host passes only when ``pass_env``
    #: names it), else ``~/.kube/config``.
    kubeconfig: str | None = None
    #: The kubeconfig context; default its current context.
    context: str | None = None
    #: Each workspace's namespace is ``<prefix><slug>``.
    namespace_prefix: str = Field(default="hearth-", pattern=r"^[a-z0-9]([a-z0-9-]*)?$", max_length=20)
    #: The server-side apply field manager every object is applied with.
    field_manager: str = Field(default="hearth", min_length=1, max_length=128)
    #: The folder a tier's ``kustomize`` overlay path is relative to; default the adapter's
    #: working directory (the host starts adapters in the project folder).
    project_dir: str | None = None
    #: The kubectl that renders overlays (``kubectl kustomize``).
    kubectl: str = "kubectl"
    #: The cluster's DNS domain, for the endpoint ``http://<service>.<namespace>.svc.<domain>:<port>``.
    cluster_domain: str = "cluster.local"
    #: Seconds for one API call.
    request_timeout: float = Field(default=30.0, gt=0)
    #: Seconds a provision or upgrade may wait for readiness (a tier's ``ready_timeout`` wins).
    ready_timeout: float = Field(default=300.0, gt=0)
    #: Seconds teardown (and a rollback) waits for the namespace to be gone.
    delete_timeout: float = Field(default=120.0, gt=0)
    #: Environment variables the host passes to this adapter, e.g. ["KUBECONFIG"].
    pass_env: list[str] = Field(default_factory=list)

    def kubeconfig_path(self) -> Path:
        """Where the kubeconfig is read from (the path only: never its content)."""
        if self.kubeconfig:
            return Path(self.kubeconfig).expanduser()
        from_env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        if from_env:
            return Path(from_env).expanduser()
        return Path("~/.kube/config").expanduser()

    def project_path(self) -> Path:
        return Path(self.project_dir).expanduser() if self.project_dir else Path.cwd()
