"""``stop`` and ``start`` (protocol 1.3): announced only by drivers that override them, dispatched
by the SDK with a ref, and unknown (-32601) to a driver that does not."""

from __future__ import annotations

from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import DeploymentRef, Driver, MemoryConnection, RequestContext
from hearth_adaptersdk.testing import Peer


class NoStop(FakeDriver):
    """The fake without ``stop`` and ``start``: an adapter of 1.2, or one that cannot stop."""

    stop = Driver.stop
    start = Driver.start


class Echo(FakeDriver):
    """Answers the ref it is given with the state the verb leaves, to see the SDK dispatch."""

    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        return ref.model_copy(update={"last_status": "stopped"})

    async def start(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        return ref.model_copy(update={"last_status": "ready"})


REF = {
    "workspace_slug": "alpha",
    "tier": "solo",
    "driver": "fake",
    "endpoint": None,
    "secrets_vault_path": None,
    "created": "2026-11-22T10:06:01Z",
    "last_status": "ready",
}


async def test_stop_and_start_are_announced_only_by_drivers_that_override_them() -> None:
    for driver, announced in ((Echo(), True), (NoStop(), False)):
        peer = Peer(MemoryConnection(driver))
        try:
            info = await peer.initialize()
            methods = info.capabilities.methods
            assert ("stop" in methods, "start" in methods) == (announced, announced)
            stopped = await peer.request("stop", {"ref": REF})
            started = await peer.request("start", {"ref": {**REF, "last_status": "stopped"}})
            if announced:
                assert stopped.result["last_status"] == "stopped"
                assert started.result["last_status"] == "ready"
            else:
                for reply in (stopped, started):
                    assert reply.error is not None and reply.error["code"] == -32601
        finally:
            await peer.close()
