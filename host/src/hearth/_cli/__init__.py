"""The ``hearth`` command (``_main``). Kept import-light: ``hearth ls`` and ``hearth status``
through a daemon load only what they use."""

from __future__ import annotations


def entry() -> None:
    """The console script's entry point."""
    from ._main import entry as run

    run()


def main(argv: list[str] | None = None) -> int:
    from ._main import main as run

    return run(argv)


__all__ = ["entry", "main"]
