"""The fake adapter with one rule of an executable broken on purpose; MODE is substituted.

no_version: ``--version`` is not understood; runs_without_protocol: it serves without
HEARTH_PROTOCOL=1; outlives_parent: it does not notice that its parent died.
"""

import os
import sys

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

serve(FakeDriver)
