"""The base class an adapter author subclasses, and the context each request gets."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from .codes import OPTIONAL_METHODS, VERBS
from .wire import DeploymentRef, Level, ProvisioningProfile, StatusReport


class RequestContext:
    """Handed to every verb: who is asking, and a way to report progress while working."""

    __slots__ = ("_emit", "method", "request_id")

    def __init__(
        self, request_id: int, method: str, emit: Callable[[int, str, float | None, Level], None]
    ) -> None:
        self.request_id = request_id
        self.method = method
        self._emit = emit

    def progress(self, message: str, fraction: float | None = None, level: Level = "info") -> None:
        """Send a ``progress`` notification for this request (ignored once it has answered)."""
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        self._emit(self.request_id, message, fraction, level)


class Driver:
    """Subclass this and implement the four verbs; ``serve(MyDriver)`` does the rest.

    The SDK validates params with the wire models before a verb runs, so each verb gets
    typed arguments. Raise the errors of ``hearth_adaptersdk.errors`` to answer with a
    protocol error; on cancellation the verb's task is cancelled (``asyncio.CancelledError``),
    and the verb should undo its partial work before re-raising. ``list`` and
    ``validate_profile`` are announced only when a subclass overrides them.
    """

    #: The driver name: the adapter executable is ``hearth-adapter-<name>``.
    name: ClassVar[str] = ""
    #: The adapter's version, printed by ``--version`` and sent in the handshake.
    version: ClassVar[str] = "0.0.0"
    #: A pydantic model of the adapter's ``config``; its JSON Schema goes in the handshake.
    config_model: ClassVar[type[BaseModel] | None] = None

    config: Any = None
    data_dir: Path | None = None

    async def setup(self, config: Any, data_dir: Path | None) -> None:
        """Called once by ``initialize``, with the validated config and the private data folder."""
        self.config = config
        self.data_dir = data_dir

    async def provision(
        self, slug: str, profile: ProvisioningProfile, ctx: RequestContext
    ) -> DeploymentRef:
        raise NotImplementedError

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        raise NotImplementedError

    async def upgrade(
        self, ref: DeploymentRef, profile: ProvisioningProfile, ctx: RequestContext
    ) -> DeploymentRef:
        raise NotImplementedError

    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        raise NotImplementedError

    async def list(self, ctx: RequestContext) -> list[DeploymentRef]:
        """Every deployment of this driver visible in the backend (optional)."""
        raise NotImplementedError

    async def validate_profile(self, profile: ProvisioningProfile, ctx: RequestContext) -> builtins.list[str]:
        """The problems with ``profile``, empty when it can be honoured (optional)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Called once when the server stops; release backend clients here."""

    @property
    def adapter_name(self) -> str:
        return f"hearth-adapter-{self.name}"

    def announced_methods(self) -> builtins.list[str]:
        """The methods to announce in ``capabilities.methods``."""
        methods = list(VERBS)
        for optional in OPTIONAL_METHODS:
            if getattr(type(self), optional) is not getattr(Driver, optional):
                methods.append(optional)
        return methods
