"""The fake driver: deterministic results, persistent state, and faults on demand.

Faults come from the profile's ``driver_flags`` (for ``status``, ``teardown``, ``stop`` and
``start``, from the profile stored at provision or upgrade time), so a test drives them through the
real protocol (VERB: provision, status, upgrade, teardown, stop or start):

    fail_at: VERB        the verb fails after partial work: rolled back, -32031 with logs
                         (status: -32030, the backend cannot be reached)
    keep_partial: true   with fail_at, the failure leaves its partial work (rolled_back: false)
    delay: SECONDS       provision, upgrade, teardown, stop and start take this long (with progress)
    delay_at: VERB       with delay, only VERB takes it (a stop slow enough to cancel, a quick provision)
    crash_at: VERB       the process exits (code 17) in the middle of the verb
    hang_at: VERB        the verb never answers, not even to cancel (the process lives on)
    freeze_at: VERB      the whole process stops responding (a blocking call that never returns)
    ignore_sigterm: true the process ignores SIGTERM from then on
    reject: true         the profile is refused (-32023)
    replace_on_upgrade: true   an upgrade to this profile replaces the workspace with a new one
                         (a new backend id and creation time): its data is lost, so ``plan``
                         calls that upgrade destructive

Each workspace has a backend id (``fake-<slug>-<hex>``), sent in provision's first progress
event as ``backend_id``, as a real backend's container id or VM name would be. ``plan`` says
what provision or upgrade would do and changes nothing. ``stop`` and ``start`` (protocol 1.3) keep
the workspace and its backend id: a stopped workspace's ``status`` is ``stopped``; a cancel of
either leaves it as it was (the state is written only once the work is done).
"""

from __future__ import annotations

import asyncio
import builtins
import importlib.metadata
import os
import secrets
import signal
import sys
import time
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from hearth_adaptersdk import (
    BackendFailure,
    BackendUnavailable,
    Conflict,
    DeploymentRef,
    Driver,
    InvalidProfile,
    InvalidTransition,
    PlanAction,
    PlanResult,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    utc_now,
)
from hearth_adaptersdk.wire import PlanActionKind

from ._store import FakeStore

VERBS = ("provision", "status", "upgrade", "teardown", "stop", "start")
FLAGS = (
    "fail_at",
    "keep_partial",
    "delay",
    "delay_at",
    "crash_at",
    "hang_at",
    "freeze_at",
    "ignore_sigterm",
    "reject",
    "replace_on_upgrade",
)
CAPS = ("cpu", "memory_mb", "storage_mb")
#: The backend states in which a slug holds a workspace that provision finds again.
_LIVE = ("ready", "upgrading", "stopped")
CRASH_EXIT_CODE = 17
_STEPS = 4


class FakeConfig(BaseModel):
    """The fake takes no settings; unknown keys are refused so config errors are testable."""

    model_config = ConfigDict(extra="forbid")


class FakeDriver(Driver):
    name: ClassVar[str] = "fake"
    version: ClassVar[str] = importlib.metadata.version("hearth-adapter-fake")
    config_model: ClassVar[type[BaseModel] | None] = FakeConfig

    def __init__(self) -> None:
        self.store = FakeStore(None)

    async def setup(self, config: Any, data_dir: Any) -> None:
        await super().setup(config, data_dir)
        self.store = FakeStore(data_dir)

    async def close(self) -> None:
        self.store.close()

    # --- verbs ---------------------------------------------------------------------------
    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        self._journal("provision", slug, profile.tier)
        self._refuse_invalid(profile)
        flags = profile.driver_flags
        record = self.store.get(slug)
        if record is not None and record["ref"]["last_status"] in _LIVE:
            existing = DeploymentRef.model_validate(record["ref"])
            if (existing.tier, existing.driver) == (profile.tier, profile.driver):
                ctx.progress("already provisioned", 1.0)  # a stopped one stays stopped
                return existing
            raise Conflict(
                f"workspace {slug!r} exists with tier {existing.tier!r}; use upgrade",
                existing=existing,
            )
        await self._faults("provision", flags)
        backend_id = _backend_id(slug)
        ctx.progress(f"creating workspace {slug}", 0.0, backend_id=backend_id)
        ref = DeploymentRef(
            workspace_slug=slug,
            tier=profile.tier,
            driver=self.name,
            endpoint=f"fake://{slug}",
            created=utc_now(),
            last_status="ready",
        )
        # the backend says provisioning until the work is done (status tells the truth meanwhile)
        self.store.put(
            slug,
            {
                "ref": ref.model_copy(update={"last_status": "provisioning"}).model_dump(mode="json"),
                "profile": profile.model_dump(mode="json"),
                "backend_id": backend_id,
            },
        )
        try:
            await self._work(ctx, flags, "provision")
        except BaseException as exc:
            if isinstance(exc, BackendFailure) and exc.data().get("rolled_back") is False:
                # keep_partial: the backend keeps a failed workspace
                failed = ref.model_copy(update={"last_status": "failed"})
                self.store.put(
                    slug,
                    {
                        "ref": failed.model_dump(mode="json"),
                        "profile": profile.model_dump(mode="json"),
                        "backend_id": backend_id,
                    },
                )
            else:
                self.store.delete(slug)  # roll back the partial work
            raise
        self.store.put(
            slug,
            {
                "ref": ref.model_dump(mode="json"),
                "profile": profile.model_dump(mode="json"),
                "backend_id": backend_id,
            },
        )
        ctx.progress("workspace ready", 1.0)
        return ref

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        self._journal("status", ref.workspace_slug, ref.tier)
        record = self.store.get(ref.workspace_slug)
        if record is None:
            return StatusReport(
                state="absent", observed_at=utc_now(), message="no such workspace in the fake backend"
            )
        flags = record["profile"]["driver_flags"]
        await self._faults("status", flags)
        if flags.get("fail_at") == "status":
            raise BackendUnavailable("status failed as asked (driver_flags.fail_at)")
        current = record["ref"]  # written by this driver from a validated ref: read, not re-checked
        details = {"tier": current["tier"]}
        if record.get("backend_id"):
            details["backend_id"] = record["backend_id"]
        return StatusReport(
            state=current["last_status"],
            endpoint=current["endpoint"],
            observed_at=utc_now(),
            details=details,
        )

    async def upgrade(
        self, ref: DeploymentRef, profile: ProvisioningProfile, ctx: RequestContext
    ) -> DeploymentRef:
        slug = ref.workspace_slug
        self._journal("upgrade", slug, profile.tier)
        self._refuse_invalid(profile)
        record = self.store.get(slug)
        state = record["ref"]["last_status"] if record else "absent"
        if record is None or state != "ready":
            raise InvalidTransition(f"cannot upgrade workspace {slug!r} in state {state}", state=state)
        await self._faults("upgrade", profile.driver_flags)
        current = DeploymentRef.model_validate(record["ref"])
        backend_id = record.get("backend_id")
        if profile.driver_flags.get("replace_on_upgrade"):  # a new workspace takes the old one's place
            backend_id = _backend_id(slug)
            ctx.progress(f"replacing workspace {slug} with a new one", 0.0, backend_id=backend_id)
            current = current.model_copy(update={"created": utc_now()})
        else:
            ctx.progress(f"upgrading {slug} to tier {profile.tier}", 0.0)
        await self._work(ctx, profile.driver_flags, "upgrade")
        upgraded = current.model_copy(update={"tier": profile.tier, "last_status": "ready"})
        self.store.put(
            slug,
            {
                "ref": upgraded.model_dump(mode="json"),
                "profile": profile.model_dump(mode="json"),
                "backend_id": backend_id,
            },
        )
        ctx.progress("upgrade done", 1.0)
        return upgraded

    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        slug = ref.workspace_slug
        self._journal("teardown", slug, ref.tier)
        record = self.store.get(slug)
        if record is None or record["ref"]["last_status"] == "tier_torn_down":
            return
        flags = record["profile"]["driver_flags"]
        await self._faults("teardown", flags)
        ctx.progress(f"tearing down {slug}", 0.0)
        await self._work(ctx, flags, "teardown")
        torn_down = {**record["ref"], "last_status": "tier_torn_down", "endpoint": None}
        self.store.put(slug, {**record, "ref": torn_down})

    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        return await self._set_running(ref, ctx, "stop")

    async def start(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        return await self._set_running(ref, ctx, "start")

    async def _set_running(self, ref: DeploymentRef, ctx: RequestContext, verb: str) -> DeploymentRef:
        """Stop (``ready`` to ``stopped``) or start (the reverse) the same workspace, its backend
        id kept; the other end already reached changes nothing."""
        slug = ref.workspace_slug
        self._journal(verb, slug, ref.tier)
        record = self.store.get(slug)
        state = record["ref"]["last_status"] if record else "absent"
        origin, target = ("ready", "stopped") if verb == "stop" else ("stopped", "ready")
        if record is not None and state == target:
            ctx.progress(f"{slug} is {target} already", 1.0)
            return DeploymentRef.model_validate(record["ref"])
        if record is None or state != origin:
            raise InvalidTransition(f"cannot {verb} workspace {slug!r}: it is {state}", state=state)
        flags = record["profile"]["driver_flags"]
        await self._faults(verb, flags)
        ctx.progress(f"{verb}ping {slug}" if verb == "stop" else f"starting {slug}", 0.0)
        try:
            await self._work(ctx, flags, verb)
        except BackendFailure as exc:
            if exc.data().get("rolled_back") is False:  # keep_partial: the backend is left broken
                self.store.put(slug, {**record, "ref": {**record["ref"], "last_status": "failed"}})
            raise
        done = DeploymentRef.model_validate({**record["ref"], "last_status": target})
        self.store.put(slug, {**record, "ref": done.model_dump(mode="json")})
        ctx.progress(f"workspace {target}", 1.0)
        return done

    async def list(self, ctx: RequestContext) -> list[DeploymentRef]:
        self._journal("list", None, None)
        return [
            DeploymentRef.model_validate(record["ref"])
            for record in self.store.all()
            if record["ref"]["last_status"] != "tier_torn_down"
        ]

    async def validate_profile(self, profile: ProvisioningProfile, ctx: RequestContext) -> builtins.list[str]:
        return self._problems(profile)

    async def plan(
        self, slug: str, ref: DeploymentRef | None, profile: ProvisioningProfile, ctx: RequestContext
    ) -> PlanResult:
        """What provision (``ref`` None) or upgrade would do; refuses as they would."""
        self._journal("plan", slug, profile.tier)
        self._refuse_invalid(profile)
        record = self.store.get(slug)
        resource = f"workspace {slug}"
        state = record["ref"]["last_status"] if record else "absent"
        if ref is None:
            if record is not None and state in _LIVE:
                existing = DeploymentRef.model_validate(record["ref"])
                if (existing.tier, existing.driver) != (profile.tier, profile.driver):
                    raise Conflict(
                        f"workspace {slug!r} exists with tier {existing.tier!r}; use upgrade",
                        existing=existing,
                    )
                return _planned("no_op", resource, f"already provisioned with tier {profile.tier!r}")
            left = f" (the {state} one the backend holds is replaced)" if record is not None else ""
            return _planned("create", resource, f"a new workspace with tier {profile.tier!r}{left}")
        if record is None or state != "ready":
            raise InvalidTransition(f"cannot upgrade workspace {slug!r} in state {state}", state=state)
        old_tier = record["ref"]["tier"]
        if profile.driver_flags.get("replace_on_upgrade"):
            return _planned(
                "replace",
                resource,
                f"tier {old_tier!r} -> {profile.tier!r}: driver_flags.replace_on_upgrade replaces "
                "the workspace with a new one, and its data is lost",
                destructive=True,
            )
        if record["profile"] == profile.model_dump(mode="json"):
            return _planned("no_op", resource, f"already runs tier {profile.tier!r} with this profile")
        return _planned("update", resource, f"tier {old_tier!r} -> {profile.tier!r}, in place")

    # --- helpers -------------------------------------------------------------------------
    def _journal(self, method: str, slug: str | None, tier: str | None) -> None:
        self.store.record_call(
            {"at": utc_now().isoformat(), "pid": os.getpid(), "method": method, "slug": slug, "tier": tier}
        )

    def _problems(self, profile: ProvisioningProfile) -> builtins.list[str]:
        problems = []
        if profile.driver != self.name:
            problems.append(f"driver: this adapter serves 'fake', not {profile.driver!r}")
        extra = sorted(set(profile.resource_caps.model_dump(exclude_none=True)) - set(CAPS))
        problems += [f"resource_caps.{key}: the fake driver cannot honour it" for key in extra]
        flags = profile.driver_flags
        problems += [
            f"driver_flags.{key}: unknown flag (known: {', '.join(FLAGS)})"
            for key in sorted(set(flags) - set(FLAGS))
        ]
        for key in ("fail_at", "crash_at", "hang_at", "freeze_at", "delay_at"):
            if key in flags and flags[key] not in VERBS:
                problems.append(f"driver_flags.{key}: must be one of {', '.join(VERBS)}")
        delay = flags.get("delay", 0)
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay <= 3600:
            problems.append("driver_flags.delay: must be a number of seconds from 0 to 3600")
        if flags.get("reject"):
            problems.append("driver_flags.reject: refused as asked")
        return problems

    def _refuse_invalid(self, profile: ProvisioningProfile) -> None:
        problems = self._problems(profile)
        if problems:
            raise InvalidProfile("the fake driver cannot honour this profile", errors=problems)

    async def _faults(self, verb: str, flags: dict[str, Any]) -> None:
        if flags.get("ignore_sigterm"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if flags.get("crash_at") == verb:
            sys.stderr.write(f"fake: crashing in {verb} as asked (driver_flags.crash_at)\n")
            sys.stderr.flush()
            os._exit(CRASH_EXIT_CODE)
        if flags.get("hang_at") == verb:
            await _hang_forever()
        if flags.get("freeze_at") == verb:
            while True:  # blocks the event loop: no answer, no cancel, no exit on EOF
                time.sleep(3600)  # noqa: ASYNC251 - blocking is the point of this fault

    async def _work(self, ctx: RequestContext, flags: dict[str, Any], verb: str) -> None:
        """The backend's time: the delay in steps with progress; then the failure, if asked."""
        delay = float(flags.get("delay", 0)) if flags.get("delay_at", verb) == verb else 0.0
        for step in range(1, _STEPS + 1):
            if delay:
                await asyncio.sleep(delay / _STEPS)
            ctx.progress(f"{verb}: step {step} of {_STEPS}", step / (_STEPS + 1))
        if flags.get("fail_at") == verb:
            raise BackendFailure(
                f"{verb} failed as asked (driver_flags.fail_at)",
                rolled_back=verb != "teardown" and not flags.get("keep_partial"),
                logs=[f"fake: {verb} reached step {_STEPS} of {_STEPS}", "fake: injected failure"],
            )


def _backend_id(slug: str) -> str:
    return f"fake-{slug}-{secrets.token_hex(4)}"


def _planned(action: PlanActionKind, resource: str, reason: str, *, destructive: bool = False) -> PlanResult:
    return PlanResult(
        actions=[PlanAction(action=action, resource=resource, reason=reason, destructive=destructive)]
    )


async def _hang_forever() -> None:
    """Never return, not even when cancelled: a backend call that is stuck for good."""
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    while True:
        try:
            await asyncio.shield(never)
        except asyncio.CancelledError:
            continue
