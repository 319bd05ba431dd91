"""Entry point of the ``hearth-adapter-tfgrid`` executable."""

from hearth_adaptersdk import serve

from ._driver import TfgridDriver


def main() -> None:
    serve(TfgridDriver)


if __name__ == "__main__":
    main()
