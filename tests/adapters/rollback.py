"""An SDK adapter whose provision runs until cancelled, then rolls back through ctx.cleanup.

driver_flags: marker (a path written when the rollback finished), undo_seconds (how long the
rollback takes), undo_forever (a rollback that never finishes).
"""

import asyncio
from pathlib import Path
from typing import Any, ClassVar

from hearth_adaptersdk import (
    DeploymentRef,
    Driver,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    serve,
    utc_now,
)


class Rollback(Driver):
    name: ClassVar[str] = "rollback"
    version: ClassVar[str] = "1.0"

    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        flags = profile.driver_flags
        try:
            ctx.progress("working until cancelled", 0.1)
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await ctx.cleanup(self._undo(flags))
            raise
        return DeploymentRef(
            workspace_slug=slug, tier=profile.tier, driver="rollback", created=utc_now(), last_status="ready"
        )

    async def _undo(self, flags: dict[str, Any]) -> None:
        if flags.get("undo_forever"):
            await asyncio.Event().wait()
        await asyncio.sleep(float(flags.get("undo_seconds", 0)))  # the backend's slow delete
        Path(flags["marker"]).write_text("rolled back")

    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        return StatusReport(state="absent", observed_at=utc_now())

    async def upgrade(
        self, ref: DeploymentRef, profile: ProvisioningProfile, ctx: RequestContext
    ) -> DeploymentRef:
        return ref

    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        return None


serve(Rollback)
