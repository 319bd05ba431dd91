"""``hearth``: the command line, for a person at a terminal and for scripts (``--json``).

    hearth adapters [--json]
    hearth provision SLUG --tier TIER --driver DRIVER [--reuse] [--json]
    hearth status SLUG [--json]
    hearth upgrade SLUG --tier TIER [--json]
    hearth teardown SLUG [--json]
    hearth ls [--json]
    hearth logs SLUG [--json]
    hearth reconcile [--json]

Global options (before or after the command): --project DIR, --home DIR, --timeout SECONDS,
--json. Exit status: 0 on success, 1 on a failure, 2 on bad input, 130 when interrupted.
On failure a one-line reason goes to stderr, and with --json ``{"error": {...}}`` to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from hearth_adaptersdk import DeploymentRef, Progress, StatusReport

from . import __version__
from .discovery import discover_all
from .errors import HearthError
from .host import Host, ReconcileReport, find_project_dir
from .store import Deployment, Operation

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        message = f"{message} (see '{self.prog} --help')"
        print(f"hearth: invalid_input: {message}", file=sys.stderr)
        if "--json" in sys.argv:
            print(json.dumps({"error": {"kind": "invalid_input", "message": message}}))
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--project", metavar="DIR", default=argparse.SUPPRESS,
                        help="project folder (default: nearest folder upward holding .hearth/)")
    common.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                        help="hearth home: store, data and user adapters (default: $HEARTH_HOME)")
    common.add_argument("--timeout", metavar="SECONDS", type=float, default=argparse.SUPPRESS,
                        help="deadline for the whole operation; the adapter is told to cancel")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout")
    common.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                        help="log what happens, including the adapters' stderr, on stderr")
    parser = _Parser(prog="hearth", parents=[common],
                     description="Deploy and manage workspaces through adapter executables.")
    parser.add_argument("--version", action="version", version=f"hearth {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("adapters", parents=[common], help="list adapter candidates")
    provision = commands.add_parser("provision", parents=[common], help="create a workspace")
    provision.add_argument("slug")
    provision.add_argument("--tier", required=True)
    provision.add_argument("--driver", required=True)
    provision.add_argument("--reuse", action="store_true",
                           help="provision a torn-down slug again (its old record is archived)")
    for name, text in (("status", "what the backend shows now"),
                       ("teardown", "remove a workspace (irreversible)"),
                       ("logs", "operations and their logs")):
        commands.add_parser(name, parents=[common], help=text).add_argument("slug")
    upgrade = commands.add_parser("upgrade", parents=[common], help="move a workspace to a tier")
    upgrade.add_argument("slug")
    upgrade.add_argument("--tier", required=True)
    commands.add_parser("ls", parents=[common], help="list workspaces")
    commands.add_parser("reconcile", parents=[common],
                        help="resolve records a dead host left behind; report ghosts and orphans")
    return parser


def _progress_printer(enabled: bool) -> Any:
    def show(event: Progress) -> None:
        fraction = f"{event.fraction:4.0%}" if event.fraction is not None else "    "
        print(f"  {fraction}  {event.message}", file=sys.stderr, flush=True)
    return show if enabled else None


def _ref_lines(ref: DeploymentRef) -> str:
    return (f"{ref.workspace_slug}: {ref.last_status} (tier {ref.tier}, driver {ref.driver})"
            + (f"\n  endpoint: {ref.endpoint}" if ref.endpoint else ""))


def _status_lines(slug: str, report: StatusReport) -> str:
    lines = [f"{slug}: {report.state}"]
    if report.endpoint:
        lines.append(f"  endpoint: {report.endpoint}")
    if report.message:
        lines.append(f"  {report.message}")
    return "\n".join(lines)


def _ls_lines(deployments: list[Deployment]) -> str:
    if not deployments:
        return "no workspaces"
    rows = [("SLUG", "STATE", "TIER", "DRIVER", "ENDPOINT")]
    rows += [(d.slug, d.state, d.tier, d.driver, (d.ref.endpoint if d.ref else None) or "-")
             for d in deployments]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(widths[i]) if i < 4 else cell
                               for i, cell in enumerate(row)) for row in rows)


def _operation_json(op: Operation) -> dict[str, Any]:
    return {"id": op.id, "verb": op.verb, "generation": op.generation, "outcome": op.outcome,
            "started_at": op.started_at.isoformat(),
            "ended_at": op.ended_at.isoformat() if op.ended_at else None, "error": op.error,
            "log": [{"at": line.at.isoformat(), "level": line.level, "message": line.message,
                     "fraction": line.fraction} for line in op.log]}


def _logs_lines(slug: str, operations: list[Operation]) -> str:
    if not operations:
        return f"no operations recorded for {slug}"
    lines = []
    for op in operations:
        lines.append(f"#{op.id} {op.verb} (generation {op.generation}) {op.outcome} "
                     f"{op.started_at:%Y-%m-%d %H:%M:%S}")
        lines += [f"    {line.at:%H:%M:%S} {line.level:7} {line.message}" for line in op.log]
        if op.error:
            lines.append(f"    error: {op.error.get('kind')}: {op.error.get('message')}")
    return "\n".join(lines)


def _reconcile_json(report: ReconcileReport) -> dict[str, Any]:
    return {"resolved": [{"slug": s, "from": a, "to": b} for s, a, b in report.resolved],
            "ghosts": report.ghosts, "busy": report.busy, "unreachable": report.unreachable,
            "orphans": [ref.model_dump(mode="json") for ref in report.orphans]}


def _reconcile_lines(report: ReconcileReport) -> str:
    lines = [f"resolved {slug}: {old} -> {new}" for slug, old, new in report.resolved]
    lines += [f"ghost {slug}: the backend has no trace; marked failed" for slug in report.ghosts]
    lines += [f"orphan {ref.workspace_slug} on {ref.driver}: no record (left in place)"
              for ref in report.orphans]
    lines += [f"busy {slug}: another hearth process is working on it" for slug in report.busy]
    lines += [f"unreachable {driver}: {why}" for driver, why in report.unreachable.items()]
    return "\n".join(lines) or "nothing to reconcile"


def _adapters(args: argparse.Namespace) -> tuple[Any, str]:
    found = discover_all(project_dir=_project(args), home=getattr(args, "home", None))
    seen: set[str] = set()
    rows = []
    for candidate in found:
        status = "refused: " + candidate.refusal if candidate.refusal else \
            ("shadowed" if candidate.driver in seen else "ok")
        if candidate.acceptable:
            seen.add(candidate.driver)
        rows.append({"driver": candidate.driver, "source": candidate.source,
                     "path": str(candidate.path), "version": _version(candidate.path)
                     if candidate.acceptable else None, "status": status})
    text = "\n".join(f"{r['driver']:12} {r['source']:8} {r['status']:10} {r['version'] or '-':28} "
                     f"{r['path']}" for r in rows) or "no adapters found"
    return rows, text


def _version(path: Any) -> str | None:
    try:
        done = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                              timeout=10, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _project(args: argparse.Namespace) -> Any:
    return find_project_dir(getattr(args, "project", None))


async def _run(args: argparse.Namespace) -> tuple[Any, str]:
    timeout = getattr(args, "timeout", None)
    progress = _progress_printer(sys.stderr.isatty() and not getattr(args, "json", False))
    async with Host(project_dir=getattr(args, "project", None),
                    home=getattr(args, "home", None)) as host:
        command = args.command
        if command == "provision":
            ref = await host.provision(args.slug, tier=args.tier, driver=args.driver,
                                       on_progress=progress, timeout=timeout, reuse=args.reuse)
            return ref.model_dump(mode="json"), _ref_lines(ref)
        if command == "status":
            report = await host.status(args.slug, timeout=timeout)
            return report.model_dump(mode="json"), _status_lines(args.slug, report)
        if command == "upgrade":
            ref = await host.upgrade(args.slug, tier=args.tier, on_progress=progress,
                                     timeout=timeout)
            return ref.model_dump(mode="json"), _ref_lines(ref)
        if command == "teardown":
            await host.teardown(args.slug, on_progress=progress, timeout=timeout)
            report = await host.status(args.slug)
            return report.model_dump(mode="json"), f"{args.slug}: {report.state}"
        if command == "ls":
            refs = await host.list()
            return [ref.model_dump(mode="json") for ref in refs], _ls_lines(host.deployments())
        if command == "logs":
            operations = await host.logs(args.slug)
            return [_operation_json(op) for op in operations], _logs_lines(args.slug, operations)
        report_ = await host.reconcile(timeout=timeout)
        return _reconcile_json(report_), _reconcile_lines(report_)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "json", False)
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("hearth").setLevel(logging.DEBUG)
    else:  # the one-line reason is the whole story; logs are for --verbose
        logging.getLogger().addHandler(logging.NullHandler())
    try:
        if args.command == "adapters":
            document, text = _adapters(args)
        else:
            document, text = asyncio.run(_run(args))
    except HearthError as exc:
        return _failed(exc.to_json(), exc.kind, exc.message, as_json)
    except KeyboardInterrupt:
        return _failed({"kind": "cancelled", "message": "interrupted"}, "cancelled",
                       "interrupted; the adapter was told to cancel", as_json, EXIT_INTERRUPTED)
    except Exception as exc:  # a bug in hearth: say so in one line, the traceback only on request
        logging.getLogger("hearth").debug("unexpected error", exc_info=exc)
        return _failed({}, "internal", f"unexpected {type(exc).__name__}: {exc} (a bug in hearth; "
                       "run again with --verbose for the traceback and report it)", as_json)
    print(json.dumps(document, indent=2) if as_json else text)
    return 0


def _failed(error: dict[str, Any], kind: str, message: str, as_json: bool,
            code: int | None = None) -> int:
    one_line = " ".join(message.split())
    print(f"hearth: {kind}: {one_line}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": {**error, "kind": kind, "message": one_line}}))
    return code if code is not None else (EXIT_USAGE if kind == "invalid_input" else EXIT_FAILURE)


def entry() -> None:
    sys.exit(main())


__all__ = ["main"]
