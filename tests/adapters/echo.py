"""An SDK adapter for transport tests: echoes payloads, reports its environment, spawns children."""

import json
import os
import subprocess
import sys
from typing import ClassVar

from hearth_adaptersdk import (
    DeploymentRef,
    Driver,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    serve,
    utc_now,
)


class Echo(Driver):
    name: ClassVar[str] = "echo"
    version: ClassVar[str] = "1.0"

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        flags = profile.driver_flags
        print("a stray print from the driver must not reach the protocol")
        endpoint = flags.get("payload", "")
        if flags.get("report_env"):
            endpoint = json.dumps(sorted(os.environ))
        if flags.get("report_cwd"):
            endpoint = os.getcwd()
        if flags.get("spawn_grandchild"):
            child = subprocess.Popen(  # noqa: ASYNC220 - a test adapter, brevity wins
                [sys.executable, "-c", "import time; time.sleep(600)", "hearth-grandchild"]
            )
            endpoint = str(child.pid)
        return DeploymentRef(
            workspace_slug=slug,
            tier=profile.tier,
            driver="echo",
            endpoint=endpoint,
            created=utc_now(),
            last_status="ready",
        )

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        return StatusReport(state="absent", observed_at=utc_now())

    async def upgrade(
        self, ref: DeploymentRef, profile: ProvisioningProfile, ctx: RequestContext
    ) -> DeploymentRef:
        return ref

    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        return None


serve(Echo)
