"""``hearth``: the command line, for a person at a terminal and for scripts (``--json``).

    hearth adapters [--json]
    hearth adapters trust [DRIVER ...] [--json]       (run a project's own adapters: read them first)
    hearth adapters lock [DRIVER ...] [--json]        (write .hearth/adapters.lock to commit)
    hearth provision SLUG --tier TIER --driver DRIVER [--reuse] [--label KEY=VALUE ...] [--json]
    hearth status SLUG [--json]
    hearth upgrade SLUG --tier TIER [--yes] [--json]  (on a terminal, asks first when its plan is destructive)
    hearth plan SLUG --tier TIER [--driver DRIVER] [--json]
    hearth teardown SLUG [--json]
    hearth stop SLUG [--json]                         (keeps its disk; drivers that announce stop)
    hearth start SLUG [--json]
    hearth ls [--label KEY=VALUE ...] [--json]
    hearth label SLUG KEY=VALUE|KEY- ... [--json]     (set or remove labels)
    hearth touch SLUG [--json]                        (record activity now: autostop counts from it)
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

The command's parts: ``_parser`` (the grammar), ``_route`` (where it runs: a daemon or a host
here), ``_commands`` (what each one does), ``_render`` (what it prints), ``_exits`` (how it
ends); this module runs one, stops it on a signal, and turns a failure into its one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .._errors import HearthError, retryable_kind
from ._commands import adapters, command, forget_confirmed, ls, serve
from ._exits import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, SIGNALS, NotConfirmed, SignalStop
from ._parser import build_parser
from ._render import log, print_out, quiet_logs, safe
from ._route import open_host, status_address, status_through


async def _run_command(args: argparse.Namespace) -> tuple[Any, str, int]:
    """Run one command; SIGINT, SIGTERM and SIGHUP cancel it (the host records why and waits
    for the rollback within its cancel grace); a second signal stops that wait. Through a
    daemon the same: the daemon cancels the operation and rolls it back."""
    import asyncio

    loop = asyncio.get_running_loop()
    host, grace = open_host(args)
    work = asyncio.create_task(command(host, args))
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

    for signum in SIGNALS:
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
        raise SignalStop(f"interrupted by {signal.Signals(received[0]).name}; {notes}") from None
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)  # until exit: the one line is still to come


def main(argv: Sequence[str] | None = None) -> int:
    """The command as a function (tests, embedding): the signal handlers it sets are put back."""
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    try:
        return _main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _main(argv: Sequence[str] | None) -> int:
    """Parse, check what argparse cannot, run the command where ``_route`` says, print once."""
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
        import logging

        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("hearth").setLevel(logging.DEBUG)
    # else the one-line reason is the whole story; logs are for --verbose (``quiet_logs``)
    try:
        status = 0
        if args.command == "adapters":
            quiet_logs()
            document, text = adapters(args)
        elif args.command == "ls":
            document, text = ls(args)
        elif args.command == "serve":
            quiet_logs()
            return serve(args)
        elif args.command == "forget" and not forget_confirmed(args):
            return _failed(
                {"kind": "cancelled"},
                "cancelled",
                "not confirmed; nothing was changed",
                as_json,
                EXIT_FAILURE,
            )
        elif args.command == "status" and (address := status_address(args)) is not None:
            document, text, status = status_through(address, args)
        else:
            import asyncio

            quiet_logs()
            document, text, status = asyncio.run(_run_command(args))
    except HearthError as exc:
        return _failed(exc.to_json(), exc.kind, exc.message + _hint(exc), as_json)
    except SignalStop as exc:
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
        log("debug", "unexpected error", exc_info=exc)
        return _failed(
            {},
            "internal",
            f"unexpected {type(exc).__name__}: {exc} (a bug in hearth; "
            "run again with --verbose for the traceback and report it)",
            as_json,
        )
    return print_out(json.dumps(document, indent=2) if as_json else text) or status


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
    if exc.kind == "forbidden":
        return " (the daemon's operator grants scopes: a token of --tokens, or --socket-scopes)"
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
    """The one-line reason on stderr (and ``{"error": ...}`` with --json); the exit status."""
    one_line = safe(" ".join(message.split()))
    print_out(f"hearth: {kind}: {one_line}", stream=sys.stderr)
    if as_json:
        said = error.get("retryable")
        again = said if isinstance(said, bool) else retryable_kind(kind)
        print_out(json.dumps({"error": {**error, "kind": kind, "message": one_line, "retryable": again}}))
    return (
        code if code is not None else (EXIT_USAGE if kind in ("invalid_input", "not_found") else EXIT_FAILURE)
    )


def entry() -> None:
    """The ``hearth`` executable: the signal handlers set while the command ran stay as they
    are until the process exits, so a late signal cannot kill it before its one line."""
    sys.exit(_main(None))


__all__ = ["main"]
