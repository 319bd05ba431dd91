"""``Host``: the HEARTH rules of seed 000 on top of any adapter.

Per verb: validate the input before anything else; take the slug's cross-process lock;
read the record again (another process may just have finished); check the transition
table; start the adapter (a verb whose adapter cannot start changes nothing); record the
transient state and an operation; call the adapter, logging its progress; record the
outcome by the rules of ``_states.py``: a failed verb marks the deployment ``failed`` and
is never retried (D8); an answer that says nothing changed (a refusal, a confirmed
rollback) leaves the record as it was; a cancel whose rollback is not confirmed says so,
and ``reconcile`` checks it. Every wait has a bound (``Timeouts``).
"""

from __future__ import annotations

import asyncio
import builtins
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import PlainSerializer, ValidationError

from hearth_adaptersdk import (
    DeploymentRef,
    Progress,
    ProvisioningProfile,
    State,
    StatusReport,
    codes,
    utc_now,
)

from ._client import AdapterClient, Interruption, ProgressCallback
from ._dirs import resolve_home, state_dir
from ._discovery import candidates, discover_all
from ._errors import (
    AdapterError,
    BackendFailure,
    BackendUnavailable,
    CallTimeout,
    Cancelled,
    Conflict,
    HearthError,
    InvalidInput,
    InvalidTransition,
    ProtocolViolation,
    SlugLocked,
    StoreError,
)
from ._locks import SlugLocks
from ._records import STORE_FILE
from ._settings import Tier, Timeouts, load_settings
from ._states import (
    TRANSIENT,
    Transition,
    Verb,
    cancel_rolled_back,
    changed_nothing,
    resolve,
    transition,
)
from ._store import Deployment, LogBuffer, LogLine, Operation, SQLiteStore, Store
from ._supervisor import ConnectionFactory, Supervisor

#: How long a verb waits for another process's work on the same slug when it has no timeout.
DEFAULT_LOCK_WAIT = Timeouts.lock_wait
#: How much of a caller's input an error message repeats.
ECHO = 80
VERB_OF: dict[str, Verb] = {"provisioning": "provision", "upgrading": "upgrade", "tearing_down": "teardown"}
Call = Callable[[AdapterClient, float | None, ProgressCallback, Interruption], Any]


def _resolved_json(resolved: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{"slug": slug, "from": old, "to": new} for slug, old, new in resolved]


@dataclass(frozen=True)
class ReconcileReport:
    """What ``reconcile`` found and did; nothing is ever deleted. Its JSON form (pydantic's
    ``TypeAdapter(ReconcileReport)``) writes each resolution as ``{"slug", "from", "to"}``."""

    #: (slug, recorded state, resolved state) for records left transient or unconfirmed.
    resolved: Annotated[
        list[tuple[str, str, str]], PlainSerializer(_resolved_json, return_type=list[dict[str, str]])
    ] = field(default_factory=list)
    #: Records that claim a backend the adapter confirms absent: marked failed.
    ghosts: list[str] = field(default_factory=list)
    #: Deployments an adapter lists that have no record: reported, never removed.
    orphans: list[DeploymentRef] = field(default_factory=list)
    #: Slugs skipped because another process is working on them right now.
    busy: list[str] = field(default_factory=list)
    #: Drivers that could not be asked, with the reason (their records are left as they are).
    unreachable: dict[str, str] = field(default_factory=dict)
    #: A dry run: what is listed above would be done; nothing was changed.
    dry_run: bool = False

    @property
    def drift(self) -> bool:
        """Whether records and backends disagree (what a dry run exits 3 for)."""
        return bool(self.resolved or self.ghosts or self.orphans)


def find_project_dir(start: str | Path | None = None) -> Path:
    """The nearest folder upward holding ``.hearth/``, else ``start`` (default: the cwd)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".hearth").is_dir():
            return folder
    return here


def echo(value: object, size: int = ECHO) -> str:
    """``repr`` of a caller's input, cut: an error never repeats a 100,000-character slug."""
    text = repr(value)
    if len(text) <= size:
        return text
    return repr(value[:size]) + "…" if isinstance(value, str) else text[:size] + "…"


class Host:
    """Deploys and manages workspaces; use as ``async with Host(...) as host``."""

    def __init__(
        self,
        project_dir: str | Path | None = None,
        home: str | Path | None = None,
        tiers: Mapping[str, Tier] | None = None,
        *,
        handshake_timeout: float | None = None,
        idle_timeout: float = 60.0,
        lock_wait: float | None = None,
        store: Store | None = None,
        in_process: Mapping[str, ConnectionFactory] | None = None,
        cancel_grace: float | None = None,
        drain_grace: float | None = None,
    ) -> None:
        """``in_process`` maps driver names to connection factories (e.g. an in-memory driver)
        that take precedence over discovery; ``store`` replaces the SQLite registry. The
        bounds left None come from ``[timeouts]`` in hearth.toml, else the defaults of
        ``Timeouts``."""
        self.project_dir = find_project_dir(project_dir)
        self.home = resolve_home(home)
        self.state_dir = state_dir(self.home)
        settings = load_settings(self.project_dir)
        if tiers:
            settings = replace(settings, tiers={**settings.tiers, **tiers})
        overrides = {
            name: _positive(value, name)
            for name, value in (
                ("handshake", handshake_timeout),
                ("lock_wait", lock_wait),
                ("cancel_grace", cancel_grace),
                ("drain_grace", drain_grace),
            )
            if value is not None
        }
        self.settings = replace(settings, timeouts=replace(settings.timeouts, **overrides))
        self.timeouts = self.settings.timeouts
        self._store_arg = store
        self._store: Store | None = None
        self._locks = SlugLocks(self.state_dir / "locks")
        self._log_buffer = LogBuffer(lambda: self.store)
        #: Verb tasks in flight (drained by ``close``), and why each was cancelled, if it was.
        self._active: dict[asyncio.Task[Any], str] = {}
        self._cancel_reasons: dict[asyncio.Task[Any], tuple[str, str]] = {}
        #: One line per cancellation this host settled: what became of the work.
        self.interruptions: builtins.list[str] = []
        self._supervisor = Supervisor(
            self.settings,
            self.state_dir,
            project_dir=self.project_dir,
            home=self.home,
            handshake_timeout=self.timeouts.handshake,
            idle_timeout=idle_timeout,
            in_process=in_process,
            cancel_grace=self.timeouts.cancel_grace,
        )

    # --- lifetime ------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        if self._store is None:
            if self._store_arg is None:
                self._prepare_home()
            self._store = self._store_arg or SQLiteStore(self.state_dir / STORE_FILE)

    def _prepare_home(self) -> None:
        folder = self.state_dir
        if folder.exists() and not folder.is_dir():
            raise StoreError(
                f"the hearth home {folder} is not a folder; set HEARTH_HOME (or --home) to a folder"
            )
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"the hearth home {folder} cannot be created: {exc.strerror or exc}") from None

    async def close(self) -> None:
        """Let verbs in flight finish (``drain_grace``), cancel the rest (recorded
        ``interrupted``), then stop every adapter this host started and close the store."""
        active = [task for task in self._active if not task.done()]
        if active:
            _, pending = await asyncio.wait(active, timeout=self.timeouts.drain_grace)
            for task in pending:
                self._cancel_reasons[task] = ("interrupted", "the host was closed while it ran")
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self.timeouts.cancel_grace + 5.0)
        await self._supervisor.close()
        if self._store is not None:
            self._log_buffer.flush()
            self._store.close()
            self._store = None

    def cancel_running(self, reason: str, *, outcome: str = "cancelled") -> int:
        """Cancel every verb in flight, recording ``reason``; the number cancelled. The CLI
        calls it on SIGINT/SIGTERM/SIGHUP (``outcome`` ``interrupted`` for the latter two)."""
        tasks = [task for task in self._active if not task.done()]
        for task in tasks:
            self._cancel_reasons[task] = (outcome, reason)
            task.cancel()
        return len(tasks)

    @property
    def store(self) -> Store:
        if self._store is None:
            raise HearthError("the host is closed; use 'async with Host(...)'")
        return self._store

    @property
    def supervisor(self) -> Supervisor:
        return self._supervisor

    # --- input checks --------------------------------------------------------------------------
    def _check_slug(self, slug: str) -> None:
        if not isinstance(slug, str) or not re.fullmatch(codes.SLUG_PATTERN, slug):
            raise InvalidInput(
                f"{echo(slug)} is not a workspace slug: use 1 to 63 lowercase "
                "letters, digits and '-', starting and ending with a letter or digit"
            )

    def _check_driver(self, driver: str) -> None:
        if not isinstance(driver, str) or not re.fullmatch(codes.DRIVER_PATTERN, driver):
            raise InvalidInput(
                f"{echo(driver)} is not a driver name (lowercase letters, digits and '-', at most 40)"
            )
        if self._supervisor.knows(driver) or driver in self._supervisor.running():
            return
        if candidates(driver, self.project_dir, self.home):
            return  # whether it may run is for discover() to say, with its reasons
        available = {
            c.driver for c in discover_all(project_dir=self.project_dir, home=self.home) if c.acceptable
        }
        available |= self._supervisor.in_process_drivers()
        choices = ", ".join(sorted(available)) or "none installed"
        raise InvalidInput(
            f"unknown driver {driver!r}: no hearth-adapter-{driver} found; "
            f"available: {choices} (see 'hearth adapters')"
        )

    def _profile(self, tier: str, driver: str) -> ProvisioningProfile:
        try:
            return self.settings.profile(tier, driver)
        except ValidationError as exc:
            raise InvalidInput(
                f"tier {echo(tier)} does not make a valid profile for driver "
                f"{driver!r}: {exc.errors(include_url=False)[0]['msg']}"
            ) from None

    def _existing(self, slug: str) -> Deployment:
        found = self.store.get(slug)
        if found is None:
            hint = ""
            history = self.store.operations(slug)
            if history:
                last = history[-1]
                hint = (
                    f" (its last operation, {last.verb} #{last.id}, ended {last.outcome} and "
                    "left no workspace; 'hearth logs' shows it)"
                )
            raise InvalidInput(f"no workspace {slug!r}{hint}; 'hearth ls' lists them")
        return found

    # --- the verbs -----------------------------------------------------------------------------
    async def provision(
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        reuse: bool = False,
    ) -> DeploymentRef:
        """Provision ``slug``; the same (slug, tier, driver) again returns the stored ref."""
        self._check_slug(slug)
        self._check_driver(driver)
        profile = self._profile(tier, driver)
        deadline = _deadline(timeout)
        quick = self.store.get(slug)
        if _same_ready(quick, tier, driver):
            assert quick is not None and quick.ref is not None
            return quick.ref
        async with self._locks.hold(slug, self._lock_wait(deadline)):
            record = self.store.get(slug)
            if _same_ready(record, tier, driver):
                assert record is not None and record.ref is not None
                return record.ref
            working, plan, archive = self._provision_record(slug, record, tier, driver, reuse)
            previous = None if archive else record
            ref = await self._run(
                previous,
                working,
                plan,
                "provision",
                on_progress=on_progress,
                deadline=self._verb_deadline(deadline, "provision"),
                archive_first=archive,
                call=lambda client, remaining, callback, interruption: client.provision(
                    slug, profile, on_progress=callback, timeout=remaining, interruption=interruption
                ),
            )
            assert ref is not None
            return ref

    def _provision_record(
        self, slug: str, record: Deployment | None, tier: str, driver: str, reuse: bool
    ) -> tuple[Deployment, Transition, bool]:
        """(the record to write while provisioning, the transition, whether the current record
        is a torn-down one to archive first)."""
        state: State | None = record.state if record is not None else None
        archive = False
        if record is not None and record.state == "tier_torn_down":
            if not reuse:
                raise InvalidTransition(
                    f"workspace {slug!r} was torn down; teardown is final. To use the slug again, "
                    "ask to reuse it (--reuse): the old record is archived",
                    codes.INVALID_TRANSITION,
                    {"kind": "invalid_transition", "state": record.state},
                )
            archive, record, state = True, None, None
        if record is not None and record.state in ("ready", "failed"):
            existing = (record.ref or _synthesized_ref(record)).model_dump(mode="json")
            if record.driver != driver:
                raise Conflict(
                    f"workspace {slug!r} exists on driver {record.driver!r}; a workspace cannot "
                    f"move to another driver: tear it down, then provision it again with --reuse",
                    codes.CONFLICT,
                    {"kind": "conflict", "existing": existing},
                )
            if record.tier != tier:
                raise Conflict(
                    f"workspace {slug!r} exists with tier {record.tier!r}; "
                    + (
                        "use upgrade to change its tier"
                        if record.state == "ready"
                        else f"it is failed: provision it again with tier {record.tier!r}, or tear it down"
                    ),
                    codes.CONFLICT,
                    {"kind": "conflict", "existing": existing},
                )
        plan = self._check_transition(state, "provision", slug)
        now = utc_now()
        generation = record.generation if record is not None else self.store.next_generation(slug)
        return (
            Deployment(
                slug,
                generation,
                tier,
                driver,
                plan.during,
                record.ref if record is not None else None,
                record.created_at if record is not None else now,
                now,
            ),
            plan,
            archive,
        )

    def _check_transition(self, state: State | None, verb: Verb, slug: str) -> Transition:
        if state in TRANSIENT:
            raise InvalidTransition(
                f"workspace {slug!r} is {state}: a hearth process stopped in the middle of it; "
                "run 'hearth reconcile' to resolve it from the backend",
                codes.INVALID_TRANSITION,
                {"kind": "invalid_transition", "state": state},
            )
        return transition(state, verb, slug)

    async def status(self, slug: str, *, timeout: float | None = None) -> StatusReport:
        """What the backend shows now; ``tier_torn_down`` (a state, not an error) once torn down."""
        self._check_slug(slug)
        deadline = _deadline(timeout)
        record = self._existing(slug)
        if record.state == "tier_torn_down":
            return StatusReport(
                state="tier_torn_down",
                observed_at=utc_now(),
                message=f"torn down at {record.updated_at:%Y-%m-%d %H:%M:%S} UTC",
                details={"recorded_state": record.state},
            )
        ref = record.ref or _synthesized_ref(record)
        async with self._supervisor.use(record.driver, timeout=_remaining(deadline)) as client:
            report = await client.status(
                ref, timeout=self.timeouts.status if deadline is None else max(_remaining(deadline), 0.001)
            )
        details = {**report.details, "recorded_state": record.state}
        notes = [report.message] if report.message else []
        if record.reason:
            notes.append(
                f"the last operation failed: {record.reason}"
                if record.state == "failed"
                else f"the record notes: {record.reason}"
            )
        if record.state in TRANSIENT:
            notes.append(await self._transient_note(record))
        last = self._last_operation(record)
        if last is not None and last.error is not None and last.error.get("changed_nothing"):
            notes.append(
                f"the last {last.verb} (#{last.id}) ended {last.outcome} and changed "
                f"nothing: {last.error.get('message') or last.error.get('kind')}"
            )
        return report.model_copy(update={"details": details, "message": "; ".join(notes) or None})

    async def _transient_note(self, record: Deployment) -> str:
        """Whether a transient record is being worked on, or was left by a host that died."""
        try:
            async with self._locks.hold(record.slug, 0.0):
                return (
                    f"the record says {record.state}, but no hearth process is working on it "
                    "(one stopped in the middle): 'hearth reconcile' settles it"
                )
        except SlugLocked:
            return f"another hearth process is {record.state.replace('_', ' ')} it right now"

    def _last_operation(self, record: Deployment) -> Operation | None:
        found = [
            op
            for op in self.store.operations(record.slug)
            if op.generation == record.generation and op.outcome != "running"
        ]
        return found[-1] if found else None

    async def upgrade(
        self,
        slug: str,
        *,
        tier: str,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> DeploymentRef:
        """Move a ready workspace to another tier (or re-apply its own)."""
        self._check_slug(slug)
        deadline = _deadline(timeout)
        record = self._existing(slug)
        profile = self._profile(tier, record.driver)
        async with self._locks.hold(slug, self._lock_wait(deadline)):
            record = self._existing(slug)
            plan = self._check_transition(record.state, "upgrade", slug)
            assert record.ref is not None
            current = record.ref
            working = replace(record, state=plan.during, updated_at=utc_now())
            ref = await self._run(
                record,
                working,
                plan,
                "upgrade",
                on_progress=on_progress,
                deadline=self._verb_deadline(deadline, "upgrade"),
                new_tier=tier,
                call=lambda client, remaining, callback, interruption: client.upgrade(
                    current, profile, on_progress=callback, timeout=remaining, interruption=interruption
                ),
            )
            assert ref is not None
            return ref

    async def teardown(
        self, slug: str, *, on_progress: ProgressCallback | None = None, timeout: float | None = None
    ) -> None:
        """Irreversibly remove the workspace; a second teardown does nothing."""
        self._check_slug(slug)
        deadline = _deadline(timeout)
        record = self._existing(slug)
        if record.state == "tier_torn_down":
            return
        async with self._locks.hold(slug, self._lock_wait(deadline)):
            record = self._existing(slug)
            if record.state == "tier_torn_down":
                return
            plan = self._check_transition(record.state, "teardown", slug)
            ref = record.ref or _synthesized_ref(record)
            working = replace(record, state=plan.during, updated_at=utc_now())
            await self._run(
                record,
                working,
                plan,
                "teardown",
                on_progress=on_progress,
                deadline=self._verb_deadline(deadline, "teardown"),
                call=lambda client, remaining, callback, interruption: client.teardown(
                    ref, on_progress=callback, timeout=remaining, interruption=interruption
                ),
            )

    async def list(self) -> builtins.list[DeploymentRef]:
        """Every current deployment's ref, with ``last_status`` as the host recorded it."""
        return [
            (d.ref or _synthesized_ref(d)).model_copy(update={"last_status": d.state})
            for d in self.store.deployments()
        ]

    def deployments(self) -> builtins.list[Deployment]:
        """The host's records (with bookkeeping such as the failure reason)."""
        return self.store.deployments()

    async def logs(self, slug: str) -> builtins.list[Operation]:
        """Every operation run on ``slug`` (all generations), each with its log."""
        self._check_slug(slug)
        return self.store.operations(slug)

    # --- running one verb ----------------------------------------------------------------------
    async def _run(
        self,
        previous: Deployment | None,
        working: Deployment,
        plan: Transition,
        verb: Verb,
        *,
        on_progress: ProgressCallback | None,
        deadline: float,
        call: Call,
        new_tier: str | None = None,
        archive_first: bool = False,
    ) -> DeploymentRef | None:
        """Start the adapter, record ``plan.during``, call it, and record what its answer says."""
        task = asyncio.current_task()
        assert task is not None
        async with self._supervisor.use(working.driver, timeout=_remaining(deadline)) as client:
            remaining = _remaining(deadline)
            if remaining <= 0:
                raise CallTimeout(
                    f"the deadline passed before {verb} of {working.slug!r} could be "
                    "sent (starting the adapter took the time); nothing was changed"
                )
            store = self.store
            if archive_first:
                store.archive(working.slug)
            operation = store.begin(working, verb)

            def progress(event: Progress) -> None:
                self._log_buffer.add(
                    operation, LogLine(utc_now(), event.level, event.message, event.fraction)
                )
                if on_progress is not None:
                    on_progress(event)

            outcome = _Outcome(self, previous, working, plan, verb, operation, client)
            interruption = Interruption()
            self._active[task] = working.slug
            try:
                result = await call(client, remaining, progress, interruption)
            except asyncio.CancelledError:
                why, reason = self._cancel_reasons.pop(task, ("cancelled", "cancelled by the caller"))
                await outcome.cancelled(why, reason, interruption, new_tier)
                raise
            except CallTimeout as exc:
                await outcome.timed_out(exc)
                raise
            except HearthError as exc:
                outcome.failed(exc)
                raise
            except Exception as exc:  # a bug, or the OS failing under us: never a stuck record
                error = (
                    StoreError(f"{verb} of {working.slug!r} stopped: {type(exc).__name__}: {exc}")
                    if isinstance(exc, OSError)
                    else HearthError(
                        f"{verb} of {working.slug!r} stopped on an unexpected {type(exc).__name__}: {exc}"
                    )
                )
                outcome.failed(error, unconfirmed=True)
                raise error from exc
            finally:
                self._active.pop(task, None)
                self._cancel_reasons.pop(task, None)
            return outcome.succeeded(result, new_tier)

    def _lock_wait(self, deadline: float | None) -> float:
        remaining = None if deadline is None else _remaining(deadline)
        return self.timeouts.lock_wait if remaining is None else max(remaining, 0.0)

    def _verb_deadline(self, deadline: float | None, verb: Verb) -> float:
        """The caller's deadline, else the verb's default bound from now."""
        if deadline is not None:
            return deadline
        return asyncio.get_running_loop().time() + float(getattr(self.timeouts, verb))

    # --- reconcile -----------------------------------------------------------------------------
    async def reconcile(
        self, slug: str | None = None, *, dry_run: bool = False, timeout: float | None = None
    ) -> ReconcileReport:
        """Settle records a dead host left transient and records whose outcome was not
        confirmed; mark ghosts; report orphans; delete nothing (see ``hearth._reconcile``).
        ``slug`` limits it to one workspace; ``dry_run`` reports what it would do and changes
        nothing. A second run right after a first changes nothing; an unreachable backend
        changes nothing."""
        from ._reconcile import Reconciler

        _deadline(timeout)  # validates
        if slug is not None:
            self._check_slug(slug)
            self._existing(slug)
        return await Reconciler(self, dry_run=dry_run, timeout=timeout).run(slug)


@dataclass
class _Outcome:
    """Records what one verb's answer says, by the rules of ``_states.py``."""

    host: Host
    previous: Deployment | None
    working: Deployment
    plan: Transition
    verb: Verb
    operation: int
    client: AdapterClient

    @property
    def _store(self) -> Store:
        return self.host.store

    def _end(
        self, outcome: str, error: dict[str, Any] | None, deployment: Deployment, archive: bool = False
    ) -> None:
        self.host._log_buffer.flush()
        self._store.end(self.operation, outcome, error, deployment=deployment, archive=archive)

    def succeeded(self, result: Any, new_tier: str | None) -> DeploymentRef | None:
        record = self.working
        if self.verb == "teardown":
            ref = (record.ref or _synthesized_ref(record)).model_copy(
                update={"last_status": "tier_torn_down", "endpoint": None}
            )
        else:
            ref = result
            if ref.workspace_slug != record.slug:
                error = ProtocolViolation(
                    f"the adapter answered {self.verb} of {record.slug!r} "
                    f"with a ref for {ref.workspace_slug!r}"
                )
                self.failed(error, unconfirmed=True)
                raise error
        self._end(
            "succeeded",
            None,
            replace(
                record,
                state=self.plan.on_success,
                ref=ref,
                tier=new_tier or record.tier,
                updated_at=utc_now(),
                reason=None,
                unconfirmed=False,
            ),
        )
        return ref if self.verb != "teardown" else None

    def unchanged(self, outcome: str, error: dict[str, Any]) -> None:
        """The answer says nothing changed: the record stays as it was (a first provision
        leaves no live record); the operation keeps the error."""
        error = {**error, "changed_nothing": True}
        if self.previous is None:
            self._end(
                outcome,
                error,
                replace(self.working, state="failed", reason=error.get("message")),
                archive=True,
            )
        else:
            self._end(outcome, error, self.previous)

    def failed(self, exc: HearthError, *, unconfirmed: bool | None = None, outcome: str = "failed") -> None:
        """D8, unless the answer says that nothing changed."""
        if isinstance(exc, BackendFailure):
            for line in exc.logs:
                self.host._log_buffer.add(self.operation, LogLine(utc_now(), "error", line))
        error = exc.to_json()
        if isinstance(exc, AdapterError) and changed_nothing(self.verb, exc.code, exc.data):
            self.unchanged(outcome, error)
            return
        if unconfirmed is None:  # the adapter died, broke the protocol or lost its backend
            unconfirmed = not isinstance(exc, AdapterError) or isinstance(exc, BackendUnavailable)
        reason = exc.message + (
            "; what the backend holds is not confirmed: 'hearth reconcile' checks it" if unconfirmed else ""
        )
        try:
            self._end(
                outcome,
                error,
                replace(
                    self.working, state="failed", updated_at=utc_now(), reason=reason, unconfirmed=unconfirmed
                ),
            )
        except StoreError:
            if isinstance(exc, StoreError):
                return  # the store is what failed: the record stays transient for reconcile
            raise

    async def timed_out(self, exc: CallTimeout) -> None:
        error = exc.to_json()
        if self.verb == "teardown" and exc.rolled_back is not None:
            await self._settle_teardown("cancelled", f"timed out: {exc.message}", error)
        elif exc.rolled_back:
            self.unchanged("cancelled", error)
        else:
            self._unconfirmed("cancelled", f"timed out: {exc.message}", error)

    async def cancelled(
        self, outcome: str, reason: str, interruption: Interruption, new_tier: str | None
    ) -> None:
        """The caller was cancelled: record what the adapter's answer (if any) says."""
        error = {"kind": "cancelled" if outcome == "cancelled" else "interrupted", "message": reason}
        note = f"{self.verb} of {self.working.slug!r}"
        if interruption.succeeded:
            result = (
                None
                if self.verb == "teardown"
                else self.client._validated(DeploymentRef, interruption.result, self.verb)
            )
            self.succeeded(result, new_tier)
            self.host.interruptions.append(
                f"{note} had finished before the cancel took effect; it is recorded as done"
            )
        elif not interruption.answered:
            self._unconfirmed(outcome, reason, error)
            self.host.interruptions.append(
                f"{note} was told to cancel; its rollback is not confirmed ('hearth reconcile' checks it)"
            )
        elif not isinstance(interruption.error, Cancelled):
            assert interruption.error is not None
            self.failed(interruption.error, outcome=outcome)
            after = self._store.get(self.working.slug)
            self.host.interruptions.append(
                f"{note} was cancelled and the adapter answered with an error "
                f"({interruption.error.kind}); the workspace is recorded "
                f"{after.state if after is not None else 'nowhere (nothing changed)'}"
            )
        elif self.verb == "teardown":
            observed, state = await self._settle_teardown(outcome, reason, error)
            self.host.interruptions.append(
                f"{note} was cancelled; the backend shows {observed}, the workspace is recorded {state}"
            )
        elif cancel_rolled_back(self.verb, True, interruption.error.data):
            self.unchanged(
                outcome, {**error, "rolled_back": True, "message": f"{reason}; the adapter rolled back"}
            )
            self.host.interruptions.append(
                f"{note} was cancelled and rolled back"
                + ("" if self.previous is None else f"; the workspace is {self.previous.state} as before")
            )
        else:
            self._unconfirmed(outcome, reason, {**error, "rolled_back": False})
            self.host.interruptions.append(
                f"{note} was cancelled; the adapter could not confirm "
                "its rollback ('hearth reconcile' checks it)"
            )

    def _unconfirmed(self, outcome: str, reason: str, error: dict[str, Any]) -> None:
        what = "rollback not confirmed" if self.verb != "teardown" else "teardown not confirmed"
        reason = reason.replace("; the rollback is not confirmed", "")
        self._end(
            outcome,
            error,
            replace(
                self.working,
                state="failed",
                updated_at=utc_now(),
                unconfirmed=True,
                reason=f"{reason}; {what}: the backend may still hold resources; 'hearth reconcile' "
                "checks it",
            ),
        )

    async def _settle_teardown(self, outcome: str, reason: str, error: dict[str, Any]) -> tuple[str, str]:
        """A cancelled teardown cannot be undone: record what the adapter's status shows;
        (what it observed, the state recorded)."""
        observed = "unknown"
        ref = self.working.ref or _synthesized_ref(self.working)
        try:
            if self.client.alive:
                report = await self.client.status(ref, timeout=self.host.timeouts.status)
                observed = report.state
        except (HearthError, asyncio.CancelledError):
            observed = "unknown"
        resolution = resolve(self.working.state, observed, verb="teardown")
        if resolution is None:
            self._unconfirmed(outcome, reason, error)
            return "an unknown state", "failed (not confirmed)"
        self._end(
            outcome,
            error,
            replace(
                self.working,
                state=resolution.state,
                updated_at=utc_now(),
                unconfirmed=resolution.unconfirmed,
                reason=f"{reason}; {resolution.reason}" if resolution.reason else None,
            ),
        )
        return observed, resolution.state


def _same_ready(record: Deployment | None, tier: str, driver: str) -> bool:
    return (
        record is not None
        and record.state == "ready"
        and record.ref is not None
        and (record.tier, record.driver) == (tier, driver)
    )


def _synthesized_ref(record: Deployment) -> DeploymentRef:
    """A ref for a record that has none (its provision failed): drivers find objects by name."""
    return DeploymentRef(
        workspace_slug=record.slug,
        tier=record.tier,
        driver=record.driver,
        created=record.created_at,
        last_status=record.state,
    )


def _positive(value: float, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInput(f"{name} must be a positive number of seconds, not {echo(value)}")
    return float(value)


def _deadline(timeout: float | None) -> float | None:
    """The loop time at which ``timeout`` ends; nan, inf, 0 and negatives are invalid input."""
    if timeout is None:
        return None
    return asyncio.get_running_loop().time() + _positive(timeout, "timeout")


def _remaining(deadline: float | None) -> float:
    if deadline is None:
        return math.inf
    return deadline - asyncio.get_running_loop().time()
