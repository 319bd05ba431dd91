"""Entry point of the ``hearth-adapter-fake`` executable."""

from hearth_adaptersdk import serve

from ._driver import FakeDriver


def main() -> None:
    serve(FakeDriver)


if __name__ == "__main__":
    main()
