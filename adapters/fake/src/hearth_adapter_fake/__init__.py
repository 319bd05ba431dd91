"""hearth-adapter-fake: a deterministic driver for contract tests, development and fault drills."""

from ._driver import FakeDriver

__all__ = ["FakeDriver"]
__version__ = FakeDriver.version
