"""A small typed client of ThreeFold's ComputeService, alone in this module on purpose.

The real service's OpenRPC document is not public here, so every wire shape this project
assumes lives in this file: the method names and params, the ``Vm`` / ``WebGateway`` /
``NodeSlices`` models, the error codes, and the transport (JSON-RPC 2.0 as ``POST /rpc``
over HTTP/1.1, on a Unix socket, or on a TCP URL with a bearer token). Aligning with the
real ``openrpc.json`` is a change to this one file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

M = TypeVar("M")

VmState = Literal["provisioning", "running", "deleting", "failed"]
GatewayState = Literal["provisioning", "ready", "deleting", "failed"]

#: Error codes of the service (as this project assumes them; see the module docstring).
NOT_FOUND = -32004
FORBIDDEN = -32003
NO_CAPACITY = -32010
NOT_SUPPORTED = -32011


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Vm(_Wire):
    id: str
    name: str
    state: VmState
    node_sid: str
    slice_count: int
    image: str
    mycelium_ip: str | None = None


class WebGateway(_Wire):
    id: str
    name: str
    state: GatewayState
    vm_id: str
    port: int
    fqdn: str | None = None


class NodeSlices(_Wire):
    node_sid: str
    slices_total: int
    slices_free: int
    disk_gb_per_slice: int


class GatewayNode(_Wire):
    node_sid: str
    domain: str


_VM = TypeAdapter(Vm)
_VMS = TypeAdapter(list[Vm])
_GATEWAY = TypeAdapter(WebGateway)
_GATEWAYS = TypeAdapter(list[WebGateway])
_SLICES = TypeAdapter(list[NodeSlices])
_GATEWAY_NODES = TypeAdapter(list[GatewayNode])
_LINES = TypeAdapter(list[str])
_NONE = TypeAdapter(type(None))


class ComputeError(Exception):
    """The service answered with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ComputeUnavailable(Exception):
    """The service could not be reached at all."""


@dataclass(frozen=True)
class Endpoint:
    """Where the service listens: a Unix socket, or an HTTP URL (with an optional token)."""

    socket: str | None = None
    url: str | None = None
    token: str | None = None

    def describe(self) -> str:
        return f"unix socket {self.socket}" if self.socket else f"{self.url}"


class ComputeClient:
    """One method per service method used by the driver; each call is one HTTP request."""

    def __init__(self, endpoint: Endpoint, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        self._ids = itertools.count(1)

    # --- VMs ------------------------------------------------------------------------------------
    async def deploy_vm(self, *, name: str, slice_count: int, secret: str, image: str,
                        ssh_keys: list[str], node_sid: str) -> Vm:
        return await self._call(_VM, "deploy_vm", name=name, slice_count=slice_count, secret=secret,
                                image=image, ssh_keys=ssh_keys, node_sid=node_sid)

    async def get_vm(self, vm_id: str, secret: str) -> Vm:
        return await self._call(_VM, "get_vm", vm_id=vm_id, secret=secret)

    async def list_vms(self, secret: str) -> list[Vm]:
        return await self._call(_VMS, "list_vms", secret=secret)

    async def delete_vm(self, vm_id: str, secret: str) -> None:
        await self._call(_NONE, "delete_vm", vm_id=vm_id, secret=secret)

    async def vm_logs(self, vm_id: str, secret: str) -> list[str]:
        return await self._call(_LINES, "vm_logs", vm_id=vm_id, secret=secret)

    # --- capacity -------------------------------------------------------------------------------
    async def list_slices(self) -> list[NodeSlices]:
        return await self._call(_SLICES, "list_slices")

    async def list_gateway_nodes(self) -> list[GatewayNode]:
        return await self._call(_GATEWAY_NODES, "list_gateway_nodes")

    # --- web gateways ---------------------------------------------------------------------------
    async def deploy_webgateway(self, *, name: str, vm_id: str, port: int, node_sid: str,
                                secret: str) -> WebGateway:
        return await self._call(_GATEWAY, "deploy_webgateway", name=name, kind="name",
                                vm_id=vm_id, port=port, node_sid=node_sid, secret=secret)

    async def get_webgateway(self, gateway_id: str, secret: str) -> WebGateway:
        return await self._call(_GATEWAY, "get_webgateway", gateway_id=gateway_id, secret=secret)

    async def list_webgateways(self, secret: str) -> list[WebGateway]:
        return await self._call(_GATEWAYS, "list_webgateways", secret=secret)

    async def delete_webgateway(self, gateway_id: str, secret: str) -> None:
        await self._call(_NONE, "delete_webgateway", gateway_id=gateway_id, secret=secret)

    # --- transport ------------------------------------------------------------------------------
    async def _call(self, shape: TypeAdapter[M], method: str, **params: Any) -> M:
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            answer = await asyncio.wait_for(self._post(json.dumps(request).encode()), self._timeout)
        except TimeoutError:
            raise ComputeUnavailable(f"no answer from the ComputeService at "
                                     f"{self.endpoint.describe()} within {self._timeout:g} s") from None
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            why = f"{exc.strerror or exc}" if isinstance(exc, OSError) else "it hung up"
            raise ComputeUnavailable(f"cannot reach the ComputeService at "
                                     f"{self.endpoint.describe()}: {why}") from None
        if "error" in answer:
            error = answer["error"] or {}
            raise ComputeError(int(error.get("code", 0)), str(error.get("message", "error")))
        try:
            return shape.validate_python(answer.get("result"))
        except ValidationError as exc:
            raise ComputeError(0, f"{method} answered an unexpected shape: "
                                  f"{exc.error_count()} problem(s)") from None

    async def _post(self, body: bytes) -> dict[str, Any]:
        endpoint = self.endpoint
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)),
                   "Connection": "close"}
        if endpoint.socket:
            reader, writer = await asyncio.open_unix_connection(endpoint.socket)
            host, path = "localhost", "/rpc"
        else:
            assert endpoint.url is not None
            parts = urlsplit(endpoint.url)
            if parts.scheme not in ("http", "https"):
                raise OSError(f"unsupported URL scheme {parts.scheme!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            reader, writer = await asyncio.open_connection(
                parts.hostname, port, ssl=parts.scheme == "https" or None)
            host, path = parts.netloc, parts.path or "/rpc"
            if endpoint.token:
                headers["Authorization"] = f"Bearer {endpoint.token}"
        try:
            head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(
                f"{key}: {value}\r\n" for key, value in headers.items()) + "\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise EOFError
            status = int(status_line.split()[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            payload = await (reader.readexactly(length) if length is not None else reader.read())
        finally:
            writer.close()
        if status == 401:
            raise ComputeError(FORBIDDEN, "the service refused the bearer token (HTTP 401)")
        try:
            answer = json.loads(payload)
        except ValueError:
            raise ComputeError(0, f"HTTP {status} with a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise ComputeError(0, f"HTTP {status} with a body that is not a JSON-RPC response")
        return answer
