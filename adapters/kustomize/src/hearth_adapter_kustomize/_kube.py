"""The Kubernetes API, through lightkube's async client: the one place its exceptions are
translated. Objects go in and come out as plain dicts.

An unreachable API server (or a kubeconfig that cannot be read) is ``BackendUnavailable``
(-32030); an answer of the server is ``Refused`` with its code, reason and message, which the
driver words. Nothing of the kubeconfig but the server's address ever reaches a message.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import httpcore2
import httpx2
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import resource_registry
from lightkube.config.client_adapter import verify_cluster
from lightkube.core.exceptions import ApiError, ConfigError
from lightkube.types import CascadeType, OnErrorAction, OnErrorResult, PatchType

from hearth_adaptersdk import BackendUnavailable

from ._config import KustomizeConfig

Obj = dict[str, Any]


class Refused(Exception):
    """The API server answered with an error status."""

    def __init__(self, code: int, reason: str, message: str, causes: list[Obj] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.causes = causes or []


class Kube:
    """A lazily made client of the cluster the config names."""

    def __init__(self, config: KustomizeConfig) -> None:
        self.config = config
        self._client: AsyncClient | None = None
        self._server: str | None = None

    @property
    def where(self) -> str:
        return self._server or f"the cluster of {self.config.kubeconfig_path()}"

    def client(self) -> AsyncClient:
        if self._client is None:
            path = self.config.kubeconfig_path()
            try:
                single = KubeConfig.from_file(path).get(self.config.context)
                assert single is not None
                self._server = single.cluster.server
                if single.user is None:
                    raise ConfigError(f"its context {single.context_name!r} names no user")
                verify = verify_cluster(single.cluster, single.user, single.abs_file, trust_env=False)
                self._client = AsyncClient(
                    single,
                    field_manager=self.config.field_manager,
                    timeout=httpx2.Timeout(self.config.request_timeout),
                    trust_env=False,
                    transport=_Transport(verify),
                )
            except yaml.YAMLError:
                # never its text: a line of a kubeconfig may hold a token
                raise BackendUnavailable(
                    f"cannot use the kubeconfig {path}: it is not valid YAML. Set 'kubeconfig' in "
                    "[adapters.kustomize] of .hearth/hearth.toml, or pass KUBECONFIG with pass_env"
                ) from None
            except (ConfigError, OSError, KeyError, ValueError, TypeError) as exc:
                raise BackendUnavailable(
                    f"cannot use the kubeconfig {path}: {_short(exc)}. Set 'kubeconfig' (and 'context') in "
                    "[adapters.kustomize] of .hearth/hearth.toml, or pass KUBECONFIG with pass_env"
                ) from None
        return self._client

    def unreachable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(
            f"cannot reach the Kubernetes API server at {self.where}: {_short(exc)}. Is it running? "
            "Check 'kubeconfig' and 'context' in [adapters.kustomize] of .hearth/hearth.toml"
        )

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, ApiError):
            status = exc.status
            details = getattr(status, "details", None)
            causes = [
                {"field": getattr(c, "field", None), "message": getattr(c, "message", None)}
                for c in (getattr(details, "causes", None) or [])
            ]
            return Refused(
                int(status.code or 0), str(status.reason or ""), str(status.message or exc), causes
            )
        if isinstance(exc, httpx2.HTTPError):
            return self.unreachable(exc)
        return exc

    async def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        """The object, or None when the server says it does not exist."""
        resource: Any = resource_registry.load(api_version, kind)
        try:
            found = await self.client().get(resource, name, namespace=namespace)
        except Exception as exc:
            error = self._translate(exc)
            if isinstance(error, Refused) and error.code == 404:
                return None
            raise error from None
        return _as_dict(found)

    async def apply(self, obj: Obj, *, force: bool = False, dry_run: bool = False) -> Obj:
        """Server-side apply of ``obj`` as the configured field manager."""
        resource: Any = resource_registry.load(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        try:
            applied = await self.client().patch(
                resource,
                meta["name"],
                obj,
                namespace=meta.get("namespace"),
                patch_type=PatchType.APPLY,
                field_manager=self.config.field_manager,
                force=force,
                dry_run=dry_run,
            )
        except Exception as exc:
            raise self._translate(exc) from None
        return _as_dict(applied)

    async def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        foreground: bool = False,
    ) -> bool:
        """Delete; False when it was not there. ``foreground``: the object goes only once its
        dependents are gone (a namespace's teardown); else they go in the background."""
        resource: Any = resource_registry.load(api_version, kind)
        cascade = CascadeType.FOREGROUND if foreground else CascadeType.BACKGROUND
        try:
            await self.client().delete(resource, name, namespace=namespace, cascade=cascade)
        except Exception as exc:
            error = self._translate(exc)
            if isinstance(error, Refused) and error.code == 404:
                return False
            raise error from None
        return True

    async def list(
        self,
        api_version: str,
        kind: str,
        *,
        namespace: str | None = None,
        labels: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> tuple[list[Obj], str | None]:
        """The objects and the list's resourceVersion (to watch from)."""
        resource: Any = resource_registry.load(api_version, kind)
        found: list[Obj] = []
        try:
            listing = self.client().list(resource, namespace=namespace, labels=labels, fields=fields)
            async for item in listing:
                found.append(_as_dict(item))
            version: str | None = None
            with contextlib.suppress(Exception):
                version = listing.resourceVersion
        except Exception as exc:
            raise self._translate(exc) from None
        return found, version

    async def watch(
        self,
        api_version: str,
        kind: str,
        *,
        namespace: str | None = None,
        labels: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
        resource_version: str | None = None,
    ) -> AsyncGenerator[tuple[str, Obj], None]:
        """Events (``ADDED``, ``MODIFIED``, ``DELETED``) from ``resource_version`` on; close it
        (``contextlib.aclosing``) when leaving early, so that its HTTP stream is shut at once."""
        resource: Any = resource_registry.load(api_version, kind)
        events = self.client().watch(
            resource,
            namespace=namespace,
            labels=labels,
            fields=fields,
            resource_version=resource_version,
            server_timeout=240,
            on_error=_relist_when_gone,
        )
        try:
            async for operation, item in events:
                yield operation, _as_dict(item)
        except Exception as exc:
            raise self._translate(exc) from None
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None


class _Transport(httpx2.AsyncHTTPTransport):
    """httpx2's transport, except that a TLS handshake cancelled half way closes its socket.

    httpcore2 closes a stream whose ``start_tls`` fails only on an ``Exception``; a cancelled
    one (a watch the driver stops while it connects) left the socket to the garbage collector.
    httpx2 takes no network backend, so its pool is made again with one that closes it."""

    def __init__(self, verify: ssl.SSLContext) -> None:
        super().__init__(verify=verify, trust_env=False)
        limits = httpx2.Limits(max_connections=100, max_keepalive_connections=20)  # httpx2's own
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_ClosingBackend(),
        )


class _ClosingBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _ClosingStream(
            await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        return _ClosingStream(await self._backend.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _ClosingStream(httpcore2.AsyncNetworkStream):
    def __init__(self, stream: httpcore2.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        try:
            return await self._stream.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            # anyio closes the transport before its first await, so a cancelled task's close
            # still happens; whatever else goes wrong here, the first error is the one raised
            with contextlib.suppress(BaseException):
                await self._stream.aclose()
            raise

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _relist_when_gone(error: Exception, count: int) -> OnErrorResult:
    """A watch whose version the server no longer has (410 Gone, after etcd compacted it) starts
    again from the current state, which it sends as ADDED events; any other error is raised."""
    if isinstance(error, ApiError) and error.status.code == 410 and count <= 3:
        return OnErrorResult(OnErrorAction.RETRY)
    return OnErrorResult(OnErrorAction.RAISE)


def _as_dict(obj: Any) -> Obj:
    if isinstance(obj, dict):
        return obj
    converted: Obj = obj.to_dict()
    return converted


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
