"""The tfgrid driver: a workspace is a VM on a TFGrid node plus a name gateway to its port.

provision: caps → slices; a node (``driver_flags.node``, else the config's ``default_node``,
else placement: the first node with room, counting this adapter's deploys in flight, moving on
to the next node with room when the service answers that the chosen one is full); a per-VM
secret minted into a 0600 file (the ref's ``secrets_vault_path``, and the only file a secret is
ever read from); ``deploy_vm`` with the deploy-time SSH keys; poll ``get_vm`` until running
with a mycelium IP; a name gateway to the workspace port, polled until it has its FQDN (the
endpoint). Any failure or cancel deletes what was made (gateway, VM) through ``ctx.cleanup``,
so the answer and the process's exit wait for the deletion, and answers -32031 with the VM's
logs (``rolled_back`` false, the secret kept for a later teardown, when the deletion could not
be confirmed). A VM cannot be resized or re-imaged in place, so such an upgrade deletes and
redeploys it, destroying its disk: refused (-32022) unless allowed by the flags.
plan: what provision or upgrade would do, asked of the service and the vault without changing
either; an upgrade that changes the slices or the image is a ``replace`` of the VM, destructive
(its disk is destroyed), and refused like the upgrade unless the flags allow it. The VM's id is
sent as ``backend_id`` in a progress event as soon as ``deploy_vm`` answers.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hearth_adaptersdk import (
    BackendFailure,
    BackendUnavailable,
    Conflict,
    DeploymentRef,
    Driver,
    DriverError,
    InvalidProfile,
    InvalidTransition,
    ObservedState,
    PlanAction,
    PlanResult,
    ProvisioningProfile,
    RequestContext,
    ResourceCaps,
    StatusReport,
    Unsupported,
    codes,
    utc_now,
)
from hearth_adaptersdk.wire import PlanActionKind, validation_problems

from . import _compute as compute
from ._compute import (
    ComputeClient,
    ComputeError,
    ComputeUnavailable,
    Endpoint,
    NodeSlices,
    Vm,
    WebGateway,
)
from ._placement import Choice, Ledger, choose
from ._sizing import slices_for
from ._vault import UnsafeSecretPath, Vault

T = TypeVar("T")
DEFAULT_IMAGE = "https://hub.grid.tf/tf-official-vms/ubuntu-24.04-latest.flist"
SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-ssh-ed25519@openssh\.com) "
    r"[A-Za-z0-9+/=]+( .*)?$"
)


#: The socket when ``$HERO_SOCKET_DIR`` is unset.
DEFAULT_SOCKET = "/run/hero_compute/rpc.sock"
#: Bound (seconds) of the surface check at ``initialize``: inside the host's 10 s handshake.
DISCOVER_TIMEOUT = 5.0


def default_socket(variable: str = "HERO_SOCKET_DIR") -> str:
    """The service's socket as hero lays them out: ``hero_compute_zos/rpc.sock`` under the Hero
    socket folder (the environment variable ``variable``), else ``DEFAULT_SOCKET``."""
    folder = os.environ.get(variable)
    return str(Path(folder) / "hero_compute_zos" / "rpc.sock") if folder else DEFAULT_SOCKET


class TfgridConfig(BaseModel):
    """``[adapters.tfgrid]`` in .hearth/hearth.toml."""

    model_config = ConfigDict(extra="forbid")
    #: The ComputeService's Unix socket (used unless ``url`` is set); empty: ``hero_compute_zos/
    #: rpc.sock`` under the folder in ``socket_dir_env``, else ``DEFAULT_SOCKET``.
    socket: str = ""
    #: The environment variable holding the Hero socket folder (the host passes a variable to
    #: an adapter only when its config names it, so name it in .hearth/hearth.toml to use it).
    socket_dir_env: str = "HERO_SOCKET_DIR"
    #: An HTTP(S) URL of the service, e.g. through hero_router http://HOST:9988/hero_compute_zos/rpc.
    url: str | None = None
    #: The environment variable holding a bearer token for ``url``, if the router wants one (the
    #: host passes it on); unset: no Authorization header.
    token_env: str | None = None
    #: Extra HTTP headers sent with every call (a router's context headers).
    headers: dict[str, str] = Field(default_factory=dict)
    #: Put before every method name sent, e.g. "ComputeService."; the service's rpc.discover
    #: document is checked against it at initialize.
    method_prefix: str = ""
    #: The node for every workspace whose profile names none; like ``driver_flags.node`` it is
    #: kept to (a full node is an error, never a move to another). Unset: placement chooses.
    default_node: str | None = None
    image: str = DEFAULT_IMAGE
    gateway_node: str | None = None
    poll_interval: float = Field(default=1.0, gt=0)
    deploy_timeout: float = Field(default=600.0, gt=0)
    delete_timeout: float = Field(default=300.0, gt=0)
    #: Seconds for each phase of one call to the service: connecting, sending, awaiting the answer.
    request_timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _socket(self) -> TfgridConfig:
        if not self.socket:
            self.socket = default_socket(self.socket_dir_env)
        return self


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
                raise ValueError(
                    "each entry must be an OpenSSH public key ('ssh-ed25519 AAAA…'); "
                    "private keys are never accepted"
                )
        return [key.strip() for key in keys]


class RefusedSecretPath(DriverError):
    """-32602: the request names a secret file this adapter does not read from; nothing was read,
    sent or changed. Invalid params rather than a backend failure: the backend was never asked,
    and the host counts -32602 as a refusal that changed nothing, even for a teardown."""

    code = codes.INVALID_PARAMS

    def __init__(self, message: str, *, errors: list[str]) -> None:
        super().__init__(message, errors=list(errors))


@dataclass(frozen=True)
class _Plan:
    """What a profile asks for, checked; the node is chosen when deploying (placement)."""

    flags: TfgridFlags
    image: str
    caps: ResourceCaps
    #: The node named by ``driver_flags.node`` or the config's ``default_node``: kept to, even
    #: when full. None: placement chooses.
    node: str | None
    #: Which of the two named it ("driver_flags.node" or "default_node"), for messages.
    named_by: str | None = None

    def slices_on(self, node: NodeSlices) -> int:
        return slices_for(self.caps, node.disk_gb_per_slice)[0]


@dataclass
class _Undone:
    """How a deletion of a workspace's gateway and VM ended."""

    logs: list[str] = field(default_factory=list)
    #: Why the deletion is not confirmed (the VM may still be there); None when it is.
    problem: str | None = None


class _NoRoom(Exception):
    """``deploy_vm`` answered NO_CAPACITY for a node."""


class TfgridDriver(Driver):
    name: ClassVar[str] = "tfgrid"
    version: ClassVar[str] = importlib.metadata.version("hearth-adapter-tfgrid")
    config_model: ClassVar[type[BaseModel] | None] = TfgridConfig

    def __init__(self) -> None:
        self.settings = TfgridConfig()
        self.service = ComputeClient(Endpoint(socket=self.settings.socket))
        self.vault: Vault | None = None
        #: Slices held by this adapter's deploys in flight (see _placement.py).
        self.ledger = Ledger()
        #: Whether the service's surface was checked (see ``_check_surface``).
        self._checked = False

    async def setup(self, config: Any, data_dir: Path | None) -> None:
        await super().setup(config, data_dir)
        self.settings = config
        token = None
        if config.token_env:
            token = os.environ.get(config.token_env)
            if not token:
                raise BackendUnavailable(
                    f"the ComputeService token variable {config.token_env} is not set; export it "
                    "where the host runs (the host passes variables named by *_env config keys)"
                )
        endpoint = (
            Endpoint(url=config.url, token=token, headers=config.headers)
            if config.url
            else Endpoint(socket=config.socket, headers=config.headers)
        )
        await self.service.aclose()
        self.service = ComputeClient(endpoint, timeout=config.request_timeout, prefix=config.method_prefix)
        self.vault = Vault(data_dir)
        self._checked = False
        try:
            await self._check_surface(min(DISCOVER_TIMEOUT, config.request_timeout))
        except BackendUnavailable:
            pass  # unreachable now: checked before the first call
        except BaseException:
            await self.service.aclose()  # refused: initialize fails, and close() may never come
            raise

    async def _check_surface(self, bound: float) -> None:
        """Read the service's OpenRPC document (``rpc.discover``, within ``bound`` seconds) and
        compare it with what this adapter uses (``_compute.SURFACE``); refuse (-32022) naming every
        difference, and log the methods the service lists. Sets the aliases the document asks for."""
        try:
            async with asyncio.timeout(bound):
                document = await self.service.discover()
        except (ComputeUnavailable, TimeoutError) as exc:
            raise BackendUnavailable(
                f"{_message(exc) or 'no answer to rpc.discover'}; is the ComputeService running? "
                "Set 'socket' or 'url' in [adapters.tfgrid] of .hearth/hearth.toml"
            ) from None
        except ComputeError as exc:
            raise Unsupported(
                f"the ComputeService at {self.service.endpoint.describe()} did not describe itself "
                f"(rpc.discover: {exc.message}), so this adapter cannot check it speaks the same methods",
                reason="rpc.discover failed",
            ) from None
        surface = compute.check_surface(document, self.service.prefix)
        if surface.problems:
            print(
                f"hearth-adapter-tfgrid: the ComputeService lists {len(surface.methods)} methods: "
                + ", ".join(surface.methods),
                file=sys.stderr,
            )
            raise Unsupported(
                f"the ComputeService at {self.service.endpoint.describe()} differs from what this "
                f"adapter speaks ({len(surface.problems)} difference(s)): "
                + "; ".join(surface.problems)
                + "; set 'method_prefix' in [adapters.tfgrid] of .hearth/hearth.toml if its methods "
                "are named under a prefix",
                reason="the ComputeService's methods differ: " + "; ".join(surface.problems),
            )
        self.service.aliases = surface.aliases
        self._checked = True

    async def close(self) -> None:
        await self.service.aclose()
        if self.vault is not None:
            self.vault.discard()

    @property
    def _vault(self) -> Vault:
        if self.vault is None:
            self.vault = Vault(None)
        return self.vault

    def _secret(self, slug: str, ref: DeploymentRef | None = None) -> str | None:
        """The workspace's secret, read only from its own file in the vault (see _vault.py)."""
        try:
            return self._vault.secret(slug, ref.secrets_vault_path if ref is not None else None)
        except UnsafeSecretPath as exc:
            where = "ref.secrets_vault_path" if ref is not None and ref.secrets_vault_path else "the vault"
            raise RefusedSecretPath(
                f"refused to read the secret of {slug!r}: {exc}; nothing was read, sent or changed",
                errors=[f"{where}: {exc}"],
            ) from None

    def _no_secret(self, slug: str, ref: DeploymentRef) -> BackendUnavailable | None:
        """Why a workspace the host says was deployed has no readable secret here, or None when
        this vault deleted it (then "absent" is the truth). Another replica's data folder holds
        it, or its file was lost: this adapter cannot know what the grid holds, and never mints
        a new secret for it (that would deploy a second VM and orphan the first)."""
        if ref.secrets_vault_path is None or self._vault.deleted_here(slug):
            return None
        return BackendUnavailable(
            f"the secret of workspace {slug!r} is not in this adapter's data folder "
            f"({self._vault.secret_path(slug)}): it was deployed from another machine or replica, "
            "or its file was lost, so what the grid holds cannot be known from here and nothing "
            "was changed; hosts on several machines need the tfgrid data folder on shared storage"
        )

    async def _ask(self, call: Awaitable[T]) -> T:
        """A service call; its failures become protocol errors here and only here. The service's
        surface is checked first when ``initialize`` could not reach it."""
        if not self._checked:
            try:
                await self._check_surface(self.settings.request_timeout)
            except BaseException:
                if asyncio.iscoroutine(call):
                    call.close()
                raise
        try:
            return await call
        except ComputeUnavailable as exc:
            raise BackendUnavailable(
                f"{exc}; is the ComputeService running? Set 'socket' or 'url' in "
                "[adapters.tfgrid] of .hearth/hearth.toml"
            ) from None
        except ComputeError as exc:
            raise BackendFailure(f"the ComputeService refused: {exc.message}", rolled_back=False) from None

    # --- sizing -------------------------------------------------------------------------------
    async def _plan(self, profile: ProvisioningProfile) -> _Plan:
        """The checked plan, or InvalidProfile listing every problem."""
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
        source = "driver_flags.node" if flags.node else "default_node"
        basis = (
            nodes.get(wanted)
            if wanted is not None
            else max(nodes.values(), key=lambda n: n.slices_total, default=None)
        )
        needed, reasons, cap_problems = slices_for(
            profile.resource_caps, basis.disk_gb_per_slice if basis is not None else None
        )
        problems += cap_problems
        arithmetic = "; ".join(reasons) or "no caps: 1 slice"
        if wanted is not None and wanted not in nodes:
            problems.append(f"{source}: no node {wanted!r}; nodes: {', '.join(sorted(nodes))}")
        elif wanted is not None and nodes[wanted].slices_total < needed:
            problems.append(
                f"resource_caps: needs {needed} slices ({arithmetic}), node {wanted} "
                f"has {nodes[wanted].slices_total} in all"
            )
        elif wanted is None and not any(
            n.slices_total >= slices_for(profile.resource_caps, n.disk_gb_per_slice)[0]
            for n in nodes.values()
        ):
            largest = basis.slices_total if basis is not None else 0
            problems.append(
                f"resource_caps: needs {needed} slices ({arithmetic}), no node has "
                f"that many (largest: {largest})"
            )
        if problems:
            raise InvalidProfile("the tfgrid driver cannot honour this profile", errors=problems)
        return _Plan(
            flags=flags,
            image=flags.image or self.settings.image,
            caps=profile.resource_caps,
            node=wanted,
            named_by=source if wanted is not None else None,
        )

    async def validate_profile(self, profile: ProvisioningProfile, ctx: RequestContext) -> builtins.list[str]:
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
                    "was changed",
                    rolled_back=False,
                ) from None
            raise

    def _ref(
        self, slug: str, record: dict[str, Any], vm: Vm | None, gateway: WebGateway | None
    ) -> DeploymentRef:
        state, _ = _observed(vm, gateway)
        return DeploymentRef(
            workspace_slug=slug,
            tier=record["tier"],
            driver=self.name,
            endpoint=f"https://{gateway.fqdn}" if gateway is not None and gateway.fqdn else None,
            secrets_vault_path=str(self._vault.secret_path(slug)),
            created=datetime.fromisoformat(record["created"]),
            last_status="failed" if state == "absent" else state,
        )

    # --- provision ----------------------------------------------------------------------------
    async def provision(self, slug: str, profile: ProvisioningProfile, ctx: RequestContext) -> DeploymentRef:
        plan = await self._plan(profile)
        vault = self._vault
        record, secret = vault.record(slug), self._secret(slug)
        if record is not None and secret is not None:
            vm, gateway = await self._find(slug, secret)
            if vm is not None and _observed(vm, gateway)[0] == "ready":
                ref = self._ref(slug, record, vm, gateway)
                if record["tier"] == profile.tier:
                    ctx.progress("already provisioned", 1.0)
                    return ref
                raise Conflict(
                    f"workspace {slug!r} exists with tier {record['tier']!r}; use upgrade", existing=ref
                )
            if vm is not None:  # what an earlier attempt could not delete: delete it now
                ctx.progress(f"deleting VM {vm.name} ({vm.state}), left by an earlier attempt", 0.02)
                undone = await self._undo(slug, secret, forget=True)
                if undone.problem is not None:
                    raise BackendFailure(
                        f"the VM {vm.name} left by an earlier attempt could not be deleted: {undone.problem}",
                        rolled_back=False,
                        logs=undone.logs,
                    )
        record = {
            "tier": profile.tier,
            "created": utc_now().isoformat(),
            "node": plan.node,
            "image": plan.image,
            "port": plan.flags.port,
        }
        secret = vault.mint(slug)
        vault.save(slug, record)
        try:
            vm, gateway = await self._deploy(slug, secret, plan, ctx)
        except BaseException as exc:
            await self._roll_back(f"provision of {slug!r}", slug, secret, exc, ctx)
        ctx.progress("workspace ready", 1.0)
        return self._ref(slug, vault.record(slug) or record, vm, gateway)

    async def _roll_back(
        self,
        what: str,
        slug: str,
        secret: str,
        exc: BaseException,
        ctx: RequestContext,
        *,
        restores: bool = True,
    ) -> NoReturn:
        """After ``exc`` ended a provision or redeploy: delete what it made, through
        ``ctx.cleanup`` (a cancel neither interrupts the deletion nor is answered before it
        ends), forget the secret once the deletion is confirmed, and raise the answer.
        ``restores``: whether deleting what it made puts things back as they were (not so for
        the redeploy of a destructive upgrade, whose old VM is gone)."""
        undo = asyncio.ensure_future(self._undo(slug, secret, forget=True))
        cancelled = isinstance(exc, asyncio.CancelledError)
        try:
            undone = await ctx.cleanup(undo)
        except asyncio.CancelledError:
            if not undo.done():  # the SDK's rollback grace ran out: it answers rolled_back false
                raise
            cancelled, undone = True, undo.result()
        ended = "was cancelled" if cancelled else f"failed ({_message(exc)})"
        if undone.problem is not None:
            secret_file = self._vault.secret_path(slug)
            raise BackendFailure(
                f"{what} {ended}, and deleting what it made is not confirmed: {undone.problem}; "
                f"the secret stays in {secret_file} so that a teardown (or provision) can delete "
                "the VM later",
                rolled_back=False,
                logs=undone.logs,
            ) from None
        if not restores:
            raise BackendFailure(
                f"{what} {ended}; its new VM was deleted too, so the workspace has "
                "no VM now: provision it again",
                rolled_back=False,
                logs=undone.logs,
            ) from None
        if cancelled:
            raise asyncio.CancelledError
        if isinstance(exc, InvalidProfile | BackendUnavailable | RefusedSecretPath):
            raise exc
        if not isinstance(exc, Exception):
            raise exc
        raise BackendFailure(
            f"{what} failed and was rolled back: {_message(exc)}", rolled_back=True, logs=undone.logs
        ) from None

    async def _deploy(
        self, slug: str, secret: str, plan: _Plan, ctx: RequestContext
    ) -> tuple[Vm, WebGateway]:
        vm = await self._place(slug, secret, plan, ctx)
        vm = await self._poll_vm(vm, secret, ctx)
        gateway_node = (
            self.settings.gateway_node or (await self._ask(self.service.list_gateway_nodes()))[0].node_sid
        )
        port = plan.flags.port
        ctx.progress(f"deploying the name gateway {slug} on {gateway_node} to port {port}", 0.7)
        gateway = await self._ask(
            self.service.deploy_webgateway(
                name=slug, vm_id=vm.id, port=port, node_sid=gateway_node, secret=secret
            )
        )
        return vm, await self._poll_gateway(gateway, secret, ctx)

    async def _place(self, slug: str, secret: str, plan: _Plan, ctx: RequestContext) -> Vm:
        """``deploy_vm`` on the plan's node, or on the node placement chooses; when the service
        answers that a chosen node is full, on the next node with room (never for a node the
        profile or config named). Each attempt holds its slices in the ledger until
        ``deploy_vm`` answers, so concurrent provisions choose on figures that count each other
        (_placement.py). This is placement, not a retry: each node is asked once."""
        refused: list[str] = []
        skip: set[str] = set()
        while True:
            with self.ledger.snapshot() as tick:
                nodes = await self._ask(self.service.list_slices())
                if plan.node is not None:
                    pinned = next((n for n in nodes if n.node_sid == plan.node), None)
                    if pinned is None:
                        raise BackendFailure(
                            f"the node {plan.node} is no longer offered by the ComputeService",
                            rolled_back=False,
                        )
                    choice: Choice | None = Choice(plan.node, plan.slices_on(pinned), "room")
                else:
                    choice = choose(
                        nodes, plan.slices_on, lambda sid: self.ledger.pending(sid, tick), skip=skip
                    )
                if choice is None or (refused and choice.verdict == "full"):
                    raise BackendFailure(
                        "the ComputeService refused: " + "; ".join(refused), rolled_back=False
                    )
                node, slices, _ = choice
                hold = self.ledger.hold(node, slices)  # no await since list_slices answered
            ctx.progress(f"deploying a {slices}-slice VM on {node}", 0.05)
            try:
                vm = await self._ask(self._deploy_vm(slug, secret, plan, node, slices))
            except _NoRoom as full:
                self.ledger.release(hold)
                refused.append(str(full))
                if plan.node is not None:
                    raise BackendFailure(
                        f"the ComputeService refused: {full} (the node is named by "
                        f"{plan.named_by}, so it is not swapped for another one)",
                        rolled_back=False,
                    ) from None
                skip.add(node)
                ctx.progress(f"{node} has no room after all ({full}); choosing another node", 0.05, "warning")
                continue
            except BackendFailure:
                self.ledger.release(hold)  # refused: nothing was taken
                raise
            except BaseException:  # unknown whether it landed: count it from now on
                self.ledger.landed(hold)
                raise
            self.ledger.landed(hold)
            record = self._vault.record(slug) or {}
            self._vault.save(slug, {**record, "vm_id": vm.id, "node": node, "slices": slices})
            ctx.progress(f"VM {vm.name} ({vm.id}) is deploying on {node}", 0.1, backend_id=vm.id)
            return vm

    async def _deploy_vm(self, slug: str, secret: str, plan: _Plan, node: str, slices: int) -> Vm:
        try:
            return await self.service.deploy_vm(
                name=_vm_name(slug),
                slice_count=slices,
                secret=secret,
                image=plan.image,
                ssh_keys=plan.flags.ssh_keys,
                node_sid=node,
            )
        except ComputeError as exc:
            if exc.code == compute.NO_CAPACITY:
                raise _NoRoom(exc.message) from None
            raise

    async def _poll_vm(self, vm: Vm, secret: str, ctx: RequestContext) -> Vm:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.deploy_timeout
        while not (vm.state == "running" and vm.mycelium_ip):
            if vm.state == "failed":
                raise BackendFailure(f"the VM {vm.name} failed to deploy", rolled_back=False)
            if loop.time() >= deadline:
                raise BackendFailure(
                    f"the VM {vm.name} was not running with a mycelium IP within "
                    f"{self.settings.deploy_timeout:g} s (state {vm.state})",
                    rolled_back=False,
                )
            ctx.progress(
                f"waiting for VM {vm.name}: {vm.state}"
                + (", no mycelium IP yet" if vm.state == "running" else ""),
                0.3,
            )
            await asyncio.sleep(self.settings.poll_interval)
            vm = await self._ask(self.service.get_vm(vm.id, secret))
        ctx.progress(f"VM {vm.name} is running at {vm.mycelium_ip}", 0.6)
        return vm

    async def _poll_gateway(self, gateway: WebGateway, secret: str, ctx: RequestContext) -> WebGateway:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.deploy_timeout
        while not (gateway.state == "ready" and gateway.fqdn):
            if gateway.state == "failed" or loop.time() >= deadline:
                raise BackendFailure(
                    f"the gateway {gateway.name} did not become ready (state {gateway.state})",
                    rolled_back=False,
                )
            ctx.progress(f"waiting for gateway {gateway.name}: {gateway.state}", 0.8)
            await asyncio.sleep(self.settings.poll_interval)
            gateway = await self._ask(self.service.get_webgateway(gateway.id, secret))
        return gateway

    async def _undo(self, slug: str, secret: str, *, forget: bool) -> _Undone:
        """Delete the gateway and the VM and wait until the VM is gone; with ``forget``, then
        forget the secret and record. Never raises for the service's failures: they are the
        ``problem`` of the result (and the secret is kept). Run it through ``ctx.cleanup``."""
        undone = _Undone()
        if forget:
            self._vault.deleting(slug)
        try:
            vm, gateway = await self._find(slug, secret)
            if gateway is not None:
                await self._ask(self.service.delete_webgateway(gateway.id, secret))
            if vm is not None:
                with contextlib.suppress(BackendFailure, BackendUnavailable):
                    undone.logs = await self._ask(self.service.vm_logs(vm.id, secret))
                await self._ask(self.service.delete_vm(vm.id, secret))
                await self._wait_gone(slug, secret)
        except (BackendFailure, BackendUnavailable) as exc:
            undone.problem = exc.message
        if forget and undone.problem is None:
            self._vault.forget(slug)
        return undone

    async def _wait_gone(self, slug: str, secret: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.delete_timeout
        name = _vm_name(slug)
        while (await self._find(slug, secret))[0] is not None:
            if loop.time() >= deadline:
                raise BackendFailure(
                    f"the VM {name} was still there {self.settings.delete_timeout:g} s after delete_vm",
                    rolled_back=False,
                )
            await asyncio.sleep(min(self.settings.poll_interval, 0.1))

    # --- status, list -------------------------------------------------------------------------
    async def status(self, ref: DeploymentRef, ctx: RequestContext) -> StatusReport:
        slug = ref.workspace_slug
        secret = self._secret(slug, ref)
        if secret is None:
            elsewhere = self._no_secret(slug, ref)
            if elsewhere is not None:
                return StatusReport(state="unknown", observed_at=utc_now(), message=elsewhere.message)
            return StatusReport(
                state="absent",
                observed_at=utc_now(),
                message="no secret for this workspace: nothing deployed",
            )
        vm, gateway = await self._find(slug, secret)
        state, message = _observed(vm, gateway)
        if vm is None and self._vault.being_deleted(slug) and self._secret(slug) == secret:
            # A teardown (or rollback) cut short after its delete: the VM is now confirmed gone,
            # so finish it and drop the secret. No await since _find: a provision in this process
            # cannot have minted a new secret in between (mint also clears the mark).
            self._vault.forget(slug)
            message = "the VM is gone: its interrupted deletion is complete and its secret removed"
        details = (
            {"vm_id": vm.id, "node": vm.node_sid, "slices": vm.slice_count, "mycelium_ip": vm.mycelium_ip}
            if vm
            else {}
        )
        return StatusReport(
            state=state,
            message=message,
            observed_at=utc_now(),
            details=details,
            endpoint=f"https://{gateway.fqdn}" if gateway and gateway.fqdn else None,
        )

    async def list(self, ctx: RequestContext) -> builtins.list[DeploymentRef]:
        refs = []
        for slug in self._vault.slugs():
            record = self._vault.record(slug)
            try:
                secret = self._secret(slug)
            except RefusedSecretPath as exc:
                ctx.progress(f"skipping {slug}: {exc.message}", None, "warning")
                continue
            if record is None or secret is None:
                continue
            vm, gateway = await self._find(slug, secret)
            if vm is not None:
                refs.append(self._ref(slug, record, vm, gateway))
        return refs

    # --- upgrade ------------------------------------------------------------------------------
    async def _ready(self, ref: DeploymentRef) -> tuple[str, dict[str, Any], Vm, WebGateway]:
        """The secret, record, VM and gateway of a workspace an upgrade (or its plan) may change:
        ``invalid_transition`` naming the state unless it is deployed and ready."""
        slug = ref.workspace_slug
        secret = self._secret(slug, ref)
        record = self._vault.record(slug)
        if record is None or secret is None:
            elsewhere = self._no_secret(slug, ref)
            if elsewhere is not None:
                raise elsewhere
            raise InvalidTransition(f"workspace {slug!r} is not deployed", state="absent")
        vm, gateway = await self._find(slug, secret)
        state, _ = _observed(vm, gateway)
        if state != "ready" or vm is None or gateway is None:
            raise InvalidTransition(
                f"workspace {slug!r} is {state}; only a ready workspace can be upgraded", state=state
            )
        return secret, record, vm, gateway

    async def upgrade(
        self, ref: DeploymentRef, profile: ProvisioningProfile, ctx: RequestContext
    ) -> DeploymentRef:
        slug = ref.workspace_slug
        self._secret(slug, ref)  # an unsafe secret path is refused before anything is sent
        plan = await self._plan(profile)
        secret, record, vm, gateway = await self._ready(ref)
        changes = await self._changes(vm, plan)
        if not changes:
            record["tier"] = profile.tier
            self._vault.save(slug, record)
            ctx.progress("nothing to change on the grid; the tier is updated", 1.0)
            return self._ref(slug, record, vm, gateway)
        self._refuse_destructive(changes, plan)
        ctx.progress(f"destructive upgrade: deleting VM {vm.name}", 0.05)
        deleting = asyncio.ensure_future(self._undo(slug, secret, forget=False))
        try:
            undone = await ctx.cleanup(deleting)  # once begun, the deletion is seen to its end
        except asyncio.CancelledError:
            if not deleting.done():
                raise
            undone = deleting.result()
            if undone.problem is None:
                self._vault.forget(slug)
            raise BackendFailure(
                f"upgrade of {slug!r} was cancelled while its VM was being deleted"
                + (
                    f", and the deletion is not confirmed: {undone.problem}"
                    if undone.problem
                    else "; the workspace has no VM now: provision it again"
                ),
                rolled_back=False,
                logs=undone.logs,
            ) from None
        if undone.problem is not None:
            raise BackendFailure(
                f"upgrade of {slug!r}: deleting VM {vm.name} is not confirmed: {undone.problem}",
                rolled_back=False,
                logs=undone.logs,
            )
        record.update(tier=profile.tier, node=plan.node, image=plan.image, port=plan.flags.port)
        record.pop("vm_id", None)
        self._vault.save(slug, record)
        try:
            vm, gateway = await self._deploy(slug, secret, plan, ctx)
        except BaseException as exc:
            await self._roll_back(
                f"upgrade of {slug!r} (its old VM deleted)", slug, secret, exc, ctx, restores=False
            )
        return self._ref(slug, self._vault.record(slug) or record, vm, gateway)

    async def _changes(self, vm: Vm, plan: _Plan) -> builtins.list[tuple[str, Any, Any]]:
        """What an upgrade to ``plan`` changes in ``vm`` that only a redeploy can: (what, old,
        new) for the slices (counted on the VM's node) and the image."""
        nodes = {n.node_sid: n for n in await self._ask(self.service.list_slices())}
        here = nodes.get(vm.node_sid)
        slices = plan.slices_on(here) if here is not None else vm.slice_count
        changes = [
            (what, old, new)
            for what, old, new in (("slices", vm.slice_count, slices), ("image", vm.image, plan.image))
            if old != new
        ]
        return changes

    @staticmethod
    def _refuse_destructive(changes: builtins.list[tuple[str, Any, Any]], plan: _Plan) -> None:
        """-32022 for a redeploy the flags do not allow: it would destroy the VM's disk."""
        if plan.flags.allow_destructive_upgrade:
            return
        what = " and ".join(change[0] for change in changes)
        raise Unsupported(
            f"changing the {what} of a TFGrid VM means deleting and "
            "redeploying it, which destroys its disk; the VM keeps running unchanged. Set "
            "driver_flags.allow_destructive_upgrade = true to accept that",
            reason=f"in-place {what} change is not possible on TFGrid",
        )

    # --- plan ---------------------------------------------------------------------------------
    async def plan(
        self, slug: str, ref: DeploymentRef | None, profile: ProvisioningProfile, ctx: RequestContext
    ) -> PlanResult:
        """What provision (``ref`` None) or upgrade would do, from the service's and the vault's
        answers; refuses as they would. Nothing is deployed, deleted or written."""
        plan = await self._plan(profile)
        if ref is None:
            return PlanResult(actions=await self._plan_provision(slug, profile, plan))
        return PlanResult(actions=await self._plan_upgrade(ref, profile, plan))

    async def _plan_provision(
        self, slug: str, profile: ProvisioningProfile, plan: _Plan
    ) -> builtins.list[PlanAction]:
        vault, name = self._vault, _vm_name(slug)
        record, secret = vault.record(slug), self._secret(slug)
        actions: builtins.list[PlanAction] = []
        if record is not None and secret is not None:
            vm, gateway = await self._find(slug, secret)
            if vm is not None and _observed(vm, gateway)[0] == "ready":
                if record["tier"] != profile.tier:
                    raise Conflict(
                        f"workspace {slug!r} exists with tier {record['tier']!r}; use upgrade",
                        existing=self._ref(slug, record, vm, gateway),
                    )
                done = f"already provisioned with tier {profile.tier!r}"
                return [_act("no_op", f"vm {name}", done), _act("no_op", f"gateway {slug}", done)]
            if gateway is not None:
                actions.append(_act("delete", f"gateway {gateway.name}", "left by an earlier attempt"))
            if vm is not None:
                actions.append(
                    _act(
                        "delete",
                        f"vm {vm.name}",
                        f"left by an earlier attempt ({vm.state}): deleted first, with its disk",
                        destructive=True,
                    )
                )
        actions.append(
            _act(
                "replace" if secret is not None else "create",
                f"secret {vault.secret_path(slug)}",
                "a new ownership secret for the VM, in a file only this user can read",
            )
        )
        actions.append(_act("create", f"vm {name}", await self._where(plan)))
        gateway_node = (
            self.settings.gateway_node or (await self._ask(self.service.list_gateway_nodes()))[0].node_sid
        )
        actions.append(
            _act(
                "create",
                f"gateway {slug}",
                f"a name gateway on {gateway_node} to port {plan.flags.port}; its address is the endpoint",
            )
        )
        return actions

    async def _where(self, plan: _Plan) -> str:
        """Where a deploy of ``plan`` would go now, and its size, in words."""
        with self.ledger.snapshot() as tick:
            nodes = await self._ask(self.service.list_slices())
            if plan.node is not None:
                pinned = next((n for n in nodes if n.node_sid == plan.node), None)
                choice = Choice(plan.node, plan.slices_on(pinned), "room") if pinned else None
            else:
                choice = choose(nodes, plan.slices_on, lambda sid: self.ledger.pending(sid, tick), skip=set())
        image = f"image {plan.image}"
        if choice is None:
            return f"{image}; no node offered can hold it now, so the deploy would be refused"
        node, slices, verdict = choice
        chosen = f"named by {plan.named_by}" if plan.node is not None else "chosen by placement now"
        room = "" if verdict == "room" else " (it may have no room left: the service decides)"
        return f"{slices} slice(s) on {node} ({chosen}){room}, {image}"

    async def _plan_upgrade(
        self, ref: DeploymentRef, profile: ProvisioningProfile, plan: _Plan
    ) -> builtins.list[PlanAction]:
        slug = ref.workspace_slug
        _, record, vm, gateway = await self._ready(ref)
        changes = await self._changes(vm, plan)
        if not changes:
            kept = f"its {vm.slice_count} slice(s) and its image stay as they are"
            actions = [_act("no_op", f"vm {vm.name}", kept)]
            port = (
                ""
                if gateway.port == plan.flags.port
                else f" (an upgrade does not move it to {plan.flags.port})"
            )
            actions.append(_act("no_op", f"gateway {gateway.name}", f"keeps port {gateway.port}{port}"))
            if record["tier"] != profile.tier:
                actions.append(
                    _act(
                        "update",
                        f"workspace {slug}",
                        f"the tier is recorded as {profile.tier!r} (was {record['tier']!r}); "
                        "nothing changes on the grid",
                    )
                )
            return actions
        self._refuse_destructive(changes, plan)
        changed = ", ".join(f"{what} {old} -> {new}" for what, old, new in changes)
        return [
            _act(
                "replace",
                f"vm {vm.name}",
                f"{changed}: a TFGrid VM cannot be resized or re-imaged in place, so it is deleted "
                f"and a new one deployed ({await self._where(plan)}); its disk is destroyed",
                destructive=True,
            ),
            _act(
                "replace",
                f"gateway {gateway.name}",
                "deleted with the old VM and deployed again to the new one; the endpoint may change",
            ),
        ]

    # --- teardown -----------------------------------------------------------------------------
    async def teardown(self, ref: DeploymentRef, ctx: RequestContext) -> None:
        slug = ref.workspace_slug
        secret = self._secret(slug, ref)
        if secret is None:
            elsewhere = self._no_secret(slug, ref)
            if elsewhere is not None:
                raise elsewhere
            return
        ctx.progress(f"deleting the gateway and VM {_vm_name(slug)}", 0.1)
        self._vault.deleting(slug)
        vm, gateway = await self._find(slug, secret)
        if gateway is not None:
            await self._ask(self.service.delete_webgateway(gateway.id, secret))
        if vm is not None:
            await self._ask(self.service.delete_vm(vm.id, secret))
            await self._wait_gone(slug, secret)
        self._vault.forget(slug)
        ctx.progress("deleted", 1.0)


def _act(action: PlanActionKind, resource: str, reason: str, *, destructive: bool = False) -> PlanAction:
    return PlanAction(action=action, resource=resource, reason=reason, destructive=destructive)


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, DriverError) else str(exc) or type(exc).__name__


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
