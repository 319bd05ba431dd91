"""``Host``: the workspace lifecycle on top of any adapter, with work as operations.

A verb is an operation: ``start_provision`` (and ``start_upgrade``, ``start_teardown``,
``start_stop``, ``start_start``) check the
input and the lifecycle rules at once, record the operation (queued, visible to every process
sharing the store) and run it in a task the host owns; ``provision`` (and the others) start it
and wait for its result. The work is done by collaborators that share one ``Core`` and never see
the ``Host``: ``Admission`` (start, join or busy), ``Runner`` (one operation under its slug
lock), ``Outcome`` (what the answer leaves in the record, by ``_states.py``), ``Recovery`` (dead
hosts, heal, leases), ``EventLog`` (events and streams), ``Operations`` (the handles),
``Queries`` and ``Reconciler``. docs/architecture.md draws the whole.
"""

from __future__ import annotations

import builtins
import logging
import time
import warnings
from collections.abc import AsyncIterator, Generator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

from hearth_adaptersdk import DeploymentRef, PlanResult, StatusReport, utc_now

from .._actors import acting, check_actor, check_on_behalf_of, process_actor
from .._adapters._discovery import DriverInfo, driver_infos
from .._adapters._supervisor import ConnectionFactory, Supervisor
from .._errors import HearthError, InvalidInput, NotFound
from .._labels import check_labels, labels_given
from .._models import CheckResult, Deployment, Event, Operation, ReconcileReport
from .._observe import Observer
from .._settings import Settings, Tier, Timeouts, positive_seconds
from .._states import (
    AUTOSTOP_ACTOR,
    OPTIONAL_VERBS,
    activity_of,
    autostop_due,
    autostop_reason,
    same_ready,
    teardown_done,
)
from .._store._base import Store
from ._admission import Admission
from ._checks import Checks, Request, check_slug, deadline, echo, sequence
from ._core import Core
from ._events import EventLog, flattened, labelled
from ._operations import Operations
from ._queries import Queries
from ._reconcile import adopt, forget, relabel
from ._recovery import Recovery
from ._runner import ProgressListener, Runner

log = logging.getLogger("hearth")


class Host:
    """Deploys and manages workspaces; use as ``async with Host(...) as host``."""

    def __init__(
        self,
        project_dir: str | Path | None = None,
        home: str | Path | None = None,
        tiers: Mapping[str, Tier] | None = None,
        *,
        handshake_timeout: float | None = None,
        idle_timeout: float | None = 60.0,
        lock_wait: float | None = None,
        store: Store | None = None,
        in_process: Mapping[str, ConnectionFactory] | None = None,
        cancel_grace: float | None = None,
        drain_grace: float | None = None,
        store_url: str | None = None,
        actor: str | None = None,
    ) -> None:
        """``actor`` names who asks for the operations this host records when no daemon
        request says (``Operation.actor``; default ``process:<uid>(<user>)``, this process's
        user). ``in_process`` maps driver names to connection factories (e.g. an in-memory driver)
        that take precedence over discovery; ``store`` replaces the SQLite registry, as does
        ``store_url`` (``postgresql://...``; else ``$HEARTH_STORE``, else ``store`` in
        hearth.toml, else the home's SQLite file);
        ``idle_timeout=None`` keeps adapters running until the host closes. The bounds left
        None come from ``[timeouts]`` in hearth.toml (re-read when the file changes), else the
        defaults of ``Timeouts``."""
        overrides = {
            name: positive_seconds(value, name)
            for name, value in (
                ("handshake", handshake_timeout),
                ("lock_wait", lock_wait),
                ("cancel_grace", cancel_grace),
                ("drain_grace", drain_grace),
            )
            if value is not None
        }
        if idle_timeout is not None:
            positive_seconds(idle_timeout, "idle_timeout")
        core = self._core = Core(
            project_dir,
            home,
            tiers,
            overrides,
            idle_timeout=idle_timeout,
            store=store,
            store_url=store_url,
            in_process=in_process,
            actor=process_actor() if actor is None else check_actor(actor),
        )
        self.project_dir = core.project_dir
        self.home = core.home
        self.state_dir = core.state_dir
        #: Who runs this host's operations, as other processes see it.
        self.owner = core.owner
        self._checks = Checks(core)
        runner: Runner | None = None

        def busy() -> bool:
            return runner is not None and runner.busy()

        def cancel_requested(ident: int, reason: str) -> None:
            if runner is not None:
                runner.cancel_requested(ident, reason)

        self._events = EventLog(core, busy, cancel_requested)
        self._runner = runner = Runner(core, self._checks, self._events)
        self._recovery = Recovery(core, runner.runs)
        self._operations = Operations(core, runner, self._recovery, self._events)
        self._admission = Admission(core, self._checks, self._recovery, runner, self._operations)
        self._queries = Queries(core, self._checks, self._recovery)
        #: Drivers found unable to stop (``autostop_sweep`` skips them, logged once).
        self._cannot_stop: set[str] = set()
        #: One line per cancellation this host settled: what became of the work.
        self.interruptions: builtins.list[str] = runner.interruptions

    @property
    def settings(self) -> Settings:
        return self._core.settings

    @property
    def timeouts(self) -> Timeouts:
        return self._core.timeouts

    @property
    def shared_store(self) -> bool:
        """Whether the store is shared beyond this home (then a lease proves this host alive)."""
        return self._core.shared

    @property
    def store(self) -> Store:
        """The registry, as given or opened."""
        if self._core.raw is None:
            return self._core.store  # raises: the host is closed
        return self._core.raw

    @property
    def supervisor(self) -> Supervisor:
        return self._core.supervisor

    def observe(self, observer: Observer) -> None:
        """Tell ``observer`` what this host does from now on: the operations it runs, its
        adapter processes, reconcile rounds, store calls (the daemon's ``/metrics``)."""
        self._core.observers.add(observer)

    async def workspace_counts(self) -> builtins.list[tuple[str, str, int]]:
        """(state, driver, how many) of the current records: one grouped read of the store,
        no adapter asked (the daemon's ``hearth_workspaces`` gauge)."""
        return await self._core.store.deployment_counts()

    def reload_settings(self) -> Settings:
        """Read hearth.toml now, as the next call would (the daemon does it on SIGHUP); an
        invalid file raises ``InvalidInput`` and the calls fail with it until it is fixed."""
        self._core.refresh_settings()
        return self.settings

    # --- lifetime -------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.open()
        await self._core.opened()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self) -> None:
        """Prepare the home and the store (opened on first use); ``async with`` does this."""
        if not self._core.is_open:
            self._core.open()
            self._events.reopen()

    async def drain(self) -> None:
        """Let operations in flight finish (``drain_grace``), cancel the rest (recorded
        ``interrupted``) and wait for their rollbacks (``cancel_grace``), the host left open:
        the daemon drains with it while it still answers reads and cancels, then closes."""
        await self._runner.drain()

    async def close(self) -> None:
        """Let operations in flight finish (``drain_grace``), cancel the rest (recorded
        ``interrupted``), then stop every adapter this host started and close the store."""
        await self._runner.drain()
        await self._events.bus.close()
        self._runner.stop_background()
        await self._core.supervisor.close()
        await self._recovery.stop()
        if self._core.is_open:
            await self._events.flush()
        await self._core.close_store()

    @property
    def running(self) -> int:
        """How many operations this host runs now, from memory (no store read)."""
        return self._runner.count()

    async def ready(self) -> None:
        """Return when the store can be used now, checked within ``[timeouts] store`` (SQLite:
        the file reads and its pages are whole; PostgreSQL: a query is answered); else raise
        ``StoreError`` saying what is wrong. The daemon's ``/v1/ready``."""
        await self._queries.ready()

    def cancel_running(self, reason: str, *, outcome: str = "cancelled", again: bool = False) -> int:
        """Cancel every operation this host runs, recording ``reason``; the number cancelled.
        The CLI calls it on SIGINT/SIGTERM/SIGHUP (``outcome`` ``interrupted`` for the latter).
        ``again`` (the CLI's second signal): stop waiting for the rollbacks already asked for;
        their records then say the rollback is not confirmed."""
        return self._runner.cancel_all(reason, outcome=outcome, again=again)

    # --- operations: start ----------------------------------------------------------------------
    async def start_provision(
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        key: str | None = None,
        reuse: bool = False,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        labels: Mapping[str, str] | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        """Check and record a provision of ``slug``, and run it in the background; the
        operation, at once. Bad input and refused transitions raise here. With nothing to do
        (the same tier and driver on a ready workspace) nothing is recorded: the answer is the
        operation that made the workspace what it is, finished.

        ``labels`` (Kubernetes label syntax, at most 64) go on the record the provision writes:
        a new workspace (or a reused slug's new generation) carries them, a failed one
        provisioned again has them merged into its own. A provision that writes no record (it
        has nothing to do, or joins the slug's running provision) changes no label: ``label``
        does. Labels are never sent to the adapter.

        ``on_behalf_of``: whom the caller acts for (1 to 200 printable characters), recorded on
        the operation (``Operation.on_behalf_of``) and never trusted for anything; every verb
        takes it."""
        checked = labels_given(labels)
        request = Request(
            "provision", slug, tier, driver, bool(reuse), key, deadline(timeout), labels=checked
        )
        return await self._launch(request, on_progress, on_behalf_of)

    async def start_upgrade(
        self,
        slug: str,
        *,
        tier: str,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        """Check and record an upgrade of ``slug`` to ``tier``, and run it in the background."""
        request = Request("upgrade", slug, tier, key=key, deadline=deadline(timeout))
        return await self._launch(request, on_progress, on_behalf_of)

    async def _launch(
        self, request: Request, on_progress: ProgressListener | None, on_behalf_of: str | None
    ) -> Operation:
        """Check and record ``request`` for whom the caller names, and run it in the background."""
        with acting(on_behalf_of=check_on_behalf_of(on_behalf_of)):
            return (await self._admission.start(request, on_progress))[0]

    async def start_teardown(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        """Check and record a teardown of ``slug``, and run it in the background."""
        request = Request("teardown", slug, key=key, deadline=deadline(timeout))
        return await self._launch(request, on_progress, on_behalf_of)

    async def start_stop(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        """Check and record a stop of ``slug`` (ready to stopped, its disk kept), and run it in
        the background. ``unsupported`` naming the driver when its adapter does not announce
        ``stop`` (protocol 1.3); a stopped workspace has nothing to do."""
        request = Request("stop", slug, key=key, deadline=deadline(timeout))
        return await self._launch(request, on_progress, on_behalf_of)

    async def start_start(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation:
        """Check and record a start of the stopped ``slug`` (the same backend objects, ready
        again), and run it in the background; a ready workspace has nothing to do."""
        request = Request("start", slug, key=key, deadline=deadline(timeout))
        return await self._launch(request, on_progress, on_behalf_of)

    # --- the verbs: start, then the result ------------------------------------------------------
    async def provision(
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        reuse: bool = False,
        key: str | None = None,
        labels: Mapping[str, str] | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef:
        """Provision ``slug``; the same (slug, tier, driver) again returns the stored ref.
        ``labels``, ``on_behalf_of``: as ``start_provision``'s."""
        whom = check_on_behalf_of(on_behalf_of)
        check_slug(slug)
        checked = labels_given(labels)
        quick = await self._core.store.get(slug)
        if (
            isinstance(tier, str)
            and isinstance(driver, str)
            and key is None
            and same_ready(quick, tier, driver)
        ):
            assert quick is not None and quick.ref is not None
            return quick.ref
        request = Request(
            "provision", slug, tier, driver, bool(reuse), key, deadline(timeout), labels=checked
        )
        with acting(on_behalf_of=whom):
            ref = await self._wait(request, on_progress)
        assert ref is not None
        return ref

    async def upgrade(
        self,
        slug: str,
        *,
        tier: str,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef:
        """Move a ready workspace to another tier (or re-apply its own)."""
        with acting(on_behalf_of=check_on_behalf_of(on_behalf_of)):
            ref = await self._wait(
                Request("upgrade", slug, tier, key=key, deadline=deadline(timeout)), on_progress
            )
        assert ref is not None
        return ref

    async def teardown(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> None:
        """Irreversibly remove the workspace; a second teardown does nothing."""
        whom = check_on_behalf_of(on_behalf_of)
        check_slug(slug)
        quick = await self._core.store.get(slug)
        if key is None and teardown_done(quick):
            return
        with acting(on_behalf_of=whom):
            await self._wait(Request("teardown", slug, key=key, deadline=deadline(timeout)), on_progress)

    async def stop(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef:
        """Stop a ready workspace, keeping its disk and its backend id; a stopped one is
        returned as it is. ``unsupported`` naming the driver when it cannot stop."""
        with acting(on_behalf_of=check_on_behalf_of(on_behalf_of)):
            ref = await self._wait(Request("stop", slug, key=key, deadline=deadline(timeout)), on_progress)
        assert ref is not None
        return ref

    async def start(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef:
        """Start a stopped workspace again (the same backend objects); a ready one is returned
        as it is."""
        with acting(on_behalf_of=check_on_behalf_of(on_behalf_of)):
            ref = await self._wait(Request("start", slug, key=key, deadline=deadline(timeout)), on_progress)
        assert ref is not None
        return ref

    async def _wait(self, request: Request, on_progress: ProgressListener | None) -> DeploymentRef | None:
        operation, created = await self._admission.start(request, on_progress)
        return await self._operations.result_for_caller(request, operation, created, on_progress)

    # --- activity and autostop (README "Autostop") ----------------------------------------------
    async def touch(self, slug: str) -> Deployment:
        """Record activity on ``slug`` now (a console calls it while its user works): one
        store write, no event, no adapter; the record as it now is, with ``autostop_at``.
        ``not_found`` when there is none. A touch that races an autostop either withdraws it
        (the stop's ``begin`` is fenced on the activity it read) or is recorded after it."""
        check_slug(slug)
        await self._core.opened()
        record = await self._core.store.touch(slug, utc_now())
        if record is None:
            raise NotFound(f"no workspace {slug!r}")
        return self._queries.with_autostop(record)

    async def autostop_sweep(self) -> builtins.list[Operation]:
        """Stop every ready workspace whose tier's ``autostop`` has passed since its last
        activity, each as an operation of its own (actor ``hearth:autostop``, its first log line
        saying why); the operations started, running in the background. Skipped: a workspace
        with an operation queued or running, and one whose driver cannot stop (logged once per
        driver). ``hearth serve`` calls it every ``[serve] autostop_interval``; an embedded host
        calls it on its own clock."""
        core = self._core
        await core.opened()
        core.refresh_settings()
        bounds = {name: tier.autostop for name, tier in self.settings.tiers.items() if tier.autostop}
        if not bounds:
            return []
        now = utc_now()
        started: builtins.list[Operation] = []
        for record in await core.store.deployments(state="ready", include_torn_down=False):
            autostop = bounds.get(record.tier)
            if autostop is None or not autostop_due(record, autostop, now):
                continue
            if await self._recovery.active_operation(record.slug) is not None:
                continue  # never under a running operation: it is activity itself
            if not await self._stoppable(record.driver):
                continue
            request = Request(
                "stop",
                record.slug,
                idle_since=activity_of(record),
                why=autostop_reason(record, autostop),
            )
            try:
                with acting(actor=AUTOSTOP_ACTOR):
                    operation, created = await self._admission.start(request, None)
            except HearthError as exc:  # busy, a store error: the next sweep looks again
                log.info("autostop of %r not started: %s", record.slug, exc)
                continue
            if created:
                started.append(operation)
        return started

    async def _stoppable(self, driver: str) -> bool:
        """Whether ``driver``'s adapter announces stop and start; one that does not is logged
        once and left alone by the sweeps of this host (no failed operation per sweep)."""
        if driver in self._cannot_stop:
            return False
        core = self._core
        try:
            async with core.supervisor.use(driver, timeout=core.timeouts.handshake) as client:
                able = all(client.supports(method) for method in OPTIONAL_VERBS)
        except HearthError as exc:
            log.warning("autostop: the %r adapter could not be asked whether it stops: %s", driver, exc)
            return False
        if not able:
            self._cannot_stop.add(driver)
            log.warning(
                "autostop: the %r driver cannot stop (it does not announce stop and start); "
                "its workspaces on tiers with autostop are left running",
                driver,
            )
        return able

    # --- operations and events ------------------------------------------------------------------
    async def operation(self, ident: int) -> Operation:
        """The operation ``ident``, from any process, with its log; ``not_found`` if there is none."""
        return await self._operations.get(ident)

    async def operations(
        self,
        *,
        slug: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: int | None = None,
        actor: str | None = None,
    ) -> builtins.list[Operation]:
        """Operations by id, from every process, without their logs (``operation(id)`` and
        ``logs(slug)`` carry them); ``after``: the last id of the previous page (exclusive);
        ``actor``: only the operations that actor asked for (``Operation.actor``, exactly)."""
        return await self._operations.find(slug=slug, state=state, limit=limit, after=after, actor=actor)

    def watch(
        self, after: int = 0, slug: str | None = None, labels: Mapping[str, str] | None = None
    ) -> AsyncIterator[Event]:
        """Every event of every process sharing the store, after sequence number ``after``,
        as they come (``slug`` narrows it; ``labels`` to the workspaces that carried each of
        them then, ``_events.labelled``); resume from the last ``seq`` you saw. The input is
        checked here, before the first event; the iterator ends when the host closes."""
        if slug is not None:
            check_slug(slug)
        wanted = labels_given(labels)
        if wanted:
            return flattened(labelled(self._events.batches(sequence(after), slug=slug), wanted, self._core))
        return self._events.after(sequence(after), slug=slug)

    def watch_batches(
        self,
        after: int = 0,
        slug: str | None = None,
        operation: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> AsyncIterator[builtins.list[Event]]:
        """``watch`` in lists of the events that came together, for a reader that may not keep
        up (the daemon's streams): one that falls ``QUEUE`` (1,000) events behind ends there,
        holding nothing, instead of reading the store to catch up; resume it after the last
        ``seq`` it yielded (nothing is lost). With ``operation``, only its events, ending with
        its final one (at once for one that finished before ``after``). With ``labels``, only
        the events of workspaces that carried each of them then (``_events.labelled``)."""
        if slug is not None:
            check_slug(slug)
        if operation is not None:
            sequence(operation)
        wanted = labels_given(labels)
        batches = self._events.batches(sequence(after), slug=slug, operation=operation, end_behind=True)
        return labelled(batches, wanted, self._core) if wanted else batches

    async def prune_events(self) -> int:
        """Delete the ``progress`` events of operations finished more than ``[events] keep_days``
        ago (0 keeps them all); how many went. The daemon runs it hourly; state, workspace and
        log events are kept, so every operation's outcome and log lines stay."""
        days = self.settings.events.keep_days
        if not days:
            return 0
        return await self._core.store.prune_progress(utc_now() - timedelta(days=days))

    async def last_seq(self) -> int:
        """The ``seq`` of the last event in the store (0 for none): read it, then what you show,
        then ``watch(after=)`` it, and no change is missed (the daemon's ``Hearth-Seq``)."""
        return await self._core.store.last_seq()

    # --- queries --------------------------------------------------------------------------------
    async def status(self, slug: str, *, timeout: float | None = None) -> StatusReport:
        """What the backend shows now; ``tier_torn_down`` (a state, not an error) once torn down.
        A record a dead host left transient is settled first, from this same ``status``."""
        return await self._queries.status(slug, timeout)

    async def list(self) -> builtins.list[DeploymentRef]:
        """Every current deployment's ref, with ``last_status`` as the host recorded it."""
        return await self._queries.refs()

    async def deployments(
        self,
        *,
        state: str | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: int | None = None,
        after: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> builtins.list[Deployment]:
        """The host's records by slug (with bookkeeping such as the failure reason); ``after``
        is the last slug of the previous page; ``labels``: only records carrying each of them."""
        return await self._queries.deployments(
            state=state,
            driver=driver,
            include_torn_down=include_torn_down,
            limit=limit,
            after=after,
            labels=labels,
        )

    async def deployment(self, slug: str) -> Deployment:
        """The record of ``slug``; ``not_found`` if there is none. Like every access to a slug,
        it first settles what a dead host left there (its record is read after)."""
        return await self._queries.deployment(slug)

    async def logs(self, slug: str, *, limit: int | None = None) -> builtins.list[Operation]:
        """The operations run on ``slug`` (all generations), each with its log; ``limit``: the
        last ``limit`` of them. ``not_found`` for a slug nothing was ever done with."""
        return self._operations.bind(await self._queries.logs(slug, limit))

    def tiers(self) -> Tiers:
        """The tiers this host offers (built-in and hearth.toml's), by name: ``await host.tiers()``,
        as on ``RemoteHost`` (the list it returns without ``await`` is deprecated)."""
        self._core.refresh_settings()
        settings = self._core.settings
        return Tiers(settings.tiers[name] for name in sorted(settings.tiers))

    async def drivers(self) -> builtins.list[DriverInfo]:
        """What discovery finds for each driver (path, version, refusals) and the in-process ones."""
        core = self._core
        return await driver_infos(
            core.project_dir,
            core.home,
            in_process_drivers=core.supervisor.in_process_drivers(),
            version_probe=core.timeouts.version_probe,
        )

    async def check(
        self, slug: str, verb: str, *, tier: str | None = None, driver: str | None = None
    ) -> CheckResult:
        """Whether ``verb`` would be accepted now (the input, the lifecycle rules, an operation
        it would join or be refused by, and the adapter's ``validate_profile``); starts nothing."""
        if verb not in ("provision", "upgrade", "teardown", "stop", "start"):
            raise InvalidInput(f"{echo(verb)} is not a verb: provision, upgrade, teardown, stop or start")
        if verb == "provision" and (tier is None or driver is None):
            raise InvalidInput("checking a provision needs a tier and a driver")
        if verb == "upgrade" and tier is None:
            raise InvalidInput("checking an upgrade needs a tier")
        return await self._admission.check(Request(verb, slug, tier, driver))  # type: ignore[arg-type]

    async def plan(
        self, slug: str, *, tier: str, driver: str | None = None, timeout: float | None = None
    ) -> PlanResult:
        """What moving ``slug`` to ``tier`` would do, by the adapter's ``plan``; nothing is
        changed or recorded. For a new, failed or torn-down workspace that is a provision
        (``driver`` is needed for a new one), for a ready one an upgrade (``driver`` defaults to
        the record's). The input and the lifecycle rules are checked as the verb checks them, and
        what the verb would refuse is refused; ``unsupported`` when the adapter does not
        announce ``plan``."""
        return await self._admission.preview(slug, tier, driver, timeout)

    # --- reconcile, adopt, forget ---------------------------------------------------------------
    async def reconcile(
        self, slug: str | None = None, *, dry_run: bool = False, timeout: float | None = None
    ) -> ReconcileReport:
        """End the queued or running operations no live work is behind; settle records a dead
        host left transient and records whose outcome was not confirmed; mark ghosts; report
        orphans; delete nothing (see ``_lifecycle._reconcile``). ``slug`` limits it to one
        workspace; ``dry_run`` reports what it would do and changes nothing. One ``list`` per
        driver. A second run right after a first changes nothing; an unreachable backend
        changes nothing."""
        deadline(timeout)  # validates
        await self._core.opened()
        if slug is not None:
            check_slug(slug)
            await self._checks.existing(slug)
        observers = self._core.observers
        try:
            report = await self._recovery.reconciler(dry_run=dry_run, timeout=timeout).run(slug)
        except Exception:
            if not dry_run:
                observers.reconciled(None)
            raise
        if not dry_run:
            observers.reconciled(report)
        return report

    async def adopt(
        self,
        slug: str,
        *,
        driver: str,
        tier: str,
        timeout: float | None = None,
        on_behalf_of: str | None = None,
    ) -> Deployment:
        """Turn a deployment the adapter lists but hearth has no record of into a record."""
        whom = check_on_behalf_of(on_behalf_of)
        check_slug(slug)
        self._checks.driver(driver)
        deadline(timeout)
        await self._core.opened()
        self._checks.profile(tier, driver)
        began = time.monotonic()
        with acting(on_behalf_of=whom):
            adopted = await adopt(
                self._core, self._recovery.active_operation, slug, driver=driver, tier=tier, timeout=timeout
            )
        self._recorded("adopt", driver, began)
        return adopted

    async def forget(self, slug: str, *, on_behalf_of: str | None = None) -> Deployment:
        """Drop the record of ``slug`` and leave its backend alone; the record as it was."""
        whom = check_on_behalf_of(on_behalf_of)
        check_slug(slug)
        began = time.monotonic()
        with acting(on_behalf_of=whom):
            forgotten = await forget(self._core, self._recovery.active_operation, slug)
        self._recorded("forget", forgotten.driver, began)
        return forgotten

    def _recorded(self, verb: str, driver: str, began: float) -> None:
        """An adopt or a forget, recorded as a finished operation: the observers count it too."""
        observers = self._core.observers
        observers.operation_started(verb, driver)
        observers.operation_finished(verb, driver, "succeeded", time.monotonic() - began)

    async def label(self, slug: str, labels: Mapping[str, str | None]) -> Deployment:
        """Set the labels ``labels`` maps to a value and remove those it maps to None; the
        record as it now is. A change is a write of the record (one ``workspace`` event, no
        operation) under the slug's lock; while an operation runs on the slug it is ``busy``
        (that operation's outcome writes the record it read)."""
        check_slug(slug)
        changes = check_labels(labels, removals=True)
        await self._core.opened()
        await self._recovery.heal(slug)  # what a dead host left transient is settled first
        return await relabel(self._core, self._recovery.active_operation, slug, changes)


class Tiers(builtins.list[Tier]):
    """The list ``Host.tiers()`` returns: awaited, as ``RemoteHost.tiers()`` is, it gives a plain
    list; used as it is (the form before both hosts agreed), it still works and warns once."""

    _warned = False

    def __await__(self) -> Generator[Any, None, builtins.list[Tier]]:
        self._warned = True
        yield from ()
        return builtins.list(builtins.list.__iter__(self))

    def _deprecated(self) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                "Host.tiers() is a coroutine now, as on RemoteHost: use 'await host.tiers()'",
                DeprecationWarning,
                stacklevel=3,
            )

    def __iter__(self) -> Any:
        self._deprecated()
        return super().__iter__()

    def __len__(self) -> int:
        self._deprecated()
        return super().__len__()

    def __getitem__(self, index: Any) -> Any:
        self._deprecated()
        return super().__getitem__(index)

    def __contains__(self, item: object) -> bool:
        self._deprecated()
        return super().__contains__(item)
