"""The tfgrid driver: a workspace is a VM on a TFGrid node plus a name gateway to its port.

provision: caps → slices; a per-VM secret minted into a 0600 file (the ref's
``secrets_vault_path``); ``deploy_vm`` with the deploy-time SSH keys; poll ``get_vm`` until
running with a mycelium IP; a name gateway to the workspace port, polled until it has its
FQDN (the endpoint). Any failure or cancel deletes what was made (gateway, VM) and answers
-32031 with the VM's logs. A VM cannot be resized or re-imaged in place, so such an upgrade
deletes and redeploys it, destroying its disk: refused (-32022) unless allowed by the flags.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import re
from collections.abc import Awaitable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hearth_adaptersdk import (
    BackendFailure,
    BackendUnavailable,
    Conflict,
    DeploymentRef,
    Driver,
    InvalidProfile,
    InvalidTransition,
    ObservedState,
    ProvisioningProfile,
    RequestContext,
    StatusReport,
    Unsupported,
    utc_now,
)
from hearth_adaptersdk.wire import validation_problems

from . import compute
from .compute import ComputeClient, ComputeError, ComputeUnavailable, Endpoint, Vm, WebGateway
from .sizing import slices_for
from .vault import Vault

T = TypeVar("T")
DEFAULT_IMAGE = "https://hub.grid.tf/tf-official-vms/ubuntu-24.04-latest.flist"
SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh\.com) "
                     r"[A-Za-z0-9+/=]+( .*)?$")


class TfgridConfig(BaseModel):
    """``[adapters.tfgrid]`` in .hearth/hearth.toml."""

    model_config = ConfigDict(extra="forbid")
    #: The ComputeService's Unix socket (used unless ``url`` is set).
    socket: str = "/run/hero_compute/rpc.sock"
    #: An HTTP(S) URL of the service behind a router, e.g. https://router.example/rpc.
    url: str | None = None
    #: The environment variable holding the bearer token for ``url`` (the host passes it on).
    token_env: str | None = None
    default_node: str | None = None
    image: str = DEFAULT_IMAGE
    gateway_node: str | None = None
    poll_interval: float = Field(default=1.0, gt=0)
    deploy_timeout: float = Field(default=600.0, gt=0)
    delete_timeout: float = Field(default=300.0, gt=0)
    request_timeout: float = Field(default=30.0, gt=0)


class TfgridFlags(BaseModel):
    """``driver_flags`` of the tfgrid driver."""

    model_config = ConfigDict(extra="forbid")
    node: str | None = None
    image: str | None = None
    ssh_keys: list[str] = Field(default_factory=list)
    port: int = Field(default=8080, ge=1, le=65535)
    allow_destructive_upgrade: bool = False

    @field_validator("ssh_keys")
    @classmethod
    def _public_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not SSH_KEY.match(key.strip()):
                raise ValueError("each entry must be an OpenSSH public key ('ssh-ed25519 AAAA…'); "
                                 "private keys are never accepted")
        return [key.strip() for key in keys]


class TfgridDriver(Driver):
    name: ClassVar[str] = "tfgrid"
    version: ClassVar[str] = "0.1.0"
    config_model: ClassVar[type[BaseModel] | None] = TfgridConfig

    def __init__(self) -> None:
        self.settings = TfgridConfig()
        self.service = ComputeClient(Endpoint(socket=self.settings.socket))
        self.vault: Vault | None = None

    async def setup(self, config: Any, data_dir: Path | None) -> None:
        await super().setup(config, data_dir)
        self.settings = config
        token = None
        if config.token_env:
            token = os.environ.get(config.token_env)
            if not token:
                raise BackendUnavailable(
                    f"the ComputeService token variable {config.token_env} is not set; export it "
                    "where the host runs (the host passes variables named by *_env config keys)")
        endpoint = (Endpoint(url=config.url, token=token) if config.url
                    else Endpoint(socket=config.socket))
        self.service = ComputeClient(endpoint, timeout=config.request_timeout)
        self.vault = Vault(data_dir)

    @property
    def _vault(self) -> Vault:
        if self.vault is None:
            self.vault = Vault(None)
        return self.vault

    async def _ask(self, call: Awaitable[T]) -> T:
        """A service call; its failures become protocol errors here and only here."""
        try:
            return await call
        except ComputeUnavailable as exc:
            raise BackendUnavailable(
                f"{exc}; is the ComputeService running? Set 'socket' or 'url' in "
                "[adapters.tfgrid] of .hearth/hearth.toml") from None
        except ComputeError as exc:
            raise BackendFailure(f"the ComputeService refused: {exc.message}",
                                 rolled_back=False) from None

    # --- sizing -------------------------------------------------------------------------------
    async def _plan(self, profile: ProvisioningProfile) -> tuple[TfgridFlags, str, int, str]:
        """(flags, node, slices, image), or InvalidProfile listing every problem."""
        problems: list[str] = []
        flags = TfgridFlags()
        try:
            flags = TfgridFlags.model_validate(profile.driver_flags)
        except ValidationError as exc:
            problems += [f"driver_flags.{problem}" for problem in validation_problems(exc)]
        if profile.driver != self.name:
            problems.append(f"driver: this adapter serves 'tfgrid', not {profile.driver!r}")
        nodes = {n.node_sid: n for n in await self._ask(self.service.list_slices())}
        wanted = flags.node or self.settings.default_node
        needed, reasons, cap_problems = slices_for(
            profile.resource_caps, nodes[wanted].disk_gb_per_slice if wanted in nodes else None)
        problems += cap_problems
        arithmetic = "; ".join(reasons) or "no caps: 1 slice"
        if wanted is not None and wanted not in nodes:
            problems.append(f"driver_flags.node: no node {wanted!r}; nodes: {', '.join(sorted(nodes))}")
        elif wanted is not None and nodes[wanted].slices_total < needed:
            problems.append(f"resource_caps: needs {needed} slices ({arithmetic}), node {wanted} "
                            f"has {nodes[wanted].slices_total} in all")
        elif wanted is None:
            fitting = [sid for sid, n in sorted(nodes.items()) if n.slices_free >= needed]
            if fitting:
                wanted = fitting[0]
            elif not any(n.slices_total >= needed for n in nodes.values()):
                largest = max((n.slices_total for n in nodes.values()), default=0)
                problems.append(f"resource_caps: needs {needed} slices ({arithmetic}), no node has "
                                f"that many (largest: {largest})")
            else:
                wanted = max(nodes.values(), key=lambda n: n.slices_free).node_sid
        if problems:
            raise InvalidProfile("the tfgrid driver cannot honour this profile", errors=problems)
        assert wanted is not None
        return flags, wanted, needed, flags.image or self.settings.image

    async def validate_profile(self, profile: ProvisioningProfile,
                               ctx: RequestContext) -> builtins.list[str]:
        try:
            await self._plan(profile)
        except InvalidProfile as exc:
            return exc.errors
        return []

    # --- finding things -----------------------------------------------------------------------
    async def _find(self, slug: str, secret: str) -> tuple[Vm | None, WebGateway | None]:
        """The workspace's VM and gateway. With a known VM id this asks ``get_vm``, so a wrong
        secret is an error rather than an empty list (other owners' VMs are invisible)."""
        name = _vm_name(slug)
        record = self._vault.record(slug) or {}
        vm: Vm | None
        if record.get("vm_id"):
            vm = await self._ask(self._owned_vm(slug, record["vm_id"], secret))
        else:
            vms = await self._ask(self.service.list_vms(secret))
            vm = next((v for v in vms if v.name == name), None)
        gateway = None
        if vm is not None:
            gateways = await self._ask(self.service.list_webgateways(secret))
            gateway = next((g for g in gateways if g.vm_id == vm.id), None)
        return vm, gateway

    async def _owned_vm(self, slug: str, vm_id: str, secret: str) -> Vm | None:
        """``get_vm``, where "not found" means gone and "forbidden" means the wrong secret."""
        try:
            return await self.service.get_vm(vm_id, secret)
        except ComputeError as exc:
            if exc.code == compute.NOT_FOUND:
                return None
            if exc.code == compute.FORBIDDEN:
                raise BackendFailure(
                    f"the ComputeService refused VM {vm_id} ({_vm_name(slug)}): {exc.message}; "
                    f"the secret in {self._vault.secret_path(slug)} does not own it, so nothing "
                    "was changed", rolled_back=False) from None
            raise

    def _ref(self, slug: str, record: dict[str, Any], vm: Vm | None,
             gateway: WebGateway | None) -> DeploymentRef:
        state, _ = _observed(vm, gateway)
        return DeploymentRef(
            workspace_slug=slug, tier=record["tier"], driver=self.name,
            endpoint=f"https://{gateway.fqdn}" if gateway is not None and gateway.fqdn else None,
            secrets_vault_path=str(self._vault.secret_path(slug)),
            created=datetime.fromisoformat(record["created"]),
            last_status="failed" if state == "absent" else state)

    # --- provision ----------------------------------------------------------------------------
    async def provision(self, slug: str, profile: ProvisioningProfile,
                        ctx: RequestContext) -> DeploymentRef:
        flags, node, slices, image = await self._plan(profile)
        vault = self._vault
        record, secret = vault.record(slug), vault.secret(slug)
        if record is not None and secret is not None:
            vm, gateway = await self._find(slug, secret)
            if vm is not None:
                ref = self._ref(slug, record, vm, gateway)
                if record["tier"] == profile.tier:
                    ctx.progress("already provisioned", 1.0)
                    return ref
                raise Conflict(f"workspace {slug!r} exists with tier {record['tier']!r}; use upgrade",
                               existing=ref)
        record = {"tier": profile.tier, "created": utc_now().isoformat(), "node": node,
                  "slices": slices, "image": image, "port": flags.port}
        secret = vault.mint(slug)
        vault.save(slug, record)
        try:
            vm, gateway = await self._deploy(slug, secret, flags, node=node, slices=slices, image=image,
                                                ctx=ctx)
        except BaseException as exc:
            logs = await self._undo(slug, secret, ctx)
            vault.forget(slug)
            if isinstance(exc, asyncio.CancelledError | InvalidProfile | BackendUnavailable):
                raise
            message = exc.message if isinstance(exc, BackendFailure) else str(exc)
            raise BackendFailure(f"provision of {slug!r} failed and was rolled back: {message}",
                                 rolled_back=True, logs=logs) from None
        ctx.progress("workspace ready", 1.0)
        return self._ref(slug, record, vm, gateway)

    async def _deploy(self, slug: str, secret: str, flags: TfgridFlags, *, node: str, slices: int,
                      image: str, ctx: RequestContext) -> tuple[Vm, WebGateway]:
        ctx.progress(f"deploying a {slices}-slice VM on {node}", 0.05)
        vm = await self._ask(self.service.deploy_vm(
            name=_vm_name(slug), slice_count=slices, secret=secret, image=image,
            ssh_keys=flags.ssh_keys, node_sid=node))
        record = self._vault.record(slug) or {}
        self._vault.save(slug, {**record, "vm_id": vm.id})
        vm = await self._poll_vm(vm, secret, ctx)
        gateway_node = self.settings.gateway_node or (
            await self._ask(self.service.list_gateway_nodes()))[0].node_sid
        ctx.progress(f"deploying the name gateway {slug} on {gateway_node} to port {flags.port}", 0.7)
        gateway = await self._ask(self.service.deploy_webgateway(
            name=slug, vm_id=vm.id, port=flags.port, node_sid=gateway_node, secret=secret))
        return vm, await self._poll_gateway(gateway, secret, ctx)

    async def _poll_vm(self, vm: Vm, secret: str, ctx: RequestContext) -> Vm:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.deploy_timeout
        while not (vm.state == "running" and vm.mycelium_ip):
            if vm.state == "failed":
                raise BackendFailure(f"the VM {vm.name} failed to deploy", rolled_back=False)
            if loop.time() >= deadline:
                raise BackendFailure(
                    f"the VM {vm.name} was not running with a mycelium IP within "
                    f"{self.settings.deploy_timeout:g} s (state {vm.state})", rolled_back=False)
            ctx.progress(f"waiting for VM {vm.name}: {vm.state}"
                         + (", no mycelium IP yet" if vm.state == "running" else ""), 0.3)
            await asyncio.sleep(self.settings.poll_interval)
            vm = await self._ask(self.service.get_vm(vm.id, secret))
        ctx.progress(f"VM {vm.name} is running at {vm.mycelium_ip}", 0.6)
        return vm

    async def _poll_gateway(self, gateway: WebGateway, secret: str, ctx: RequestContext) -> WebGateway:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.deploy_timeout
        while not (gateway.state == "ready" and gateway.fqdn):
            if gateway.state == "failed" or loop.time() >= deadline:
                raise BackendFailure(f"the gateway {gateway.name} did not become ready "
                                     f"(state {gateway.state})", rolled_back=False)
            ctx.progress(f"waiting for gateway {gateway.name}: {gateway.state}", 0.8)
            await asyncio.sleep(self.settings.poll_interval)
            gateway = await self._ask(self.service.get_webgateway(gateway.id, secret))
        return gateway

    async def _undo(self, slug: str, secret: str, ctx: RequestContext | None) -> list[str]:
        """Delete the gateway and the VM (waiting until gone); return the VM's logs. Runs to the
        end even when the request is being cancelled."""
        async def undo() -> list[str]:
            logs: list[str] = []
            with contextlib.suppress(BackendFailure, BackendUnavailable):
                vm, gateway = await self._find(slug, secret)
                if gateway is not None:
                    await self._ask(self.service.delete_webgateway(gateway.id, secret))
                if vm is not None:
                    logs = await self._ask(self.service.vm_logs(vm.id, secret))
                    await self._ask(self.service.delete_vm(vm.id, secret))
                    await self._wait_gone(slug, secret)
            return logs
        return await asyncio.shield(undo())

    async def _wait_gone(self, slug: str, secret: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.delete_timeout
        name = _vm_name(slug)
        while (await self._find(slug, secret))[0] is not None:
            if loop.time() >= deadline:
                raise BackendFailure(f"the VM {name} was still there {self.settings.delete_timeout:g} s "
                                     "after delete_vm", rolled_back=False)
            await asyncio.sleep(min(self.settings.poll_interval, 0.1))

    # --- status, list -------------------------------------------------------------------------
    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        slug = ref.workspace_slug
        secret = self._vault.secret(slug, ref.secrets_vault_path)
        if secret is None:
            return StatusReport(state="absent", observed_at=utc_now(),
                                message="no secret for this workspace: nothing deployed")
        vm, gateway = await self._find(slug, secret)
        state, message = _observed(vm, gateway)
        details = ({"vm_id": vm.id, "node": vm.node_sid, "slices": vm.slice_count,
                    "mycelium_ip": vm.mycelium_ip} if vm else {})
        return StatusReport(state=state, message=message, observed_at=utc_now(), details=details,
                            endpoint=f"https://{gateway.fqdn}" if gateway and gateway.fqdn else None)

    async def list(self, ctx: RequestContext) -> builtins.list[DeploymentRef]:
        refs = []
        for slug in self._vault.slugs():
            record, secret = self._vault.record(slug), self._vault.secret(slug)
            if record is None or secret is None:
                continue
            vm, gateway = await self._find(slug, secret)
            if vm is not None:
                refs.append(self._ref(slug, record, vm, gateway))
        return refs

    # --- upgrade ------------------------------------------------------------------------------
    async def upgrade(self, ref: DeploymentRef, profile: ProvisioningProfile,
                      ctx: RequestContext) -> DeploymentRef:
        slug = ref.workspace_slug
        flags, node, slices, image = await self._plan(profile)
        record, secret = self._vault.record(slug), self._vault.secret(slug, ref.secrets_vault_path)
        if record is None or secret is None:
            raise InvalidTransition(f"workspace {slug!r} is not deployed", state="absent")
        vm, gateway = await self._find(slug, secret)
        state, _ = _observed(vm, gateway)
        if state != "ready":
            raise InvalidTransition(f"workspace {slug!r} is {state}; only a ready workspace can be "
                                    "upgraded", state=state)
        assert vm is not None
        changes = [what for what, old, new in (("slices", vm.slice_count, slices),
                                               ("image", vm.image, image)) if old != new]
        if not changes:
            record["tier"] = profile.tier
            self._vault.save(slug, record)
            ctx.progress("nothing to change on the grid; the tier is updated", 1.0)
            return self._ref(slug, record, vm, gateway)
        if not flags.allow_destructive_upgrade:
            raise Unsupported(
                f"changing the {' and '.join(changes)} of a TFGrid VM means deleting and "
                "redeploying it, which destroys its disk; the VM keeps running unchanged. Set "
                "driver_flags.allow_destructive_upgrade = true to accept that",
                reason=f"in-place {' and '.join(changes)} change is not possible on TFGrid")
        ctx.progress(f"destructive upgrade: deleting VM {vm.name}", 0.05)
        await self._undo(slug, secret, ctx)
        record.update(tier=profile.tier, node=node, slices=slices, image=image, port=flags.port)
        self._vault.save(slug, record)
        try:
            vm, gateway = await self._deploy(slug, secret, flags, node=node, slices=slices, image=image,
                                                ctx=ctx)
        except BaseException:
            await self._undo(slug, secret, None)
            self._vault.forget(slug)
            raise
        return self._ref(slug, record, vm, gateway)

    # --- teardown -----------------------------------------------------------------------------
    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        slug = ref.workspace_slug
        secret = self._vault.secret(slug, ref.secrets_vault_path)
        if secret is None:
            return
        ctx.progress(f"deleting the gateway and VM {_vm_name(slug)}", 0.1)
        vm, gateway = await self._find(slug, secret)
        if gateway is not None:
            await self._ask(self.service.delete_webgateway(gateway.id, secret))
        if vm is not None:
            await self._ask(self.service.delete_vm(vm.id, secret))
            await self._wait_gone(slug, secret)
        self._vault.forget(slug)
        ctx.progress("deleted", 1.0)


def _vm_name(slug: str) -> str:
    return f"hearth-{slug}"


def _observed(vm: Vm | None, gateway: WebGateway | None) -> tuple[ObservedState, str | None]:
    if vm is None:
        return "absent", "no VM of this name is owned by the workspace's secret"
    if vm.state == "provisioning":
        return "provisioning", "the VM is being deployed"
    if vm.state == "deleting":
        return "tearing_down", "the VM is being deleted"
    if vm.state == "failed":
        return "failed", "the VM failed to deploy"
    if not vm.mycelium_ip:
        return "provisioning", "the VM runs but has no mycelium IP yet"
    if gateway is None or gateway.state != "ready" or not gateway.fqdn:
        return "provisioning", "the gateway is not ready"
    return "ready", None


__all__ = ["TfgridConfig", "TfgridDriver", "TfgridFlags", "compute"]
