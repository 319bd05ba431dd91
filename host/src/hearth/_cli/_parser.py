"""The command line's grammar: ``build_parser``, its option types, and how bad input ends
(one line on stderr, ``{"error": ...}`` with ``--json``, exit status 2). Every command parses
first, so this loads argparse and nothing of hearth but the version, read only when asked."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, NoReturn

from ._exits import EXIT_USAGE


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


def _label(value: str) -> tuple[str, str]:
    """A --label: ``KEY=VALUE`` (the host checks the label syntax)."""
    key, equals, text = value.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{value[:80]!r} is not a label: use KEY=VALUE")
    return key, text


def _label_change(value: str) -> tuple[str, str | None]:
    """A ``hearth label`` argument: ``KEY=VALUE`` sets, ``KEY-`` removes (kubectl's way)."""
    if "=" not in value and value.endswith("-") and len(value) > 1:
        return value[:-1], None
    return _label(value)


class _Parser(argparse.ArgumentParser):
    """Bad input ends as every failure of the CLI does: one ``hearth: KIND: reason`` line."""

    def error(self, message: str) -> NoReturn:
        message = f"{message} (see '{self.prog} --help')"
        print(f"hearth: invalid_input: {message}", file=sys.stderr)
        if "--json" in sys.argv:
            print(json.dumps({"error": {"kind": "invalid_input", "message": message, "retryable": False}}))
        sys.exit(EXIT_USAGE)


class _Version(argparse.Action):
    """``--version``, reading the installed version only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from .. import __version__

        print(f"hearth {__version__}")
        parser.exit()


def _common() -> _Parser:
    """The global options, a parent of every verb's parser: accepted before or after the verb."""
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
    return common


def _on_behalf_of(verb: argparse.ArgumentParser) -> None:
    verb.add_argument(
        "--on-behalf-of",
        metavar="WHO",
        help="whom this is done for (recorded on the operation beside who ran it; never trusted)",
    )


def _serve(commands: Any, common: _Parser) -> None:
    """``hearth serve`` and its options."""
    serve = commands.add_parser(
        "serve", parents=[common], help="run the daemon: the HTTP API v1 on the home's Unix socket"
    )
    serve.add_argument("--socket", metavar="PATH", help="Unix socket (default: $HEARTH_HOME/hearth.sock)")
    serve.add_argument(
        "--socket-group",
        metavar="GROUP",
        help="make the socket 0660 and owned by GROUP, whose members may then use the daemon",
    )
    serve.add_argument(
        "--listen", metavar="HOST:PORT", help="also listen on TCP (needs --token-file or --tokens)"
    )
    serve.add_argument(
        "--token-file", metavar="FILE", help="the bearer token for --listen (mode 0600; every scope)"
    )
    serve.add_argument(
        "--tokens",
        metavar="FILE",
        help="named tokens for --listen, each with its scopes (TOML, mode 0600; re-read on SIGHUP)",
    )
    serve.add_argument(
        "--socket-scopes",
        metavar="SCOPES",
        help="what the Unix socket may do: some of read,operate,admin (default: all of them)",
    )
    serve.add_argument("--tls-cert", metavar="FILE", help="serve --listen over TLS: the certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM, mode 0600)")
    serve.add_argument("--log-json", action="store_true", help="log one JSON object per line on stderr")


def build_parser() -> argparse.ArgumentParser:
    """Every verb and its options."""
    common = _common()
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
    provision.add_argument(
        "--label",
        dest="labels",
        metavar="KEY=VALUE",
        type=_label,
        action="append",
        default=[],
        help="a label of the new workspace (repeat for more; Kubernetes label syntax)",
    )
    for name, text in (
        ("status", "what the backend shows now"),
        ("teardown", "remove a workspace (irreversible)"),
        ("stop", "stop a ready workspace, keeping its disk (drivers that can)"),
        ("start", "start a stopped workspace again"),
        ("logs", "operations and their logs"),
    ):
        commands.add_parser(name, parents=[common], help=text).add_argument("slug")
    upgrade = commands.add_parser("upgrade", parents=[common], help="move a workspace to a tier")
    upgrade.add_argument("slug")
    upgrade.add_argument("--tier", required=True)
    for name in ("provision", "upgrade", "teardown", "stop", "start"):
        _on_behalf_of(commands.choices[name])
    upgrade.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation of a destructive upgrade (scripts)"
    )
    plan = commands.add_parser(
        "plan", parents=[common], help="what provision or upgrade to a tier would do; changes nothing"
    )
    plan.add_argument("slug")
    plan.add_argument("--tier", required=True)
    plan.add_argument("--driver", help="the driver of a new workspace (default: the workspace's own)")
    ls = commands.add_parser("ls", parents=[common], help="list workspaces")
    ls.add_argument(
        "--label",
        dest="labels",
        metavar="KEY=VALUE",
        type=_label,
        action="append",
        default=[],
        help="only workspaces carrying this label (repeat: all of them)",
    )
    label = commands.add_parser(
        "label", parents=[common], help="set (KEY=VALUE) or remove (KEY-) a workspace's labels"
    )
    label.add_argument("slug")
    label.add_argument("changes", nargs="+", type=_label_change, metavar="KEY=VALUE|KEY-")
    touch = commands.add_parser(
        "touch", parents=[common], help="record activity on a workspace now (its autostop counts from it)"
    )
    touch.add_argument("slug")
    adopt = commands.add_parser(
        "adopt", parents=[common], help="record a deployment the driver lists but hearth has no record of"
    )
    adopt.add_argument("slug")
    adopt.add_argument("--driver", required=True)
    adopt.add_argument("--tier", required=True)
    _on_behalf_of(adopt)
    forget = commands.add_parser(
        "forget", parents=[common], help="drop a workspace's record and leave its backend alone"
    )
    forget.add_argument("slug")
    _on_behalf_of(forget)
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
    _serve(commands, common)
    return parser


__all__ = ["build_parser"]
