"""``Host``: the HEARTH rules of seed 000 on top of any adapter.

Per verb: validate the input before anything else; take the slug's cross-process lock;
read the record again (another process may just have finished); check the transition
table; record the transient state and an operation; call the adapter through the
supervisor, logging its progress; record the outcome. A failed verb marks the deployment
``failed``, keeps the logs, and is never retried (D8). A timeout or a cancellation tells
the adapter to cancel, and the record says which it was.
"""

from __future__ import annotations

import asyncio
import builtins
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from hearth_adaptersdk import (
    DeploymentRef,
    Progress,
    State,
    StatusReport,
    codes,
    utc_now,
)

from .client import AdapterClient, ProgressCallback
from .dirs import resolve_home, state_dir
from .discovery import candidates, discover_all
from .errors import (
    BackendFailure,
    CallTimeout,
    Conflict,
    HearthError,
    InvalidInput,
    InvalidTransition,
    ProtocolViolation,
)
from .locks import SlugLocks
from .settings import Settings, Tier, load_settings
from .states import TRANSIENT, Transition, Verb, transition
from .store import Deployment, LogBuffer, LogLine, Operation, SQLiteStore, Store
from .supervisor import ConnectionFactory, Supervisor

STORE_FILE = "hearth.db"
#: How long a verb waits for another process's work on the same slug when it has no timeout.
DEFAULT_LOCK_WAIT = 600.0


@dataclass(frozen=True)
class ReconcileReport:
    """What ``reconcile`` found and did; nothing is ever deleted."""

    #: (slug, recorded state, resolved state) for records left in a transient state.
    resolved: list[tuple[str, str, str]] = field(default_factory=list)
    #: Records whose backend has no trace: marked failed.
    ghosts: list[str] = field(default_factory=list)
    #: Deployments an adapter lists that have no record: reported, never removed.
    orphans: list[DeploymentRef] = field(default_factory=list)
    #: Slugs skipped because another process is working on them right now.
    busy: list[str] = field(default_factory=list)
    #: Drivers that could not be asked, with the reason.
    unreachable: dict[str, str] = field(default_factory=dict)


def find_project_dir(start: str | Path | None = None) -> Path:
    """The nearest folder upward holding ``.hearth/``, else ``start`` (default: the cwd)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".hearth").is_dir():
            return folder
    return here


class Host:
    """Deploys and manages workspaces; use as ``async with Host(...) as host``."""

    def __init__(
        self,
        project_dir: str | Path | None = None,
        home: str | Path | None = None,
        tiers: Mapping[str, Tier] | None = None,
        *,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        lock_wait: float = DEFAULT_LOCK_WAIT,
        store: Store | None = None,
        in_process: Mapping[str, ConnectionFactory] | None = None,
    ) -> None:
        """``in_process`` maps driver names to connection factories (e.g. an in-memory driver)
        that take precedence over discovery; ``store`` replaces the SQLite registry."""
        self.project_dir = find_project_dir(project_dir)
        self.home = resolve_home(home)
        self.state_dir = state_dir(self.home)
        settings = load_settings(self.project_dir)
        if tiers:
            settings = Settings({**settings.tiers, **tiers}, settings.adapters, settings.source)
        self.settings = settings
        self._store_arg = store
        self._store: Store | None = None
        self._locks = SlugLocks(self.state_dir / "locks")
        self._log_buffer = LogBuffer(lambda: self.store)
        self._lock_wait = lock_wait
        self._supervisor = Supervisor(
            settings, self.state_dir, project_dir=self.project_dir, home=self.home,
            handshake_timeout=handshake_timeout, idle_timeout=idle_timeout, in_process=in_process)

    # --- lifetime ------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        if self._store is None:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._store = self._store_arg or SQLiteStore(self.state_dir / STORE_FILE)

    async def close(self) -> None:
        """Stop every adapter this host started (bounded) and close the store."""
        await self._supervisor.close()
        if self._store is not None:
            self._store.close()
            self._store = None

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
            raise InvalidInput(f"{slug!r} is not a workspace slug: use 1 to 63 lowercase letters, "
                               "digits and '-', starting and ending with a letter or digit")

    def _check_driver(self, driver: str) -> None:
        if self._supervisor.knows(driver) or driver in self._supervisor.running():
            return
        if not isinstance(driver, str) or not re.fullmatch(codes.DRIVER_PATTERN, driver):
            raise InvalidInput(f"{driver!r} is not a driver name")
        if candidates(driver, self.project_dir, self.home):
            return  # whether it may run is for discover() to say, with its reasons
        available = {c.driver for c in discover_all(project_dir=self.project_dir, home=self.home)}
        available |= self._supervisor.in_process_drivers()
        if driver not in available:
            choices = ", ".join(sorted(available)) or "none installed"
            raise InvalidInput(f"unknown driver {driver!r}: no hearth-adapter-{driver} found; "
                               f"available: {choices} (see 'hearth adapters')")

    def _existing(self, slug: str) -> Deployment:
        found = self.store.get(slug)
        if found is None:
            raise InvalidInput(f"no workspace {slug!r}; 'hearth ls' lists them")
        return found

    # --- the verbs -----------------------------------------------------------------------------
    async def provision(self, slug: str, *, tier: str, driver: str,
                        on_progress: ProgressCallback | None = None,
                        timeout: float | None = None, reuse: bool = False) -> DeploymentRef:
        """Provision ``slug``; the same (slug, tier, driver) again returns the stored ref."""
        self._check_slug(slug)
        profile = self.settings.profile(tier, driver)
        self._check_driver(driver)
        quick = self.store.get(slug)
        if _same_ready(quick, tier, driver):
            assert quick is not None and quick.ref is not None
            return quick.ref
        deadline = _deadline(timeout)
        async with self._locks.hold(slug, self._wait(deadline)):
            record = self.store.get(slug)
            if _same_ready(record, tier, driver):
                assert record is not None and record.ref is not None
                return record.ref
            record, plan = self._provision_record(slug, record, tier, driver, reuse)
            ref = await self._run(record, plan, "provision", on_progress=on_progress,
                                  deadline=deadline,
                                  call=lambda client, remaining, callback: client.provision(
                                      slug, profile, on_progress=callback, timeout=remaining))
            assert ref is not None
            return ref

    def _provision_record(self, slug: str, record: Deployment | None, tier: str, driver: str,
                          reuse: bool) -> tuple[Deployment, Transition]:
        state: State | None = record.state if record is not None else None
        if record is not None and record.state == "tier_torn_down":
            if not reuse:
                raise InvalidTransition(
                    f"workspace {slug!r} was torn down; teardown is final. To use the slug again, "
                    "ask to reuse it (--reuse): the old record is archived",
                    codes.INVALID_TRANSITION, {"kind": "invalid_transition", "state": record.state})
            self.store.archive(slug)
            record, state = None, None
        if record is not None and record.state in ("ready", "failed") \
                and (record.tier, record.driver) != (tier, driver):
            existing = record.ref or _synthesized_ref(record)
            raise Conflict(
                f"workspace {slug!r} exists with tier {record.tier!r} on driver {record.driver!r}; "
                "use upgrade to change its tier", codes.CONFLICT,
                {"kind": "conflict", "existing": existing.model_dump(mode="json")})
        plan = self._check_transition(state, "provision", slug)
        now = utc_now()
        generation = record.generation if record is not None else self.store.next_generation(slug)
        return Deployment(slug, generation, tier, driver, plan.during,
                          record.ref if record is not None else None,
                          record.created_at if record is not None else now, now), plan

    def _check_transition(self, state: State | None, verb: Verb, slug: str) -> Transition:
        if state in TRANSIENT:
            raise InvalidTransition(
                f"workspace {slug!r} is {state}: a hearth process stopped in the middle of it; "
                "run 'hearth reconcile' to resolve it from the backend",
                codes.INVALID_TRANSITION, {"kind": "invalid_transition", "state": state})
        return transition(state, verb, slug)

    async def status(self, slug: str, *, timeout: float | None = None) -> StatusReport:
        """What the backend shows now; ``tier_torn_down`` (a state, not an error) once torn down."""
        self._check_slug(slug)
        record = self._existing(slug)
        if record.state == "tier_torn_down":
            return StatusReport(state="tier_torn_down", observed_at=utc_now(),
                                message=f"torn down at {record.updated_at:%Y-%m-%d %H:%M:%S} UTC",
                                details={"recorded_state": record.state})
        ref = record.ref or _synthesized_ref(record)
        async with self._supervisor.use(record.driver) as client:
            report = await client.status(ref, timeout=timeout)
        details = {**report.details, "recorded_state": record.state}
        message = report.message
        if record.state == "failed" and record.reason:
            message = f"{message}; " if message else ""
            message += f"the last operation failed: {record.reason}"
        return report.model_copy(update={"details": details, "message": message})

    async def upgrade(self, slug: str, *, tier: str, on_progress: ProgressCallback | None = None,
                      timeout: float | None = None) -> DeploymentRef:
        """Move a ready workspace to another tier (or re-apply its own)."""
        self._check_slug(slug)
        record = self._existing(slug)
        profile = self.settings.profile(tier, record.driver)
        deadline = _deadline(timeout)
        async with self._locks.hold(slug, self._wait(deadline)):
            record = self._existing(slug)
            plan = self._check_transition(record.state, "upgrade", slug)
            assert record.ref is not None
            current = record.ref
            working = replace(record, state=plan.during, updated_at=utc_now())
            ref = await self._run(working, plan, "upgrade", on_progress=on_progress,
                                  deadline=deadline, new_tier=tier,
                                  call=lambda client, remaining, callback: client.upgrade(
                                      current, profile, on_progress=callback, timeout=remaining))
            assert ref is not None
            return ref

    async def teardown(self, slug: str, *, on_progress: ProgressCallback | None = None,
                       timeout: float | None = None) -> None:
        """Irreversibly remove the workspace; a second teardown does nothing."""
        self._check_slug(slug)
        record = self._existing(slug)
        if record.state == "tier_torn_down":
            return
        deadline = _deadline(timeout)
        async with self._locks.hold(slug, self._wait(deadline)):
            record = self._existing(slug)
            if record.state == "tier_torn_down":
                return
            plan = self._check_transition(record.state, "teardown", slug)
            ref = record.ref or _synthesized_ref(record)
            working = replace(record, state=plan.during, updated_at=utc_now())
            await self._run(working, plan, "teardown", on_progress=on_progress, deadline=deadline,
                            call=lambda client, remaining, callback: client.teardown(
                                ref, on_progress=callback, timeout=remaining))

    async def list(self) -> builtins.list[DeploymentRef]:
        """Every current deployment's ref, with ``last_status`` as the host recorded it."""
        return [(d.ref or _synthesized_ref(d)).model_copy(update={"last_status": d.state})
                for d in self.store.deployments()]

    def deployments(self) -> builtins.list[Deployment]:
        """The host's records (with bookkeeping such as the failure reason)."""
        return self.store.deployments()

    async def logs(self, slug: str) -> builtins.list[Operation]:
        """Every operation run on ``slug`` (all generations), each with its log."""
        self._check_slug(slug)
        return self.store.operations(slug)

    # --- running one verb ----------------------------------------------------------------------
    async def _run(self, record: Deployment, plan: Transition, verb: Verb, *,
                   on_progress: ProgressCallback | None, deadline: float | None,
                   call: Callable[[AdapterClient, float | None, ProgressCallback], Any],
                   new_tier: str | None = None) -> DeploymentRef | None:
        """Record ``plan.during``, call the adapter, record the outcome (D8 on failure)."""
        store = self.store
        operation = store.begin(record, verb)

        def progress(event: Progress) -> None:
            self._log_buffer.add(operation, LogLine(utc_now(), event.level, event.message,
                                                    event.fraction))
            if on_progress is not None:
                on_progress(event)

        try:
            async with self._supervisor.use(record.driver) as client:
                result = await call(client, _remaining(deadline), progress)
        except asyncio.CancelledError:
            self._fail(record, operation, "cancelled", "cancelled by the caller; the adapter was "
                       "told to cancel and roll back", {"kind": "cancelled"})
            raise
        except CallTimeout as exc:
            self._fail(record, operation, "cancelled", f"timed out: {exc.message}", exc.to_json())
            raise
        except HearthError as exc:
            if isinstance(exc, BackendFailure):
                for line in exc.logs:
                    self._log_buffer.add(operation, LogLine(utc_now(), "error", line))
            self._fail(record, operation, "failed", exc.message, exc.to_json())
            raise
        if verb == "teardown":
            ref = (record.ref or _synthesized_ref(record)).model_copy(
                update={"last_status": "tier_torn_down", "endpoint": None})
        else:
            ref = result
            if ref.workspace_slug != record.slug:
                error = ProtocolViolation(f"the adapter answered {verb} of {record.slug!r} with a "
                                          f"ref for {ref.workspace_slug!r}")
                self._fail(record, operation, "failed", error.message, error.to_json())
                raise error
        self._log_buffer.flush()
        store.end(operation, "succeeded", deployment=replace(
            record, state=plan.on_success, ref=ref, tier=new_tier or record.tier,
            updated_at=utc_now(), reason=None))
        return ref if verb != "teardown" else None

    def _fail(self, record: Deployment, operation: int, outcome: str, reason: str,
              error: dict[str, Any]) -> None:
        """D8: mark the deployment failed, keep the logs, never retry."""
        self._log_buffer.flush()
        self.store.end(operation, outcome, error, deployment=replace(
            record, state="failed", updated_at=utc_now(), reason=reason))

    def _wait(self, deadline: float | None) -> float:
        remaining = _remaining(deadline)
        return self._lock_wait if remaining is None else remaining

    # --- reconcile -----------------------------------------------------------------------------
    async def reconcile(self, *, timeout: float | None = None) -> ReconcileReport:
        """Resolve records a dead host left transient; report ghosts and orphans; delete nothing."""
        report = ReconcileReport()
        records = self.store.deployments()
        for record in records:
            if record.state == "tier_torn_down":
                continue
            try:
                async with self._locks.hold(record.slug, 0.0):
                    await self._reconcile_one(record, report, timeout)
            except HearthError as exc:
                if exc.kind == "slug_locked":
                    report.busy.append(record.slug)
                else:
                    report.unreachable.setdefault(record.driver, exc.message)
        await self._find_orphans({r.driver for r in records}, report, timeout)
        return report

    async def _reconcile_one(self, record: Deployment, report: ReconcileReport,
                             timeout: float | None) -> None:
        current = self.store.get(record.slug)
        if current is None or current.state == "tier_torn_down":
            return
        ref = current.ref or _synthesized_ref(current)
        async with self._supervisor.use(current.driver) as client:
            observed = await client.status(ref, timeout=timeout)
            listed = await client.list(timeout=timeout) if client.supports("list") else []
        now = utc_now()
        if current.state in TRANSIENT:
            self._interrupt_operations(current.slug)
            resolved: State
            if observed.state == "absent":
                resolved = "tier_torn_down" if current.state == "tearing_down" else "failed"
            elif observed.state in TRANSIENT:
                resolved = "failed"
            else:
                resolved = observed.state
            found = next((r for r in listed if r.workspace_slug == current.slug), None)
            new_ref = found or current.ref
            reason = None if resolved in ("ready", "tier_torn_down") else \
                f"interrupted while {current.state}: a hearth process died; the backend shows " \
                f"{observed.state}"
            self.store.save(replace(current, state=resolved, ref=new_ref, updated_at=now,
                                    reason=reason))
            report.resolved.append((current.slug, current.state, resolved))
        elif observed.state == "absent":
            self.store.save(replace(current, state="failed", updated_at=now,
                                    reason="ghost: the backend has no trace of this workspace"))
            report.ghosts.append(current.slug)

    def _interrupt_operations(self, slug: str) -> None:
        for operation in self.store.operations(slug):
            if operation.outcome == "running":
                self.store.end(operation.id, "interrupted",
                               {"kind": "interrupted", "message": "the host process died"})

    async def _find_orphans(self, drivers: set[str], report: ReconcileReport,
                            timeout: float | None) -> None:
        known = {d.slug for d in self.store.deployments() if d.state != "tier_torn_down"}
        for driver in sorted(drivers):
            try:
                async with self._supervisor.use(driver) as client:
                    if not client.supports("list"):
                        continue
                    refs = await client.list(timeout=timeout)
            except HearthError as exc:
                report.unreachable.setdefault(driver, exc.message)
                continue
            report.orphans.extend(ref for ref in refs if ref.workspace_slug not in known)


def _same_ready(record: Deployment | None, tier: str, driver: str) -> bool:
    return (record is not None and record.state == "ready" and record.ref is not None
            and (record.tier, record.driver) == (tier, driver))


def _synthesized_ref(record: Deployment) -> DeploymentRef:
    """A ref for a record that has none (its provision failed): drivers find objects by name."""
    return DeploymentRef(workspace_slug=record.slug, tier=record.tier, driver=record.driver,
                         created=record.created_at, last_status=record.state)


def _deadline(timeout: float | None) -> float | None:
    if timeout is not None and timeout <= 0:
        raise InvalidInput("timeout must be a positive number of seconds")
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.001, deadline - asyncio.get_running_loop().time())

