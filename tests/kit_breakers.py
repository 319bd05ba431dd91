"""Adapters that each break one rule of the protocol, for the conformance kit's own tests.

Most are small subclasses of the fake driver, run in memory. The rules a driver cannot break
(the SDK keeps them for it: a second ``initialize``, a duplicate id, a request after
``shutdown``, unknown members, the 16 MiB limit) are broken by a ``ServerSession`` or a line
decoder that the test puts in ``hearth_adaptersdk._memory`` in place of the SDK's own. The rules
of an executable are broken by ``tests/adapters/kit_breaker.py``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import timedelta
from typing import Any

from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import (
    DeploymentRef,
    Driver,
    InvalidTransition,
    PlanResult,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    codes,
    utc_now,
)
from hearth_adaptersdk._codec import Decoded, LineDecoder, encode
from hearth_adaptersdk._session import Send, ServerSession, error_response


class _Silent(RequestContext):
    """A request context whose progress goes nowhere."""

    __slots__ = ()

    def progress(self, *args: Any, **kwargs: Any) -> None:
        return None


class NoProgress(FakeDriver):
    """Never sends progress, not even while a slow provision works."""

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        ctx.__class__ = _Silent
        return await super().provision(slug, profile, ctx)


class IgnoresCancel(FakeDriver):
    """Goes on with a provision after its cancel, and answers it when done."""

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        work = asyncio.ensure_future(super().provision(slug, profile, ctx))
        while True:
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                continue


class Sequential(FakeDriver):
    """Handles one request at a time (cancel still works: it is not a request)."""

    def __init__(self) -> None:
        super().__init__()
        self.turn = asyncio.Lock()

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        async with self.turn:
            return await super().provision(slug, profile, ctx)

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        async with self.turn:
            return await super().status(ref, ctx)

    async def upgrade(
        self, ref: DeploymentRef, profile: ProvisioningProfile, ctx: RequestContext
    ) -> DeploymentRef:
        async with self.turn:
            return await super().upgrade(ref, profile, ctx)

    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        async with self.turn:
            await super().teardown(ref, ctx)


class NoRollback(FakeDriver):
    """Answers a cancelled provision -32800 (rolled_back: true) but leaves its partial work."""

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        try:
            return await super().provision(slug, profile, ctx)
        except asyncio.CancelledError:
            half_made = DeploymentRef(
                workspace_slug=slug,
                tier=profile.tier,
                driver=self.name,
                endpoint=f"fake://{slug}",
                created=utc_now(),
                last_status="provisioning",
            )
            self.store.put(
                slug, {"ref": half_made.model_dump(mode="json"), "profile": profile.model_dump(mode="json")}
            )
            raise


class NewRefOnReprovision(FakeDriver):
    """Provisions once, but answers every provision with a ref of its own (a new ``created``)."""

    calls = 0

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        ref = await super().provision(slug, profile, ctx)
        self.calls += 1
        return ref.model_copy(update={"created": ref.created + timedelta(microseconds=self.calls)})


class StatusWrites(FakeDriver):
    """Each status of a ready workspace "refreshes" its endpoint in the backend."""

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        record = self.store.get(ref.workspace_slug)
        if record is not None and record["ref"]["last_status"] == "ready":
            seen = int(record.get("seen", 0)) + 1
            endpoint = f"fake://{ref.workspace_slug}/{seen}"
            self.store.put(
                ref.workspace_slug, {**record, "seen": seen, "ref": {**record["ref"], "endpoint": endpoint}}
            )
        return await super().status(ref, ctx)


class StatusRewritesItsRecord(FakeDriver):
    """Each status rewrites its record as it found it, but for a key no ref or report shows
    (the Rust adapter's "last checked"): only ``data_dir`` tells."""

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        record = self.store.get(ref.workspace_slug)
        if record is not None:
            self.store.put(ref.workspace_slug, {**record, "checked": utc_now().isoformat()})
        return await super().status(ref, ctx)


class ValidateWrites(FakeDriver):
    """``validate_profile`` leaves a note of each profile it saw in ``data_dir``."""

    async def validate_profile(self, profile: ProvisioningProfile, ctx: RequestContext) -> list[str]:
        assert self.data_dir is not None
        (self.data_dir / "last-profile.json").write_text(profile.model_dump_json())
        return await super().validate_profile(profile, ctx)


class PlanCaches(FakeDriver):
    """``plan`` keeps a cache file of its answers in ``data_dir`` (no ref or report shows it)."""

    async def plan(
        self, slug: str, ref: DeploymentRef | None, profile: ProvisioningProfile, ctx: RequestContext
    ) -> PlanResult:
        result = await super().plan(slug, ref, profile, ctx)
        assert self.data_dir is not None
        (self.data_dir / "plan-cache.json").write_text(result.model_dump_json())
        return result


class TeardownTwiceFails(FakeDriver):
    """A teardown of a workspace already torn down is an error, not a no-op."""

    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        record = self.store.get(ref.workspace_slug)
        if record is not None and record["ref"]["last_status"] == "tier_torn_down":
            raise InvalidTransition("already torn down", state="tier_torn_down")
        await super().teardown(ref, ctx)


class NoReuse(FakeDriver):
    """Refuses to provision a slug that was torn down."""

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        record = self.store.get(slug)
        if record is not None and record["ref"]["last_status"] == "tier_torn_down":
            raise InvalidTransition(f"workspace {slug!r} was torn down", state="tier_torn_down")
        return await super().provision(slug, profile, ctx)


class PlanWrites(FakeDriver):
    """Its plan of a new workspace provisions it."""

    async def plan(
        self, slug: str, ref: DeploymentRef | None, profile: ProvisioningProfile, ctx: RequestContext
    ) -> PlanResult:
        if ref is None:
            await self.provision(slug, profile, ctx)
        return await super().plan(slug, ref, profile, ctx)


class StartRecreates(FakeDriver):
    """Its start makes a new workspace in place of the one stop kept (a new backend id), as a
    stop that removes the container and a start that creates another (coder/coder#26981)."""

    async def start(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        record = self.store.get(ref.workspace_slug)
        if record is not None and record["ref"]["last_status"] == "stopped":
            fresh = f"fake-{ref.workspace_slug}-{secrets.token_hex(4)}"
            ctx.progress("creating a new workspace", 0.0, backend_id=fresh)
            self.store.put(ref.workspace_slug, {**record, "backend_id": fresh})
        return await super().start(ref, ctx)


class StopNotUndone(FakeDriver):
    """Marks the workspace stopped before its stop's work, so a cancelled stop leaves it stopped
    while the SDK answers -32800 as if nothing had changed."""

    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        record = self.store.get(ref.workspace_slug)
        if record is not None and record["ref"]["last_status"] == "ready":
            self.store.put(ref.workspace_slug, {**record, "ref": {**record["ref"], "last_status": "stopped"}})
            await self._work(ctx, record["profile"]["driver_flags"], "stop")
            return DeploymentRef.model_validate({**record["ref"], "last_status": "stopped"})
        return await super().stop(ref, ctx)


class StopOnly(FakeDriver):
    """Announces stop without start: a stopped workspace could never run again."""

    start = Driver.start


class StopTwiceFails(FakeDriver):
    """A stop of a stopped workspace is an error, not a no-op."""

    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        record = self.store.get(ref.workspace_slug)
        if record is not None and record["ref"]["last_status"] == "stopped":
            raise InvalidTransition("already stopped", state="stopped")
        return await super().stop(ref, ctx)


# --- protocol level: sessions and decoders put in place of the SDK's -------------------------
class AcceptsSecondInitialize(ServerSession):
    """Answers every initialize, not just the first."""

    async def _initialize(self, params: Any, ctx: RequestContext) -> Any:
        self._initialized = False
        return await super()._initialize(params, ctx)


class AcceptsDuplicateIds(ServerSession):
    """Serves a request whose id is in flight as a new one, and answers both with that id."""

    def __init__(self, driver: Driver, send: Send, **kwargs: Any) -> None:
        self._aliases: dict[int, int] = {}
        super().__init__(driver, lambda data: send(self._restore(data)), **kwargs)

    def handle(self, item: Decoded) -> None:
        if isinstance(item, dict) and isinstance(item.get("id"), int) and item["id"] in self._requests:
            alias = -1 - len(self._aliases)
            self._aliases[alias] = item["id"]
            item = {**item, "id": alias}
        super().handle(item)

    def _restore(self, data: bytes) -> bytes:
        message = json.loads(data)
        if isinstance(message, dict) and message.get("id") in self._aliases:
            message["id"] = self._aliases.pop(message["id"])
            return encode(message)
        return data


class ServesAfterShutdown(ServerSession):
    """Goes on answering requests after ``shutdown``."""

    @property
    def _shutting_down(self) -> bool:
        return False

    @_shutting_down.setter
    def _shutting_down(self, value: bool) -> None:
        return None


class RefusesUnknownMembers(ServerSession):
    """Refuses a request with a member JSON-RPC 2.0 does not define (-32600)."""

    def handle(self, item: Decoded) -> None:
        if isinstance(item, dict) and set(item) - {"jsonrpc", "id", "method", "params"}:
            reply = error_response(item.get("id"), codes.INVALID_REQUEST, "Invalid request", reason="unknown")
            self._write(reply)
            return
        super().handle(item)


class SmallLines(LineDecoder):
    """Takes lines of up to 1 MiB only."""

    __slots__ = ()

    def __init__(self, limit: int = 1024 * 1024) -> None:
        super().__init__(limit)


class EndlessLines(LineDecoder):
    """Takes lines of any length (up to 64 MiB): a line over the limit is served."""

    __slots__ = ()

    def __init__(self, limit: int = 64 * 1024 * 1024) -> None:
        super().__init__(limit)


class AnswersShutdownAtOnce(ServerSession):
    """Answers ``shutdown`` first, and only then cancels the requests in flight."""

    _shutdown_id: int | None = None

    async def _answer_in_flight(self, but: int) -> None:
        self._shutdown_id = but

    def _deliver(self, ident: int, payload: dict[str, Any]) -> None:
        super()._deliver(ident, payload)
        if ident == self._shutdown_id:
            for other in list(self._requests):
                self._cancel(other)


class OmitsRolledBack(ServerSession):
    """Answers -32800 without ``data.rolled_back``, as a 1.0 adapter may (not a broken rule)."""

    def __init__(self, driver: Driver, send: Send, **kwargs: Any) -> None:
        super().__init__(driver, lambda data: send(self._strip(data)), **kwargs)

    @staticmethod
    def _strip(data: bytes) -> bytes:
        message = json.loads(data)
        error = message.get("error") if isinstance(message, dict) else None
        if isinstance(error, dict) and error.get("code") == codes.CANCELLED:
            error["data"].pop("rolled_back", None)
            return encode(message)
        return data
