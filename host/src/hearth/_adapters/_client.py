"""``AdapterClient``: one live connection to one adapter, used like an in-process driver.

It does the handshake (with its own timeout), multiplexes requests by id, bounds each
call, tells the adapter to cancel on a timeout or when the calling task is cancelled,
passes progress events to a callback, and turns every failure into the host's typed
errors. Once the session fails (crash, garbage on stdout, unknown id), every pending
and later call fails at once with that error.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import jsonrpcclient
from pydantic import BaseModel, ValidationError

from hearth_adaptersdk import (
    Closed,
    Connection,
    DeploymentRef,
    FrameTooLarge,
    InitializeResult,
    Malformed,
    MessageTooLarge,
    PlanResult,
    Progress,
    ProvisioningProfile,
    StatusReport,
    SubprocessConnection,
    ValidationResult,
    child_environment,
    codes,
    encode,
)
from hearth_adaptersdk.transport import RequestEngine, SessionState, preview
from hearth_adaptersdk.wire import validation_problems

from .. import __version__
from .._errors import (
    AdapterCrashed,
    AdapterNotFound,
    AdapterRefused,
    CallTimeout,
    Cancelled,
    ClientClosed,
    HearthError,
    InvalidInput,
    ProtocolViolation,
    Unsupported,
    from_wire_error,
)

log = logging.getLogger("hearth")

ProgressCallback = Callable[[Progress], object]
M = TypeVar("M", bound=BaseModel)
HANDSHAKE_TIMEOUT = 10.0
#: How long a cancelled call waits for the adapter's answer (its rollback) before giving up.
CANCEL_GRACE = 30.0
#: How long ``close`` waits for the answer to ``shutdown``.
SHUTDOWN_GRACE = 1.0
#: Methods that change the backend: their cancel waits for the rollback (``cancel_grace``).
#: Any other call changes nothing, so a short wait for its -32800 is enough.
CHANGING = frozenset({"provision", "upgrade", "teardown"})
READ_ONLY_GRACE = 1.0
#: Stopping an adapter that did not answer a cancel: it gets this long after EOF, then SIGTERM
#: and this long again before SIGKILL (a healthy adapter's stop allows 2 s each).
STUCK_STDIN_GRACE = 0.2
STUCK_TERM_GRACE = 1.0


@dataclass
class Interruption:
    """What became of a call whose caller was cancelled, filled in before the cancellation
    propagates: the host records it (a late result is a success; an unanswered cancel leaves
    the rollback unconfirmed)."""

    #: The adapter answered the call (with its result, its error, or -32800) within the grace.
    answered: bool = False
    #: The answer's result when the work finished before the cancel took effect.
    result: Any = None
    succeeded: bool = False
    #: The answer's error (a -32800 ``Cancelled`` when the adapter stopped as asked).
    error: HearthError | None = None


class AdapterClient:
    """The host's end of a session with one adapter. Create it with ``launch`` or ``connect``."""

    def __init__(self, connection: Connection, *, cancel_grace: float = CANCEL_GRACE) -> None:
        self.connection = connection
        #: How long a cancelled call waits for the adapter to answer (its rollback to finish).
        self.cancel_grace = cancel_grace
        self.name = connection.name
        self.info: InitializeResult | None = None
        #: Called once if the session breaks unasked (exit, protocol violation, stuck): the
        #: supervisor counts it (``_observe``); a close you asked for never calls it.
        self.on_failure: Callable[[HearthError], None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._close_task: asyncio.Future[None] | None = None
        self._engine = RequestEngine(
            connection,
            on_unmatched=self._on_unmatched,
            on_closed=self._on_closed,
            closed_error=lambda: ClientClosed(
                f"the client of adapter {self.name} was closed; start a new one (or let Host do it)"
            ),
        )

    # --- creation -------------------------------------------------------------------------
    @classmethod
    async def launch(
        cls,
        path: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        timeout: float = HANDSHAKE_TIMEOUT,
        data_dir: str | Path | None = None,
        driver: str | None = None,
        env: Sequence[str] = (),
        cancel_grace: float = CANCEL_GRACE,
        cwd: str | Path | None = None,
    ) -> Self:
        """Start the adapter at ``path`` and complete the handshake within ``timeout`` seconds.

        ``driver`` (default: from the file name) must match the driver the adapter names;
        ``env`` lists extra environment variables the adapter may see; ``cwd`` is its working
        folder (the host gives the project folder, so that a tier's relative paths mean the
        project's wherever ``hearth`` runs).
        """
        path = Path(path)
        expected = driver or path.name.removeprefix(codes.ADAPTER_PREFIX)
        try:
            connection = await SubprocessConnection.spawn(
                [str(path)], name=path.name, env=child_environment(env), cwd=None if cwd is None else str(cwd)
            )
        except FileNotFoundError:
            raise AdapterNotFound(f"no adapter executable at {path}") from None
        except OSError as exc:
            raise AdapterRefused(f"cannot start {path}: {exc.strerror or exc}") from None
        return await cls.connect(
            connection,
            config=config,
            timeout=timeout,
            data_dir=data_dir,
            driver=expected,
            cancel_grace=cancel_grace,
        )

    @classmethod
    async def connect(
        cls,
        connection: Connection,
        *,
        config: Mapping[str, Any] | None = None,
        timeout: float = HANDSHAKE_TIMEOUT,
        data_dir: str | Path | None = None,
        driver: str | None = None,
        cancel_grace: float = CANCEL_GRACE,
    ) -> Self:
        """Handshake over an existing connection (e.g. ``MemoryConnection`` in tests)."""
        client = cls(connection, cancel_grace=cancel_grace)
        try:
            await client._handshake(config or {}, data_dir, driver, timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def _handshake(
        self, config: Mapping[str, Any], data_dir: str | Path | None, driver: str | None, timeout: float
    ) -> None:
        params = {
            "protocol_versions": [codes.PROTOCOL_VERSION],
            "host": {"name": "hearth", "version": __version__},
            "config": dict(config),
            "data_dir": str(data_dir) if data_dir is not None else None,
        }
        try:
            result = await self._call("initialize", params, timeout=timeout)
        except CallTimeout:
            raise CallTimeout(
                f"adapter {self.name} did not complete the handshake within {timeout:.3g} s"
            ) from None
        except AdapterCrashed as exc:
            raise AdapterCrashed(
                self.name, exc.exit_code, exc.stderr_tail, "exited before the handshake"
            ) from None
        except HearthError as exc:
            if getattr(exc, "code", None) == codes.UNSUPPORTED_VERSION:
                raise AdapterRefused(
                    f"adapter {self.name} speaks none of the host's protocol versions: {exc.message}"
                ) from None
            raise
        info = self._validated(InitializeResult, result, "initialize")
        if driver is not None and info.driver != driver:
            raise AdapterRefused(
                f"adapter {self.name} says it serves driver {info.driver!r}, but was found as {driver!r}"
            )
        self.info = info

    # --- the verbs ------------------------------------------------------------------------
    async def provision(
        self,
        slug: str,
        profile: ProvisioningProfile,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        interruption: Interruption | None = None,
    ) -> DeploymentRef:
        result = await self._call(
            "provision",
            {"slug": slug, "profile": _dump(profile)},
            timeout=timeout,
            on_progress=on_progress,
            interruption=interruption,
        )
        return self._validated(DeploymentRef, result, "provision")

    async def status(self, ref: DeploymentRef, *, timeout: float | None = None) -> StatusReport:
        result = await self._call("status", {"ref": _dump(ref)}, timeout=timeout)
        return self._validated(StatusReport, result, "status")

    async def upgrade(
        self,
        ref: DeploymentRef,
        profile: ProvisioningProfile,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        interruption: Interruption | None = None,
    ) -> DeploymentRef:
        result = await self._call(
            "upgrade",
            {"ref": _dump(ref), "profile": _dump(profile)},
            timeout=timeout,
            on_progress=on_progress,
            interruption=interruption,
        )
        return self._validated(DeploymentRef, result, "upgrade")

    async def teardown(
        self,
        ref: DeploymentRef,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        interruption: Interruption | None = None,
    ) -> None:
        await self._call(
            "teardown",
            {"ref": _dump(ref)},
            timeout=timeout,
            on_progress=on_progress,
            interruption=interruption,
        )

    async def stop(
        self,
        ref: DeploymentRef,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        interruption: Interruption | None = None,
    ) -> DeploymentRef:
        """Stop ``ref``, keeping its disk (protocol 1.3; ``Unsupported`` when not announced)."""
        return await self._run_state_verb("stop", ref, on_progress, timeout, interruption)

    async def start(
        self,
        ref: DeploymentRef,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        interruption: Interruption | None = None,
    ) -> DeploymentRef:
        """Start the stopped ``ref`` again (protocol 1.3; ``Unsupported`` when not announced)."""
        return await self._run_state_verb("start", ref, on_progress, timeout, interruption)

    async def _run_state_verb(
        self,
        method: str,
        ref: DeploymentRef,
        on_progress: ProgressCallback | None,
        timeout: float | None,
        interruption: Interruption | None,
    ) -> DeploymentRef:
        self._require(method)
        result = await self._call(
            method, {"ref": _dump(ref)}, timeout=timeout, on_progress=on_progress, interruption=interruption
        )
        return self._validated(DeploymentRef, result, method)

    async def list(self, *, timeout: float | None = None) -> list[DeploymentRef]:
        self._require("list")
        result = await self._call("list", {}, timeout=timeout)
        if not isinstance(result, list):
            raise ProtocolViolation(f"adapter {self.name} answered list with {type(result).__name__}")
        return [self._validated(DeploymentRef, item, "list") for item in result]

    async def validate_profile(
        self, profile: ProvisioningProfile, *, timeout: float | None = None
    ) -> ValidationResult:
        self._require("validate_profile")
        result = await self._call("validate_profile", {"profile": _dump(profile)}, timeout=timeout)
        return self._validated(ValidationResult, result, "validate_profile")

    async def plan(
        self,
        slug: str,
        ref: DeploymentRef | None,
        profile: ProvisioningProfile,
        *,
        timeout: float | None = None,
    ) -> PlanResult:
        """What provisioning ``slug`` (``ref`` None) or upgrading ``ref`` to ``profile`` would
        do, by the adapter's ``plan`` (optional: ``Unsupported`` when not announced). It
        changes nothing, so a cancel waits only briefly for its answer."""
        self._require("plan")
        params = {"slug": slug, "ref": _dump(ref) if ref is not None else None, "profile": _dump(profile)}
        result = await self._call("plan", params, timeout=timeout)
        return self._validated(PlanResult, result, "plan")

    def supports(self, method: str) -> bool:
        return self.info is not None and method in self.info.capabilities.methods

    def _require(self, method: str) -> None:
        if not self.supports(method):
            raise Unsupported(
                f"adapter {self.name} does not offer {method}",
                codes.UNSUPPORTED,
                {"kind": "unsupported", "reason": f"{method} is not announced", "method": method},
            )

    # --- requests -------------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        interruption: Interruption | None = None,
    ) -> Any:
        """One request. On its timeout, or when the caller is cancelled, the adapter is told to
        cancel and the call waits up to ``cancel_grace`` for the answer: a result that arrives
        then is a success; an adapter that never answers is stopped."""
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise InvalidInput(f"timeout must be a positive number of seconds, not {timeout!r}")
        engine = self._engine
        engine.check_open()
        interruption = interruption or Interruption()
        ident = engine.next_id()
        try:
            data = engine.request(method, params, ident)  # what cannot be sent is refused here
        except (MessageTooLarge, ValueError) as exc:
            raise ProtocolViolation(f"{method} request not sent: {exc}") from None
        answered = False
        try:
            try:
                _, future = await engine.start(
                    method,
                    params,
                    ident=ident,
                    data=data,
                    on_progress=self._progress_router(on_progress),
                )
                done = await _settled(future, timeout)
            except (ConnectionError, OSError):
                failure = engine.failure if isinstance(engine.failure, HearthError) else None
                raise failure or AdapterCrashed(
                    self.name, None, self.stderr_tail(), "stopped reading its input"
                ) from None
            except asyncio.CancelledError:
                in_flight = engine.pending(ident)
                if in_flight is not None:
                    await self._cancelled(ident, in_flight, interruption, self._grace(method))
                raise
            if not done:
                response = await self._timed_out(method, ident, future, timeout, interruption)
            else:
                response = future.result()
            answered = True
        finally:
            engine.finish(ident, abandon=not answered)
        return self._parse(response)

    def _progress_router(self, callback: ProgressCallback | None) -> Callable[[dict[str, Any]], None] | None:
        """The engine routes raw progress params; validate them, then call the caller."""
        if callback is None:
            return None

        def route(params: dict[str, Any]) -> None:
            try:
                event = Progress.model_validate(params)
            except ValidationError:
                log.warning(
                    "adapter %s sent a malformed progress event: %s",
                    self.name,
                    preview(encode_preview(params)),
                )
                return
            try:
                callback(event)
            except Exception:
                log.exception("progress callback failed")

        return route

    def _parse(self, response: dict[str, Any]) -> Any:
        parsed: Any = jsonrpcclient.parse(response)
        if isinstance(parsed, jsonrpcclient.Error):
            raise from_wire_error(self.name, parsed.code, parsed.message, parsed.data)
        return parsed.result

    def _grace(self, method: str) -> float:
        if method in {"initialize", "shutdown"}:
            return 0.0
        return self.cancel_grace if method in CHANGING else min(READ_ONLY_GRACE, self.cancel_grace)

    async def _timed_out(
        self,
        method: str,
        ident: int,
        future: asyncio.Future[dict[str, Any]],
        timeout: float | None,
        interruption: Interruption,
    ) -> dict[str, Any]:
        """The deadline passed: cancel, then wait (bounded) for the answer. A result is returned
        (the work finished); -32800 becomes a CallTimeout saying whether it rolled back."""
        if self._engine.state is SessionState.FAILED and self._engine.failure is not None:
            raise self._engine.failure
        grace = self._grace(method)
        await self._cancelled(ident, future, interruption, grace)
        bound = f"{timeout:.2g} s" if timeout is not None else "its bound"
        if not interruption.answered:
            unconfirmed = "; the rollback is not confirmed" if method in CHANGING else ""
            raise CallTimeout(
                f"{method} on {self.name} got no answer within {bound}, and the "
                f"adapter did not answer the cancel within {grace:g} s: it was "
                f"stopped{unconfirmed}",
                rolled_back=None,
            )
        if interruption.succeeded:
            return future.result()
        error = interruption.error
        if isinstance(error, Cancelled):
            rolled_back = error.data.get("rolled_back", True) is not False
            what = (
                "it was cancelled and rolled back"
                if rolled_back
                else "it was cancelled, but the adapter could not confirm its rollback"
            )
            raise CallTimeout(
                f"{method} on {self.name} got no answer within {bound}; {what}",
                rolled_back=rolled_back,
                data=error.data,
            )
        assert error is not None
        raise error

    async def _cancelled(
        self, ident: int, future: asyncio.Future[dict[str, Any]], interruption: Interruption, grace: float
    ) -> None:
        """Send ``cancel`` and wait up to ``cancel_grace`` for the call's answer; fill in
        ``interruption``. A second cancellation of the caller stops the wait (unconfirmed).
        An adapter that does not answer is stopped: the next call starts a fresh one."""
        if not future.done():
            self._engine.cancel(ident)
            if grace > 0:
                try:
                    await _settled(future, grace)
                except asyncio.CancelledError:
                    self._stop_unanswered(ident, "the caller stopped waiting for the rollback")
                    if future.done():
                        future.exception()
                    raise
        if not future.done():
            self._stop_unanswered(ident, f"it did not answer the cancel within {grace:g} s")
            if future.done():
                future.exception()  # retrieved: the failure is reported by the caller
            return
        if future.exception() is not None:
            return  # the session failed meanwhile (the adapter died): nothing is confirmed
        interruption.answered = True
        try:
            interruption.result = self._parse(future.result())
            interruption.succeeded = True
        except HearthError as exc:
            interruption.error = exc

    def _stop_unanswered(self, ident: int, why: str) -> None:
        """An adapter that does not answer a cancel is stuck: stop it at once (it would not
        read an EOF either), SIGTERM then SIGKILL, so the caller's bound is kept."""
        self._fail(CallTimeout(f"adapter {self.name} was stopped: {why} (request {ident})"), urgent=True)

    def _validated(self, model: type[M], value: Any, method: str) -> M:
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(validation_problems(exc)[:3])
            raise ProtocolViolation(
                f"adapter {self.name} answered {method} with an invalid {model.__name__}: {problems}"
            ) from None

    # --- incoming -------------------------------------------------------------------------
    def _on_unmatched(self, item: object) -> None:
        """A message the engine could not route: the client's policy is that only unknown
        notifications are allowed; anything else breaks the session."""
        if isinstance(item, Malformed):
            self._fail(
                ProtocolViolation(
                    f"adapter {self.name} wrote something that is not JSON-RPC on stdout: {preview(item.raw)}"
                )
            )
        elif not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
            self._fail(
                ProtocolViolation(
                    f"adapter {self.name} wrote something that is not a JSON-RPC 2.0 message: "
                    f"{preview(encode_preview(item))}"
                )
            )
        elif "method" in item:
            if "id" in item:
                self._fail(
                    ProtocolViolation(
                        f"adapter {self.name} sent a request ({item.get('method')!r}); adapters only answer"
                    )
                )
            # unknown notifications are allowed for forward compatibility
        elif item.get("id") is None and "error" in item:
            error = item.get("error") or {}
            self._fail(
                ProtocolViolation(
                    f"adapter {self.name} could not read a message from the host: "
                    f"{error.get('message')} {error.get('data')}"
                )
            )
        else:
            self._fail(
                ProtocolViolation(
                    f"adapter {self.name} answered id {item.get('id')!r}, which matches no request in flight"
                )
            )

    def _on_closed(self, closed: Closed) -> None:
        if self._engine.state in (SessionState.CLOSING, SessionState.CLOSED):
            return None
        if isinstance(closed.error, FrameTooLarge):
            self._fail(
                ProtocolViolation(
                    f"adapter {self.name} sent a line over the 16 MiB message limit ({closed.error})"
                )
            )
        else:
            self._fail(AdapterCrashed(self.name, closed.returncode, closed.stderr_tail))
        return None

    def _fail(self, error: HearthError, *, urgent: bool = False) -> None:
        """End the session: every pending and later call fails with ``error``."""
        closing = self._engine.state is SessionState.CLOSING
        if not self._engine.fail(error):
            return
        log.error("%s", error.message)
        if not closing and self.on_failure is not None:
            self.on_failure(error)
        if not closing:
            connection = self.connection
            self._reaper = asyncio.ensure_future(
                connection.close(stdin_grace=STUCK_STDIN_GRACE, term_grace=STUCK_TERM_GRACE)
                if urgent and isinstance(connection, SubprocessConnection)
                else connection.close()
            )

    # --- state and shutdown ----------------------------------------------------------------
    @property
    def failure(self) -> HearthError | None:
        """The error that ended the session, if one did."""
        failure = self._engine.failure
        return failure if isinstance(failure, HearthError) else None

    @property
    def state(self) -> SessionState:
        """``OPEN``, ``CLOSING``, ``CLOSED`` (you closed it) or ``FAILED`` (it broke)."""
        return self._engine.state

    @property
    def alive(self) -> bool:
        return self._engine.state is SessionState.OPEN

    def stderr_tail(self) -> builtins.list[str]:
        return self.connection.stderr_tail()

    async def close(self) -> None:
        """Bounded shutdown: ``shutdown`` request, then the transport's EOF/TERM/KILL ladder. A
        call after it raises ``ClientClosed``; closing again waits for the first close."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        engine = self._engine
        if engine.state is SessionState.OPEN and self.info is not None:
            with contextlib.suppress(HearthError, TimeoutError):
                await self._call("shutdown", {}, timeout=SHUTDOWN_GRACE)
        engine.closing()
        if self._reaper is None:
            self._reaper = asyncio.ensure_future(self.connection.close())
        await asyncio.shield(self._reaper)
        engine.closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _settled(future: asyncio.Future[Any], timeout: float | None) -> bool:
    """Wait until ``future`` is done or ``timeout`` passes; True when done. Unlike awaiting it,
    a cancellation of the caller never cancels ``future`` (its answer may still come and must
    be read); lighter than ``asyncio.wait`` on the hot path of every call."""
    if future.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(wake)
    timer = loop.call_later(timeout, wake) if timeout is not None else None
    try:
        await waiter
    finally:
        future.remove_done_callback(wake)
        if timer is not None:
            timer.cancel()
    return future.done()


def encode_preview(item: object) -> bytes:
    try:
        return encode(item)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return repr(item).encode()


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
