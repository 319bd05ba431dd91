"""Test an adapter at the protocol level: in memory (no subprocess) or as an executable.

``Peer`` speaks raw JSON-RPC over any connection and records what it sent and what
came back, which is what the conformance kit reports on failure. Its typed helpers
(``provision``, ``status``...) make ordinary driver tests short::

    async with open_peer(MyDriver()) as peer:
        ref = await peer.provision("alpha", ProvisioningProfile(tier="solo", driver="mine"))
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import codes
from ._codec import Decoded, Malformed
from ._connection import Closed, Connection
from ._driver import Driver
from ._engine import RequestEngine
from ._memory import MemoryConnection
from ._subprocess import SubprocessConnection, child_environment
from .wire import DeploymentRef, InitializeResult, ProvisioningProfile, StatusReport


class RemoteError(Exception):
    """The adapter answered a request with an error."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        self.code: int = error.get("code", 0)
        self.message: str = error.get("message", "")
        data = error.get("data")
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.kind: str = str(self.data.get("kind", codes.kind_of(self.code)))
        super().__init__(f"{self.kind} ({self.code}): {self.message}")


class PeerClosed(Exception):
    """The adapter ended the connection while a reply was awaited."""

    def __init__(self, closed: Closed) -> None:
        self.closed = closed
        tail = "\n".join(closed.stderr_tail[-10:])
        super().__init__(
            f"the adapter closed the connection (exit code {closed.returncode})"
            + (f"; stderr:\n{tail}" if tail else "")
        )


@dataclass
class Reply:
    """One request and everything that came back for it."""

    sent: dict[str, Any]
    response: dict[str, Any]
    progress: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return "result" in self.response

    @property
    def result(self) -> Any:
        if "error" in self.response:
            raise RemoteError(self.response["error"])
        return self.response.get("result")

    @property
    def error(self) -> dict[str, Any] | None:
        error = self.response.get("error")
        return error if isinstance(error, dict) else None


class Peer:
    """A host-like protocol peer for tests: sequential or concurrent raw requests."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        #: Messages that answered no request in flight (parse errors, stray output).
        self.unmatched: asyncio.Queue[Decoded] = asyncio.Queue()
        #: Called with each progress notification of a request in flight.
        self.on_progress: Callable[[dict[str, Any]], None] | None = None
        self.closed: asyncio.Future[Closed] = asyncio.get_running_loop().create_future()
        self._progress: dict[int, list[dict[str, Any]]] = {}
        self._engine = RequestEngine(
            connection,
            on_unmatched=self.unmatched.put_nowait,
            on_closed=self._on_closed,
            closed_error=lambda: PeerClosed(Closed()),
        )

    @classmethod
    async def spawn(
        cls, argv: Sequence[str], *, env_passthrough: Sequence[str] = (), cwd: str | None = None
    ) -> Peer:
        """Start an adapter executable as the host would (own session, allow-listed env)."""
        connection = await SubprocessConnection.spawn(argv, env=child_environment(env_passthrough), cwd=cwd)
        return cls(connection)

    def _on_closed(self, closed: Closed) -> BaseException:
        if not self.closed.done():
            self.closed.set_result(closed)
        return PeerClosed(closed)

    def _collector(self, ident: int) -> Callable[[dict[str, Any]], None]:
        events = self._progress[ident] = []

        def collect(params: dict[str, Any]) -> None:
            event = {"jsonrpc": "2.0", "method": "progress", "params": params}
            events.append(event)
            if self.on_progress is not None:
                self.on_progress(event)

        return collect

    def next_id(self) -> int:
        return self._engine.next_id()

    async def send_raw(self, data: bytes) -> None:
        await self.connection.send(data)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self._engine.notify(method, params)

    async def start_request(
        self, method: str, params: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]:
        """Send a request and return it with the future of its response."""
        ident = self.next_id()
        data = self._engine.request(method, params, ident)
        message = json.loads(data)
        _, future = await self._engine.start(
            method, params, ident=ident, data=data, on_progress=self._collector(ident)
        )
        return message, future

    async def finish(
        self, message: dict[str, Any], future: asyncio.Future[dict[str, Any]], timeout: float
    ) -> Reply:
        """Wait (bounded) for the response of a started request."""
        try:
            response = await asyncio.wait_for(future, timeout)
        finally:
            self._engine.finish(message["id"])
            progress = self._progress.pop(message["id"], [])
        return Reply(message, response, progress)

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 10.0
    ) -> Reply:
        message, future = await self.start_request(method, params)
        return await self.finish(message, future, timeout)

    async def next_unmatched(self, timeout: float) -> Decoded:
        return await asyncio.wait_for(self.unmatched.get(), timeout)

    async def wait_closed(self, timeout: float) -> Closed:
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout)

    async def close(self) -> None:
        await self.connection.close()

    # --- typed helpers -------------------------------------------------------------------
    async def initialize(
        self,
        config: Mapping[str, Any] | None = None,
        data_dir: str | Path | None = None,
        versions: Sequence[int] = (codes.PROTOCOL_VERSION,),
        timeout: float = 10.0,
    ) -> InitializeResult:
        reply = await self.request(
            "initialize",
            {
                "protocol_versions": list(versions),
                "host": {"name": "hearth-adaptersdk-testing", "version": "0"},
                "config": dict(config or {}),
                "data_dir": str(data_dir) if data_dir is not None else None,
            },
            timeout=timeout,
        )
        return InitializeResult.model_validate(reply.result)

    async def provision(self, slug: str, profile: ProvisioningProfile) -> DeploymentRef:
        reply = await self.request("provision", {"slug": slug, "profile": _dump(profile)})
        return DeploymentRef.model_validate(reply.result)

    async def status(self, ref: DeploymentRef) -> StatusReport:
        reply = await self.request("status", {"ref": _dump(ref)})
        return StatusReport.model_validate(reply.result)

    async def upgrade(self, ref: DeploymentRef, profile: ProvisioningProfile) -> DeploymentRef:
        reply = await self.request("upgrade", {"ref": _dump(ref), "profile": _dump(profile)})
        return DeploymentRef.model_validate(reply.result)

    async def teardown(self, ref: DeploymentRef) -> None:
        (await self.request("teardown", {"ref": _dump(ref)})).result  # noqa: B018 - raises

    async def list(self) -> list[DeploymentRef]:
        reply = await self.request("list", {})
        return [DeploymentRef.model_validate(item) for item in reply.result]


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json")


@asynccontextmanager
async def open_peer(
    driver: Driver,
    *,
    config: Mapping[str, Any] | None = None,
    data_dir: str | Path | None = None,
) -> AsyncIterator[Peer]:
    """An initialized in-memory peer to ``driver``; closes the driver on exit."""
    peer = Peer(MemoryConnection(driver))
    try:
        await peer.initialize(config=config, data_dir=data_dir)
        yield peer
    finally:
        await peer.close()


__all__ = ["Malformed", "Peer", "PeerClosed", "RemoteError", "Reply", "open_peer"]
