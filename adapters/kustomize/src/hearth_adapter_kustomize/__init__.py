"""hearth-adapter-kustomize: workspaces as namespaces on a Kubernetes cluster."""

from ._config import KustomizeConfig
from ._driver import KustomizeDriver

__all__ = ["KustomizeConfig", "KustomizeDriver"]
