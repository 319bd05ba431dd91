"""Entry point of the ``hearth-adapter-kustomize`` executable."""

from hearth_adaptersdk import serve

from ._driver import KustomizeDriver


def main() -> None:
    serve(KustomizeDriver)


if __name__ == "__main__":
    main()
