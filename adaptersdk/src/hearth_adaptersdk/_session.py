"""The adapter side of one connection: envelope checks, dispatch, cancellation, progress.

It owns no I/O: ``handle`` takes decoded messages and answers through ``send``, so the
stdio server and the in-memory test connection run exactly the same code.

Methods are called through jsonrpcserver's ``call`` (its Result types, error capture and
response building), but not through its whole ``dispatch`` pipeline: that one re-checks
every request against a JSON Schema and binds each call's signature with ``inspect``,
which together cost more than everything else a request does (``scripts/bench`` shows
the figures). ``_envelope_problem`` checks the envelope, and the wire models check params.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, NoReturn

from jsonrpcserver import JsonRpcError, Success
from jsonrpcserver.async_dispatcher import call as jsonrpc_call
from jsonrpcserver.dispatcher import to_response
from jsonrpcserver.request import Request
from jsonrpcserver.response import to_serializable_one
from pydantic import BaseModel, ValidationError

from . import codes
from ._codec import Decoded, Malformed, Unencodable, encode
from ._driver import Driver, RequestContext
from ._errors import DriverError
from .wire import (
    METHODS,
    Capabilities,
    EmptyParams,
    InitializeParams,
    InitializeResult,
    Level,
    PeerInfo,
    PlanParams,
    ProfileParams,
    ProvisionParams,
    RefParams,
    UpgradeParams,
    validation_problems,
)

log = logging.getLogger("hearth_adaptersdk")

#: Seconds a cancelled request's rollback (its ``ctx.cleanup`` work) is waited for before it is
#: answered -32800 with ``rolled_back: false``, and in-flight work is waited for before an exit.
DEFAULT_ROLLBACK_GRACE: Final = 30.0
#: After the grace: how long requests that stopped waiting for their cleanups get to answer.
_ANSWER_BOUND: Final = 1.0

Send = Callable[[bytes], None]
Method = Callable[..., Awaitable[Any]]
Handler = Callable[[Any, RequestContext], Awaitable[Any]]


def wire_error(exc: BaseException) -> JsonRpcError:
    """The one place where an exception raised while handling a request becomes a wire error."""
    if isinstance(exc, JsonRpcError):
        return exc
    if isinstance(exc, DriverError):
        return JsonRpcError(exc.code, exc.message, exc.data())
    if isinstance(exc, ValidationError):
        return JsonRpcError(
            codes.INVALID_PARAMS,
            "Invalid params",
            {"kind": "invalid_params", "errors": validation_problems(exc)},
        )
    if isinstance(exc, NotImplementedError):
        return JsonRpcError(
            codes.METHOD_NOT_FOUND,
            "Method not implemented by this adapter",
            {"kind": "method_not_found"},
        )
    log.error("unexpected error in the driver", exc_info=exc)
    return JsonRpcError(
        codes.INTERNAL_ERROR,
        f"internal error in the adapter: {type(exc).__name__}: {exc}",
        {"kind": "internal", "type": type(exc).__name__},
    )


def error_response(request_id: object, code: int, message: str, **data: Any) -> dict[str, Any]:
    """A complete error response; ``data`` always carries the code's kind."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": code, "message": message, "data": {"kind": codes.kind_of(code), **data}},
    }


def _envelope_problem(message: dict[str, Any]) -> str | None:
    if message.get("jsonrpc") != "2.0":
        return 'jsonrpc must be "2.0"'
    if not isinstance(message.get("method"), str):
        return "method must be a string"
    if "params" in message and not isinstance(message["params"], dict | list):
        return "params must be an object"
    if "id" in message:
        ident = message["id"]
        if not isinstance(ident, int) or isinstance(ident, bool):
            return "id must be an integer"
    return None


class ServerSession:
    """Serves one driver over one connection.

    A request's task is cancelled at most once (by ``cancel``, ``shutdown`` or ``close``); a
    cancelled request is answered once its ``ctx.cleanup`` work finished or ``rollback_grace``
    seconds after the cancel, whichever comes first.
    """

    def __init__(self, driver: Driver, send: Send, *, rollback_grace: float = DEFAULT_ROLLBACK_GRACE) -> None:
        self._driver = driver
        self._send = send
        self._rollback_grace = rollback_grace
        #: The requests in flight: their task and context, by id.
        self._requests: dict[int, tuple[asyncio.Task[None], RequestContext]] = {}
        #: Every ``ctx.cleanup`` still running, of any request (the exit waits for them).
        self._cleanups: set[asyncio.Future[Any]] = set()
        self._initialized = False
        self._shutting_down = False
        self._closed = False
        self._methods: dict[str, Method] = {
            "initialize": _method(METHODS["initialize"][0], self._initialize),
        }
        self._batch_waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._batches: set[asyncio.Task[None]] = set()

    # --- incoming ---------------------------------------------------------------------
    def handle(self, item: Decoded) -> None:
        """Take one decoded line; answers are sent as they become ready."""
        if isinstance(item, Malformed):
            self._write(error_response(None, codes.PARSE_ERROR, "Parse error", reason=item.reason))
        elif isinstance(item, list):
            self._handle_batch(item)
        else:
            response = self._accept(item)
            if response is not None:
                self._write(response)

    def _accept(self, message: Any) -> dict[str, Any] | None:
        """Start a request or act on a notification; return an immediate answer if any."""
        if not isinstance(message, dict):
            return error_response(None, codes.INVALID_REQUEST, "Invalid request", reason="not an object")
        problem = _envelope_problem(message)
        ident = message.get("id")
        if problem is not None:
            if "method" not in message and ("result" in message or "error" in message):
                return None  # a response: the host sends none, so there is nothing to match
            echo = ident if isinstance(ident, int | str) and not isinstance(ident, bool) else None
            return error_response(echo, codes.INVALID_REQUEST, "Invalid request", reason=problem)
        if "id" not in message:
            self._notification(message)
            return None
        name = message["method"]
        assert isinstance(ident, int)  # checked by _envelope_problem
        if not self._initialized and name != "initialize":
            return error_response(ident, codes.NOT_INITIALIZED, "Not initialized: send initialize first")
        if self._shutting_down:
            return error_response(
                ident, codes.INVALID_REQUEST, "Invalid request", reason="the adapter is shutting down"
            )
        method = self._methods.get(name)
        if method is None:
            return error_response(ident, codes.METHOD_NOT_FOUND, "Method not found", method=name)
        params = message.get("params", {})
        if not isinstance(params, dict):
            return error_response(
                ident, codes.INVALID_PARAMS, "Invalid params", errors=["params must be an object"]
            )
        if ident in self._requests:
            return error_response(
                ident, codes.INVALID_REQUEST, "Invalid request", reason=f"id {ident} is already in flight"
            )
        if name == "shutdown":
            # At once, not when its task runs: a request on the very next line already gets -32600.
            self._shutting_down = True
        ctx = RequestContext(ident, name, self._progress, self._track_cleanup)
        task = asyncio.create_task(self._answer(Request(name, params, ident), method, ctx))
        task.add_done_callback(lambda done: self._cancelled_before_start(done, ident))
        self._requests[ident] = (task, ctx)
        return None

    def _notification(self, message: dict[str, Any]) -> None:
        if message["method"] != "cancel":
            return
        params = message.get("params")
        target = params.get("id") if isinstance(params, dict) else None
        if isinstance(target, int):
            self._cancel(target)

    def _cancel(self, ident: int, deadline: float | None = None) -> None:
        """Cancel request ``ident`` unless it is already cancelled (it may be rolling back)."""
        entry = self._requests.get(ident)
        if entry is None:
            return
        task, ctx = entry
        if ctx._deadline is not None:
            return
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._rollback_grace
        ctx._start_rollback(deadline)
        task.cancel()

    def _track_cleanup(self, cleanup: asyncio.Future[Any]) -> None:
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)

    def _handle_batch(self, batch: list[Any]) -> None:
        if not batch:
            self._write(error_response(None, codes.INVALID_REQUEST, "Invalid request", reason="empty batch"))
            return
        task = asyncio.create_task(self._run_batch(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: list[Any]) -> None:
        waiting: list[asyncio.Future[dict[str, Any]]] = []
        immediate: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        for message in batch:
            answer = self._accept(message)
            if answer is not None:
                immediate.append(answer)
            elif isinstance(message, dict) and "id" in message and message["id"] in self._requests:
                future: asyncio.Future[dict[str, Any]] = loop.create_future()
                self._batch_waiters[message["id"]] = future
                waiting.append(future)
        answers = immediate + list(await asyncio.gather(*waiting))
        if answers:
            self._write(answers)

    # --- one request ------------------------------------------------------------------
    async def _answer(self, request: Request, method: Method, ctx: RequestContext) -> None:
        ident: int = request.id
        try:
            result = await jsonrpc_call(request, ctx, method)
            payload: dict[str, Any] = to_serializable_one(to_response(request, result))  # type: ignore[assignment]
        except asyncio.CancelledError:
            rolled_back = await ctx._settle(self._rollback_grace)
            payload = error_response(ident, codes.CANCELLED, "Request cancelled", rolled_back=rolled_back)
        finally:
            ctx._finished()
            del self._requests[ident]
        self._deliver(ident, payload)

    def _cancelled_before_start(self, task: asyncio.Task[None], ident: int) -> None:
        """A task cancelled before it ran never reaches ``_answer``'s handler: answer it here."""
        entry = self._requests.get(ident)
        if task.cancelled() and entry is not None and entry[0] is task:
            del self._requests[ident]
            entry[1]._finished()
            self._deliver(
                ident, error_response(ident, codes.CANCELLED, "Request cancelled", rolled_back=True)
            )

    def _deliver(self, ident: int, payload: dict[str, Any]) -> None:
        waiter = self._batch_waiters.pop(ident, None)
        if waiter is not None:
            waiter.set_result(payload)
        else:
            self._write(payload)

    def _progress(
        self, request_id: int, message: str, fraction: float | None, level: Level, backend_id: str | None
    ) -> None:
        if request_id in self._requests and not self._closed:
            params: dict[str, Any] = {
                "request_id": request_id,
                "message": message,
                "fraction": fraction,
                "level": level,
            }
            if backend_id is not None:  # only then: most events stay as protocol 1.0 wrote them
                params["backend_id"] = backend_id
            self._write({"jsonrpc": "2.0", "method": "progress", "params": params})

    def _write(self, payload: dict[str, Any] | list[Any]) -> None:
        if self._closed:
            return
        try:
            data = encode(payload)
        except Unencodable as exc:  # too large, or NaN/infinity in a driver's result
            ident = payload.get("id") if isinstance(payload, dict) else None
            data = encode(
                error_response(ident, codes.INTERNAL_ERROR, f"the adapter's answer could not be sent: {exc}")
            )
        self._send(data)

    # --- lifecycle --------------------------------------------------------------------
    async def close(self, grace: float | None = None) -> None:
        """Cancel what is in flight (each answers -32800 once rolled back), wait for the requests
        and every ``ctx.cleanup`` up to ``grace`` (default: the rollback grace), close the driver.

        What still runs after the grace is left running: the stdio server then exits anyway.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._rollback_grace if grace is None else grace)
        while True:
            for ident, (_, ctx) in list(self._requests.items()):
                if ctx.method != "shutdown":  # it answers once the others have: let it
                    self._cancel(ident, deadline)  # once each; a request may arrive while we wait
            pending = {task for task, _ in self._requests.values()} | self._cleanups
            remaining = deadline - loop.time()
            if not pending or remaining <= 0:
                break
            await asyncio.wait(pending, timeout=remaining)
        # The grace is over: requests still waiting for their cleanups stop waiting now and
        # answer (rolled_back: false) before the connection is considered closed.
        rolling_back = [task for task, ctx in self._requests.values() if ctx._waiting]
        for _, ctx in self._requests.values():
            ctx._expire()
        if rolling_back:
            await asyncio.wait(rolling_back, timeout=_ANSWER_BOUND)
        self._closed = True
        if self._initialized:
            await self._driver.close()

    async def _answer_in_flight(self, but: int) -> None:
        """``shutdown``: cancel every other request in flight and wait until each has answered
        (its result if it finished first, else -32800 once rolled back, within the rollback
        grace), so that when the host reads shutdown's answer nothing else is pending."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._rollback_grace
        tasks = set()
        for ident, (task, _) in list(self._requests.items()):
            if ident != but:
                self._cancel(ident, deadline)
                tasks.add(task)
        if tasks:  # each answers by its deadline; the bound covers a verb that ignores its cancel
            await asyncio.wait(tasks, timeout=self._rollback_grace + _ANSWER_BOUND)

    # --- methods ----------------------------------------------------------------------
    async def _initialize(self, params: InitializeParams, ctx: RequestContext) -> Any:
        if self._initialized:
            _raise(codes.INVALID_REQUEST, "Already initialized", reason="initialize was already answered")
        if codes.PROTOCOL_VERSION not in params.protocol_versions:
            _raise(
                codes.UNSUPPORTED_VERSION,
                f"No common protocol version: host offers {params.protocol_versions}, "
                f"this adapter speaks {list(codes.SUPPORTED_VERSIONS)}",
                supported=list(codes.SUPPORTED_VERSIONS),
            )
        driver = self._driver
        settings: Any = params.config
        if driver.config_model is not None:
            try:
                settings = driver.config_model.model_validate(params.config)
            except ValidationError as exc:  # say which key is wrong, and where it is set
                _raise(
                    codes.INVALID_PARAMS,
                    f"Invalid config ([adapters.{driver.name}] in .hearth/hearth.toml)",
                    errors=validation_problems(exc, "config"),
                )
        folder = Path(params.data_dir) if params.data_dir else None
        if folder is not None:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        await driver.setup(settings, folder)
        self._register(driver)
        self._initialized = True
        return InitializeResult(
            protocol_version=codes.PROTOCOL_VERSION,
            adapter=PeerInfo(name=driver.adapter_name, version=driver.version),
            driver=driver.name,
            capabilities=Capabilities(methods=driver.announced_methods()),
            config_schema=(
                driver.config_model.model_json_schema() if driver.config_model is not None else None
            ),
        )

    def _register(self, driver: Driver) -> None:
        async def provision(p: ProvisionParams, ctx: RequestContext) -> Any:
            return await driver.provision(p.slug, p.profile, ctx)

        async def status(p: RefParams, ctx: RequestContext) -> Any:
            return await driver.status(p.ref, ctx)

        async def upgrade(p: UpgradeParams, ctx: RequestContext) -> Any:
            return await driver.upgrade(p.ref, p.profile, ctx)

        async def teardown(p: RefParams, ctx: RequestContext) -> Any:
            await driver.teardown(p.ref, ctx)

        async def list_(p: EmptyParams, ctx: RequestContext) -> Any:
            return await driver.list(ctx)

        async def validate_profile(p: ProfileParams, ctx: RequestContext) -> Any:
            errors = list(await driver.validate_profile(p.profile, ctx))
            return {"valid": not errors, "errors": errors}

        async def plan(p: PlanParams, ctx: RequestContext) -> Any:
            return await driver.plan(p.slug, p.ref, p.profile, ctx)

        async def stop(p: RefParams, ctx: RequestContext) -> Any:
            return await driver.stop(p.ref, ctx)

        async def start(p: RefParams, ctx: RequestContext) -> Any:
            return await driver.start(p.ref, ctx)

        async def shutdown(p: EmptyParams, ctx: RequestContext) -> Any:
            self._shutting_down = True
            await self._answer_in_flight(but=ctx.request_id)

        handlers: dict[str, Handler] = {
            "provision": provision,
            "status": status,
            "upgrade": upgrade,
            "teardown": teardown,
            "shutdown": shutdown,
            "list": list_,
            "validate_profile": validate_profile,
            "plan": plan,
            "stop": stop,
            "start": start,
        }
        announced = {*driver.announced_methods(), "shutdown"}
        for name, handler in handlers.items():
            if name in announced:
                self._methods[name] = _method(METHODS[name][0], handler)


def _method(model: type[BaseModel], handler: Handler) -> Method:
    """A jsonrpcserver method: params validated by ``model``, every exception via ``wire_error``."""

    async def method(ctx: RequestContext, /, **params: Any) -> Any:  # a member may be named "ctx"
        try:
            result = await handler(model.model_validate(params), ctx)
            return Success(_to_json(result))
        except Exception as exc:
            raise wire_error(exc) from None

    return method


def _to_json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    return value


def _raise(code: int, message: str, **data: Any) -> NoReturn:
    raise JsonRpcError(code, message, {"kind": codes.kind_of(code), **data})
