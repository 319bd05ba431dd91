"""The ``hearth`` command: ``_main`` runs one, ``_parser`` reads it, ``_route`` finds where it
runs, ``_commands`` does it, ``_render`` prints it, ``_exits`` says how it ended. Kept
import-light, as each of them is: ``hearth ls`` and ``hearth status`` through a daemon load
only what they use (no pydantic, httpx or asyncio)."""

from __future__ import annotations


def entry() -> None:
    """The console script's entry point."""
    from ._main import entry as run

    run()


def main(argv: list[str] | None = None) -> int:
    """The command as a function: its exit status."""
    from ._main import main as run

    return run(argv)


__all__ = ["entry", "main"]
