"""The fake adapter with one rule of an executable broken on purpose; MODE is substituted.

no_version: ``--version`` is not understood; runs_without_protocol: it serves without
HEARTH_PROTOCOL=1; outlives_parent: it does not notice that its parent died; junk_at_start:
it prints a line before it serves; junk_in_provision: provision prints a line past the SDK's stdout
guard; crashes_logging_rollback: a write to its closed stderr (as a dying host leaves it) ends it
with 101 before it rolls back, as Rust's ``eprintln!`` panics.
"""

import asyncio
import os
import sys
from typing import Any

from hearth_adapter_fake import FakeDriver
from hearth_adaptersdk import _stdio, serve

MODE = "@MODE@"

if MODE == "no_version" and "--version" in sys.argv:
    sys.argv.remove("--version")
if MODE == "runs_without_protocol":
    os.environ["HEARTH_PROTOCOL"] = "1"
if MODE == "outlives_parent":

    async def _never_look(done: object, parent: object) -> None:
        return None

    _stdio._watch_parent = _never_look
    _stdio._watchdog = lambda parent, bound: None

driver: type[FakeDriver] = FakeDriver
if MODE == "junk_at_start" and os.environ.get("HEARTH_PROTOCOL") == "1" and "--version" not in sys.argv:
    os.write(1, b"starting the fake adapter\n")
if MODE == "junk_in_provision":
    _STDOUT = os.dup(1)  # the protocol's stdout, kept before serve() guards fd 1

    class _Prints(FakeDriver):
        async def provision(self, slug: str, profile: Any, ctx: Any) -> Any:
            os.write(_STDOUT, f"provisioning {slug}\n".encode())
            return await super().provision(slug, profile, ctx)

    driver = _Prints
if MODE == "crashes_logging_rollback":

    class _CrashesLogging(FakeDriver):
        async def _work(self, ctx: Any, flags: dict[str, Any], verb: str) -> None:
            try:
                await super()._work(ctx, flags, verb)
            except asyncio.CancelledError:
                try:
                    os.write(2, b"fake: rolling back\n")
                except OSError:
                    os._exit(101)
                raise

    driver = _CrashesLogging

serve(driver)
