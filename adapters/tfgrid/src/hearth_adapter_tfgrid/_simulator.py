"""A local ComputeService for tests, the demo and adapter authors.

It speaks the same wire as ``_compute.py`` assumes (JSON-RPC 2.0 as ``POST /rpc`` over
HTTP/1.1, ``GET /openrpc.json``; served by uvicorn and starlette on a Unix socket, or on TCP
with an optional bearer token as a router exposes it) and behaves as ComputeService documents the
TFGrid backend: slices of 4 GB and 1 vCPU with capacity per node, asynchronous deploy and
delete, ownership by a per-VM secret (other owners' VMs are invisible, a wrong secret is an
error), an idempotent delete, name gateways whose FQDN appears once ready, and the stubbed
methods failing with "… is not supported on TFGrid". Fault switches: a deploy that fails
midway, a VM that never gets an IP, a service that is unavailable (HTTP 503). Surface switches
(``Simulator.surface``, a ``ServedSurface``): every method name under a prefix
(``ComputeService.``), a param renamed (``vm_id`` → ``sid``), a method missing; ``rpc.discover``
and ``GET /openrpc.json`` describe the surface served, params and result fields. SIGTERM and
SIGINT stop it cleanly (exit status 0, socket removed).

    hearth-tfgrid-sim --socket PATH [--deploy-delay SECONDS] [--nodes tfnode-1:8,tfnode-2:4]
    hearth-tfgrid-sim --listen 127.0.0.1:8765 [--token-env NAME] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import hmac
import importlib.metadata
import inspect
import itertools
import json
import os
import signal
import socket as socket_
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import uvicorn
from jsonrpcserver import Error, InvalidParams, JsonRpcError, Result, Success, async_dispatch_to_response
from jsonrpcserver.methods import Methods
from jsonrpcserver.response import Response as RpcResponse
from jsonrpcserver.response import to_serializable_one
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import _compute as compute

#: The methods served, each ``Simulator``'s method of the same name.
SERVED = (
    "deploy_vm",
    "get_vm",
    "list_vms",
    "delete_vm",
    "vm_logs",
    "list_slices",
    "list_images",
    "node_stats",
    "list_gateway_nodes",
    "deploy_webgateway",
    "get_webgateway",
    "list_webgateways",
    "delete_webgateway",
    "sim_faults",
)
#: The methods that exist on the service but fail with NOT_SUPPORTED.
STUBBED = (
    "start_vm",
    "stop_vm",
    "restart_vm",
    "inject_ssh_keys",
    "vm_exec",
    "vm_stats",
    "attach_hypervisor",
    "migrate_secret",
)
DEFAULT_NODES = (("tfnode-1", 8, 138), ("tfnode-2", 4, 100))
GATEWAY_NODES = (("gw-1", "gw1.sim.grid.tf"),)


def _owner(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class _Node:
    sid: str
    total: int
    disk: int
    free: int


@dataclass
class _Vm:
    id: str
    name: str
    owner: str
    node: str
    slices: int
    image: str
    state: str = "provisioning"
    mycelium_ip: str | None = None
    logs: list[str] = field(default_factory=list)
    holds_slices: bool = True

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "node_sid": self.node,
            "slice_count": self.slices,
            "image": self.image,
            "mycelium_ip": self.mycelium_ip,
        }


@dataclass
class _Gateway:
    id: str
    name: str
    owner: str
    vm_id: str
    port: int
    domain: str
    state: str = "provisioning"
    fqdn: str | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "vm_id": self.vm_id,
            "port": self.port,
            "fqdn": self.fqdn,
        }


@dataclass
class Faults:
    """Switches for tests; ``sim_faults`` (a simulator-only method) sets them over the wire."""

    fail_deploy: bool = False
    no_ip: bool = False
    #: every request is answered HTTP 503, as by a router whose service is down; ``sim_faults``
    #: alone is still served, so that the fault can be read and cleared over the wire
    unreachable: bool = False


@dataclass
class ServedSurface:
    """How the simulator names what it serves (tests switch it to prove the adapter's check):
    ``prefix`` before every method name, ``renamed`` params (``{"vm_id": "sid"}``), ``missing``
    methods (by their unprefixed name)."""

    prefix: str = ""
    renamed: dict[str, str] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()


#: The model of each method's result (a list of them for ``list_*``), for the OpenRPC document.
RESULTS: dict[str, type[BaseModel]] = {
    name: use.result for name, use in compute.SURFACE.items() if use.result is not None
}


class _Server(uvicorn.Server):
    """uvicorn's server, started and stopped by its owner: it sets ``up`` once it accepts
    connections, stops when ``exit`` is set, and leaves signal handling to the owner (the
    console script's loop, or the test that runs it)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()
        self.exit = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket_.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()

    async def main_loop(self) -> None:
        await self.on_tick(0)  # sets the default headers once
        await self.exit.wait()


class Simulator:
    """The service's state and methods; ``start`` serves them over HTTP (uvicorn) on a Unix
    socket or TCP, ``stop`` ends that."""

    def __init__(
        self, nodes: Sequence[tuple[str, int, int]] = DEFAULT_NODES, deploy_delay: float = 0.3
    ) -> None:
        self.nodes = {sid: _Node(sid, total, disk, total) for sid, total, disk in nodes}
        self.deploy_delay = deploy_delay
        self.faults = Faults()
        self.vms: dict[str, _Vm] = {}
        self.gateways: dict[str, _Gateway] = {}
        self._ids = itertools.count(1)
        self._work: set[asyncio.Task[None]] = set()
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._token: str | None = None
        #: Where it serves, once started: the socket path, or the URL of its TCP listener.
        self.socket: Path | None = None
        self.url: str | None = None
        self.calls: list[str] = []
        self.surface = ServedSurface()
        #: The headers of the last ``POST /rpc`` (lower-case names), for tests.
        self.headers: dict[str, str] = {}

    # --- serving --------------------------------------------------------------------------------
    async def start(
        self,
        socket: str | Path | None = None,
        *,
        host: str | None = None,
        port: int = 0,
        token: str | None = None,
    ) -> None:
        """Serve on the Unix socket ``socket`` (mode 0600), or on TCP at ``host``:``port`` (0: any
        free port; ``url`` says which) where every request must carry ``Bearer <token>`` when a
        token is given, as behind a router. Returns once the server accepts connections."""
        if (socket is None) == (host is None):
            raise ValueError("give either a socket path or a host")
        listener = self._bind_unix(Path(socket)) if socket is not None else self._bind_tcp(host, port)
        self._token = token
        config = uvicorn.Config(
            self.app(),
            lifespan="off",
            http="h11",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
        )  # well past httpx's 5 s keep-alive expiry
        server = _Server(config)
        serving = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
        up = asyncio.ensure_future(server.up.wait())
        await asyncio.wait({serving, up}, return_when=asyncio.FIRST_COMPLETED)
        if not server.up.is_set():  # the server ended before it accepted anything
            up.cancel()
            listener.close()
            await serving  # raises what stopped it, if anything did
            raise OSError("the simulator's server did not start")
        self._server, self._serving = server, serving

    def _bind_unix(self, path: Path) -> socket_.socket:
        self.socket = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        listener = socket_.socket(socket_.AF_UNIX, socket_.SOCK_STREAM)
        try:
            listener.bind(str(path))
            path.chmod(0o600)  # before listen(): nobody else can ever connect
            listener.listen(128)  # connections made as soon as the file exists wait for uvicorn
        except OSError:
            listener.close()
            raise
        return listener

    def _bind_tcp(self, host: str | None, port: int) -> socket_.socket:
        assert host is not None
        listener = socket_.create_server((host, port))
        bound_host, bound_port = listener.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}/rpc"
        return listener

    async def stop(self) -> None:
        """Stop serving (idle kept connections are closed), end pending work, remove the socket."""
        server, serving = self._server, self._serving
        self._server = self._serving = None
        if server is not None and serving is not None:
            server.exit.set()
            await serving
        for task in list(self._work):
            task.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)
        if self.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def app(self) -> Starlette:
        """The ASGI application: ``POST /rpc`` and ``GET /openrpc.json``."""

        async def rpc(request: Request) -> Response:
            body = await request.body()
            self.headers = dict(request.headers)
            refused = self._refusal(request, control=_only_control(body))
            if refused is not None:
                return refused
            answer = await self.handle(body)
            return Response(status_code=204) if answer is None else JSONResponse(answer)

        async def openrpc(request: Request) -> Response:
            return self._refusal(request) or JSONResponse(self.openrpc())

        return Starlette(
            routes=[Route("/rpc", rpc, methods=["POST"]), Route("/openrpc.json", openrpc, methods=["GET"])]
        )

    def _refusal(self, request: Request, *, control: bool = False) -> Response | None:
        """The answer that refuses a request before it is read (None: serve it). ``control``: it
        only calls the simulator's own ``sim_faults``, which the ``unreachable`` fault spares (or
        a fault set over the wire could never be cleared, nor read, over the wire); the bearer
        token guards it all the same."""
        if self.faults.unreachable and not control:  # as a router whose service is down answers
            return PlainTextResponse("the ComputeService is unavailable", status_code=503)
        if self._token is not None and not hmac.compare_digest(
            request.headers.get("authorization", ""), f"Bearer {self._token}"
        ):
            return JSONResponse(
                {"error": "a valid bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    def openrpc(self) -> dict[str, Any]:
        """The OpenRPC document of the surface served: each method with its params (required
        when they have no default) and, where the service documents one, its result schema."""
        described = []
        for name, method in sorted(self.methods().items()):
            if name == "rpc.discover":
                continue
            params = [
                {"name": p.name, "required": p.default is inspect.Parameter.empty, "schema": {}}
                for p in inspect.signature(method).parameters.values()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            ]
            entry: dict[str, Any] = {"name": name, "params": params}
            model = RESULTS.get(name.removeprefix(self.surface.prefix))
            if model is not None:
                ref = {"$ref": f"#/components/schemas/{model.__name__}"}
                many = name.removeprefix(self.surface.prefix).startswith("list_")
                schema = {"type": "array", "items": ref} if many else ref
                entry["result"] = {"name": "result", "schema": schema}
            described.append(entry)
        return {
            "openrpc": "1.2.6",
            "info": {
                "title": "ComputeService (hearth simulator)",
                "version": importlib.metadata.version("hearth-adapter-tfgrid"),
            },
            "methods": described,
            "components": {
                "schemas": {m.__name__: m.model_json_schema(mode="serialization") for m in RESULTS.values()}
            },
        }

    async def handle(self, body: bytes) -> dict[str, Any] | list[dict[str, Any]] | None:
        """The answer to one ``POST /rpc`` body (a request or a batch), dispatched by
        jsonrpcserver (its schema check, ``Invalid params`` for params the method's signature does
        not take, ``Method not found``); None when it held only notifications."""
        answer = await async_dispatch_to_response(
            body.decode("utf-8", "replace"), self.methods(), deserializer=self._parse, post_process=_to_json
        )
        return cast("dict[str, Any] | list[dict[str, Any]] | None", answer)

    def _parse(self, text: str) -> Any:
        """jsonrpcserver's deserializer: the JSON, each request's method noted in ``calls`` (what
        the service was asked, valid or not)."""
        requests = json.loads(text)
        for request in requests if isinstance(requests, list) else [requests]:
            if isinstance(request, dict) and isinstance(request.get("method"), str):
                self.calls.append(request["method"])
        return requests

    def methods(self) -> Methods:
        """This instance's jsonrpcserver methods, made on each request from its attributes (a
        method replaced on the instance, as tests do, is the one served)."""
        surface = self.surface
        served = {
            **{name: _served(getattr(self, name), surface.renamed) for name in SERVED},
            **{name: _unsupported(name) for name in STUBBED},
        }
        return {
            **{
                (name if name in CONTROL else surface.prefix + name): method
                for name, method in served.items()
                if name not in surface.missing
            },
            "rpc.discover": _served(self.openrpc, {}),
        }

    def _later(self, delay: float, action: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            action()

        task = asyncio.get_running_loop().create_task(run())
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    # --- VMs ------------------------------------------------------------------------------------
    def deploy_vm(
        self, *, name: str, slice_count: int, secret: str, image: str, ssh_keys: list[str], node_sid: str
    ) -> dict[str, Any]:
        if not secret:
            raise JsonRpcError(compute.FORBIDDEN, "a secret is required")
        node = self.nodes.get(node_sid)
        if node is None:
            raise JsonRpcError(compute.NOT_FOUND, f"no node with hostname {node_sid}")
        if not image.startswith(("https://", "http://")) or not image.endswith(".flist"):
            raise JsonRpcError(-32602, f"image must be a full flist URL, got {image!r}")
        owner = _owner(secret)
        if any(vm.name == name and vm.owner == owner for vm in self.vms.values()):
            raise JsonRpcError(-32602, f"a VM named {name} already exists")
        if slice_count < 1 or slice_count > node.free:
            raise JsonRpcError(
                compute.NO_CAPACITY,
                f"not enough free slices on {node_sid}: asked {slice_count}, free {node.free}",
            )
        node.free -= slice_count
        vm = _Vm(self._id("vm"), name, owner, node_sid, slice_count, image)
        vm.logs.append(f"deploy requested on {node_sid}: {slice_count} slice(s), {len(ssh_keys)} ssh key(s)")
        self.vms[vm.id] = vm
        self._later(self.deploy_delay, lambda: self._finish_deploy(vm))
        return vm.wire()

    def _finish_deploy(self, vm: _Vm) -> None:
        if vm.state != "provisioning":
            return
        if self.faults.fail_deploy:
            vm.state = "failed"
            vm.logs.append("contract creation failed on the grid: node did not respond")
            self._release(vm)
            return
        vm.state = "running"
        vm.logs.append("contract created; vm booted")
        if not self.faults.no_ip:
            vm.mycelium_ip = f"4a1:{vm.id.split('-')[1]}::1"
            vm.logs.append(f"mycelium address {vm.mycelium_ip}")

    def _release(self, vm: _Vm) -> None:
        if vm.holds_slices:
            self.nodes[vm.node].free += vm.slices
            vm.holds_slices = False

    def _owned(self, vm_id: str, secret: str) -> _Vm:
        return _check_owner(self.vms, vm_id, secret, "VM")

    def get_vm(self, vm_id: str, secret: str) -> dict[str, Any]:
        return self._owned(vm_id, secret).wire()

    def list_vms(self, secret: str) -> list[dict[str, Any]]:
        owner = _owner(secret)
        return [vm.wire() for vm in self.vms.values() if vm.owner == owner]

    def vm_logs(self, vm_id: str, secret: str) -> list[str]:
        return list(self._owned(vm_id, secret).logs)

    def delete_vm(self, vm_id: str, secret: str) -> None:
        if vm_id not in self.vms:
            return None  # idempotent: already gone
        vm = self._owned(vm_id, secret)
        if vm.state == "deleting":
            return None
        vm.state = "deleting"
        vm.logs.append("contract cancel requested")

        def gone() -> None:
            self.vms.pop(vm.id, None)
            self._release(vm)
            for gateway in [g for g in self.gateways.values() if g.vm_id == vm.id]:
                self.gateways.pop(gateway.id, None)

        self._later(self.deploy_delay / 2, gone)
        return None

    # --- capacity -------------------------------------------------------------------------------
    def list_slices(self) -> list[dict[str, Any]]:
        return [
            {"node_sid": n.sid, "slices_total": n.total, "slices_free": n.free, "disk_gb_per_slice": n.disk}
            for n in self.nodes.values()
        ]

    def node_stats(self, node_sid: str) -> dict[str, Any]:
        node = self.nodes.get(node_sid)
        if node is None:
            raise JsonRpcError(compute.NOT_FOUND, f"no node with hostname {node_sid}")
        return {"node_sid": node.sid, "slices_total": node.total, "slices_free": node.free}

    def list_images(self) -> list[str]:
        return ["https://hub.grid.tf/tf-official-vms/ubuntu-24.04-latest.flist"]

    def list_gateway_nodes(self) -> list[dict[str, Any]]:
        return [{"node_sid": sid, "domain": domain} for sid, domain in GATEWAY_NODES]

    # --- gateways -------------------------------------------------------------------------------
    def deploy_webgateway(
        self, *, name: str, kind: str, vm_id: str, port: int, node_sid: str, secret: str
    ) -> dict[str, Any]:
        if kind != "name":
            raise JsonRpcError(-32602, "the simulator supports kind='name' gateways only")
        vm = self._owned(vm_id, secret)
        domain = dict(GATEWAY_NODES).get(node_sid)
        if domain is None:
            raise JsonRpcError(compute.NOT_FOUND, f"no gateway node {node_sid}")
        if vm.mycelium_ip is None:
            raise JsonRpcError(-32602, f"VM {vm_id} has no mycelium address to route to")
        gateway = _Gateway(self._id("gw"), name, vm.owner, vm_id, port, domain)
        self.gateways[gateway.id] = gateway

        def ready() -> None:
            if gateway.id in self.gateways and gateway.state == "provisioning":
                gateway.state, gateway.fqdn = "ready", f"{name}.{domain}"

        self._later(self.deploy_delay / 2, ready)
        return gateway.wire()

    def _owned_gateway(self, gateway_id: str, secret: str) -> _Gateway:
        return _check_owner(self.gateways, gateway_id, secret, "gateway")

    def get_webgateway(self, gateway_id: str, secret: str) -> dict[str, Any]:
        return self._owned_gateway(gateway_id, secret).wire()

    def list_webgateways(self, secret: str) -> list[dict[str, Any]]:
        owner = _owner(secret)
        return [g.wire() for g in self.gateways.values() if g.owner == owner]

    def delete_webgateway(self, gateway_id: str, secret: str) -> None:
        if gateway_id not in self.gateways:
            return None
        self._owned_gateway(gateway_id, secret)
        self.gateways.pop(gateway_id)
        return None

    def sim_faults(self, **switches: bool) -> dict[str, bool]:
        for key, value in switches.items():
            if not hasattr(self.faults, key):
                raise JsonRpcError(-32602, f"unknown fault {key!r}")
            setattr(self.faults, key, bool(value))
        return dict(self.faults.__dict__)


#: The simulator's own methods, which its faults spare: they set and read the faults.
CONTROL = frozenset({"sim_faults"})


def _only_control(body: bytes) -> bool:
    """Whether a ``POST /rpc`` body calls the simulator's control methods only (a request, or a
    batch of nothing else); anything else, unreadable JSON included, is not spared."""
    try:
        requests = json.loads(body)
    except (ValueError, RecursionError):
        return False
    calls = requests if isinstance(requests, list) else [requests]
    return bool(calls) and all(isinstance(c, dict) and c.get("method") in CONTROL for c in calls)


def _served(function: Callable[..., Any], renamed: dict[str, str]) -> Callable[..., Any]:
    """``function`` as a jsonrpcserver method. It keeps ``function``'s signature (``__wrapped__``),
    with the params in ``renamed`` under their new names (``__signature__``), which jsonrpcserver
    binds the params to first; its value is the ``Success``, its ``JsonRpcError`` the error, and
    a ``TypeError`` it raises (a param of the wrong type) is ``Invalid params``."""
    signature = inspect.signature(function)
    back = {renamed[p]: p for p in signature.parameters if p in renamed}

    @functools.wraps(function)
    async def method(*args: Any, **kwargs: Any) -> Result:
        try:
            return Success(function(*args, **{back.get(k, k): v for k, v in kwargs.items()}))
        except TypeError as exc:
            return InvalidParams(str(exc))

    if back:
        params = [p.replace(name=renamed.get(p.name, p.name)) for p in signature.parameters.values()]
        method.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return method


def _unsupported(name: str) -> Callable[..., Any]:
    """A jsonrpcserver method that takes any params and fails as the service's stubs do."""

    async def method(*args: Any, **kwargs: Any) -> Result:
        return Error(compute.NOT_SUPPORTED, f"{name} is not supported on TFGrid")

    return method


def _to_json(response: RpcResponse) -> dict[str, Any]:
    """A response as JSON. jsonrpcserver's own errors (parse error, invalid request, method not
    found, invalid params, internal error) carry their detail in ``data``; it is repeated in the
    message (``Invalid params: missing a required argument: 'secret'``), the part clients show."""
    answer = cast("dict[str, Any]", to_serializable_one(response))  # one response: one object
    error = answer.get("error")
    if error is not None and -32768 <= error["code"] <= -32000 and isinstance(error.get("data"), str):
        error["message"] = f"{error['message']}: {error['data']}"
    return answer


Owned = TypeVar("Owned", _Vm, _Gateway)


def _check_owner(table: dict[str, Owned], key: str, secret: str, what: str) -> Owned:
    """The object, if ``secret`` owns it: unknown is NOT_FOUND, another owner's is FORBIDDEN."""
    found = table.get(key)
    if found is None:
        raise JsonRpcError(compute.NOT_FOUND, f"no {what} {key}")
    if found.owner != _owner(secret):
        raise JsonRpcError(compute.FORBIDDEN, f"the secret does not own {what} {key}")
    return found


def _parse_nodes(text: str) -> list[tuple[str, int, int]]:
    nodes = []
    for item in text.split(","):
        sid, _, slices = item.strip().partition(":")
        if not sid or not slices.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r}: use HOSTNAME:SLICES, e.g. tfnode-1:8")
        nodes.append((sid, int(slices), 100))
    return nodes


def _parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: use HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


async def _serve(args: argparse.Namespace, token: str | None) -> None:
    simulator = Simulator(args.nodes or DEFAULT_NODES, args.deploy_delay)
    simulator.faults = Faults(fail_deploy=args.fail_deploy, no_ip=args.no_ip)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.listen:
        await simulator.start(host=args.listen[0], port=args.listen[1], token=token)
    else:
        await simulator.start(args.socket)
    where = simulator.url or args.socket
    print(
        f"hearth-tfgrid-sim: ComputeService on {where} "
        f"({', '.join(f'{n.sid}: {n.total} slices' for n in simulator.nodes.values())})",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await simulator.stop()
    print("hearth-tfgrid-sim: stopped", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hearth-tfgrid-sim", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="the Unix socket to listen on (mode 0600)")
    where.add_argument(
        "--listen",
        type=_parse_listen,
        metavar="HOST:PORT",
        help="listen on TCP instead, as a router would expose the service (POST /rpc)",
    )
    parser.add_argument(
        "--token-env",
        metavar="NAME",
        help="with --listen: require 'Authorization: Bearer <the value of $NAME>'",
    )
    parser.add_argument(
        "--deploy-delay",
        type=float,
        default=0.3,
        help="seconds a deploy takes (delete and gateways: half of it)",
    )
    parser.add_argument(
        "--nodes", type=_parse_nodes, help="HOSTNAME:SLICES,... (default: tfnode-1:8,tfnode-2:4)"
    )
    parser.add_argument("--fail-deploy", action="store_true", help="every deploy fails midway")
    parser.add_argument("--no-ip", action="store_true", help="VMs never get a mycelium address")
    args = parser.parse_args(argv)
    token = None
    if args.token_env:
        if not args.listen:
            parser.error("--token-env goes with --listen")
        token = os.environ.get(args.token_env)
        if not token:
            parser.error(f"--token-env: the variable {args.token_env} is not set or empty")
    if args.socket and not Path(args.socket).parent.is_dir():
        print(f"hearth-tfgrid-sim: no folder {Path(args.socket).parent}", file=sys.stderr)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args, token))
    except OSError as exc:
        print(f"hearth-tfgrid-sim: cannot listen on {args.socket or args.listen}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
