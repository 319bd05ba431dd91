"""What the host returns: pydantic models, so ``model_dump(mode="json")`` serves an HTTP API as is.

``Deployment`` is the record of one workspace, ``Operation`` one verb run on it (an object with
an id, events and a result, visible from every process sharing the store), ``Event`` one entry of
the store-wide event log and ``LogLine`` one line of an operation's log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    PrivateAttr,
    computed_field,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from hearth_adaptersdk import DeploymentRef, Progress, State

from ._error_json import ErrorDetail
from ._errors import CallTimeout, error_from_json, retryable_kind

OperationState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
#: An operation in one of these states is over; its result or error no longer changes.
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
EventKind = Literal["state", "progress", "log", "cancel", "workspace"]
#: Every verb an operation records: the three starts, and ``adopt`` and ``forget`` (recorded
#: as finished operations).
OperationVerb = Literal["provision", "upgrade", "teardown", "adopt", "forget", "stop", "start"]
#: ``verb`` of an operation or an event: a ``str`` in Python (a store a newer hearth wrote may
#: hold a verb this one does not know), the enum of ``OperationVerb`` in JSON Schema.
VerbName = Annotated[str, Field(json_schema_extra={"enum": list(get_args(OperationVerb))})]


class _AsErrorDetail:
    """JSON Schema of an error kept as a plain dict (what ``error_from_json`` reads): the
    ``ErrorDetail`` model's, so that clients generated from the OpenAPI document get a type."""

    @classmethod
    def __get_pydantic_json_schema__(cls, _: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(ErrorDetail.__pydantic_core_schema__)


def _with_retryable(error: dict[str, Any]) -> dict[str, Any]:
    """An error as JSON carries ``retryable``: one a store kept from before it did gets its
    kind's (``_errors.RETRYABLE``)."""
    if "retryable" in error:
        return error
    return {**error, "retryable": retryable_kind(str(error.get("kind") or "error"))}


#: An error's JSON: a ``dict`` in Python, an ``ErrorDetail`` in JSON Schema (and in JSON it
#: always says whether it is ``retryable``).
ErrorJson = Annotated[dict[str, Any], _AsErrorDetail, PlainSerializer(_with_retryable, when_used="json")]


class OperationOwner(Protocol):
    """What an ``Operation`` acts through: a ``Host``, or a ``RemoteHost`` on a daemon."""

    async def _operation_result(self, ident: int, timeout: float | None) -> DeploymentRef | None: ...
    async def _operation_wait(self, ident: int, timeout: float | None) -> Operation: ...
    async def _operation_cancel(self, ident: int, reason: str) -> Operation: ...
    def _operation_events(self, ident: int, after: int) -> AsyncIterator[Event]: ...


class Deployment(BaseModel):
    """The host's record of one workspace (one generation of a slug)."""

    model_config = ConfigDict(frozen=True)

    slug: str
    generation: int
    tier: str
    driver: str
    state: State
    ref: DeploymentRef | None
    created_at: datetime
    updated_at: datetime
    reason: str | None = None
    #: The host could not confirm what the backend holds (a rollback that did not answer, an
    #: interrupted verb): ``reconcile`` (or the next access to the slug) asks the adapter.
    unconfirmed: bool = False
    #: The backend's own id of the workspace's resource (a container id, a VM name), as the
    #: adapter's progress named it during a verb; stored at once, so that what a host killed
    #: mid-verb left half created can be found.
    backend_id: str | None = None
    #: The operation working on the workspace now (queued or running; its id), else None: a
    #: console shows "upgrading…" and follows that operation without a second request. Filled
    #: by ``deployment``/``deployments`` (not stored with the record).
    operation: int | None = None
    #: Who owns what, as Docker and Kubernetes say it: keys and values in Kubernetes label
    #: syntax, at most 64 (``Host.label``; a provision's ``labels``). Never sent to adapters.
    labels: dict[str, str] = Field(default_factory=dict)
    #: The last activity the host knows of (README "Autostop"): a ``touch``, a verb on the
    #: slug, a backend's ``details.last_activity`` read by ``status``. None on records not
    #: yet written by a hearth that keeps it (they count from ``updated_at``).
    last_activity: datetime | None = None
    #: When the autostop sweep will stop it: ``last_activity`` plus the tier's ``autostop``;
    #: None when the tier has none or it is not ready. Filled by ``deployment``/``deployments``
    #: (computed, not stored), so a UI can show "stops in 12 min".
    autostop_at: datetime | None = None


def synthesized_ref(record: Deployment) -> DeploymentRef:
    """A ref for a record that has none (its provision failed): drivers find objects by name."""
    return DeploymentRef(
        workspace_slug=record.slug,
        tier=record.tier,
        driver=record.driver,
        created=record.created_at,
        last_status=record.state,
    )


def existing_json(record: Deployment) -> dict[str, Any]:
    """The ref of the workspace in the way, as a ``conflict`` error carries it (``existing``)."""
    return (record.ref or synthesized_ref(record)).model_dump(mode="json")


class LogLine(BaseModel):
    """One line of an operation's log: its progress, and the backend's output on a failure."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    level: str
    message: str
    fraction: float | None = None


class Event(BaseModel):
    """One entry of the store-wide event log; ``seq`` orders every event of every process.

    ``kind``: ``state`` (the operation moved to ``state``; a finished state carries ``error``
    and the workspace's ``record_state`` after its outcome, and nothing of the operation follows
    it), ``progress`` (the adapter's progress), ``log`` (a line of the backend's output on a
    failure), ``cancel`` (someone asked to cancel; ``message`` says why), ``workspace`` (the
    slug's record changed, whoever changed it: ``record`` is the record as it now is, None when
    the slug has none left; ``operation`` the one whose outcome or settle changed it, None for a
    change no running operation made: a reconcile's finding, ``adopt``, ``forget``).
    """

    model_config = ConfigDict(frozen=True)

    seq: int
    at: datetime
    #: The operation the event is of (None for a ``workspace`` event no operation caused).
    operation: int | None
    slug: str
    #: That operation's verb (None with it).
    verb: VerbName | None
    kind: EventKind
    state: OperationState | None = None
    level: str | None = None
    message: str | None = None
    fraction: float | None = None
    error: ErrorJson | None = None
    record_state: State | None = None
    #: The workspace's generation (its life: a reused slug starts the next one); None on events
    #: recorded before hearth stored it.
    generation: int | None = None
    #: A ``workspace`` event's record as it now is (None when the slug has none left).
    record: Deployment | None = None
    #: Its operation's actor and on-behalf-of (``Operation.actor``): None on an event of no
    #: operation, and on one of an operation recorded before hearth stored them.
    actor: str | None = None
    on_behalf_of: str | None = None

    @property
    def final(self) -> bool:
        """Whether this event ends its operation."""
        return self.kind == "state" and self.state in FINISHED

    def as_progress(self) -> Progress:
        """A ``progress`` event as the ``Progress`` an ``on_progress`` listener takes."""
        return Progress.model_validate(
            {
                "request_id": self.operation or 0,
                "level": self.level or "info",
                "message": self.message or "",
                "fraction": self.fraction,
            }
        )


class Operation(BaseModel):
    """One verb run on one workspace: a snapshot of its record, and a handle on the work.

    ``await op.result()`` waits for it and returns the ref (or raises its typed error);
    ``op.events(after=)`` yields its events until it finishes; ``await op.cancel(reason=)``
    asks whoever runs it to cancel, from any process; ``await op.wait(timeout=)`` returns a
    fresh snapshot. Cancelling a task that awaits an operation does not cancel the work.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    id: int
    slug: str
    generation: int
    verb: VerbName
    state: OperationState
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: ErrorJson | None = None
    #: The ref the operation left (``result`` in JSON; ``await op.result()`` waits for it).
    ref: DeploymentRef | None = Field(default=None, alias="result")
    #: The caller's idempotency key, if one was given.
    key: str | None = None
    tier: str | None = None
    driver: str | None = None
    reuse: bool = False
    #: The host process running it (``host:pid:token``).
    owner: str | None = None
    #: Why someone asked to cancel it, if anyone did.
    cancel_requested: str | None = None
    #: Who asked for it, as the host authenticated them: ``unix:<uid>(<user>)`` through the
    #: daemon's socket, ``token:<name>`` on its TCP listener, ``process:<uid>(<user>)`` for an
    #: embedded host (or what the embedding program named), ``hearth:<what>`` for the host's
    #: own work; None on operations recorded before hearth stored it.
    actor: str | None = None
    #: Whom the caller said it acts for (a console's end user): recorded and shown, never
    #: trusted for anything.
    on_behalf_of: str | None = None
    #: Its log lines: filled when it is read by id (``Host.operation``, ``wait``) and by
    #: ``Host.logs``; a list (``Host.operations``) and a start's answer leave it empty.
    log: tuple[LogLine, ...] = ()
    #: The ``seq`` of its final event once that is written (read by id, as its log): a console
    #: holding this snapshot knows whether its stream has passed the end.
    final_seq: int | None = None
    _host: OperationOwner | None = PrivateAttr(default=None)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def settled(self) -> DeploymentRef | None:
        """What a finished snapshot answers ``result()``: its ref (None for a teardown), or its
        typed error raised; ``timeout`` while it is not finished."""
        if not self.finished:
            raise CallTimeout(f"operation #{self.id} ({self.verb} of {self.slug!r}) is still {self.state}")
        if self.state == "succeeded":
            return self.ref if self.verb != "teardown" else None
        raise error_from_json(
            self.error or {"kind": self.state, "message": f"operation #{self.id} {self.state}"}
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def outcome(self) -> str:
        """The state as ``hearth logs`` has always named it (``running`` while not finished)."""
        return self.state if self.finished else "running"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ended_at(self) -> datetime | None:
        return self.finished_at

    def bound(self, host: OperationOwner) -> Operation:
        self._host = host
        return self

    def _owner(self) -> OperationOwner:
        if self._host is None:
            raise RuntimeError("this Operation is a plain record; get it from a Host to act on it")
        return self._host

    async def result(self, timeout: float | None = None) -> DeploymentRef | None:
        """Wait for the operation; its ref (None for a teardown), or its typed error."""
        return await self._owner()._operation_result(self.id, timeout)

    async def wait(self, timeout: float | None = None) -> Operation:
        """A fresh snapshot once it finished, or when ``timeout`` seconds passed."""
        return await self._owner()._operation_wait(self.id, timeout)

    async def cancel(self, reason: str = "cancelled by request") -> Operation:
        """Ask for the work to be cancelled (the owner acts on it, from any process)."""
        return await self._owner()._operation_cancel(self.id, reason)

    def events(self, after: int = 0) -> AsyncIterator[Event]:
        """Its events after ``after``; ends with the event that finishes it."""
        return self._owner()._operation_events(self.id, after)


def _resolved_json(resolved: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{"slug": slug, "from": old, "to": new} for slug, old, new in resolved]


class ReconcileReport(BaseModel):
    """What ``reconcile`` found and did; nothing is ever deleted. Its JSON form writes each
    resolution as ``{"slug", "from", "to"}``.

    It reports what changed, and only that: a second run right after a first reports nothing.
    A record reconcile cannot confirm (its backend is still ``provisioning``, ``upgrading`` or
    ``tearing_down``) is recorded ``failed`` and *not confirmed* and is in ``resolved`` once, on
    the run that records it so (``failed`` to ``failed`` when only its reason changes); the
    runs after it leave it out while the backend shows the same (the record's ``unconfirmed``
    says that reconcile still looks at it), and a dry run then finds no drift. ``unconfirmed``
    names those of ``resolved`` that are recorded so.
    """

    #: (slug, recorded state, resolved state) for records left transient or unconfirmed, each
    #: on the run that changed it (a record still not confirmed is not repeated).
    resolved: Annotated[
        list[tuple[str, str, str]], PlainSerializer(_resolved_json, return_type=list[dict[str, str]])
    ] = Field(default_factory=list)
    #: The slugs of ``resolved`` recorded *not confirmed* (their backend had not settled:
    #: reconcile looks again), on the run that recorded them so; not drift of their own.
    unconfirmed: list[str] = Field(default_factory=list)
    #: Records that claim a backend the adapter confirms absent: marked failed.
    ghosts: list[str] = Field(default_factory=list)
    #: Deployments an adapter lists that have no record: reported, never removed.
    orphans: list[DeploymentRef] = Field(default_factory=list)
    #: Slugs skipped because another process is working on them right now.
    busy: list[str] = Field(default_factory=list)
    #: Drivers that could not be asked, with the reason (their records are left as they are).
    unreachable: dict[str, str] = Field(default_factory=dict)
    #: A dry run: what is listed above would be done; nothing was changed.
    dry_run: bool = False

    @property
    def drift(self) -> bool:
        """Whether records and backends disagree (what a dry run exits 3 for)."""
        return bool(self.resolved or self.ghosts or self.orphans)


class CheckResult(BaseModel):
    """Whether a verb would be accepted now (``Host.check``); nothing was started."""

    slug: str
    #: ``provision``, ``upgrade``, ``teardown``, ``stop`` or ``start``.
    verb: Annotated[
        str, Field(json_schema_extra={"enum": ["provision", "upgrade", "teardown", "stop", "start"]})
    ]
    accepted: bool
    #: The error the verb would fail with at once, when it would not be accepted.
    error: ErrorJson | None = None
    #: The operation it would join (same verb and arguments already running).
    joins: int | None = None
