"""``hearth-adaptersdk``: tools for adapter authors.

hearth-adaptersdk conformance PATH [--options FILE] [--config JSON] [--profile JSON]
                                   [--refused-profile JSON] [--failing-profile JSON]
                                   [--slow-profile JSON] [--slow-stop-profile JSON]
                                   [--timeout S] [--env NAME] [--json]
hearth-adaptersdk schema [--openrpc] [--output FILE]
hearth-adaptersdk new NAME [DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._scaffold import scaffold
from ._schema import protocol_openrpc, protocol_schema
from .conformance import KitOptions, check_adapter


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _load_options(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the options file must hold an object")
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hearth-adaptersdk", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hearth-adaptersdk {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    kit = commands.add_parser("conformance", help="check an adapter executable against the protocol")
    kit.add_argument("path", type=Path, help="the adapter executable (hearth-adapter-<driver>)")
    kit.add_argument("--options", type=Path, help="a JSON or TOML file with any of the options below")
    for name in (
        "config",
        "profile",
        "upgrade-profile",
        "refused-profile",
        "failing-profile",
        "slow-profile",
        "slow-stop-profile",
    ):
        kit.add_argument(f"--{name}", type=_json_object, metavar="JSON")
    kit.add_argument("--timeout", type=float, help="bound on each request in seconds (default 60)")
    kit.add_argument(
        "--env",
        action="append",
        default=None,
        metavar="NAME",
        help="an environment variable the adapter may see (repeatable)",
    )
    kit.add_argument("--json", action="store_true", help="print the report as JSON")
    schema = commands.add_parser("schema", help="the JSON Schema of every wire type and message")
    schema.add_argument(
        "--openrpc", action="store_true", help="write the protocol as an OpenRPC 1.3 document instead"
    )
    schema.add_argument("--output", type=Path, help="write it to this file (default: stdout)")
    new = commands.add_parser("new", help="scaffold an installable adapter package")
    new.add_argument("name", help="the driver name: the executable is hearth-adapter-NAME")
    new.add_argument("dir", nargs="?", type=Path, help="where (default: ./hearth-adapter-NAME)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        document = protocol_openrpc() if args.openrpc else protocol_schema()
        text = json.dumps(document, indent=2) + "\n"
        if args.output is None:
            sys.stdout.write(text)
        else:
            args.output.write_text(text)
            print(f"wrote {args.output}", file=sys.stderr)
        return 0
    if args.command == "new":
        folder = args.dir or Path(f"hearth-adapter-{args.name}")
        try:
            written = scaffold(args.name, folder)
        except (ValueError, OSError) as exc:
            print(f"hearth-adaptersdk: {exc}", file=sys.stderr)
            return 2
        print(
            f"created {len(written)} files in {folder}; next: pip install {folder} && "
            f'hearth-adaptersdk conformance "$(command -v hearth-adapter-{args.name})"'
        )
        return 0
    try:
        options = _load_options(args.options) if args.options else {}
        for key in (
            "config",
            "profile",
            "upgrade_profile",
            "refused_profile",
            "failing_profile",
            "slow_profile",
            "slow_stop_profile",
            "timeout",
            "env",
        ):
            value = getattr(args, key)
            if value is not None:
                options[key] = value
        kit_options = KitOptions.from_mapping(options)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"hearth-adaptersdk: bad options: {exc}", file=sys.stderr)
        return 2
    if not args.path.is_file():
        print(f"hearth-adaptersdk: no adapter executable at {args.path}", file=sys.stderr)
        return 2
    report = check_adapter(args.path.resolve(), kit_options)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
