"""Admission: whether a start is accepted, and what it gets.

A start checks its input, heals its slug, then, in order: a used idempotency key returns that
operation (or ``conflict`` when its arguments differ); a live operation on the slug is *joined*
when it does the same thing, else the start is ``busy``; the rules of ``_states`` refuse it or
say it has nothing to do (it records nothing and answers the operation that made the workspace
what it is, ``_states.noop_answer``; a finished no-op is recorded only when there is none);
otherwise a queued operation is recorded and handed to the runner. A key that joined an
operation, or was answered with the one that made the workspace, is bound to it for good
(``_states.binds_key``): its replay answers that operation and never starts work. A key whose
operation's start failed on a store write is released to the retry (``_states.key_released``):
the retry runs rather than answering that failure again. ``check`` and ``preview``
(``Host.plan``) are the same admission without the start.
"""

from __future__ import annotations

from hearth_adaptersdk import DeploymentRef, PlanResult, ProvisioningProfile, codes

from .._errors import Busy, Conflict, HearthError, InvalidInput, InvalidProfile, Unsupported
from .._labels import label_count
from .._models import CheckResult, Deployment, Operation, OperationOwner, existing_json, synthesized_ref
from .._states import (
    OPTIONAL_VERBS,
    Recorded,
    adapter_conflict_reason,
    answers_noop,
    binds_key,
    busy_message,
    joins,
    key_released,
    key_reused,
    noop_answer,
    preview_verb,
    same_key,
    unsupported_verb,
)
from .._store._base import NewOperation
from ._checks import (
    Checks,
    Request,
    check_key,
    check_slug,
    check_tier,
    deadline,
    echo,
    remaining,
    rules_for,
)
from ._core import Core
from ._recovery import Recovery
from ._runner import ProgressListener, Runner


class Admission:
    """Starts, joins and refusals; operations it returns act through ``owner``."""

    def __init__(
        self, core: Core, checks: Checks, recovery: Recovery, runner: Runner, owner: OperationOwner
    ) -> None:
        self._core = core
        self._checks = checks
        self._recovery = recovery
        self._runner = runner
        self._owner = owner

    async def checked(self, request: Request) -> tuple[Request, Deployment | None, Operation | None]:
        """The request with its driver filled in, the record after healing and the slug's live
        operation; raises what the verb would fail with at once."""
        check_slug(request.slug)
        check_key(request.key)
        if request.verb in ("provision", "upgrade"):
            check_tier(request.tier)
        core, checks = self._core, self._checks
        await core.opened()
        core.refresh_settings()
        if request.verb == "provision":
            assert request.driver is not None and request.tier is not None
            checks.driver(request.driver)
            checks.profile(request.tier, request.driver)
        record, active = await self._recovery.heal(request.slug)
        if request.labels and record is not None and record.state != "tier_torn_down":
            label_count({**record.labels, **request.labels})  # a failed one's, merged
        if request.verb != "provision":
            if record is None and active is not None:  # a first provision still queued: busy, not absent
                self.join(active, request, None)
            record = await checks.existing(request.slug, record)
            if request.verb == "upgrade":
                assert request.tier is not None
                checks.profile(request.tier, record.driver)
            if request.verb in ("stop", "start"):  # refused before anything is recorded
                await self._supports(record.driver, request.verb)
            # the record's driver; an autostop's fence and reason kept
            request = Request(
                request.verb,
                request.slug,
                request.tier,
                record.driver,
                False,
                request.key,
                request.deadline,
                idle_since=request.idle_since,
                why=request.why,
            )
        return request, record, active

    async def start(self, request: Request, on_progress: ProgressListener | None) -> tuple[Operation, bool]:
        """The operation for ``request`` and whether this call created it."""
        request, record, active = await self.checked(request)
        store = self._core.store
        retakes = None
        if request.key is not None:
            keyed = await store.keyed(request.key)
            if keyed is not None:
                self._same_key(keyed, request)  # conflict: the key asked for something else
                if not key_released(keyed.state, keyed.error):
                    return keyed.bound(self._owner), False
                retakes = keyed.id  # its start failed on a write: the retry runs under the key
        while True:
            if active is not None:
                return await self._joined(active, request, on_progress, retakes), False
            rule = rules_for(request, record)
            done: tuple[str, DeploymentRef | None] | None = None
            if rule.noop:  # nothing to do: the same ready workspace, a teardown already done
                assert record is not None
                made = await self._made(record, request)
                if made is not None:  # recorded nothing: the operation that made it so answers
                    return await self._bound(made, request, retakes), False
                done = ("succeeded", record.ref if request.verb != "teardown" else None)
            new = NewOperation(
                request.slug,
                record.generation if record is not None else await store.next_generation(request.slug),
                request.verb,
                self._core.owner,
                request.key,
                request.tier,
                request.driver,
                request.reuse,
                done=done,  # type: ignore[arg-type]
                retakes=retakes,
                **self._core.acting(),
            )
            operation, how = await store.create_operation(new)
            if how == "key":
                return self._same_key(operation, request), False
            if how == "active":
                if await self._recovery.owner_alive(operation):
                    return await self._joined(operation, request, on_progress, retakes), False
                await self._recovery.interrupted(operation)
                record, active = await self._recovery.heal(request.slug)
                continue
            operation.bound(self._owner)
            if not operation.finished:
                self._runner.launch(operation, request, on_progress)
            return operation, True

    async def _joined(
        self,
        active: Operation,
        request: Request,
        on_progress: ProgressListener | None,
        retakes: int | None,
    ) -> Operation:
        """``join``, with the start's key bound to the joined operation for good."""
        joined = self.join(active, request, on_progress)
        return await self._bound(joined, request, retakes)

    async def _bound(self, operation: Operation, request: Request, retakes: int | None) -> Operation:
        """``operation``, answering a start that did not create it, with the start's key bound
        to it (``_states.binds_key``); the operation the key was bound to first, if a concurrent
        start with it got there before."""
        if request.key is None or not binds_key(request.key, operation.key):
            return operation.bound(self._owner)
        found = await self._core.store.bind_key(request.key, operation.id, retakes=retakes)
        if found is None or found.id == operation.id:
            return operation.bound(self._owner)
        return self._same_key(found, request)

    async def _made(self, record: Deployment, request: Request) -> Operation | None:
        """The operation that made ``record`` what it is (``_states.noop_answer``), if it
        answers ``request`` (``_states.answers_noop``)."""
        store = self._core.store
        succeeded = await store.operations(slug=record.slug, state="succeeded")
        ident = noop_answer(
            record.state, record.generation, [(op.id, op.generation, op.verb) for op in succeeded]
        )
        made = next((op for op in succeeded if op.id == ident), None)
        ours = (request.slug, request.verb, request.tier, request.driver)
        if made is None or not answers_noop(
            request.key, (made.slug, made.verb, made.tier, made.driver), ours
        ):
            return None
        return made

    def _same_key(self, operation: Operation, request: Request) -> Operation:
        """A key already used: that operation, if it was for the same thing."""
        ours = (request.slug, request.verb, request.tier, request.driver)
        if not same_key((operation.slug, operation.verb, operation.tier, operation.driver), ours):
            raise key_reused(echo(request.key), operation.id, operation.verb, operation.slug)
        return operation.bound(self._owner)

    def join(self, active: Operation, request: Request, on_progress: ProgressListener | None) -> Operation:
        """Join the slug's running operation if it does what ``request`` asks, else ``busy``."""
        if request.key is not None and active.key == request.key:
            return self._same_key(active, request)
        if not joins(
            (active.verb, active.tier, active.driver, active.reuse),
            (request.verb, request.tier, request.driver, request.reuse),
        ):
            raise Busy(
                busy_message(request.slug, active.id, active.verb, active.tier, active.state), active.id
            )
        self._runner.listen(active.id, on_progress)
        return active.bound(self._owner)

    async def check(self, request: Request) -> CheckResult:
        """Whether ``request`` would be accepted now (the input, the lifecycle rules, an
        operation it would join or be refused by, and the adapter's ``validate_profile``)."""
        slug, verb = request.slug, request.verb
        try:
            request, record, active = await self.checked(request)
            if active is not None:
                self.join(active, request, None)
                return CheckResult(slug=slug, verb=verb, accepted=True, joins=active.id)
            rules_for(request, record)
            if verb in ("provision", "upgrade"):
                assert request.tier is not None and request.driver is not None
                await self._validate_profile(
                    request.driver, self._checks.profile(request.tier, request.driver)
                )
        except HearthError as exc:
            if exc.kind == "store_error":
                raise
            return CheckResult(slug=slug, verb=verb, accepted=False, error=exc.to_json())
        return CheckResult(slug=slug, verb=verb, accepted=True)

    async def preview(self, slug: str, tier: str, driver: str | None, timeout: float | None) -> PlanResult:
        """What moving ``slug`` to ``tier`` would do, by the adapter's ``plan`` (``Host.plan``)."""
        check_slug(slug)
        check_tier(tier)
        until = deadline(timeout)
        core, checks = self._core, self._checks
        await core.opened()
        core.refresh_settings()
        if driver is not None:
            checks.driver(driver)
        record, active = await self._recovery.heal(slug)
        if active is not None:
            raise Busy(
                busy_message(slug, active.id, active.verb, None, active.state)
                + "; plan it once that is done",
                active.id,
            )
        if record is None and driver is None:
            raise InvalidInput(f"{slug!r} is a new workspace: planning it needs a driver")
        recorded = None if record is None else Recorded(record.state, record.tier, record.driver)
        chosen = driver or (record.driver if record is not None else "")
        try:
            verb = preview_verb(recorded, slug, chosen)
        except Conflict as exc:
            assert record is not None
            exc.data["existing"] = existing_json(record)
            raise
        rules_for(Request(verb, slug, tier, chosen, True), record)
        profile = checks.profile(tier, chosen)
        ref = None if verb == "provision" or record is None else (record.ref or synthesized_ref(record))
        async with core.supervisor.use(chosen, timeout=remaining(until)) as client:
            if not client.supports("plan"):
                raise Unsupported(
                    f"driver {chosen!r} cannot plan: its adapter does not announce plan",
                    codes.UNSUPPORTED,
                    {"kind": "unsupported", "reason": "plan is not announced", "method": "plan"},
                )
            bound = core.timeouts.status if until is None else max(remaining(until), 0.001)
            try:
                return await client.plan(slug, ref, profile, timeout=bound)
            except Conflict as exc:  # the adapter's: name its reason from what it holds
                exc.data.setdefault("reason", adapter_conflict_reason(exc.existing, tier, chosen))
                raise

    async def _supports(self, driver: str, verb: str) -> None:
        """``unsupported`` naming the driver unless its adapter announces both ``stop`` and
        ``start`` (one alone is a broken adapter: a workspace stopped for good, or never)."""
        core = self._core
        async with core.supervisor.use(driver, timeout=core.timeouts.handshake) as client:
            if not all(client.supports(method) for method in OPTIONAL_VERBS):
                raise unsupported_verb(verb, driver)

    async def _validate_profile(self, driver: str, profile: ProvisioningProfile) -> None:
        core = self._core
        async with core.supervisor.use(driver, timeout=core.timeouts.handshake) as client:
            if not client.supports("validate_profile"):
                return
            answer = await client.validate_profile(profile, timeout=core.timeouts.status)
        valid, errors = answer.valid, list(answer.errors)
        if not valid:
            raise InvalidProfile(
                f"{driver}: the profile is not valid: {'; '.join(errors) or 'no reason given'}",
                codes.INVALID_PROFILE,
                {"kind": "invalid_profile", "errors": errors},
            )
