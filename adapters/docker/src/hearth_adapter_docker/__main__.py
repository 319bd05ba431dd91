"""Entry point of the ``hearth-adapter-docker`` executable."""

from hearth_adaptersdk import serve

from ._driver import DockerDriver


def main() -> None:
    serve(DockerDriver)


if __name__ == "__main__":
    main()
