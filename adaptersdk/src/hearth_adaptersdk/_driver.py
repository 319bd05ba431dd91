"""The base class an adapter author subclasses, and the context each request gets."""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from .codes import LATER_OPTIONAL_METHODS, OPTIONAL_METHODS, VERBS
from .wire import DeploymentRef, Level, PlanResult, ProvisioningProfile, StatusReport

T = TypeVar("T")
log = logging.getLogger("hearth_adaptersdk")
#: The optional methods a driver announces by overriding them (``plan`` came with protocol 1.1,
#: ``stop`` and ``start`` with 1.3).
_OPTIONAL = tuple(dict.fromkeys((*OPTIONAL_METHODS, *LATER_OPTIONAL_METHODS)))


class RequestContext:
    """Handed to every verb: who is asking, a way to report progress, and a way to roll back."""

    __slots__ = (
        "_cleanup_failed",
        "_cleanups",
        "_deadline",
        "_emit",
        "_expired",
        "_timer",
        "_track",
        "_waiting",
        "method",
        "request_id",
    )

    def __init__(
        self,
        request_id: int,
        method: str,
        emit: Callable[[int, str, float | None, Level, str | None], None],
        track: Callable[[asyncio.Future[Any]], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self.method = method
        self._emit = emit
        self._track = track
        self._cleanups: set[asyncio.Future[Any]] = set()
        #: A cleanup raised (or was cancelled): the rollback is not confirmed.
        self._cleanup_failed = False
        #: Loop time at which the server stops waiting for this request's rollback (once cancelled).
        self._deadline: float | None = None
        self._expired: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: How many waits for cleanups are going on (they end at once when the grace expires).
        self._waiting = 0

    def progress(
        self,
        message: str,
        fraction: float | None = None,
        level: Level = "info",
        *,
        backend_id: str | None = None,
    ) -> None:
        """Send a ``progress`` notification for this request (ignored once it has answered).

        ``backend_id``: the backend's id of what this request is creating (a container id, a
        VM name), as soon as it is known; the host stores it at once, so a resource left half
        created by a host that was killed can be found. Send it once, early."""
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        self._emit(self.request_id, message, fraction, level, backend_id or None)

    async def cleanup(self, work: Awaitable[T]) -> T:
        """Run rollback or cleanup ``work`` to completion, even if the request is cancelled meanwhile.

        This is how a verb undoes its partial work::

            except asyncio.CancelledError:
                await ctx.cleanup(self.delete_what_i_created())
                raise

        ``work`` (a coroutine, task or future) runs as a task of its own that a cancel cannot
        interrupt; its result is returned and its exception raised. The server knows about it:
        a cancelled request is answered -32800 only once its cleanups finished (``data.rolled_back``
        is true) or the server's rollback grace ran out (``rolled_back`` false), and the process
        does not exit before its cleanups finished, up to that grace.

        If the caller is cancelled while it waits, the wait goes on and ``CancelledError`` is
        raised once ``work`` finished. If the rollback grace runs out first, ``CancelledError`` is
        raised at once and ``work`` goes on running in the background (the exit waits for it
        within the same grace).
        """
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        task.add_done_callback(self._cleanup_done)
        if not task.done():
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)
            if self._track is not None:
                self._track(task)
        expired = self._expiry()
        interrupted = False
        self._waiting += 1
        try:
            while not task.done() and not expired.done():
                try:
                    await asyncio.wait((task, expired), return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    interrupted = True  # finish the cleanup first; the cancel is raised afterwards
        finally:
            self._waiting -= 1
        if interrupted or not task.done():
            task.add_done_callback(_report_abandoned)  # nobody else will see how it ended
            raise asyncio.CancelledError
        return task.result()

    # --- for the server session ---------------------------------------------------------
    def _expiry(self) -> asyncio.Future[None]:
        if self._expired is None:
            self._expired = asyncio.get_running_loop().create_future()
        return self._expired

    def _start_rollback(self, deadline: float) -> None:
        """The request was cancelled: cleanups are waited for until ``deadline`` (loop time)."""
        self._deadline = deadline
        self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        """The rollback grace is over: every wait for a cleanup of this request ends now."""
        expired = self._expiry()
        if not expired.done():
            expired.set_result(None)

    async def _settle(self, grace: float) -> bool:
        """The verb ended cancelled: wait for its cleanups until the rollback deadline (``grace``
        from now if the server did not cancel it). True when every cleanup finished, and none
        of them failed: a rollback that raised did not roll back."""
        pending = {task for task in self._cleanups if not task.done()}
        if not pending:
            return self._all_succeeded()
        if self._deadline is None:
            self._start_rollback(asyncio.get_running_loop().time() + grace)
        expired = self._expiry()
        self._waiting += 1
        try:
            while pending and not expired.done():
                await asyncio.wait({*pending, expired}, return_when=asyncio.FIRST_COMPLETED)
                pending = {task for task in self._cleanups if not task.done()}
        finally:
            self._waiting -= 1
        return not pending and self._all_succeeded()

    def _all_succeeded(self) -> bool:
        return not self._cleanup_failed

    def _cleanup_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            self._cleanup_failed = True

    def _finished(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _report_abandoned(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a cleanup failed after its request had stopped waiting for it", exc_info=task.exception())


class Driver:
    """Subclass this and implement the four verbs; ``serve(MyDriver)`` does the rest.

    The SDK validates params with the wire models before a verb runs, so each verb gets
    typed arguments. Raise the errors of ``hearth_adaptersdk._errors`` to answer with a
    protocol error. ``list``, ``validate_profile``, ``plan``, ``stop`` and ``start`` are
    announced only when a subclass overrides them.

    Rolling back: on ``cancel`` (and on ``shutdown`` or stdin EOF) the verb's task is cancelled
    once (``asyncio.CancelledError``). The verb undoes its partial work through
    ``await ctx.cleanup(undo())`` and re-raises; work run by ``ctx.cleanup`` is not interrupted
    by a cancel, the -32800 answer waits for it (``data.rolled_back`` says whether it finished),
    and so does the process's exit, both up to the rollback grace (``serve(...,
    rollback_grace=)``, ``HEARTH_ROLLBACK_GRACE``, 30 s by default). Use it rather than
    ``asyncio.shield``, whose work the SDK cannot see: it would answer at once and might exit
    with the undo half done.
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

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
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

    async def plan(
        self,
        slug: str,
        ref: DeploymentRef | None,
        profile: ProvisioningProfile,
        ctx: RequestContext,
    ) -> PlanResult:
        """What ``provision(slug, profile)`` (``ref`` None) or ``upgrade(ref, profile)`` would
        do, as a list of actions, without changing anything in the backend (optional).

        Refuse what the verb would refuse, with the same error (``InvalidProfile``,
        ``Conflict``, ``InvalidTransition``, ``Unsupported``); mark ``destructive`` every
        action that destroys data, such as a disk."""
        raise NotImplementedError

    async def stop(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        """Stop the deployment, keeping its disk and its backend id, and return its ref with
        ``last_status`` ``stopped`` (optional, 1.3; announce ``start`` with it).

        Idempotent: stopping a stopped deployment changes nothing and returns its ref. Refuse a
        deployment that is not ready or stopped with ``InvalidTransition``; on a cancel, start it
        again through ``ctx.cleanup`` (a confirmed rollback leaves it ready)."""
        raise NotImplementedError

    async def start(self, ref: DeploymentRef, ctx: RequestContext) -> DeploymentRef:
        """Start a stopped deployment again: the same backend objects (never new ones), ready by
        the same rule as a provision; return its ref with ``last_status`` ``ready`` (optional,
        1.3). Idempotent: starting a ready deployment changes nothing. On a cancel, stop it again
        through ``ctx.cleanup``."""
        raise NotImplementedError

    async def close(self) -> None:
        """Called once when the server stops; release backend clients here."""

    @property
    def adapter_name(self) -> str:
        return f"hearth-adapter-{self.name}"

    def announced_methods(self) -> builtins.list[str]:
        """The methods to announce in ``capabilities.methods``."""
        methods = list(VERBS)
        for optional in _OPTIONAL:
            if getattr(type(self), optional) is not getattr(Driver, optional):
                methods.append(optional)
        return methods
