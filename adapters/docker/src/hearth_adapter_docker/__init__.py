"""hearth-adapter-docker: workspaces as containers on a local Docker engine."""

from ._driver import DockerConfig, DockerDriver

__all__ = ["DockerConfig", "DockerDriver"]
