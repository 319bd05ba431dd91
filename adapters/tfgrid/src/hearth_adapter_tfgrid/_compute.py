"""A small typed client of ThreeFold's ComputeService, alone in this module on purpose.

The real service's OpenRPC document is not public here, so every wire shape this project
assumes lives in this file: the method names and params, the ``Vm`` / ``WebGateway`` /
``NodeSlices`` models, the error codes, and the transport (JSON-RPC 2.0 as ``POST /rpc``
over HTTP/1.1 with httpx, on a Unix socket, or on a TCP URL with a bearer token; HTTP 401/403
is a refused token, 502/503/504 an unavailable service). Aligning with the real
``openrpc.json`` is a change to this one file.

``SURFACE`` lists what this file uses of the service (each method, its params, its result's
fields); ``check_surface`` compares it with the service's own OpenRPC document (``rpc.discover``)
and names every difference, and decides the aliases the document asks for (an object's id param
called ``sid``, as hero services name ids). A ``prefix`` (``"ComputeService."``) is put before
every method name sent.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

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
    id: str = Field(validation_alias=AliasChoices("id", "sid"))
    name: str
    state: VmState
    node_sid: str
    slice_count: int
    image: str
    mycelium_ip: str | None = None


class WebGateway(_Wire):
    id: str = Field(validation_alias=AliasChoices("id", "sid"))
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


@dataclass(frozen=True)
class Use:
    """What this client uses of one service method: the params it sends and the model of its
    result (or of each item of a list result; None: no fields read)."""

    params: tuple[str, ...]
    result: type[_Wire] | None = None


#: Every method this client calls, with what it uses of each (``check_surface`` compares it).
SURFACE: dict[str, Use] = {
    "deploy_vm": Use(("name", "slice_count", "secret", "image", "ssh_keys", "node_sid"), Vm),
    "get_vm": Use(("vm_id", "secret"), Vm),
    "list_vms": Use(("secret",), Vm),
    "delete_vm": Use(("vm_id", "secret")),
    "vm_logs": Use(("vm_id", "secret")),
    "list_slices": Use((), NodeSlices),
    "list_gateway_nodes": Use((), GatewayNode),
    "deploy_webgateway": Use(("name", "kind", "vm_id", "port", "node_sid", "secret"), WebGateway),
    "get_webgateway": Use(("gateway_id", "secret"), WebGateway),
    "list_webgateways": Use(("secret",), WebGateway),
    "delete_webgateway": Use(("gateway_id", "secret")),
}
#: Params that name an object by its id, which a hero service may call ``sid``.
ID_PARAMS = frozenset({"vm_id", "gateway_id"})


def _fields(model: type[_Wire]) -> dict[str, tuple[str, ...]]:
    """A model's required fields, each with the names the wire may give it."""
    names: dict[str, tuple[str, ...]] = {}
    for name, info in model.model_fields.items():
        if not info.is_required():
            continue
        alias = info.validation_alias
        names[name] = tuple(str(c) for c in alias.choices) if isinstance(alias, AliasChoices) else (name,)
    return names


def _resolve(document: Mapping[str, Any], schema: Any) -> Any:
    """A schema with its local ``$ref`` (``#/components/schemas/Vm``) followed, and an array's
    ``items`` taken (a list result is compared item by item)."""
    for _ in range(8):
        if not isinstance(schema, dict):
            return None
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = document
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, dict) else None
            schema = target
        elif schema.get("type") == "array":
            schema = schema.get("items")
        else:
            return schema
    return None


@dataclass
class Surface:
    """What the comparison found: each difference (empty: it matches), the aliases it decided
    (a param name this client uses → the service's name) and the methods the service lists."""

    problems: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)


def check_surface(document: Any, prefix: str = "") -> Surface:
    """Compare the service's OpenRPC ``document`` with ``SURFACE``, the method names sent with
    ``prefix``: a method it lacks, a param it does not take (an id param it calls ``sid`` is an
    alias, not a difference), a param it requires that is not sent, a result field it lacks."""
    found = Surface()
    listed = document.get("methods") if isinstance(document, dict) else None
    if not isinstance(listed, list):
        found.problems.append("rpc.discover: the answer is not an OpenRPC document (no 'methods' list)")
        return found
    methods = {m["name"]: m for m in listed if isinstance(m, dict) and isinstance(m.get("name"), str)}
    found.methods = sorted(methods)
    for name, use in SURFACE.items():
        wire = prefix + name
        method = methods.get(wire)
        if method is None:
            found.problems.append(f"{wire}: no such method on the service")
            continue
        if method.get("paramStructure") == "by-position":
            found.problems.append(f"{wire}: takes its params by position; this adapter sends them by name")
        params = {
            p["name"]: p
            for p in method.get("params") or []
            if isinstance(p, dict) and isinstance(p.get("name"), str)
        }
        sent = set()
        for param in use.params:
            if param in params:
                sent.add(param)
            elif param in ID_PARAMS and "sid" in params:
                found.aliases[param] = "sid"
                sent.add("sid")
            else:
                found.problems.append(
                    f"{wire}: takes no param {param!r} (it takes {sorted(params) or 'none'})"
                )
        for extra in sorted(set(params) - sent):
            if params[extra].get("required"):
                found.problems.append(f"{wire}: requires param {extra!r}, which this adapter does not send")
        if use.result is None:
            continue
        result = method.get("result")
        schema = _resolve(document, result.get("schema") if isinstance(result, dict) else None)
        properties = schema.get("properties") if isinstance(schema, dict) else None
        model = use.result.__name__
        if not isinstance(properties, dict):
            found.problems.append(f"{wire}: its result has no object schema to compare with {model}")
            continue
        for field_name, names in _fields(use.result).items():
            if not any(n in properties for n in names):
                found.problems.append(f"{wire}: its result has no field {field_name!r} ({model})")
    return found


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
    """Where the service listens: a Unix socket, or an HTTP URL (with an optional token, and
    extra headers a router such as hero_router reads for context)."""

    socket: str | None = None
    url: str | None = None
    token: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"unix socket {self.socket}" if self.socket else f"{self.url}"


class ComputeClient:
    """One method per service method used by the driver; each call is one HTTP request on a kept
    connection (httpx). ``timeout`` bounds each phase of a request: connecting, sending, waiting
    for the answer. Close it with ``aclose`` (or ``async with``)."""

    def __init__(
        self,
        endpoint: Endpoint,
        timeout: float = 30.0,
        *,
        prefix: str = "",
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        #: Put before every method name sent (``"ComputeService."``).
        self.prefix = prefix
        #: A param name this client uses → the name the service takes (see ``check_surface``).
        self.aliases: dict[str, str] = dict(aliases or {})
        self._ids = itertools.count(1)
        self._client: httpx.AsyncClient | None = None
        self._url = ""

    # --- VMs ------------------------------------------------------------------------------------
    async def deploy_vm(
        self, *, name: str, slice_count: int, secret: str, image: str, ssh_keys: list[str], node_sid: str
    ) -> Vm:
        return await self._call(
            _VM,
            "deploy_vm",
            name=name,
            slice_count=slice_count,
            secret=secret,
            image=image,
            ssh_keys=ssh_keys,
            node_sid=node_sid,
        )

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
    async def deploy_webgateway(
        self, *, name: str, vm_id: str, port: int, node_sid: str, secret: str
    ) -> WebGateway:
        return await self._call(
            _GATEWAY,
            "deploy_webgateway",
            name=name,
            kind="name",
            vm_id=vm_id,
            port=port,
            node_sid=node_sid,
            secret=secret,
        )

    async def get_webgateway(self, gateway_id: str, secret: str) -> WebGateway:
        return await self._call(_GATEWAY, "get_webgateway", gateway_id=gateway_id, secret=secret)

    async def list_webgateways(self, secret: str) -> list[WebGateway]:
        return await self._call(_GATEWAYS, "list_webgateways", secret=secret)

    async def delete_webgateway(self, gateway_id: str, secret: str) -> None:
        await self._call(_NONE, "delete_webgateway", gateway_id=gateway_id, secret=secret)

    # --- the service's own description ---------------------------------------------------------
    async def discover(self) -> Any:
        """The service's OpenRPC document, from ``rpc.discover`` (never prefixed: JSON-RPC's
        reserved ``rpc.`` names belong to the server, not to a service behind it)."""
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": "rpc.discover", "params": []}
        answer = await self._post(request)
        if "error" in answer:
            error = answer["error"] or {}
            raise ComputeError(int(error.get("code", 0)), str(error.get("message", "error")))
        return answer.get("result")

    # --- transport ------------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        """The HTTP client, made on first use (inside the running loop) and kept: its pool keeps
        the connection to the service alive between calls."""
        if self._client is None:
            endpoint = self.endpoint
            headers = {**endpoint.headers, "Accept": "application/json"}
            if endpoint.socket:
                # plain HTTP on a local socket: no TLS, so no CA bundle to load (verify=False)
                transport = httpx.AsyncHTTPTransport(uds=endpoint.socket, verify=False)
                self._url = "http://localhost/rpc"
            else:
                assert endpoint.url is not None
                transport = httpx.AsyncHTTPTransport()
                url = httpx.URL(endpoint.url)
                self._url = str(url if url.path not in ("", "/") else url.copy_with(path="/rpc"))
                if endpoint.token:
                    headers["Authorization"] = f"Bearer {endpoint.token}"
            # trust_env=False: no proxy or .netrc from the environment slips in between.
            self._client = httpx.AsyncClient(
                transport=transport, headers=headers, trust_env=False, timeout=httpx.Timeout(self._timeout)
            )
        return self._client

    async def aclose(self) -> None:
        """Close the kept connections (the client can be used again afterwards)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> ComputeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, shape: TypeAdapter[M], method: str, **params: Any) -> M:
        if "secret" in params and not params["secret"]:
            # an empty secret is no protection at all on the service: never sent
            raise ComputeError(FORBIDDEN, f"{method}: refusing to send an empty secret")
        sent = {self.aliases.get(name, name): value for name, value in params.items()}
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": self.prefix + method, "params": sent}
        answer = await self._post(request)
        if "error" in answer:
            error = answer["error"] or {}
            raise ComputeError(int(error.get("code", 0)), str(error.get("message", "error")))
        try:
            return shape.validate_python(answer.get("result"))
        except ValidationError as exc:
            raise ComputeError(
                0, f"{method} answered an unexpected shape: {exc.error_count()} problem(s)"
            ) from None

    async def _post(self, request: dict[str, Any]) -> dict[str, Any]:
        where = self.endpoint.describe()
        try:
            response = await self._http().post(self._url, json=request)
        except httpx.TimeoutException:
            raise ComputeUnavailable(
                f"no answer from the ComputeService at {where} within {self._timeout:g} s"
            ) from None
        except (httpx.TransportError, httpx.InvalidURL) as exc:  # refused, no such socket, hung
            # up, not an http(s) URL
            raise ComputeUnavailable(f"cannot reach the ComputeService at {where}: {_reason(exc)}") from None
        status = response.status_code
        if status in (401, 403):
            raise ComputeError(FORBIDDEN, f"the service refused the bearer token (HTTP {status})")
        if status in (502, 503, 504):  # a router in front of it, or the service itself, says it is down
            raise ComputeUnavailable(f"the ComputeService at {where} is unavailable (HTTP {status})")
        try:
            answer = response.json()
        except ValueError:
            raise ComputeError(0, f"HTTP {status} with a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise ComputeError(0, f"HTTP {status} with a body that is not a JSON-RPC response")
        return answer


def _reason(exc: httpx.TransportError | httpx.InvalidURL) -> str:
    """Why a connection failed, as the OS said it when it did (``[Errno 2] No such file…``)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__
