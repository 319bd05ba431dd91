"""``hearth``: the command line, for a person at a terminal and for scripts (``--json``).

    hearth adapters [--json]
    hearth adapters trust [DRIVER ...] [--json]       (run a project's own adapters: read them first)
    hearth adapters lock [DRIVER ...] [--json]        (write .hearth/adapters.lock to commit)
    hearth provision SLUG --tier TIER --driver DRIVER [--reuse] [--json]
    hearth status SLUG [--json]
    hearth upgrade SLUG --tier TIER [--yes] [--json]  (on a terminal, asks first when its plan is destructive)
    hearth plan SLUG --tier TIER [--driver DRIVER] [--json]
    hearth teardown SLUG [--json]
    hearth ls [--json]
    hearth logs SLUG [--json]
    hearth reconcile [SLUG] [--dry-run] [--json]      (exit 3: a dry run found drift)
    hearth adopt SLUG --driver DRIVER --tier TIER [--json]
    hearth forget SLUG [--yes] [--json]
    hearth serve [--socket PATH [--socket-group GROUP]] [--log-json]
                 [--listen HOST:PORT --token-file FILE [--tls-cert FILE --tls-key FILE]]
                                                      (the daemon: API v1 on $HEARTH_HOME/hearth.sock)

Global options (before or after the command): --project DIR, --home DIR, --timeout SECONDS,
--json, --local. The commands go through the daemon (``hearth serve``) when one answers on the
home's socket and serves this project, or when ``HEARTH_URL`` names one; ``--local`` runs the
host in this process instead. Output and exit statuses are the same either way.

Exit status: 0 on success, 1 on a failure, 2 on bad input, 130 when interrupted
(SIGINT, SIGTERM or SIGHUP: the work is cancelled, its rollback awaited within the cancel
grace, and the record says why; a second signal stops waiting). On failure a one-line reason
goes to stderr, and with --json ``{"error": {...}}`` to stdout. Everything printed that came
from an adapter has its control characters escaped, so it cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from .._dirs import SOCKET_FILE, URL_ENV, daemon_project, find_project_dir, state_dir
from .._errors import HearthError, InvalidInput
from .._store._records import STORE_FILE, Listed, current

if TYPE_CHECKING:  # the host, the models and asyncio load only for the commands that use them
    from hearth_adaptersdk import DeploymentRef, PlanResult, Progress, StatusReport

    from .._lifecycle._host import Host
    from .._models import Operation, ReconcileReport
    from .._remote import RemoteHost

#: C0 and C1 control characters and DEL: what could move the cursor, recolour or retitle the
#: terminal, or start a fake line when printed raw.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def safe(text: object) -> str:
    """``text`` with every control character escaped (``\\x1b``, ``\\n``, ...)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text))


def _seconds(value: str) -> float:
    """A --timeout: a finite number of seconds above zero."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a number of seconds") from None
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(
            f"{value[:40]!r}: the timeout must be a positive, finite number of seconds"
        )
    return number


EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: ``reconcile --dry-run`` found records and backends that disagree.
EXIT_DRIFT = 3
#: Seconds to connect to a daemon, and to wait for its answer beyond the bound it keeps itself.
CONNECT_BOUND = 30.0
ANSWER_MARGIN = 5.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        message = f"{message} (see '{self.prog} --help')"
        print(f"hearth: invalid_input: {message}", file=sys.stderr)
        if "--json" in sys.argv:
            print(json.dumps({"error": {"kind": "invalid_input", "message": message}}))
        sys.exit(EXIT_USAGE)


class _Version(argparse.Action):
    """``--version``, reading the installed version only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from .. import __version__

        print(f"hearth {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--project",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="project folder (default: nearest folder upward holding .hearth/)",
    )
    common.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="hearth home: store, data and user adapters (default: $HEARTH_HOME)",
    )
    common.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=argparse.SUPPRESS,
        help="deadline for the whole operation; the adapter is told to cancel "
        "(default: per verb, see [timeouts] in the README)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document on stdout"
    )
    common.add_argument(
        "--store",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="the registry: postgresql://user@host/db (no password here: ~/.pgpass or PGPASSWORD); "
        "default: $HEARTH_STORE, store in hearth.toml, else the home's SQLite file",
    )
    common.add_argument(
        "--local",
        action="store_true",
        default=argparse.SUPPRESS,
        help="run the host in this process even when a daemon serves the home (see 'hearth serve')",
    )
    common.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log what happens, including the adapters' stderr, on stderr",
    )
    parser = _Parser(
        prog="hearth",
        parents=[common],
        description="Deploy and manage workspaces through adapter executables.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    adapters = commands.add_parser("adapters", parents=[common], help="list adapter candidates")
    adapter_commands = adapters.add_subparsers(
        dest="adapters_command", metavar="{trust,lock}", parser_class=_Parser
    )
    trust = adapter_commands.add_parser(
        "trust",
        parents=[common],
        help="let the project's own adapters run, as they are now (read them first)",
    )
    trust.add_argument("drivers", nargs="*", metavar="DRIVER", help="only these (default: all of them)")
    lock = adapter_commands.add_parser(
        "lock",
        parents=[common],
        help="write .hearth/adapters.lock: the adapter each driver uses now, for the project to commit",
    )
    lock.add_argument("drivers", nargs="*", metavar="DRIVER", help="only these (default: every driver found)")
    provision = commands.add_parser("provision", parents=[common], help="create a workspace")
    provision.add_argument("slug")
    provision.add_argument("--tier", required=True)
    provision.add_argument("--driver", required=True)
    provision.add_argument(
        "--reuse", action="store_true", help="provision a torn-down slug again (its old record is archived)"
    )
    for name, text in (
        ("status", "what the backend shows now"),
        ("teardown", "remove a workspace (irreversible)"),
        ("logs", "operations and their logs"),
    ):
        commands.add_parser(name, parents=[common], help=text).add_argument("slug")
    upgrade = commands.add_parser("upgrade", parents=[common], help="move a workspace to a tier")
    upgrade.add_argument("slug")
    upgrade.add_argument("--tier", required=True)
    upgrade.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation of a destructive upgrade (scripts)"
    )
    plan = commands.add_parser(
        "plan", parents=[common], help="what provision or upgrade to a tier would do; changes nothing"
    )
    plan.add_argument("slug")
    plan.add_argument("--tier", required=True)
    plan.add_argument("--driver", help="the driver of a new workspace (default: the workspace's own)")
    commands.add_parser("ls", parents=[common], help="list workspaces")
    adopt = commands.add_parser(
        "adopt", parents=[common], help="record a deployment the driver lists but hearth has no record of"
    )
    adopt.add_argument("slug")
    adopt.add_argument("--driver", required=True)
    adopt.add_argument("--tier", required=True)
    forget = commands.add_parser(
        "forget", parents=[common], help="drop a workspace's record and leave its backend alone"
    )
    forget.add_argument("slug")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    reconcile = commands.add_parser(
        "reconcile",
        parents=[common],
        help="resolve records a dead host left behind; report ghosts and orphans",
    )
    reconcile.add_argument("slug", nargs="?", help="only this workspace")
    reconcile.add_argument(
        "--dry-run", action="store_true", help="report what it would do, change nothing (exit 3 on drift)"
    )
    serve = commands.add_parser(
        "serve", parents=[common], help="run the daemon: the HTTP API v1 on the home's Unix socket"
    )
    serve.add_argument("--socket", metavar="PATH", help="Unix socket (default: $HEARTH_HOME/hearth.sock)")
    serve.add_argument(
        "--socket-group",
        metavar="GROUP",
        help="make the socket 0660 and owned by GROUP, whose members may then use the daemon",
    )
    serve.add_argument("--listen", metavar="HOST:PORT", help="also listen on TCP (needs --token-file)")
    serve.add_argument("--token-file", metavar="FILE", help="the bearer token for --listen (mode 0600)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve --listen over TLS: the certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM, mode 0600)")
    serve.add_argument("--log-json", action="store_true", help="log one JSON object per line on stderr")
    return parser


def _progress_printer(enabled: bool) -> Any:
    def show(event: Progress) -> None:
        fraction = f"{event.fraction:4.0%}" if event.fraction is not None else "    "
        print(f"  {fraction}  {safe(event.message)}", file=sys.stderr, flush=True)

    return show if enabled else None


def _ref_lines(ref: DeploymentRef) -> str:
    return f"{ref.workspace_slug}: {ref.last_status} (tier {safe(ref.tier)}, driver {ref.driver})" + (
        f"\n  endpoint: {safe(ref.endpoint)}" if ref.endpoint else ""
    )


def _status_lines(slug: str, report: StatusReport) -> str:
    lines = [f"{slug}: {report.state}"]
    if report.endpoint:
        lines.append(f"  endpoint: {safe(report.endpoint)}")
    if report.message:
        lines.append(f"  {safe(report.message)}")
    return "\n".join(lines)


def _ls_lines(listed: list[Listed]) -> str:
    if not listed:
        return "no workspaces"
    rows = [("SLUG", "STATE", "TIER", "DRIVER", "ENDPOINT")]
    rows += [(r.slug, r.state, safe(r.tier), r.driver, safe(r.ref.get("endpoint") or "-")) for r in listed]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)) for row in rows
    )


def _ls(args: argparse.Namespace) -> tuple[Any, str]:
    """``hearth ls``: the records, read straight from the home's store (no adapter, no models;
    a daemon on the home reads the same store). A daemon ``HEARTH_URL`` names is asked."""
    if not getattr(args, "local", False) and os.environ.get(URL_ENV, "").strip():
        import asyncio

        listed = asyncio.run(_ls_remote(args))
    elif _configured_store(args):
        import asyncio

        listed = asyncio.run(_ls_store(args))
    else:
        listed = current(state_dir(getattr(args, "home", None)) / STORE_FILE)
    return [r.ref for r in listed], _ls_lines(listed)


def _project_toml(args: argparse.Namespace) -> dict[str, Any]:
    """The project's hearth.toml as plain TOML, for the fast paths that must not load the
    settings' models; empty when missing or unreadable (the host reads it again and says what
    is wrong)."""
    import tomllib

    settings = find_project_dir(getattr(args, "project", None)) / ".hearth" / "hearth.toml"
    try:
        return tomllib.loads(settings.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _configured_store(args: argparse.Namespace) -> str | None:
    """The store URL this command names (--store, $HEARTH_STORE, or ``store`` in hearth.toml);
    None for the home's SQLite file."""
    from .._dirs import STORE_ENV

    named = getattr(args, "store", None) or os.environ.get(STORE_ENV, "").strip()
    if named:
        return str(named)
    value = _project_toml(args).get("store")
    return value if isinstance(value, str) and value else None


async def _ls_store(args: argparse.Namespace) -> list[Listed]:
    from .._lifecycle._host import Host

    async with Host(
        project_dir=getattr(args, "project", None),
        home=getattr(args, "home", None),
        store_url=getattr(args, "store", None),
    ) as host:
        return _listed(await host.deployments(include_torn_down=True))


async def _ls_remote(args: argparse.Namespace) -> list[Listed]:
    remote = _daemon(args)
    assert remote is not None
    async with remote:
        return _listed(await remote.deployments(include_torn_down=True))


def _listed(records: list[Any]) -> list[Listed]:
    from .._models import synthesized_ref

    listed = []
    for record in records:
        document = (record.ref or synthesized_ref(record)).model_dump(mode="json")
        document["last_status"] = record.state
        listed.append(Listed(record.slug, record.state, record.tier, record.driver, document))
    return listed


def _logs_lines(slug: str, operations: list[Operation]) -> str:
    if not operations:
        return f"no operations recorded for {slug}"
    lines = []
    for op in operations:
        lines.append(
            f"#{op.id} {op.verb} (generation {op.generation}) {op.outcome} "
            f"{op.started_at or op.created_at:%Y-%m-%d %H:%M:%S}"
        )
        lines += [f"    {line.at:%H:%M:%S} {line.level:7} {safe(line.message)}" for line in op.log]
        if op.error:
            message = op.error.get("message") or "(no message recorded)"
            lines.append(f"    error: {safe(op.error.get('kind'))}: {safe(message)}")
    return "\n".join(lines)


def _plan_lines(slug: str, tier: str, result: PlanResult) -> str:
    if not result.actions:
        return f"{slug} to tier {safe(tier)}: nothing to do"
    lines = [f"{slug} to tier {safe(tier)}:"]
    width = max(len(action.action) for action in result.actions)
    for action in result.actions:
        mark = "  (destructive)" if action.destructive else ""
        lines.append(f"  {action.action:{width}}  {safe(action.resource)}{mark}")
        lines.append(f"  {'':{width}}  {safe(action.reason)}")
    if result.destructive:
        lines.append("destructive: data would be destroyed")
    return "\n".join(lines)


def _reconcile_lines(report: ReconcileReport) -> str:
    would = "would resolve" if report.dry_run else "resolved"
    marked = "would be marked failed" if report.dry_run else "marked failed"
    lines = [
        f"{would} {slug}: {old} -> {new}" if old != new else f"{would} {slug}: {old}, now confirmed"
        for slug, old, new in report.resolved
    ]
    lines += [f"ghost {slug}: the backend has no trace; {marked}" for slug in report.ghosts]
    lines += [
        f"orphan {ref.workspace_slug} on {ref.driver}: no record (left in place)" for ref in report.orphans
    ]
    lines += [f"busy {slug}: another hearth process is working on it" for slug in report.busy]
    lines += [f"unreachable {driver}: {safe(why)}" for driver, why in report.unreachable.items()]
    if report.dry_run:
        lines.append("dry run: nothing was changed" + ("; drift found (exit 3)" if report.drift else ""))
    return "\n".join(lines) or "nothing to reconcile"


def _adapters(args: argparse.Namespace) -> tuple[Any, str]:
    import asyncio

    from .._adapters._discovery import check_lock_versions, chosen, discover_all, probe_versions
    from .._settings import load_settings

    if getattr(args, "adapters_command", None) == "trust":
        return _adapters_trust(args)
    if getattr(args, "adapters_command", None) == "lock":
        return _adapters_lock(args)
    project = _project(args)
    found = discover_all(project_dir=project, home=getattr(args, "home", None))
    bound = load_settings(project).timeouts.version_probe
    versions = asyncio.run(probe_versions((c.path for c in found if c.acceptable), bound))
    found = check_lock_versions(found, versions, project)
    rows = []
    for candidate, used in zip(found, chosen(found), strict=True):
        status = (
            "refused: " + candidate.refusal + _refusal_advice(candidate)
            if candidate.refusal
            else ("ok" if used else "shadowed")
        )
        rows.append(
            {
                "driver": candidate.driver,
                "source": candidate.source,
                "path": str(candidate.path),
                "version": versions.get(candidate.path),
                "status": status,
                "trust": candidate.trust,
                "lock": candidate.lock,
                "sha256": candidate.sha256,
            }
        )
    text = (
        "\n".join(
            f"{r['driver']:12} {r['source']:8} {safe(r['status']):10} "
            f"{safe(r['version'] or '-'):28} {_TRUST_COLUMN[str(r['trust'])]:11} "
            f"{_LOCK_COLUMN[str(r['lock'])]:13} {safe(r['path'])}"
            for r in rows
        )
        or "no adapters found"
    )
    return rows, text


_TRUST_COLUMN = {"trusted": "trusted", "untrusted": "not-trusted", "changed": "changed", "not_needed": "-"}
_LOCK_COLUMN = {"locked": "locked", "mismatch": "lock-mismatch", "unlocked": "not-locked", "no_lock": "-"}


def _refusal_advice(candidate: Any) -> str:
    """The command that lifts a trust or lock refusal (the library's reasons name none)."""
    if not candidate.blocking:
        return ""
    if candidate.trust in ("untrusted", "changed"):
        return f"; run 'hearth adapters trust {candidate.driver}' after reading it"
    return "; 'hearth adapters lock' records the adapters in use now, if the project wants them"


def _adapters_trust(args: argparse.Namespace) -> tuple[Any, str]:
    """``hearth adapters trust [DRIVER ...]``: record the project's adapters as they are now."""
    from .._adapters._discovery import trust_adapters

    done = trust_adapters(_project(args), getattr(args, "home", None), args.drivers or None)
    document = [{"driver": t.driver, "path": str(t.path), "sha256": t.sha256, "was": t.was} for t in done]
    lines = [
        f"{'already trusted' if t.was == 'trusted' else 'trusted'} {t.driver}: {safe(t.path)} "
        f"(sha256 {t.sha256[:12]}…)"
        for t in done
    ]
    return document, "\n".join(lines) or "no project adapters to trust"


def _adapters_lock(args: argparse.Namespace) -> tuple[Any, str]:
    """``hearth adapters lock [DRIVER ...]``: write ``.hearth/adapters.lock``."""
    import asyncio

    from .._adapters._discovery import lock_file
    from .._adapters._locking import lock_adapters
    from .._settings import load_settings

    project = _project(args)
    home = getattr(args, "home", None)
    settings = load_settings(project)
    entries = asyncio.run(
        lock_adapters(
            project,
            home,
            args.drivers or None,
            configs=settings.adapters,
            data_root=state_dir(home) / "data",
            version_probe=settings.timeouts.version_probe,
            handshake_timeout=settings.timeouts.handshake,
        )
    )
    path = lock_file(project)
    document = {"path": str(path), "adapters": {d: e.to_json() for d, e in entries.items()}}
    lines = [f"wrote {safe(path)}:"] + [
        f"  {d} {safe(e.version or '-')} (protocol {e.protocol_version}, {e.source}, sha256 {e.sha256[:12]}…)"
        for d, e in entries.items()
    ]
    return document, "\n".join(lines)


def _project(args: argparse.Namespace) -> Any:
    return find_project_dir(getattr(args, "project", None))


async def _command(host: Host | RemoteHost, args: argparse.Namespace) -> tuple[Any, str, int]:
    """The command's JSON document, its text and its exit status."""
    from pydantic import TypeAdapter

    timeout = getattr(args, "timeout", None)
    progress = _progress_printer(sys.stderr.isatty() and not getattr(args, "json", False))
    command = args.command
    if command == "provision":
        ref = await host.provision(
            args.slug,
            tier=args.tier,
            driver=args.driver,
            on_progress=progress,
            timeout=timeout,
            reuse=args.reuse,
        )
        return ref.model_dump(mode="json"), _ref_lines(ref), 0
    if command == "status":
        report = await host.status(args.slug, timeout=timeout)
        return report.model_dump(mode="json"), _status_lines(args.slug, report), 0
    if command == "upgrade":
        if not args.yes:
            await _confirm_upgrade(host, args.slug, args.tier, timeout)
        ref = await host.upgrade(args.slug, tier=args.tier, on_progress=progress, timeout=timeout)
        return ref.model_dump(mode="json"), _ref_lines(ref), 0
    if command == "plan":
        planned = await host.plan(args.slug, tier=args.tier, driver=args.driver, timeout=timeout)
        return planned.model_dump(mode="json"), _plan_lines(args.slug, args.tier, planned), 0
    if command == "teardown":
        await host.teardown(args.slug, on_progress=progress, timeout=timeout)
        report = await host.status(args.slug)
        return report.model_dump(mode="json"), f"{args.slug}: {report.state}", 0
    if command == "adopt":
        record = await host.adopt(args.slug, driver=args.driver, tier=args.tier, timeout=timeout)
        assert record.ref is not None
        return record.model_dump(mode="json"), "adopted " + _ref_lines(record.ref), 0
    if command == "forget":
        record = await host.forget(args.slug)
        return (
            record.model_dump(mode="json"),
            f"{args.slug}: forgotten (it was {record.state} on {record.driver}); "
            "its backend was left as it is",
            0,
        )
    if command == "logs":
        operations = await host.logs(args.slug)
        from .._models import Operation  # --json documents come from the models themselves

        document = TypeAdapter(list[Operation]).dump_python(operations, mode="json")
        return document, _logs_lines(args.slug, operations), 0
    report_ = await host.reconcile(args.slug, dry_run=args.dry_run, timeout=timeout)
    from .._models import ReconcileReport

    document = TypeAdapter(ReconcileReport).dump_python(report_, mode="json")
    return document, _reconcile_lines(report_), EXIT_DRIFT if report_.dry_run and report_.drift else 0


class NotConfirmed(Exception):
    """A person at the terminal did not confirm: nothing was started."""


async def _confirm_upgrade(host: Host | RemoteHost, slug: str, tier: str, timeout: float | None) -> None:
    """Ask before an upgrade whose plan is destructive, on a terminal. A script (no terminal)
    is not asked and runs as it always did: a destructive upgrade already needs the tier's own
    consent (e.g. tfgrid's ``allow_destructive_upgrade``). An adapter that does not plan, or a
    plan that fails, asks nothing: the upgrade then answers for itself."""
    if not sys.stdin.isatty():
        return
    try:
        planned = await host.plan(slug, tier=tier, timeout=timeout)
    except HearthError as exc:
        if exc.kind == "store_error":
            raise
        return
    if not planned.destructive:
        return
    destroys = "; ".join(
        f"{action.action} {action.resource}: {action.reason}"
        for action in planned.actions
        if action.destructive
    )
    question = (
        f"upgrade workspace {safe(slug)} to tier {safe(tier)}? It is destructive: {safe(destroys)} [y/N] "
    )
    if not await _ask(question):
        raise NotConfirmed


async def _ask(question: str) -> bool:
    """Ask on the terminal without blocking the event loop, so a signal still cancels the wait."""
    import asyncio

    print(question, end="", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def readable() -> None:
        if not answer.done():
            answer.set_result(sys.stdin.readline())

    fd = sys.stdin.fileno()
    loop.add_reader(fd, readable)
    try:
        line = await answer
    finally:
        loop.remove_reader(fd)
    return line.strip().lower() in ("y", "yes")


class Interrupted(Exception):
    """The command was stopped by a signal; ``message`` says what became of its work."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _home_daemon(args: argparse.Namespace) -> Path | None:
    """The home's daemon socket when the command should use it: ``--local`` and ``HEARTH_URL``
    aside, a daemon that answers on the home's socket and serves this project (or runs while
    we are in none). A socket file left by a dead daemon is passed by. Asked once."""
    if not hasattr(args, "_home_daemon"):
        args._home_daemon = _find_home_daemon(args)
    found: Path | None = args._home_daemon
    return found


def _find_home_daemon(args: argparse.Namespace) -> Path | None:
    import socket

    if getattr(args, "local", False) or os.environ.get(URL_ENV, "").strip():
        return None
    if getattr(args, "store", None) is not None:  # a store named for this command: run it here
        return None
    home = getattr(args, "home", None)
    path = state_dir(home) / SOCKET_FILE
    try:
        if not path.is_socket():
            return None
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        finally:
            probe.close()
    except OSError as exc:  # a stale socket (connection refused), or one we may not use
        logging.getLogger("hearth").info("not using the daemon at %s: %s", path, exc.strerror or exc)
        return None
    served = daemon_project(home)
    explicit = getattr(args, "project", None) is not None
    ours = find_project_dir(getattr(args, "project", None))
    if served is not None and served != ours and (explicit or (ours / ".hearth").is_dir()):
        logging.getLogger("hearth").info(
            "the daemon at %s serves the project %s, not %s: running the host here", path, served, ours
        )
        return None
    logging.getLogger("hearth").info("using the daemon at %s", path)
    return path


def _daemon(args: argparse.Namespace) -> RemoteHost | None:
    """The daemon to use, or None to run the host here: the one ``HEARTH_URL`` names (then it
    must answer), else the home's (``_home_daemon``)."""
    if not getattr(args, "local", False) and os.environ.get(URL_ENV, "").strip():
        from .._remote import RemoteHost  # httpx loads only when a daemon may answer

        for option in ("home", "project", "store"):
            if getattr(args, option, None) is not None:
                raise InvalidInput(
                    f"{URL_ENV} names a daemon, which has its own home and project: "
                    f"--{option} is for a host run here (add --local, or unset {URL_ENV})"
                )
        return RemoteHost()
    path = _home_daemon(args)
    if path is None:
        return None
    from .._remote import RemoteHost

    return RemoteHost(socket=path)


class _Signalled(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _status_default(args: argparse.Namespace) -> float:
    """The daemon's bound of a ``status`` without ``--timeout``: ``[timeouts]`` status and
    handshake of the project's hearth.toml (the daemon serves this project), read without the
    settings' models; their defaults when unset or unreadable (the daemon says what is wrong)."""
    bounds = {"status": 30.0, "handshake": 10.0}  # Timeouts' defaults (its module loads pydantic)
    table = _project_toml(args).get("timeouts", {})
    for name in bounds:
        value = table.get(name) if isinstance(table, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
            bounds[name] = float(value)
    return bounds["status"] + bounds["handshake"]


def _status_through(path: Path, args: argparse.Namespace) -> tuple[Any, str, int]:
    """``hearth status`` through the home's daemon with the standard library alone: a read that
    a person types often, so it skips what the other commands load (httpx, pydantic, asyncio:
    some 200 ms of imports, measured by scripts/bench). The daemon's JSON is the model's own,
    so the output is the same; a signal ends it as it ends the others (nothing to cancel)."""
    import http.client
    import socket
    import urllib.parse
    from types import SimpleNamespace

    from .._errors import CallTimeout, DaemonUnavailable, error_from_json

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(CONNECT_BOUND)
            self.sock.connect(str(path))
            self.sock.settimeout(bound)

    def signalled(signum: int, frame: object) -> None:
        raise _Signalled(signum)

    timeout: float | None = getattr(args, "timeout", None)
    # the daemon keeps the deadline; a daemon that stops answering is given up on a little later
    bound = (timeout if timeout is not None else _status_default(args)) + ANSWER_MARGIN
    query = "" if timeout is None else "?" + urllib.parse.urlencode({"timeout": timeout})
    target = f"/v1/workspaces/{urllib.parse.quote(args.slug, safe='')}/status{query}"
    for signum in _SIGNALS:
        signal.signal(signum, signalled)
    connection = Connection("hearth")
    try:
        connection.request("GET", target, headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read()
    except _Signalled as exc:
        raise Interrupted(f"interrupted by {signal.Signals(exc.signum).name}; nothing was changed") from None
    except TimeoutError:
        raise CallTimeout(
            f"the hearth daemon at unix://{path} did not answer GET {target} within {bound:g} s"
        ) from None
    except OSError as exc:
        raise DaemonUnavailable(f"the hearth daemon at unix://{path} did not answer: {exc}") from None
    finally:
        connection.close()
        for signum in _SIGNALS:  # until exit, as after the other commands: the line is still to come
            signal.signal(signum, signal.SIG_IGN)
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if response.status != 200 or not isinstance(document, dict):
        error = document.get("error") if isinstance(document, dict) else None
        if isinstance(error, dict):
            raise error_from_json(error)
        raise HearthError(f"the hearth daemon answered {response.status}: {body[:200]!r}")
    report = SimpleNamespace(
        state=document.get("state"), endpoint=document.get("endpoint"), message=document.get("message")
    )
    return document, _status_lines(args.slug, cast("StatusReport", report)), 0


def _open_host(args: argparse.Namespace) -> tuple[Host | RemoteHost, str]:
    """The daemon to go through, or a host run here; and how long a cancel may wait, in words."""
    remote = _daemon(args)
    if remote is not None:
        return remote, "the daemon's cancel grace"
    from .._lifecycle._host import Host  # loads only for a host run here

    logging.getLogger("hearth").info("running the host in this process")
    host = Host(
        project_dir=getattr(args, "project", None),
        home=getattr(args, "home", None),
        store_url=getattr(args, "store", None),
    )
    host.open()
    return host, f"up to {host.timeouts.cancel_grace:g} s"


async def _run(args: argparse.Namespace) -> tuple[Any, str, int]:
    """Run one command; SIGINT, SIGTERM and SIGHUP cancel it (the host records why and waits
    for the rollback within its cancel grace); a second signal stops that wait. Through a
    daemon the same: the daemon cancels the operation and rolls it back."""
    import asyncio

    loop = asyncio.get_running_loop()
    host, grace = _open_host(args)
    work = asyncio.create_task(_command(host, args))
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            name = signal.Signals(signum).name
            outcome, reason = (
                ("cancelled", "cancelled with Ctrl-C (SIGINT)")
                if signum == signal.SIGINT
                else ("interrupted", f"interrupted by {name}")
            )
            if not host.cancel_running(reason, outcome=outcome):
                work.cancel()
            if sys.stderr.isatty():
                print(
                    f"  cancelling: waiting {grace} for the adapter to roll back "
                    "(Ctrl-C again to stop waiting)",
                    file=sys.stderr,
                    flush=True,
                )
        elif len(received) == 2:  # stop waiting for the rollback: the record says it is not confirmed
            host.cancel_running("stopped waiting for the rollback (a second signal)", again=True)
            work.cancel()

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        try:
            return await asyncio.shield(work)
        except HearthError as exc:
            if received and exc.kind in ("cancelled", "interrupted"):  # the daemon's cancel
                raise asyncio.CancelledError from None
            raise
        finally:
            if not work.done():  # only a cancellation of this task itself gets here
                work.cancel()
            with contextlib.suppress(BaseException):
                await work
            await host.close()
    except asyncio.CancelledError:
        if not received:
            raise
        notes = "; ".join(host.interruptions) or "nothing was changed"
        raise Interrupted(f"interrupted by {signal.Signals(received[0]).name}; {notes}") from None
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)  # until exit: the one line is still to come


def main(argv: Sequence[str] | None = None) -> int:
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    try:
        return _main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "home", None) == "":
        parser.error("--home must name a folder (leave it out for $HEARTH_HOME or the default)")
    project = getattr(args, "project", None)
    if project is not None and not os.path.isdir(project):
        parser.error(f"--project {project[:200]!r} is not a folder")
    store = getattr(args, "store", None)
    if store is not None:
        from .._dirs import has_password

        if has_password(store):
            parser.error(
                "--store: the URL holds a password, which every user of this machine can read "
                "on a command line; put it in ~/.pgpass (mode 0600) or PGPASSWORD"
            )
    as_json = getattr(args, "json", False)
    if getattr(args, "verbose", False):
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("hearth").setLevel(logging.DEBUG)
    else:  # the one-line reason is the whole story; logs are for --verbose
        logging.getLogger().addHandler(logging.NullHandler())
    try:
        status = 0
        if args.command == "adapters":
            document, text = _adapters(args)
        elif args.command == "ls":
            document, text = _ls(args)
        elif args.command == "serve":
            return _serve(args)
        elif args.command == "forget" and not _confirmed(args):
            return _failed(
                {"kind": "cancelled"},
                "cancelled",
                "not confirmed; nothing was changed",
                as_json,
                EXIT_FAILURE,
            )
        elif args.command == "status" and (path := _home_daemon(args)) is not None:
            document, text, status = _status_through(path, args)
        else:
            import asyncio

            document, text, status = asyncio.run(_run(args))
    except HearthError as exc:
        return _failed(exc.to_json(), exc.kind, exc.message + _hint(exc), as_json)
    except Interrupted as exc:
        return _failed({"kind": "cancelled"}, "cancelled", exc.message, as_json, EXIT_INTERRUPTED)
    except NotConfirmed:
        return _failed(
            {"kind": "cancelled"}, "cancelled", "not confirmed; nothing was changed", as_json, EXIT_FAILURE
        )
    except KeyboardInterrupt:
        return _failed(
            {"kind": "cancelled"},
            "cancelled",
            "interrupted before any work started; nothing changed",
            as_json,
            EXIT_INTERRUPTED,
        )
    except Exception as exc:  # a bug in hearth: say so in one line, the traceback only on request
        logging.getLogger("hearth").debug("unexpected error", exc_info=exc)
        return _failed(
            {},
            "internal",
            f"unexpected {type(exc).__name__}: {exc} (a bug in hearth; "
            "run again with --verbose for the traceback and report it)",
            as_json,
        )
    return _print(json.dumps(document, indent=2) if as_json else text) or status


def _serve(args: argparse.Namespace) -> int:
    """``hearth serve``: runs until SIGTERM or SIGINT (operations in flight drain), then 0."""
    try:
        from .._server._daemon import configure_logging, serve
    except ImportError as exc:
        raise InvalidInput(
            f"hearth serve needs the serve extra (pip install 'hearth[serve]'): {exc}"
        ) from None
    configure_logging(args.log_json)
    serve(
        socket_path=args.socket,
        listen=args.listen,
        token_file=args.token_file,
        store_url=getattr(args, "store", None),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        socket_group=args.socket_group,
        home=getattr(args, "home", None),
        project=getattr(args, "project", None),
    )
    return 0


def _print(text: str, *, stream: Any = None) -> int:
    """Print; 0, or 1 when the output cannot be written (a full disk: one line on stderr). A
    reader that has gone (``hearth ls | head -1``) ends the command quietly."""
    stream = stream or sys.stdout
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        _silence(stream)
    except OSError as exc:
        _silence(stream)
        if stream is not sys.stderr:
            with contextlib.suppress(OSError):
                print(
                    f"hearth: output_error: cannot write the output: {exc.strerror or exc}",
                    file=sys.stderr,
                    flush=True,
                )
        return EXIT_FAILURE
    return 0


def _silence(stream: Any) -> None:
    """Python would fail again when it flushes the stream at exit: point it at /dev/null."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _confirmed(args: argparse.Namespace) -> bool:
    """``forget`` asks on a terminal; elsewhere it needs ``--yes`` (a script says what it means)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise InvalidInput("forget asks for confirmation: on no terminal, pass --yes")
    found = [r for r in current(state_dir(getattr(args, "home", None)) / STORE_FILE) if r.slug == args.slug]
    what = f"{found[0].state} on {found[0].driver}" if found else "no record found"
    print(
        f"forget workspace {safe(args.slug)} ({what})? hearth drops its record and leaves its backend "
        "as it is [y/N] ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _hint(exc: HearthError) -> str:
    """What the CLI adds to a library message: the command that helps (the library's messages
    carry no CLI advice, since a console shows them too)."""
    message = exc.message
    if exc.kind == "not_found" and message.startswith("no workspace"):
        return "; 'hearth ls' lists them"
    if exc.kind == "invalid_input" and message.startswith("unknown driver"):
        return " (see 'hearth adapters')"
    if exc.kind == "invalid_transition" and "teardown is final" in message:
        return " (hearth provision --reuse)"
    if exc.kind == "busy":
        return "; 'hearth logs' shows it"
    if exc.kind == "adapter_refused" and "run only once you trust them" in message:
        found = re.search(r"hearth-adapter-([a-z0-9][a-z0-9-]*) at ", message)
        driver = found.group(1) if found else "DRIVER"
        return f"; run 'hearth adapters trust {driver}' after reading it"
    if exc.kind == "adapter_refused" and "adapters.lock" in message:
        return "; 'hearth adapters' shows the lock's status ('hearth adapters lock' updates it)"
    if "reconcile" in message:
        return "; run 'hearth reconcile'"
    return ""


def _failed(error: dict[str, Any], kind: str, message: str, as_json: bool, code: int | None = None) -> int:
    one_line = safe(" ".join(message.split()))
    _print(f"hearth: {kind}: {one_line}", stream=sys.stderr)
    if as_json:
        _print(json.dumps({"error": {**error, "kind": kind, "message": one_line}}))
    return (
        code if code is not None else (EXIT_USAGE if kind in ("invalid_input", "not_found") else EXIT_FAILURE)
    )


def entry() -> None:
    """The ``hearth`` executable: the signal handlers set while the command ran stay as they
    are until the process exits, so a late signal cannot kill it before its one line."""
    sys.exit(_main(None))


__all__ = ["main"]
