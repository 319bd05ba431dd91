"""``HostAPI``: the surface ``Host`` and ``RemoteHost`` share, so that a console moves from
embedding the host to a daemon by changing the line that makes it. mypy checks both against it
(``tests/test_hostapi.py``), and a test compares their signatures."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from hearth_adaptersdk import DeploymentRef, PlanResult, Progress, StatusReport

from ._models import CheckResult, Deployment, Event, Operation, ReconcileReport

if TYPE_CHECKING:
    from ._adapters._discovery import DriverInfo
    from ._settings import Tier

#: ``on_progress`` may be a plain function or a coroutine function.
ProgressListener = Callable[[Progress], object] | Callable[[Progress], Awaitable[object]]


class HostAPI(Protocol):
    """What a console may call on either host. Each call is bounded (see the README's timeouts);
    errors are the classes of ``hearth``'s error tree."""

    interruptions: builtins.list[str]

    async def start_provision(
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        key: str | None = None,
        reuse: bool = False,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        labels: Mapping[str, str] | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation: ...
    async def start_upgrade(
        self,
        slug: str,
        *,
        tier: str,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation: ...
    async def start_teardown(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation: ...
    async def start_stop(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation: ...
    async def start_start(
        self,
        slug: str,
        *,
        key: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressListener | None = None,
        on_behalf_of: str | None = None,
    ) -> Operation: ...
    async def provision(
        self,
        slug: str,
        *,
        tier: str,
        driver: str,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        reuse: bool = False,
        key: str | None = None,
        labels: Mapping[str, str] | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef: ...
    async def upgrade(
        self,
        slug: str,
        *,
        tier: str,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef: ...
    async def teardown(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> None: ...
    async def stop(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef: ...
    async def start(
        self,
        slug: str,
        *,
        on_progress: ProgressListener | None = None,
        timeout: float | None = None,
        key: str | None = None,
        on_behalf_of: str | None = None,
    ) -> DeploymentRef: ...
    def cancel_running(self, reason: str, *, outcome: str = "cancelled", again: bool = False) -> int: ...
    async def operation(self, ident: int) -> Operation: ...
    async def operations(
        self,
        *,
        slug: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        after: int | None = None,
        actor: str | None = None,
    ) -> builtins.list[Operation]: ...
    def watch(
        self, after: int = 0, slug: str | None = None, labels: Mapping[str, str] | None = None
    ) -> AsyncIterator[Event]: ...
    async def status(self, slug: str, *, timeout: float | None = None) -> StatusReport: ...
    async def list(self) -> builtins.list[DeploymentRef]: ...
    async def deployments(
        self,
        *,
        state: str | None = None,
        driver: str | None = None,
        include_torn_down: bool = True,
        limit: int | None = None,
        after: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> builtins.list[Deployment]: ...
    async def deployment(self, slug: str) -> Deployment: ...
    async def logs(self, slug: str, *, limit: int | None = None) -> builtins.list[Operation]: ...
    #: A plain function that returns an awaitable on both hosts: ``await host.tiers()``.
    def tiers(self) -> Awaitable[builtins.list[Tier]]: ...
    async def drivers(self) -> builtins.list[DriverInfo]: ...
    async def check(
        self, slug: str, verb: str, *, tier: str | None = None, driver: str | None = None
    ) -> CheckResult: ...
    async def plan(
        self, slug: str, *, tier: str, driver: str | None = None, timeout: float | None = None
    ) -> PlanResult: ...
    async def reconcile(
        self, slug: str | None = None, *, dry_run: bool = False, timeout: float | None = None
    ) -> ReconcileReport: ...
    async def adopt(
        self,
        slug: str,
        *,
        driver: str,
        tier: str,
        timeout: float | None = None,
        on_behalf_of: str | None = None,
    ) -> Deployment: ...
    async def forget(self, slug: str, *, on_behalf_of: str | None = None) -> Deployment: ...
    async def label(self, slug: str, labels: Mapping[str, str | None]) -> Deployment: ...
    #: Records activity on the slug now (README "Autostop"); the record as it now is.
    async def touch(self, slug: str) -> Deployment: ...
    #: Returns when the store can be used now; else ``StoreError`` says what is wrong.
    async def ready(self) -> None: ...
    async def close(self) -> None: ...
