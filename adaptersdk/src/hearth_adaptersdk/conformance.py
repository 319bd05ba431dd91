"""The conformance kit: every MUST of the protocol, against any adapter.

Run it from a shell (``hearth-adaptersdk conformance PATH``) or from pytest::

    report = await run_conformance("path/to/hearth-adapter-mine")      # or a Driver instance
    assert report.passed, report.render()

With no options it provisions a profile with empty caps and flags. ``KitOptions`` supplies a
real profile, the adapter's config, a profile the backend must refuse (-32023), one whose
provision must fail (-32031) and one slow enough to be cancelled; checks that need a missing
option are reported as skipped, and so are the checks of an executable (``--version``, the
refusal without ``HEARTH_PROTOCOL``, the exit when the parent dies) for a Driver run in memory.
``docs/protocol.md`` ("The conformance kit") says what each check asks of an adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from . import __version__, codes
from ._codec import Malformed, encode
from ._driver import Driver
from ._memory import MemoryConnection
from ._subprocess import SubprocessConnection, child_environment
from .testing import Peer, PeerClosed, Reply
from .wire import DeploymentRef, InitializeResult, PlanResult, Progress, StatusReport

Outcome = Literal["pass", "fail", "skip"]
#: A cancelled request stops within this many seconds of its ``cancel``: a result later than that
#: means the cancel was ignored.
CANCEL_BOUND = 1.0
#: Its -32800 comes once its rollback is done, within this many seconds of the ``cancel`` (the
#: host's default cancel grace).
ROLLBACK_BOUND = 30.0
#: An adapter exits within this many seconds of its stdin closing, its parent dying, or a line
#: over the size limit.
EXIT_BOUND = 5.0
#: The first ``progress`` of a slow request comes within this many seconds of the request.
PROGRESS_BOUND = 5.0
#: While two slow provisions run, another request is answered, and the second one starts (its
#: first progress comes), within this many seconds.
OVERLAP_BOUND = 5.0
#: How long, in seconds, the slow profile's provision must keep working when nobody cancels it.
SLOW_MINIMUM = 20.0
#: Bound on ``--version``, on the refusal to run without ``HEARTH_PROTOCOL=1``, and on the
#: handshake before the parent is killed.
START_BOUND = 10.0
#: The error a request gets once ``shutdown`` was received.
AFTER_SHUTDOWN = codes.INVALID_REQUEST
#: Members no version of the protocol defines, sent where a receiver must ignore unknown members.
UNKNOWN_MEMBER = "x_conformance_unknown"

# Starts the adapter given as its arguments, with this process's stdin and stdout (the kit's
# pipes), says the adapter's pid, and waits: the kit kills it to make the adapter an orphan.
# The adapter's stderr is a pipe only this process reads (and drains), so that its death closes
# the adapter's stderr too, as a dying host leaves it.
_INTERMEDIATE = """import subprocess, sys, threading
child = subprocess.Popen(sys.argv[1:], stderr=subprocess.PIPE)
drain = lambda: [None for _ in iter(lambda: child.stderr.read(65536), b"")]
threading.Thread(target=drain, daemon=True).start()
print(child.pid, flush=True)
child.wait()
"""


@dataclass
class KitOptions:
    """What the kit sends; every field has a default that works on any adapter."""

    #: The profile to provision (default: tier "conformance", empty caps and flags).
    profile: dict[str, Any] | None = None
    #: The profile to upgrade to (default: the profile with tier "<tier>-upgraded").
    upgrade_profile: dict[str, Any] | None = None
    #: The adapter's ``config`` for ``initialize``.
    config: dict[str, Any] = field(default_factory=dict)
    #: A profile the backend must refuse with -32023.
    refused_profile: dict[str, Any] | None = None
    #: A profile whose provision must fail with -32031 and roll back.
    failing_profile: dict[str, Any] | None = None
    #: A profile whose provision keeps working (with progress) for at least ``SLOW_MINIMUM``
    #: seconds unless cancelled; without it the checks of progress and concurrency are skipped,
    #: and cancel is checked on ``profile``.
    slow_profile: dict[str, Any] | None = None
    #: A profile whose ``stop`` (protocol 1.3) keeps working, with progress, until cancelled (its
    #: provision may be quick); without it the check of a cancelled stop is skipped.
    slow_stop_profile: dict[str, Any] | None = None
    #: Bound on each request, in seconds.
    timeout: float = 60.0
    #: Extra environment variables the adapter may see (as the host's config would name).
    env: list[str] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> KitOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass
class Check:
    name: str
    outcome: Outcome
    detail: str = ""
    exchanges: list[str] = field(default_factory=list)


@dataclass
class Report:
    target: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.outcome != "fail" for check in self.checks)

    def render(self) -> str:
        lines = [f"conformance of {self.target}"]
        for check in self.checks:
            lines.append(
                f"  {check.outcome.upper():4}  {check.name}" + (f": {check.detail}" if check.detail else "")
            )
            if check.outcome == "fail":
                lines += [f"          {line}" for line in check.exchanges]
        failed = sum(check.outcome == "fail" for check in self.checks)
        skipped = sum(check.outcome == "skip" for check in self.checks)
        passed = len(self.checks) - failed - skipped
        lines.append(f"{passed} passed, {failed} failed, {skipped} skipped")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "passed": self.passed,
            "checks": [check.__dict__ for check in self.checks],
        }


class CheckFailed(Exception):
    def __init__(self, detail: str, *replies: Reply | str) -> None:
        super().__init__(detail)
        self.replies = replies


def _show(item: Reply | str) -> list[str]:
    if isinstance(item, str):
        return [item]
    return [f"sent: {_short(item.sent)}", f"got:  {_short(item.response)}"]


def _short(value: Any, limit: int = 600) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _expect_error(reply: Reply, code: int, what: str) -> dict[str, Any]:
    error = reply.error
    if error is None or error.get("code") != code:
        raise CheckFailed(f"expected error {code} ({codes.kind_of(code)}) for {what}", reply)
    data = error.get("data")
    if not isinstance(data, dict) or data.get("kind") != codes.kind_of(code):
        raise CheckFailed(f"error data must be an object with kind {codes.kind_of(code)!r}", reply)
    return data


def _expect_ok(reply: Reply, what: str) -> Any:
    if not reply.ok:
        raise CheckFailed(f"{what} failed", reply)
    return reply.response["result"]


def _model(model: Any, value: Any, reply: Reply) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise CheckFailed(
            f"result is not a valid {model.__name__}: {exc.error_count()} problem(s)", reply
        ) from None


def _describe(response: dict[str, Any]) -> str:
    error = response.get("error")
    if isinstance(error, dict):
        return f"error {error.get('code')}"
    return "a result"


def _consume(future: asyncio.Future[Any]) -> None:
    """A request the kit stopped waiting for: its outcome is nobody's business any more."""
    if not future.cancelled():
        future.exception()


@dataclass
class _SlowRun:
    """One slow provision, cancelled once it is under way: three checks read it."""

    sent: dict[str, Any]
    #: Seconds from the request to its first progress, if any came before the answer.
    first_progress: float | None = None
    progress: list[dict[str, Any]] = field(default_factory=list)
    #: The answer (None: none within the request timeout).
    reply: Reply | None = None
    #: Seconds from the request to the answer, when it came before the cancel was sent.
    finished_before_cancel: float | None = None
    #: Seconds from the cancel to the answer.
    after_cancel: float | None = None


@dataclass
class _Shutdown:
    """``shutdown`` sent while a slow provision works: two checks read it."""

    #: The answer to ``shutdown``.
    reply: Reply | None = None
    #: Whether the provision was still in flight when ``shutdown`` was sent.
    was_in_flight: bool = False
    #: Whether its answer came before shutdown's.
    answered_first: bool = False
    #: Its answer (None: none within the bound after shutdown's).
    in_flight: Reply | None = None


class _Kit:
    def __init__(
        self,
        open_peer: Callable[[], Awaitable[Peer]],
        driver: str,
        options: KitOptions,
        data_dir: str,
        report: Report,
        *,
        path: Path | None = None,
    ) -> None:
        self.open_peer = open_peer
        self.driver = driver
        self.options = options
        self.data_dir = data_dir
        #: What the data_dir check found: how many reads were judged, and those that wrote.
        self.reads = 0
        self.read_writes: list[str] = []
        self.report = report
        #: The executable; None for a Driver run in memory.
        self.path = path
        self.peer: Peer | None = None
        self.announced: list[str] = []
        self.adapter_version: str | None = None
        self.ref: DeploymentRef | None = None
        self.torn_down = False
        #: Whether the adapter sent progress for the slow request (the concurrency check uses it).
        self.sends_progress = False
        base = options.profile or {
            "tier": "conformance",
            "driver": driver,
            "resource_caps": {},
            "driver_flags": {},
        }
        self.profile = base
        self.upgrade_profile = options.upgrade_profile or {**base, "tier": f"{base['tier']}-upgraded"}
        self.slow_profile = options.slow_profile or self.profile
        self.run_id = secrets.token_hex(3)
        self._progress: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
        self._progress_came = asyncio.Event()
        #: The check under way, to say when a line that is not JSON-RPC came.
        self.current = "start-up"
        #: Lines the host would end the session for at once (protocol_violation), with the
        #: check during which each came.
        self.junk: list[str] = []
        #: What checks 33 and 34 share: the deployment stopped and started, and the replies.
        self.stopper: dict[str, Any] = {}
        self.list_announced = False

    def slug(self, name: str) -> str:
        return f"conf-{self.run_id}-{name}"

    def bound(self, seconds: float) -> float:
        return min(seconds, self.options.timeout)

    async def open_judged(self) -> Peer:
        """A session whose every line is judged as the host judges it: what the host ends the
        session for is noted (and kept from the checks, which would misread it)."""
        peer = await self.open_peer()
        engine = peer._engine
        forward = engine._on_unmatched

        def judge(item: Any) -> None:
            problem = _not_json_rpc(item)
            if problem is None:
                forward(item)
            else:
                self.junk.append(f"{problem} (during '{self.current}')")

        engine._on_unmatched = judge
        return peer

    async def check(self, name: str, body: Callable[[], Awaitable[str | None]]) -> bool:
        self.current = name
        try:
            detail = await body()
        except CheckFailed as exc:
            self.report.checks.append(
                Check(name, "fail", str(exc), [line for r in exc.replies for line in _show(r)])
            )
            return False
        except TimeoutError:
            self.report.checks.append(Check(name, "fail", "no answer within the time bound"))
            return False
        except Exception as exc:
            self.report.checks.append(Check(name, "fail", f"{type(exc).__name__}: {exc}"))
            return False
        if detail is not None and detail.startswith("skip:"):
            self.report.checks.append(Check(name, "skip", detail[5:].strip()))
        else:
            self.report.checks.append(Check(name, "pass", detail or ""))
        return True

    def skip(self, name: str, why: str) -> None:
        self.report.checks.append(Check(name, "skip", why))

    async def call(self, method: str, params: dict[str, Any]) -> Reply:
        assert self.peer is not None
        return await self.peer.request(method, params, timeout=self.options.timeout)

    async def initialize(self, versions: list[int], peer: Peer | None = None) -> Reply:
        peer = peer or self.peer
        assert peer is not None
        return await peer.request(
            "initialize",
            {
                "protocol_versions": versions,
                "host": {"name": "hearth-adaptersdk-conformance", "version": __version__},
                "config": self.options.config,
                "data_dir": self.data_dir,
            },
            timeout=self.options.timeout,
        )

    async def raw_request(self, sent: dict[str, Any], data: bytes, timeout: float) -> Reply:
        """Send ``data`` (one encoded request, as is) and wait for the answer to ``sent["id"]``."""
        assert self.peer is not None
        _, future = await self.peer._engine.start(str(sent["method"]), None, ident=sent["id"], data=data)
        return await self.peer.finish(sent, future, timeout)

    def _on_progress(self, event: dict[str, Any]) -> None:
        params = event.get("params")
        if isinstance(params, dict) and isinstance(params.get("request_id"), int):
            self._progress[params["request_id"]].append(params)
            self._progress_came.set()

    async def first_progress(self, ident: int, answer: asyncio.Future[Any], bound: float) -> bool:
        """Wait up to ``bound`` seconds for the first progress of request ``ident``; False when
        none came before the bound or before its answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        while not self._progress.get(ident):
            remaining = deadline - loop.time()
            if answer.done() or remaining <= 0:
                return False
            self._progress_came.clear()
            came = asyncio.ensure_future(self._progress_came.wait())
            try:
                await asyncio.wait({came, answer}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                came.cancel()
        return True

    async def response_with_id(self, ident: int, bound: float) -> dict[str, Any] | None:
        """The next response with id ``ident`` among the messages that matched no request."""
        assert self.peer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        while (remaining := deadline - loop.time()) > 0:
            try:
                item = await self.peer.next_unmatched(remaining)
            except TimeoutError:
                return None
            if isinstance(item, dict) and "method" not in item and item.get("id") == ident:
                return item
        return None

    async def settle(self, started: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]) -> None:
        """Cancel provisions the kit started, wait (bounded) for their answers, and tear down
        what was made anyway; what does not answer in time is left to the session's end."""
        assert self.peer is not None
        for sent, future in started:
            if not future.done():
                with contextlib.suppress(ConnectionError, OSError):
                    await self.peer.notify("cancel", {"id": sent["id"]})
        pending = {future for _, future in started if not future.done()}
        if pending:
            await asyncio.wait(pending, timeout=self.bound(OVERLAP_BOUND))
        made = []
        for sent, future in started:
            if not future.done():
                future.add_done_callback(_consume)
                continue
            with contextlib.suppress(Exception):
                reply = await self.peer.finish(sent, future, 0)
                if reply.ok:
                    made.append(reply.response["result"])
        await asyncio.gather(*(self.teardown_quietly(ref) for ref in made))

    async def teardown_quietly(self, ref: Any) -> None:
        with contextlib.suppress(TimeoutError, PeerClosed, ConnectionError, OSError):
            await self.call("teardown", {"ref": ref})

    # --- the checks -------------------------------------------------------------------------
    async def run(self) -> None:
        self.peer = await self.open_judged()
        self.peer.on_progress = self._on_progress
        try:
            await self.check("hygiene: a request before initialize is -32002", self.not_initialized)
            await self.check("hygiene: no common version is -32010", self.unsupported_version)
            if not await self.check("hygiene: handshake", self.handshake):
                return
            await self.check("hygiene: a second initialize is -32600", self.second_initialize)
            await self.check("hygiene: an unknown method is -32601", self.unknown_method)
            await self.check("hygiene: invalid params are -32602", self.invalid_params)
            await self.check(
                "hygiene: a malformed line is -32700 and the session goes on", self.malformed_line
            )
            await self.check("hygiene: unknown members and notifications are ignored", self.unknown_members)
            await self.check("1. provision is idempotent on (slug, tier, driver)", self.idempotent)
            await self.check("2. status is read-only", self.status_read_only)
            await self.check("plan changes nothing and says what provision or upgrade would do", self.plan)
            await self.check("3. upgrade keeps workspace_slug", self.upgrade_keeps_slug)
            await self.check("4. teardown is irreversible and idempotent", self.teardown)
            await self.check("provision after teardown creates the workspace again", self.reprovision)
            slow: _SlowRun | Exception
            try:
                slow = await self.slow_cancelled()
            except Exception as exc:
                slow = exc
            await self.check("progress is sent while a slow request works", lambda: self.progress(slow))
            await self.check("5. cancel is honoured promptly", lambda: self.cancel(slow))
            await self.check(
                "5. a cancelled request is answered after its rollback, with data.rolled_back",
                lambda: self.rollback(slow),
            )
            await self.check("hygiene: requests are handled concurrently", self.concurrency)
            await self.check("hygiene: a duplicate id in flight is -32600", self.duplicate_id)
            await self.check("6. a failed provision rolls back and answers -32031", self.failed_provision)
            await self.check("a refused profile is -32023", self.refused_profile)
            closing: _Shutdown | Exception
            try:
                closing = await self.shutdown_with_work()
            except Exception as exc:
                closing = exc
            await self.check("hygiene: shutdown answers null", lambda: self.shutdown(closing))
            await self.check(
                "hygiene: shutdown answers the requests in flight before its own answer",
                lambda: self.shutdown_answers_in_flight(closing),
            )
            await self.check(
                f"hygiene: a request after shutdown is {AFTER_SHUTDOWN}", self.request_after_shutdown
            )
            await self.check("hygiene: the adapter exits when its stdin closes", self.exits_on_eof)
        finally:
            await self.peer.close()
        await self.check(
            "hygiene: a 16 MiB message is answered; a longer line ends the session", self.size_limit
        )
        await self.check("executable: --version prints hearth-adapter-<driver> <version>", self.version_flag)
        await self.check("executable: without HEARTH_PROTOCOL=1 it exits 2", self.refuses_without_protocol)
        await self.check("executable: it exits when its parent process dies", self.exits_when_parent_dies)
        await self.check("hygiene: every line on stdout is JSON-RPC", self.only_json_rpc)
        await self.check("hygiene: reads leave data_dir as they found it", self.reads_leave_data_dir)
        await self.stop_and_start()

    async def not_initialized(self) -> str:
        reply = await self.call("status", {})
        _expect_error(reply, codes.NOT_INITIALIZED, "status before initialize")
        return ""

    async def unsupported_version(self) -> str:
        reply = await self.initialize([999])
        data = _expect_error(reply, codes.UNSUPPORTED_VERSION, "protocol_versions [999]")
        if codes.PROTOCOL_VERSION not in data.get("supported", []):
            raise CheckFailed("data.supported must list the versions the adapter speaks", reply)
        return ""

    async def handshake(self) -> str:
        reply = await self.initialize([codes.PROTOCOL_VERSION])
        result: InitializeResult = _model(InitializeResult, _expect_ok(reply, "initialize"), reply)
        if result.protocol_version != codes.PROTOCOL_VERSION:
            raise CheckFailed("protocol_version must be 1", reply)
        if result.driver != self.driver:
            raise CheckFailed(f"driver is {result.driver!r}, the executable says {self.driver!r}", reply)
        missing = [verb for verb in codes.VERBS if verb not in result.capabilities.methods]
        if missing:
            raise CheckFailed(f"capabilities.methods lacks {', '.join(missing)}", reply)
        self.announced = result.capabilities.methods
        self.adapter_version = result.adapter.version
        return f"{result.adapter.name} {result.adapter.version}"

    async def second_initialize(self) -> str:
        reply = await self.initialize([codes.PROTOCOL_VERSION])
        _expect_error(reply, codes.INVALID_REQUEST, "a second initialize")
        after = await self.call("status", {"ref": self._absent_ref()})
        _expect_ok(after, "a status request after the refused initialize")
        return ""

    async def unknown_method(self) -> str:
        _expect_error(await self.call("no_such_method", {}), codes.METHOD_NOT_FOUND, "an unknown method")
        return ""

    async def invalid_params(self) -> str:
        reply = await self.call("provision", {"slug": "Not A Slug!", "profile": self.profile})
        data = _expect_error(reply, codes.INVALID_PARAMS, "a slug that is not a DNS label")
        if not isinstance(data.get("errors"), list):
            raise CheckFailed("data.errors must list the problems", reply)
        return ""

    async def malformed_line(self) -> str:
        assert self.peer is not None
        await self.peer.send_raw(b'{"jsonrpc": "2.0", "id": 7, "method"\n')
        answer = await self.peer.next_unmatched(self.options.timeout)
        if (
            isinstance(answer, Malformed)
            or not isinstance(answer, dict)
            or answer.get("id") is not None
            or (answer.get("error") or {}).get("code") != codes.PARSE_ERROR
        ):
            raise CheckFailed(
                "expected a -32700 error with id null", "sent: a line that is not JSON", f"got:  {answer!r}"
            )
        reply = await self.call("status", {"ref": self._absent_ref()})
        _expect_ok(reply, "a status request after the malformed line")
        return ""

    async def unknown_members(self) -> str:
        assert self.peer is not None
        while not self.peer.unmatched.empty():  # nothing stale may be taken for an answer below
            self.peer.unmatched.get_nowait()
        await self.peer.notify("x_conformance/unknown_notification", {UNKNOWN_MEMBER: True})
        await self.peer.notify("cancel", {"id": self.peer.next_id()})  # an id not in flight
        ident = self.peer.next_id()
        sent = {
            "jsonrpc": "2.0",
            "id": ident,
            "method": "status",
            "params": {"ref": {**self._absent_ref(), UNKNOWN_MEMBER: {"nested": [1]}}, UNKNOWN_MEMBER: 1},
            UNKNOWN_MEMBER: "an envelope member of a later protocol version",
        }
        reply = await self.raw_request(sent, encode(sent), self.options.timeout)
        if not reply.ok:
            raise CheckFailed(
                "a status request with unknown members (in the envelope, params and ref) must be "
                "answered as if they were not there",
                reply,
            )
        _model(StatusReport, reply.response["result"], reply)
        if not self.peer.unmatched.empty():
            stray = self.peer.unmatched.get_nowait()
            raise CheckFailed(
                "notifications must be ignored, not answered (one of an unknown method, and a "
                "cancel of an id that is not in flight)",
                f"got:  {_short(stray)}",
            )
        return ""

    def _absent_ref(self, slug: str | None = None, tier: str | None = None) -> dict[str, Any]:
        """A DeploymentRef the kit makes up: an adapter finds its deployments by slug."""
        return {
            "workspace_slug": slug or self.slug("never"),
            "tier": tier or self.profile["tier"],
            "driver": self.driver,
            "endpoint": None,
            "secrets_vault_path": None,
            "created": "2026-01-01T00:00:00Z",
            "last_status": "ready",
        }

    async def list_refs(self) -> list[Any] | None:
        if "list" not in self.announced:
            return None
        reply = await self.call("list", {})
        return sorted(json.dumps(item, sort_keys=True) for item in _expect_ok(reply, "list"))

    async def state_of(self, ref: dict[str, Any]) -> tuple[str, Reply]:
        reply = await self.call("status", {"ref": ref})
        report: StatusReport = _model(StatusReport, _expect_ok(reply, "status"), reply)
        return report.state, reply

    async def idempotent(self) -> str:
        slug = self.slug("a")
        first = await self.call("provision", {"slug": slug, "profile": self.profile})
        ref: DeploymentRef = _model(DeploymentRef, _expect_ok(first, "provision"), first)
        if ref.workspace_slug != slug:
            raise CheckFailed("the ref names another slug", first)
        self.ref = ref
        before = await self.list_refs()
        again = await self.call("provision", {"slug": slug, "profile": self.profile})
        if _expect_ok(again, "the second provision") != first.response["result"]:
            raise CheckFailed("the same triple gave another DeploymentRef", first, again)
        if await self.list_refs() != before:
            raise CheckFailed("the second provision changed what list shows", again)
        other = {**self.profile, "tier": f"{self.profile['tier']}-other"}
        conflict = await self.call("provision", {"slug": slug, "profile": other})
        data = _expect_error(conflict, codes.CONFLICT, "the same slug with another tier")
        if "existing" not in data:
            raise CheckFailed("conflict data must carry the existing DeploymentRef", conflict)
        stranger = "conformance-other" if self.driver != "conformance-other" else "conformance-another"
        foreign = await self.call(
            "provision", {"slug": self.slug("o"), "profile": {**self.profile, "driver": stranger}}
        )
        data = _expect_error(foreign, codes.INVALID_PROFILE, "a profile for another driver")
        if not isinstance(data.get("errors"), list) or not data["errors"]:
            raise CheckFailed("data.errors must say that the profile is for another driver", foreign)
        return ""

    async def status_read_only(self) -> str:
        tree = _tree(self.data_dir)
        try:
            return await self._status_read_only()
        finally:
            self.unchanged_data_dir(tree, "status, list and validate_profile")

    def unchanged_data_dir(self, before: dict[str, tuple[int, str]], calls: str) -> None:
        """Note what ``calls`` changed in ``data_dir`` since ``before`` (paths, modes, contents)
        for the data_dir check: where no ref or report shows it, a read that writes is caught.
        Revision 1.2 made this rule checkable; it is its own check, so that the checks 1.1
        defined keep judging what they judged."""
        after = _tree(self.data_dir)
        changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
        self.reads += 1
        if changed:
            self.read_writes.append(
                f"{calls} changed "
                + ", ".join(f"{path} ({_how(path, before, after)})" for path in changed[:10])
            )

    async def reading(self, method: str, params: dict[str, Any]) -> Reply:
        """Call ``method``, which must leave ``data_dir`` as it found it."""
        tree = _tree(self.data_dir)
        try:
            return await self.call(method, params)
        finally:
            self.unchanged_data_dir(tree, method)

    async def reads_leave_data_dir(self) -> str:
        if self.read_writes:
            raise CheckFailed(
                "status, list, validate_profile and plan must leave data_dir byte for byte as they "
                "found it (revision 1.2; the checklist's item 16): " + "; ".join(self.read_writes)
            )
        if not self.reads:
            return "skip: no read was made (the session ended before check 2)"
        return f"{self.reads} rounds of reads left it as they found it"

    async def _status_read_only(self) -> str:
        if "validate_profile" in self.announced:
            _expect_ok(await self.call("validate_profile", {"profile": self.profile}), "validate_profile")
        made_up = self._absent_ref(self.slug("unseen"))
        before = await self.list_refs()
        for _ in range(2):
            state, reply = await self.state_of(made_up)
            if state != "absent":
                raise CheckFailed(
                    f"status of a slug that was never provisioned is {state}, not absent", reply
                )
        if self.ref is None:
            return "skip: no deployment (provision failed)"
        params = {"ref": self.ref.model_dump(mode="json")}
        reports = []
        for _ in range(3):
            reply = await self.call("status", params)
            report: StatusReport = _model(StatusReport, _expect_ok(reply, "status"), reply)
            reports.append((report.state, report.endpoint, reply))
        if len({(state, endpoint) for state, endpoint, _ in reports}) != 1:
            raise CheckFailed("repeated status calls disagree", *(r for _, _, r in reports))
        if reports[0][0] != "ready":
            raise CheckFailed("a fresh deployment should be ready", reports[0][2])
        if await self.list_refs() != before:
            raise CheckFailed("status changed what list shows")
        return ""

    async def plan(self) -> str:
        if "plan" not in self.announced:
            return "skip: plan is not announced (it is optional)"
        slug = self.slug("planned")
        made_up = self._absent_ref(slug)
        before = await self.list_refs()
        reply = await self.reading("plan", {"slug": slug, "ref": None, "profile": self.profile})
        result: PlanResult = _model(PlanResult, _expect_ok(reply, "plan of a new workspace"), reply)
        odd = [action.action for action in result.actions if action.action not in ("create", "no_op")]
        if not result.actions or odd:
            raise CheckFailed(
                "the plan of a new workspace must list what it creates: only create (or no_op) actions",
                reply,
            )
        state, status = await self.state_of(made_up)
        if state != "absent":
            raise CheckFailed(f"after plan the new workspace is {state}: plan must change nothing", status)
        if await self.list_refs() != before:
            raise CheckFailed("plan changed what list shows", reply)
        if self.ref is None:
            return "skip: no deployment to plan an upgrade of (provision failed)"
        ref = self.ref.model_dump(mode="json")
        state_before, _ = await self.state_of(ref)
        before = await self.list_refs()
        reply = await self.reading(
            "plan", {"slug": self.ref.workspace_slug, "ref": ref, "profile": self.upgrade_profile}
        )
        if reply.error is not None and reply.error.get("code") == codes.UNSUPPORTED:
            return "the upgrade's plan is -32022 (unsupported), as the upgrade would be"
        _model(PlanResult, _expect_ok(reply, "plan of an upgrade"), reply)
        if await self.list_refs() != before:
            raise CheckFailed("plan changed what list shows", reply)
        state_after, status = await self.state_of(ref)
        if state_after != state_before:
            raise CheckFailed(f"plan changed the deployment from {state_before} to {state_after}", status)
        return ""

    async def upgrade_keeps_slug(self) -> str:
        if self.ref is None:
            return "skip: no deployment (provision failed)"
        reply = await self.call(
            "upgrade", {"ref": self.ref.model_dump(mode="json"), "profile": self.upgrade_profile}
        )
        if reply.error is not None and reply.error.get("code") == codes.UNSUPPORTED:
            return "skip: the adapter answers -32022 (unsupported) to this upgrade"
        upgraded: DeploymentRef = _model(DeploymentRef, _expect_ok(reply, "upgrade"), reply)
        if upgraded.workspace_slug != self.ref.workspace_slug:
            raise CheckFailed("upgrade changed workspace_slug", reply)
        self.ref = upgraded
        return ""

    async def teardown(self) -> str:
        if self.ref is None:
            return "skip: no deployment (provision failed)"
        params = {"ref": self.ref.model_dump(mode="json")}
        first = await self.call("teardown", params)
        if _expect_ok(first, "teardown") is not None:
            raise CheckFailed("teardown must answer null", first)
        self.torn_down = True
        again = await self.call("teardown", params)
        _expect_ok(again, "a second teardown (of a torn-down workspace: a no-op)")
        reply = await self.call("status", params)
        report: StatusReport = _model(StatusReport, _expect_ok(reply, "status after teardown"), reply)
        if report.state not in ("tier_torn_down", "absent"):
            raise CheckFailed(f"status after teardown is {report.state}", reply)
        listed = await self.list_refs()
        if listed is not None and any(
            json.loads(item)["workspace_slug"] == self.ref.workspace_slug for item in listed
        ):
            raise CheckFailed("list still shows the torn-down deployment", reply)
        unseen = await self.call("teardown", {"ref": self._absent_ref(self.slug("unseen"))})
        if _expect_ok(unseen, "teardown of a slug never provisioned") is not None:
            raise CheckFailed("teardown must answer null", unseen)
        return ""

    async def reprovision(self) -> str:
        if self.ref is None or not self.torn_down:
            return "skip: no torn-down deployment (see the checks above)"
        slug = self.ref.workspace_slug
        reply = await self.call("provision", {"slug": slug, "profile": self.profile})
        ref: DeploymentRef = _model(
            DeploymentRef, _expect_ok(reply, "provision of a slug that was torn down"), reply
        )
        if ref.workspace_slug != slug:
            raise CheckFailed("the ref names another slug", reply)
        state, status = await self.state_of(ref.model_dump(mode="json"))
        if state != "ready":
            raise CheckFailed(f"the workspace provisioned again is {state}, not ready", status)
        down = await self.call("teardown", {"ref": ref.model_dump(mode="json")})
        _expect_ok(down, "teardown of the workspace provisioned again")
        return ""

    async def slow_cancelled(self) -> _SlowRun:
        """Provision the slow profile; once it is under way (its first progress, or at once
        without a slow profile) cancel it, and note what came back and when."""
        assert self.peer is not None
        slug = self.slug("c")
        sent, future = await self.peer.start_request(
            "provision", {"slug": slug, "profile": self.slow_profile}
        )
        run = _SlowRun(sent)
        ident: int = sent["id"]
        started = time.monotonic()
        if self.options.slow_profile is not None and await self.first_progress(
            ident, future, self.bound(PROGRESS_BOUND)
        ):
            run.first_progress = time.monotonic() - started
        if future.done():
            run.finished_before_cancel = time.monotonic() - started
        else:
            await self.peer.notify("cancel", {"id": ident})
            cancelled = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), self.options.timeout)
            if future.done():
                run.after_cancel = time.monotonic() - cancelled
        run.progress = list(self._progress.get(ident, []))
        if future.done():
            run.reply = await self.peer.finish(sent, future, 0)
            if run.reply.ok:
                await self.teardown_quietly(run.reply.response["result"])
        else:
            future.add_done_callback(_consume)
        self.sends_progress = bool(run.progress)
        return run

    async def progress(self, slow: _SlowRun | Exception) -> str:
        if isinstance(slow, Exception):
            raise slow
        for params in slow.progress:
            try:
                Progress.model_validate(params)
            except ValidationError as exc:
                raise CheckFailed(
                    f"a progress notification is not valid: {exc.errors()[0]['msg']}",
                    f"got:  {_short(params)}",
                ) from None
        if self.options.slow_profile is None:
            return "skip: give slow_profile to check it"
        if slow.first_progress is not None:
            return f"first progress {slow.first_progress * 1000:.0f} ms after the request"
        if slow.finished_before_cancel is not None:
            assert slow.reply is not None
            raise CheckFailed(
                f"the slow provision answered ({_describe(slow.reply.response)}) after "
                f"{slow.finished_before_cancel:.2f} s without any progress",
                slow.reply,
            )
        raise CheckFailed(
            f"no progress within {self.bound(PROGRESS_BOUND):g} s of a slow provision",
            f"sent: {_short(slow.sent)}",
        )

    async def cancel(self, slow: _SlowRun | Exception) -> str:
        if isinstance(slow, Exception):
            raise slow
        if slow.finished_before_cancel is not None:
            assert slow.reply is not None
            if self.options.slow_profile is None:
                return f"finished before the cancel arrived ({slow.finished_before_cancel * 1000:.0f} ms)"
            raise CheckFailed(
                f"the slow provision answered after {slow.finished_before_cancel:.2f} s, before the kit "
                f"could cancel it: slow_profile must keep provision working for at least {SLOW_MINIMUM:g} s",
                slow.reply,
            )
        if slow.reply is None:
            raise CheckFailed(
                f"no answer within {self.options.timeout:g} s of the cancel", f"sent: {_short(slow.sent)}"
            )
        assert slow.after_cancel is not None
        if slow.reply.ok:
            if slow.after_cancel > CANCEL_BOUND:  # a cancel racing completion is settled within it
                raise CheckFailed(
                    f"the cancel was ignored: the provision answered its result {slow.after_cancel:.2f} s "
                    f"after it (a request stops within {CANCEL_BOUND:g} s)",
                    slow.reply,
                )
            return f"finished before the cancel took effect ({slow.after_cancel * 1000:.0f} ms)"
        if slow.after_cancel > ROLLBACK_BOUND:
            raise CheckFailed(
                f"answered {slow.after_cancel:.2f} s after cancel (bound {ROLLBACK_BOUND:g} s, "
                "the host's cancel grace)",
                slow.reply,
            )
        _expect_error(slow.reply, codes.CANCELLED, "a cancelled provision")
        took = f"-32800 after {slow.after_cancel * 1000:.0f} ms"
        return took if slow.after_cancel <= CANCEL_BOUND else f"{took} (its rollback took the time)"

    async def rollback(self, slow: _SlowRun | Exception) -> str:
        if isinstance(slow, Exception):
            raise slow
        reply = slow.reply
        if reply is None:
            return "skip: the cancelled request was not answered (see the check above)"
        if reply.ok:
            return "skip: the provision finished instead of being cancelled (see the check above)"
        error = reply.error or {}
        if error.get("code") != codes.CANCELLED:
            return "skip: the cancelled request was not answered -32800 (see the check above)"
        data = error.get("data")
        rolled_back = data.get("rolled_back", True) if isinstance(data, dict) else True
        if not isinstance(rolled_back, bool):
            raise CheckFailed("data.rolled_back must be true or false", reply)
        if not rolled_back:
            raise CheckFailed(
                "data.rolled_back is false: the partial work was not undone before the answer", reply
            )
        said = isinstance(data, dict) and "rolled_back" in data
        slug = slow.sent["params"]["slug"]
        state, status = await self.state_of(self._absent_ref(slug, self.slow_profile["tier"]))
        if state not in ("absent", "tier_torn_down"):
            raise CheckFailed(
                f"right after the -32800 answer (rolled_back: true) the backend shows {state}: "
                "answer only once the rollback finished",
                reply,
                status,
            )
        if not said:
            return "nothing left behind (data.rolled_back is missing: read as true; it SHOULD be sent)"
        return "rolled back; nothing left behind"

    async def concurrency(self) -> str:
        assert self.peer is not None
        if self.options.slow_profile is None:
            return "skip: give slow_profile to check it"
        bound = self.bound(OVERLAP_BOUND)
        started: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        status_sent: dict[str, Any] = {}
        status_answer: asyncio.Future[dict[str, Any]] | None = None
        try:
            for name in ("x", "y"):
                params = {"slug": self.slug(name), "profile": self.slow_profile}
                started.append(await self.peer.start_request("provision", params))
            status_sent, status_answer = await self.peer.start_request("status", {"ref": self._absent_ref()})
            await asyncio.wait({status_answer}, timeout=bound)
            (_, first), (second_sent, second) = started
            if not status_answer.done():
                raise CheckFailed(
                    f"a status request was not answered within {bound:g} s while two slow provisions "
                    "ran: an adapter must handle requests concurrently",
                    f"sent: {_short(status_sent)}",
                )
            reply = await self.peer.finish(status_sent, status_answer, 0)
            _expect_ok(reply, "a status request while two slow provisions ran")
            for sent, future in started:
                if future.done():
                    raise CheckFailed(
                        f"a slow provision was answered ({_describe(future.result())}) while the "
                        "other one ran",
                        f"sent: {_short(sent)}",
                        f"got:  {_short(future.result())}",
                    )
            if not self.sends_progress:
                return "a status was answered while two slow provisions ran"
            if not await self.first_progress(second_sent["id"], second, bound) or first.done():
                raise CheckFailed(
                    f"the second slow provision sent no progress within {bound:g} s while the first "
                    "one ran: it did not start (requests must run concurrently)",
                    f"sent: {_short(second_sent)}",
                )
            return "two slow provisions ran at once, and a status was answered meanwhile"
        finally:
            if status_answer is not None and not status_answer.done():
                status_answer.add_done_callback(_consume)
            await self.settle(started)

    async def duplicate_id(self) -> str:
        """A provision, and on the same line-burst a status with the provision's id: the status
        is refused, the provision goes on (and is cancelled). Both are sent raw, so that every
        answer with that id comes to the kit, whichever comes first."""
        assert self.peer is not None
        slug = self.slug("d")
        ident = self.peer.next_id()
        original = {
            "jsonrpc": "2.0",
            "id": ident,
            "method": "provision",
            "params": {"slug": slug, "profile": self.slow_profile},
        }
        duplicate = {"jsonrpc": "2.0", "id": ident, "method": "status", "params": {"ref": self._absent_ref()}}
        await self.peer.send_raw(encode(original) + encode(duplicate))
        bound = self.bound(OVERLAP_BOUND)
        first = await self.response_with_id(ident, bound)
        if first is None:
            with contextlib.suppress(ConnectionError, OSError):
                await self.peer.notify("cancel", {"id": ident})
            raise CheckFailed(
                f"no answer within {bound:g} s to a request whose id ({ident}) was in flight: it "
                "must be refused at once with -32600",
                f"sent: {_short(duplicate)}",
            )
        result = first.get("result")
        if isinstance(result, dict) and result.get("workspace_slug") == slug:
            await self.response_with_id(ident, bound)  # the duplicate's answer
            await self.teardown_quietly(result)
            return "skip: the provision finished before its duplicate arrived (give slow_profile)"
        with contextlib.suppress(ConnectionError, OSError):
            await self.peer.notify("cancel", {"id": ident})
        second = await self.response_with_id(ident, bound)
        if second is not None and isinstance(second.get("result"), dict):
            await self.teardown_quietly(second["result"])
        reply = Reply(duplicate, first)
        _expect_error(reply, codes.INVALID_REQUEST, f"a request whose id ({ident}) is already in flight")
        return ""

    async def failed_provision(self) -> str:
        if self.options.failing_profile is None:
            return "skip: give failing_profile to check it"
        slug = self.slug("f")
        profile = self.options.failing_profile
        reply = await self.call("provision", {"slug": slug, "profile": profile})
        data = _expect_error(reply, codes.BACKEND_FAILURE, "a provision that must fail")
        if not isinstance(data.get("rolled_back"), bool) or not isinstance(data.get("logs"), list):
            raise CheckFailed("data must carry rolled_back (bool) and logs (list)", reply)
        state, status = await self.state_of(self._absent_ref(slug, profile["tier"]))
        if state != "absent":
            raise CheckFailed(f"after the failed provision the backend shows {state}", reply, status)
        return ""

    async def refused_profile(self) -> str:
        if self.options.refused_profile is None:
            return "skip: give refused_profile to check it"
        reply = await self.call(
            "provision", {"slug": self.slug("r"), "profile": self.options.refused_profile}
        )
        data = _expect_error(reply, codes.INVALID_PROFILE, "a profile the backend must refuse")
        if not isinstance(data.get("errors"), list) or not data["errors"]:
            raise CheckFailed("data.errors must say what cannot be honoured", reply)
        return ""

    async def shutdown_with_work(self) -> _Shutdown:
        """``shutdown`` while a slow provision is under way (without a slow profile: alone)."""
        assert self.peer is not None
        closing = _Shutdown()
        started: tuple[dict[str, Any], asyncio.Future[dict[str, Any]]] | None = None
        if self.options.slow_profile is not None:
            started = await self.peer.start_request(
                "provision", {"slug": self.slug("s"), "profile": self.slow_profile}
            )
            sent, future = started
            await self.first_progress(sent["id"], future, self.bound(PROGRESS_BOUND))
            if future.done():
                closing.in_flight = await self.peer.finish(sent, future, 0)
                started = None
        order: list[str] = []  # the answers in the order they arrived (callbacks run in it)
        if started is not None:
            started[1].add_done_callback(lambda _: order.append("in flight"))
        shutdown_sent, shutdown_answer = await self.peer.start_request("shutdown", {})
        shutdown_answer.add_done_callback(lambda _: order.append("shutdown"))
        closing.reply = await self.peer.finish(shutdown_sent, shutdown_answer, self.options.timeout)
        if started is not None:
            sent, future = started
            try:
                closing.in_flight = await self.peer.finish(sent, future, self.bound(OVERLAP_BOUND))
            except TimeoutError:
                closing.in_flight = None
            await asyncio.sleep(0)  # let the done callbacks run
            closing.answered_first = order[:1] == ["in flight"]
            closing.was_in_flight = True
        return closing

    async def shutdown(self, closing: _Shutdown | Exception) -> str:
        if isinstance(closing, Exception):
            raise closing
        assert closing.reply is not None
        if _expect_ok(closing.reply, "shutdown") is not None:
            raise CheckFailed("shutdown must answer null", closing.reply)
        return ""

    async def shutdown_answers_in_flight(self, closing: _Shutdown | Exception) -> str:
        if isinstance(closing, Exception):
            raise closing
        if self.options.slow_profile is None:
            return "skip: give slow_profile to check it"
        if not closing.was_in_flight:
            return "skip: the slow provision finished before shutdown was sent"
        assert closing.reply is not None
        if not closing.answered_first:
            raise CheckFailed(
                "shutdown was answered while a provision was still in flight: every request in "
                "flight must be answered (-32800 once rolled back, or its result) first",
                closing.reply,
                *([closing.in_flight] if closing.in_flight is not None else []),
            )
        assert closing.in_flight is not None
        return f"the provision in flight was answered first ({_describe(closing.in_flight.response)})"

    async def request_after_shutdown(self) -> str:
        reply = await self.call("status", {"ref": self._absent_ref()})
        _expect_error(reply, AFTER_SHUTDOWN, "a request after shutdown")
        return ""

    async def exits_on_eof(self) -> str:
        assert self.peer is not None
        connection = self.peer.connection
        if not isinstance(connection, SubprocessConnection):
            await connection.close()
            return "in memory: the session closed"
        connection.close_stdin()
        closed = await self.peer.wait_closed(EXIT_BOUND)
        if closed.returncode is None:
            raise CheckFailed(f"still running {EXIT_BOUND} s after stdin closed")
        if closed.returncode != 0:
            raise CheckFailed(f"exited {closed.returncode} after stdin closed: the exit status must be 0")
        return "exit code 0"

    async def only_json_rpc(self) -> str:
        """Every line the adapter wrote in the kit's sessions, judged as the host judges it."""
        if self.junk:
            raise CheckFailed(
                f"not JSON-RPC on stdout: {self.junk[0]}; the host ends the session at once "
                "(protocol_violation) on such a line: write logs to stderr only",
                *self.junk[1:5],
            )
        return ""

    async def size_limit(self) -> str:
        """In a session of its own: a request of exactly 16 MiB is answered, and a line over
        the limit ends the session (the adapter exits)."""
        self.peer = await self.open_judged()
        try:
            _expect_ok(await self.initialize([codes.PROTOCOL_VERSION]), "initialize")
            limit = codes.MAX_MESSAGE_BYTES
            ident = self.peer.next_id()
            data = _padded_status(ident, self._absent_ref(), limit)
            sent = {"jsonrpc": "2.0", "id": ident, "method": "status", "params": f"… {len(data) - 1} bytes …"}
            try:
                reply = await self.raw_request(sent, data, self.options.timeout)
            except PeerClosed as exc:
                raise CheckFailed(
                    f"the adapter closed the connection (exit code {exc.closed.returncode}) on a "
                    f"request of {limit} bytes (16 MiB, the limit): it must accept messages up to it",
                ) from None
            _model(StatusReport, _expect_ok(reply, f"a status request of {limit} bytes"), reply)
            over = self.peer.next_id()
            with contextlib.suppress(ConnectionError, OSError):  # it stopped reading: it is over
                await self.peer.send_raw(_padded_status(over, self._absent_ref(), limit + 1024))
            try:
                await self.peer.wait_closed(EXIT_BOUND)
            except TimeoutError:
                answered = await self.response_with_id(over, 0.01)
                raise CheckFailed(
                    f"still serving {EXIT_BOUND:g} s after a line of {limit + 1024} bytes, over the "
                    f"16 MiB limit{' (it answered it)' if answered is not None else ''}: such a line "
                    "breaks the connection",
                    *([f"got:  {_short(answered)}"] if answered is not None else []),
                ) from None
            return ""
        finally:
            await self.peer.close()

    # --- stop and start (1.3): checks 32 to 34, in a session of their own ------------------------
    async def stop_and_start(self) -> None:
        """Checks 32 to 35, after the others so that 1 to 31 keep their numbers: in a new
        session, a deployment of ``profile`` stopped twice and started twice, and a stop of
        ``slow_stop_profile`` cancelled."""
        names = (
            "stop and start (1.3) are announced together, or neither",
            "stop (1.3) leaves the deployment stopped, kept and listed; a second stop changes nothing",
            "start (1.3) makes the same deployment ready again (its backend id kept); a second start "
            "changes nothing",
            "a cancelled stop (1.3) is answered after its rollback: the deployment is ready again",
        )
        self.peer = await self.open_judged()
        self.peer.on_progress = self._on_progress
        self._progress.clear()  # request ids start again in this session
        try:
            reply = await self.initialize([codes.PROTOCOL_VERSION])
            if not reply.ok:
                for name in names:
                    self.skip(name, "the handshake of a new session failed")
                return
            methods = set(InitializeResult.model_validate(reply.result).capabilities.methods)
            announced = {"stop", "start"} & methods
            if not await self.check(names[0], lambda: self._stop_start_announced(announced)) or not announced:
                for name in names[1:]:
                    self.skip(name, "stop and start are not announced" if not announced else "needs check 32")
                return
            self.list_announced = "list" in methods
            if not await self.check(names[1], self.stops):
                self.skip(names[2], "needs a deployment check 33 stopped")
            else:
                await self.check(names[2], self.starts)
            await self.check(names[3], self.stop_cancelled)
        finally:
            for key in ("ref", "cancelled"):
                ref = self.stopper.get(key)
                if ref is not None:
                    await self.teardown_quietly(ref)
            await self.peer.close()

    async def _stop_start_announced(self, announced: set[str]) -> str:
        if len(announced) == 1:
            raise CheckFailed(f"only {next(iter(announced))} is announced: stop and start come together")
        return "" if announced else "skip: neither is announced (the driver cannot stop)"

    def _backend_ids(self, *replies: Reply) -> set[str]:
        return {
            str(event["backend_id"])
            for reply in replies
            for event in (item.get("params", item) for item in reply.progress)
            if isinstance(event, dict) and event.get("backend_id")
        }

    async def _settled_state(self, ref: dict[str, Any], passing: str) -> tuple[str, Reply]:
        """``status`` until it leaves ``passing`` (the backend settling), within the kit's bound."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.timeout
        while True:
            state, reply = await self.state_of(ref)
            if state != passing or loop.time() > deadline:
                return state, reply
            await asyncio.sleep(0.2)

    async def stops(self) -> str:
        slug = self.slug("stopped")  # its own: a slow provision the kit could not stop may hold "s"
        made = await self.call("provision", {"slug": slug, "profile": self.profile})
        ref: DeploymentRef = _model(DeploymentRef, _expect_ok(made, "provision"), made)
        kept = ref.model_dump(mode="json")
        self.stopper.update(ref=kept, made=made)
        _, seen = await self.state_of(kept)
        self.stopper["details"] = StatusReport.model_validate(seen.result).details
        stopped = await self.call("stop", {"ref": kept})
        answer: DeploymentRef = _model(DeploymentRef, _expect_ok(stopped, "stop"), stopped)
        if answer.last_status != "stopped":
            raise CheckFailed(f"stop answered last_status {answer.last_status!r}, not 'stopped'", stopped)
        if (answer.workspace_slug, answer.tier) != (slug, ref.tier):
            raise CheckFailed("stop changed the ref's workspace_slug or tier", made, stopped)
        # ``created`` as the adapter keeps it (check 1 judges provision's answer): start keeps it
        self.stopper.update(ref=answer.model_dump(mode="json"), created=answer.created)
        state, status = await self._settled_state(self.stopper["ref"], "stopping")
        if state != "stopped":
            raise CheckFailed(f"after stop, status says {state!r}, not 'stopped'", stopped, status)
        again = await self.call("stop", {"ref": self.stopper["ref"]})
        second: DeploymentRef = _model(DeploymentRef, _expect_ok(again, "the second stop"), again)
        if second.last_status != "stopped":
            raise CheckFailed("a second stop did not answer the stopped ref", again)
        state, status = await self.state_of(self.stopper["ref"])
        if state != "stopped":
            raise CheckFailed(f"after a second stop, status says {state!r}", again, status)
        if self.list_announced:
            listed = await self.call("list", {})
            slugs = [
                item.get("workspace_slug") for item in _expect_ok(listed, "list") if isinstance(item, dict)
            ]
            if slug not in slugs:
                raise CheckFailed("list does not show the stopped deployment", listed)
        self.stopper["stops"] = [stopped, again]
        return ""

    async def starts(self) -> str:
        ref = self.stopper["ref"]
        started = await self.call("start", {"ref": ref})
        answer: DeploymentRef = _model(DeploymentRef, _expect_ok(started, "start"), started)
        if answer.last_status != "ready":
            raise CheckFailed(f"start answered last_status {answer.last_status!r}, not 'ready'", started)
        self.stopper["ref"] = answer.model_dump(mode="json")
        if answer.created != self.stopper["created"]:
            raise CheckFailed(
                "start answered another created: it made a new deployment rather than start the one "
                "stop kept",
                started,
            )
        state, status = await self._settled_state(self.stopper["ref"], "starting")
        if state != "ready":
            raise CheckFailed(f"after start, status says {state!r}, not 'ready'", started, status)
        before = self.stopper["details"].get("backend_id")
        after = StatusReport.model_validate(status.result).details.get("backend_id")
        made = self._backend_ids(self.stopper["made"])
        later = self._backend_ids(*self.stopper["stops"], started)
        if (before and after and before != after) or (made and later - made):
            raise CheckFailed(
                "start recreated the deployment: its backend id changed "
                f"({before or sorted(made)} before the stop, {after or sorted(later - made)} after the "
                "start); stop and start must keep the same backend objects",
                started,
                status,
            )
        again = await self.call("start", {"ref": self.stopper["ref"]})
        second: DeploymentRef = _model(DeploymentRef, _expect_ok(again, "the second start"), again)
        if second.last_status != "ready":
            raise CheckFailed("a second start did not answer the ready ref", again)
        state, status = await self.state_of(self.stopper["ref"])
        if state != "ready":
            raise CheckFailed(f"after a second start, status says {state!r}", again, status)
        return ""

    async def stop_cancelled(self) -> str:
        """A stop of ``slow_stop_profile``, cancelled once under way: -32800 within the bounds of
        check 16, ``rolled_back`` not false, and ``status`` ``ready`` right after the answer."""
        if self.options.slow_stop_profile is None:
            return "skip: needs slow_stop_profile (a profile whose stop works until cancelled)"
        assert self.peer is not None
        made = await self.call(
            "provision", {"slug": self.slug("stopcancel"), "profile": self.options.slow_stop_profile}
        )
        ref = _expect_ok(made, "the provision of slow_stop_profile")
        self.stopper["cancelled"] = ref
        sent, future = await self.peer.start_request("stop", {"ref": ref})
        ident: int = sent["id"]
        await self.first_progress(ident, future, self.bound(PROGRESS_BOUND))
        if future.done():
            reply = await self.peer.finish(sent, future, 0)
            raise CheckFailed("the stop of slow_stop_profile finished before it could be cancelled", reply)
        await self.peer.notify("cancel", {"id": ident})
        cancelled = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), self.bound(ROLLBACK_BOUND))
        if not future.done():
            future.add_done_callback(_consume)
            raise CheckFailed(f"no answer within {ROLLBACK_BOUND:g} s of the cancel of a stop")
        after = time.monotonic() - cancelled
        reply = await self.peer.finish(sent, future, 0)
        if reply.ok:
            if after > CANCEL_BOUND:
                raise CheckFailed(
                    f"the cancel was ignored: the stop answered its result {after:.2f} s after it "
                    f"(a request stops within {CANCEL_BOUND:g} s)",
                    reply,
                )
            return "the stop finished as the cancel came (a race it may win)"
        data = _expect_error(reply, codes.CANCELLED, "a cancelled stop")
        if data.get("rolled_back") is False:
            raise CheckFailed("data.rolled_back is false: the stop was not undone before the answer", reply)
        state, status = await self.state_of(ref)
        if state != "ready":
            raise CheckFailed(
                f"right after the -32800 answer of a cancelled stop the backend shows {state}, not "
                "'ready': undo the stop (start it again) before answering",
                reply,
                status,
            )
        return "rolled back: ready again"

    async def version_flag(self) -> str:
        if self.path is None:
            return "skip: in memory (checked on an executable)"
        env = child_environment(self.options.env)
        env.pop(codes.PROTOCOL_ENV, None)
        code, out, _ = await _run_briefly([str(self.path), "--version"], env, self.bound(START_BOUND))
        if code is None:
            raise CheckFailed(f"'--version' did not exit within {self.bound(START_BOUND):g} s")
        text = out.decode("utf-8", "replace").strip()
        line = text.splitlines()[0] if text else ""
        if code != 0:
            raise CheckFailed(f"'--version' exited {code}; it must print its version and exit 0")
        name, _, version = line.partition(" ")
        if name != f"{codes.ADAPTER_PREFIX}{self.driver}" or not version.strip():
            raise CheckFailed(
                f"'--version' printed {line!r}; expected '{codes.ADAPTER_PREFIX}{self.driver} <version>'"
            )
        if self.adapter_version is not None and version.strip() != self.adapter_version:
            raise CheckFailed(f"'--version' says {version.strip()!r}, the handshake {self.adapter_version!r}")
        return line

    async def refuses_without_protocol(self) -> str:
        if self.path is None:
            return "skip: in memory (checked on an executable)"
        env = child_environment(self.options.env)
        env.pop(codes.PROTOCOL_ENV, None)
        code, out, err = await _run_briefly([str(self.path)], env, self.bound(START_BOUND))
        if code is None:
            raise CheckFailed(
                f"still running {self.bound(START_BOUND):g} s after it was started without "
                f"{codes.PROTOCOL_ENV}=1 (stdin at EOF)"
            )
        if code != 2 or out.strip() or not err.strip():
            raise CheckFailed(
                f"started without {codes.PROTOCOL_ENV}=1 it exited {code}, wrote {len(out)} bytes to "
                f"stdout and {len(err)} to stderr: it must say what it is on stderr and exit 2"
            )
        return err.decode("utf-8", "replace").strip().splitlines()[0][:120]

    async def rolled_back_after_parent_death(self, slug: str) -> str:
        """Through a fresh session: the provision under way when the parent died was rolled
        back (an adapter that crashed instead, say on its closed stderr, left it behind)."""
        self.peer = await self.open_judged()
        try:
            _expect_ok(await self.initialize([codes.PROTOCOL_VERSION]), "initialize (a fresh session)")
            state, status = await self.state_of(self._absent_ref(slug, self.slow_profile["tier"]))
            if state not in ("absent", "tier_torn_down"):
                raise CheckFailed(
                    f"a provision under way when the parent died (its stderr closed too, as a dying "
                    f"host leaves it) was not rolled back: a fresh session's status shows {state}. "
                    "Parent death rolls back as the end of input does, and a write to a closed "
                    "stderr must not crash the adapter",
                    status,
                )
            listed = await self.list_refs()
            if listed is not None and any(json.loads(item)["workspace_slug"] == slug for item in listed):
                raise CheckFailed(
                    "a provision under way when the parent died is still listed by a fresh session: "
                    "parent death rolls back as the end of input does",
                    status,
                )
            return "its provision under way was rolled back"
        finally:
            await self.peer.close()

    async def exits_when_parent_dies(self) -> str:
        if self.path is None:
            return "skip: in memory (checked on an executable)"
        middle = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _INTERMEDIATE,
            str(self.path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=child_environment(self.options.env),
            start_new_session=True,
        )
        assert middle.stdin is not None and middle.stdout is not None
        pidfd: int | None = None
        try:
            line = await asyncio.wait_for(middle.stdout.readline(), self.bound(START_BOUND))
            if not line.strip().isdigit():
                raise CheckFailed("could not start the adapter under an intermediate process")
            pid = int(line)
            with contextlib.suppress(OSError, AttributeError):
                pidfd = os.pidfd_open(pid)
            # The handshake, as a host would do first; its answer is not judged here.
            hello = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocol_versions": [codes.PROTOCOL_VERSION],
                    "host": {"name": "hearth-adaptersdk-conformance", "version": __version__},
                    "config": self.options.config,
                    "data_dir": self.data_dir,
                },
            }
            middle.stdin.write(encode(hello))
            await middle.stdin.drain()
            with contextlib.suppress(TimeoutError):
                if not await asyncio.wait_for(middle.stdout.readline(), self.bound(START_BOUND)):
                    raise CheckFailed("the adapter ended before its parent was killed (no handshake)")
            slug = self.slug("orphan")
            under_way = False
            if self.options.slow_profile is not None:
                # A slow provision under way (its first progress) when the parent dies.
                work = {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "provision",
                    "params": {"slug": slug, "profile": self.slow_profile},
                }
                middle.stdin.write(encode(work))
                await middle.stdin.drain()
                under_way = await _progress_of(middle.stdout, 2, self.bound(PROGRESS_BOUND))
            os.kill(middle.pid, signal.SIGKILL)
            killed = time.monotonic()
            # A provision under way is rolled back first, within the host's cancel grace.
            bound = EXIT_BOUND + (self.bound(ROLLBACK_BOUND) if under_way else 0)
            if not await _wait_gone(pid, pidfd, bound):
                raise CheckFailed(
                    f"still running {bound:g} s after its parent was killed (its stdin still "
                    "open): an adapter must exit when its parent process dies"
                )
            took = f"exited {time.monotonic() - killed:.2f} s after its parent died"
            if not under_way:
                return took + (
                    "" if self.options.slow_profile is None else " (its provision was not under way)"
                )
            return f"{took}; {await self.rolled_back_after_parent_death(slug)}"
        finally:
            if pidfd is not None:
                os.close(pidfd)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(middle.pid, signal.SIGKILL)  # the group the kit started: the adapter too
            middle.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(middle.wait(), EXIT_BOUND)
            middle._transport.close()  # type: ignore[attr-defined]


def _how(path: str, before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> str:
    if path not in before:
        return "added"
    if path not in after:
        return "removed"
    return "mode changed" if before[path][0] != after[path][0] else "rewritten"


def _tree(root: str) -> dict[str, tuple[int, str]]:
    """Every path under ``root`` with its mode and a digest of its contents (of a link: its
    target); modification times are left out, they are not what a read may not change."""
    found: dict[str, tuple[int, str]] = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if os.path.islink(path):
                digest = os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as file:
                    digest = hashlib.file_digest(file, "sha256").hexdigest()
            else:
                digest = ""
            found[os.path.relpath(path, root)] = (info.st_mode, digest)
    return found


def _not_json_rpc(item: Any) -> str | None:
    """Why the host would end the session on ``item`` at once, or None. Answers the kit
    provoked (an id-null error to its malformed line, a late answer to a request it stopped
    waiting for) are left to the checks."""
    if isinstance(item, Malformed):
        return f"{_preview(item.raw)} ({item.reason})"
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
        return f"{_short(item, 120)} (not a JSON-RPC 2.0 message)"
    if "method" in item and "id" in item:
        return f"{_short(item, 120)} (a request: adapters only answer)"
    return None


def _preview(raw: bytes, limit: int = 120) -> str:
    """A line as it came, escaped and cut short."""
    text = repr(raw[:limit])
    return text + ("…" if len(raw) > limit else "")


async def _progress_of(stdout: asyncio.StreamReader, ident: int, bound: float) -> bool:
    """Whether a progress of request ``ident`` comes on ``stdout`` within ``bound`` seconds
    (False too when the request is answered first, or the stream ends)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while (remaining := deadline - loop.time()) > 0:
        try:
            line = await asyncio.wait_for(stdout.readline(), remaining)
        except (TimeoutError, ValueError):
            return False
        if not line:
            return False
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict) and item.get("id") == ident:
                return False
            params = item.get("params") if isinstance(item, dict) else None
            if isinstance(params, dict) and params.get("request_id") == ident:
                return True
    return False


def _padded_status(ident: int, ref: dict[str, Any], size: int) -> bytes:
    """A status request of exactly ``size`` bytes (and its newline): ``ref.endpoint`` is padding."""
    marker = "@@padding@@"
    message = {
        "jsonrpc": "2.0",
        "id": ident,
        "method": "status",
        "params": {"ref": {**ref, "endpoint": marker}},
    }
    text = json.dumps(message, separators=(",", ":")).encode()
    padding = size - (len(text) - len(marker))
    return text.replace(marker.encode(), b"x" * padding) + b"\n"


async def _run_briefly(argv: list[str], env: dict[str, str], bound: float) -> tuple[int | None, bytes, bytes]:
    """Run ``argv`` with stdin a pipe closed at once, in a session of its own; its exit status
    (None when it did not exit within ``bound``: then its group is killed), stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(b""), bound)  # b"": closes stdin
    except TimeoutError:
        return None, b"", b""
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), EXIT_BOUND)
        process._transport.close()  # type: ignore[attr-defined]
    return process.returncode, out, err


async def _wait_gone(pid: int, pidfd: int | None, bound: float) -> bool:
    """Whether process ``pid`` (not a child of this one) ends within ``bound`` seconds."""
    loop = asyncio.get_running_loop()
    if pidfd is not None:  # readable once the process has exited
        ended: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, _resolve, ended)
        try:
            await asyncio.wait_for(ended, bound)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(pidfd)
        return True
    deadline = loop.time() + bound
    while _running(pid):  # no event for another process's end without a pidfd
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


async def run_conformance(target: str | Path | Driver, options: KitOptions | None = None) -> Report:
    """Check ``target`` (an adapter executable's path, or a Driver run in memory)."""
    options = options or KitOptions()
    path: Path | None = None
    if isinstance(target, Driver):
        driver_name = target.name
        label = f"{target.adapter_name} (in memory)"

        async def open_peer() -> Peer:
            return Peer(MemoryConnection(target))
    else:
        path = Path(target)
        label = str(path)
        driver_name = path.name.removeprefix(codes.ADAPTER_PREFIX)

        async def open_peer() -> Peer:
            connection = await SubprocessConnection.spawn([str(path)], env=child_environment(options.env))
            return Peer(connection)

    report = Report(label)
    with tempfile.TemporaryDirectory(prefix="hearth-conformance-") as data_dir:  # mode 0700
        kit = _Kit(open_peer, driver_name, options, data_dir, report, path=path)
        try:
            await kit.run()
        except OSError as exc:
            report.checks.append(Check("the adapter starts", "fail", f"{exc}"))
    return report


def check_adapter(target: str | Path | Driver, options: KitOptions | None = None) -> Report:
    """Synchronous ``run_conformance`` for scripts and plain pytest tests."""
    return asyncio.run(run_conformance(target, options))
