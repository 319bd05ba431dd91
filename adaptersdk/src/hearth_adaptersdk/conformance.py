"""The conformance kit: the protocol's six guarantees plus protocol hygiene, against any adapter.

Run it from a shell (``hearth-adaptersdk conformance PATH``) or from pytest::

    report = await run_conformance("path/to/hearth-adapter-mine")      # or a Driver instance
    assert report.passed, report.render()

With no options it provisions a profile with empty caps and flags. ``KitOptions`` supplies a
real profile, the adapter's config, a profile the backend must refuse (-32023) and one whose
provision must fail (-32031); checks that need a missing option are reported as skipped.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from . import __version__, codes
from ._codec import Malformed
from ._driver import Driver
from ._memory import MemoryConnection
from ._subprocess import SubprocessConnection, child_environment
from .testing import Peer, Reply
from .wire import DeploymentRef, InitializeResult, StatusReport

Outcome = Literal["pass", "fail", "skip"]
CANCEL_BOUND = 1.0
EXIT_BOUND = 5.0


@dataclass
class KitOptions:
    """What the kit sends; every field has a default that works on any adapter."""

    #: The profile to provision (default: tier "conformance", empty caps and flags).
    profile: dict[str, Any] | None = None
    #: The profile to upgrade to (default: the profile with tier "conformance-upgraded").
    upgrade_profile: dict[str, Any] | None = None
    #: The adapter's ``config`` for ``initialize``.
    config: dict[str, Any] = field(default_factory=dict)
    #: A profile the backend must refuse with -32023.
    refused_profile: dict[str, Any] | None = None
    #: A profile whose provision must fail with -32031 and roll back.
    failing_profile: dict[str, Any] | None = None
    #: A profile whose provision takes long enough to cancel (default: ``profile``).
    slow_profile: dict[str, Any] | None = None
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


class _Kit:
    def __init__(
        self,
        open_peer: Callable[[], Awaitable[Peer]],
        driver: str,
        options: KitOptions,
        data_dir: str,
        report: Report,
    ) -> None:
        self.open_peer = open_peer
        self.driver = driver
        self.options = options
        self.data_dir = data_dir
        self.report = report
        self.peer: Peer | None = None
        self.announced: list[str] = []
        self.ref: DeploymentRef | None = None
        base = options.profile or {
            "tier": "conformance",
            "driver": driver,
            "resource_caps": {},
            "driver_flags": {},
        }
        self.profile = base
        self.upgrade_profile = options.upgrade_profile or {**base, "tier": f"{base['tier']}-upgraded"}
        self.run_id = secrets.token_hex(3)

    def slug(self, name: str) -> str:
        return f"conf-{self.run_id}-{name}"

    async def check(self, name: str, body: Callable[[], Awaitable[str | None]]) -> bool:
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

    async def initialize(self, versions: list[int]) -> Reply:
        return await self.call(
            "initialize",
            {
                "protocol_versions": versions,
                "host": {"name": "hearth-adaptersdk-conformance", "version": __version__},
                "config": self.options.config,
                "data_dir": self.data_dir,
            },
        )

    # --- the checks -------------------------------------------------------------------------
    async def run(self) -> None:
        self.peer = await self.open_peer()
        try:
            await self.check("hygiene: a request before initialize is -32002", self.not_initialized)
            await self.check("hygiene: no common version is -32010", self.unsupported_version)
            if not await self.check("hygiene: handshake", self.handshake):
                return
            await self.check("hygiene: an unknown method is -32601", self.unknown_method)
            await self.check("hygiene: invalid params are -32602", self.invalid_params)
            await self.check(
                "hygiene: a malformed line is -32700 and the session goes on", self.malformed_line
            )
            await self.check("1. provision is idempotent on (slug, tier, driver)", self.idempotent)
            await self.check("2. status is read-only", self.status_read_only)
            await self.check("3. upgrade keeps workspace_slug", self.upgrade_keeps_slug)
            await self.check("4. teardown is irreversible and idempotent", self.teardown)
            await self.check("5. cancel is honoured promptly", self.cancel)
            await self.check("6. a failed provision rolls back and answers -32031", self.failed_provision)
            await self.check("a refused profile is -32023", self.refused_profile)
            await self.check("hygiene: shutdown answers null", self.shutdown)
            await self.check("hygiene: the adapter exits when its stdin closes", self.exits_on_eof)
        finally:
            await self.peer.close()

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
        return f"{result.adapter.name} {result.adapter.version}"

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

    def _absent_ref(self) -> dict[str, Any]:
        return {
            "workspace_slug": self.slug("never"),
            "tier": self.profile["tier"],
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
        return ""

    async def status_read_only(self) -> str:
        if self.ref is None:
            return "skip: no deployment (provision failed)"
        params = {"ref": self.ref.model_dump(mode="json")}
        before = await self.list_refs()
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
        again = await self.call("teardown", params)
        _expect_ok(again, "a second teardown")
        reply = await self.call("status", params)
        report: StatusReport = _model(StatusReport, _expect_ok(reply, "status after teardown"), reply)
        if report.state not in ("tier_torn_down", "absent"):
            raise CheckFailed(f"status after teardown is {report.state}", reply)
        return ""

    async def cancel(self) -> str:
        assert self.peer is not None
        slug = self.slug("c")
        profile = self.options.slow_profile or self.profile
        sent, future = await self.peer.start_request("provision", {"slug": slug, "profile": profile})
        await self.peer.notify("cancel", {"id": sent["id"]})
        started = time.monotonic()
        reply = await self.peer.finish(sent, future, self.options.timeout)
        elapsed = time.monotonic() - started
        if elapsed > CANCEL_BOUND:
            raise CheckFailed(f"answered {elapsed:.2f} s after cancel (bound {CANCEL_BOUND} s)", reply)
        ref_params = {"ref": {**self._absent_ref(), "workspace_slug": slug, "tier": profile["tier"]}}
        if reply.ok:
            await self.call("teardown", {"ref": reply.response["result"]})
            return f"finished before the cancel arrived ({elapsed * 1000:.0f} ms)"
        _expect_error(reply, codes.CANCELLED, "a cancelled provision")
        status = await self.call("status", ref_params)
        report: StatusReport = _model(StatusReport, _expect_ok(status, "status"), status)
        if report.state not in ("absent", "tier_torn_down"):
            raise CheckFailed(f"a cancelled provision left a {report.state} deployment", status)
        return f"-32800 after {elapsed * 1000:.0f} ms, nothing left behind"

    async def failed_provision(self) -> str:
        if self.options.failing_profile is None:
            return "skip: give failing_profile to check it"
        slug = self.slug("f")
        profile = self.options.failing_profile
        reply = await self.call("provision", {"slug": slug, "profile": profile})
        data = _expect_error(reply, codes.BACKEND_FAILURE, "a provision that must fail")
        if not isinstance(data.get("rolled_back"), bool) or not isinstance(data.get("logs"), list):
            raise CheckFailed("data must carry rolled_back (bool) and logs (list)", reply)
        ref = {**self._absent_ref(), "workspace_slug": slug, "tier": profile["tier"]}
        status = await self.call("status", {"ref": ref})
        report: StatusReport = _model(StatusReport, _expect_ok(status, "status"), status)
        if report.state != "absent":
            raise CheckFailed(f"after the failed provision the backend shows {report.state}", reply, status)
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

    async def shutdown(self) -> str:
        reply = await self.call("shutdown", {})
        if _expect_ok(reply, "shutdown") is not None:
            raise CheckFailed("shutdown must answer null", reply)
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
        return f"exit code {closed.returncode}"


async def run_conformance(target: str | Path | Driver, options: KitOptions | None = None) -> Report:
    """Check ``target`` (an adapter executable's path, or a Driver run in memory)."""
    options = options or KitOptions()
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
        kit = _Kit(open_peer, driver_name, options, data_dir, report)
        try:
            await kit.run()
        except OSError as exc:
            report.checks.append(Check("the adapter starts", "fail", f"{exc}"))
    return report


def check_adapter(target: str | Path | Driver, options: KitOptions | None = None) -> Report:
    """Synchronous ``run_conformance`` for scripts and plain pytest tests."""
    return asyncio.run(run_conformance(target, options))
