"""Scoped tokens (issue 24): ``hearth serve --tokens FILE`` names tokens, each with scopes
(``read``: every GET and the event streams; ``operate``: the verbs on a workspace, labels,
cancel; ``admin``: adopt, forget, reconcile); one table places every route; a credential
without the scope gets 403 ``forbidden`` naming it; SIGHUP re-reads the file (a removed token
stops at once and its streams end); ``--socket-scopes`` narrows the Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from hearth import Forbidden, RemoteHost
from hearth._errors import InvalidInput, error_from_json
from hearth._server._app import create_app
from hearth._server._auth import READS, SCOPE_OF, SCOPES, Credentials, Token, scope_needed
from hearth._server._daemon import ServeError, parse_socket_scopes, read_tokens
from tests.helpers import make_host
from tests.test_serve import BOUND, a_site, daemon, over, socket_port
from tests.test_serve_cli import cli_env, hearth

pytestmark = pytest.mark.timeout(120)

READER = "reader-secret-0123456789"
CONSOLE = "console-secret-0123456789"
ROOT = "root-secret-0123456789abc"
TOKENS = f"""
[tokens.reader]
secret = "{READER}"
scopes = ["read"]

[tokens.console]
secret = "{CONSOLE}"
scopes = ["read", "operate"]

[tokens.root]
secret = "{ROOT}"
scopes = ["read", "operate", "admin"]
"""
#: What each non-read route needs (a GET needs read).
VERBS: dict[tuple[str, str], str] = {
    ("POST", "/v1/workspaces"): "operate",
    ("POST", "/v1/workspaces/{slug}/upgrade"): "operate",
    ("POST", "/v1/workspaces/{slug}/stop"): "operate",
    ("POST", "/v1/workspaces/{slug}/start"): "operate",
    ("POST", "/v1/workspaces/{slug}/activity"): "operate",
    ("DELETE", "/v1/workspaces/{slug}"): "operate",
    ("PATCH", "/v1/workspaces/{slug}"): "operate",
    ("DELETE", "/v1/operations/{ident}"): "operate",
    ("POST", "/v1/workspaces/{slug}/adopt"): "admin",
    ("POST", "/v1/workspaces/{slug}/forget"): "admin",
    ("POST", "/v1/reconcile"): "admin",
    ("POST", "/v1/check"): "read",
    ("POST", "/v1/plan"): "read",
}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with a_site(tmp_path) as found:
        yield found


def _tokens_file(folder: Path, text: str = TOKENS, mode: int = 0o600) -> Path:
    path = folder / "tokens.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _forbidden(answer: httpx.Response, scope: str) -> None:
    assert answer.status_code == 403, (answer.request.method, answer.request.url, answer.text)
    error = answer.json()["error"]
    assert error["kind"] == "forbidden" and error["scope"] == scope and scope in error["message"], error
    assert error["retryable"] is False
    typed = error_from_json(error)
    assert isinstance(typed, Forbidden) and typed.scope == scope


# --- the table ------------------------------------------------------------------------------------
def test_every_route_of_the_app_has_its_scope(tmp_path: Path) -> None:
    app = create_app(make_host(tmp_path))
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)  # the API's and FastAPI's own (/openapi.json, /docs)
        for method in route.methods or ()
    }
    assert {("GET", "/openapi.json"), ("POST", "/v1/workspaces")} <= routes
    assert len(routes) >= len(SCOPE_OF)
    for method, path in routes:  # placed in the table, or a GET (read by rule)
        assert (method, path) in SCOPE_OF or method in READS, (method, path)
        assert scope_needed(method, path) in SCOPES
        if method in READS:
            assert scope_needed(method, path) == "read", (method, path)
    assert set(SCOPE_OF) <= routes, set(SCOPE_OF) - routes  # no entry for a route that is gone
    assert {key: SCOPE_OF[key] for key in VERBS} == VERBS
    assert {key for key, scope in SCOPE_OF.items() if scope != "read"} == {
        key for key, scope in VERBS.items() if scope != "read"
    }
    assert scope_needed("GET", "/v1/metrics") == "read"  # a new read falls under read
    assert scope_needed("POST", "/v1/somewhere-new") == "admin"  # a new verb is admin until placed


def test_the_tokens_file_must_be_private_and_well_formed(tmp_path: Path) -> None:
    tokens = read_tokens(_tokens_file(tmp_path))
    assert {name: sorted(token.scopes) for name, token in tokens.items()} == {
        "reader": ["read"],
        "console": ["operate", "read"],
        "root": ["admin", "operate", "read"],
    }
    assert READER not in repr(tokens)  # never the secret
    refused = {
        "mode": (TOKENS, 0o640, "make it 0600"),
        "short": ('[tokens.a]\nsecret = "short"\nscopes = ["read"]\n', 0o600, "at least 16 printable ASCII"),
        "not ASCII": (  # accepted over curl, but a client such as the CLI could not send it
            '[tokens.a]\nsecret = "pässwörd-pässwörd-1234"\nscopes = ["read"]\n',
            0o600,
            "at least 16 printable ASCII",
        ),
        "scope": (
            '[tokens.a]\nsecret = "a-long-enough-secret"\nscopes = ["write"]\n',
            0o600,
            "unknown scope",
        ),
        "no scopes": ('[tokens.a]\nsecret = "a-long-enough-secret"\nscopes = []\n', 0o600, "scopes must be"),
        "key": (
            '[tokens.a]\nsecret = "a-long-enough-secret"\nscopes = ["read"]\nx = 1\n',
            0o600,
            "unknown key",
        ),
        "twice": (
            '[tokens.a]\nsecret = "a-long-enough-secret"\nscopes = ["read"]\n'
            '[tokens.b]\nsecret = "a-long-enough-secret"\nscopes = ["read"]\n',
            0o600,
            "another token's",
        ),
        "none": ("# nothing\n", 0o600, "names no token"),
        "toml": ("[tokens\n", 0o600, "not valid TOML"),
        "name": ('[tokens."a b"]\nsecret = "a-long-enough-secret"\nscopes = ["read"]\n', 0o600, "name"),
    }
    for what, (text, mode, said) in refused.items():
        with pytest.raises(ServeError, match=said) as caught:
            read_tokens(_tokens_file(tmp_path, text, mode))
        assert "a-long-enough-secret" not in str(caught.value), what
    with pytest.raises(ServeError, match="cannot be read"):
        read_tokens(tmp_path / "missing.toml")
    if os.getuid() == 0:  # only root can give the file away
        path = _tokens_file(tmp_path)
        os.chown(path, 65534, -1)
        with pytest.raises(ServeError, match="not yours"):
            read_tokens(path)
    assert parse_socket_scopes("read, operate") == {"read", "operate"}
    for bad in ("read,write", ""):
        with pytest.raises(InvalidInput, match="socket-scopes"):
            parse_socket_scopes(bad)


def test_secrets_are_matched_against_every_token(tmp_path: Path) -> None:
    credentials = Credentials({name: Token.of(name, f"{name}-secret-0123456789", SCOPES) for name in "abc"})
    for name in "abc":
        found = credentials.match(f"{name}-secret-0123456789".encode())
        assert found is not None and found.name == name
    assert credentials.match(b"a-secret-012345678") is None and credentials.match(b"") is None
    changed = Token.of("b", "b-new-secret-0123456", ["read"])
    gone = credentials.replace({"a": credentials.tokens["a"], "b": changed})
    assert gone == {"b", "c"} and credentials.match(b"c-secret-0123456789") is None
    assert credentials.required  # a reload that leaves no token refuses, never opens
    assert credentials.replace({}) == {"a", "b"} and credentials.required


# --- a real daemon -----------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _tcp(port: int, secret: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=BOUND, headers=_bearer(secret)
    ) as c:
        yield c


async def _first_line(client: httpx.AsyncClient, path: str, **params: Any) -> str:
    async with client.stream("GET", path, params=params) as stream:
        assert stream.status_code == 200, await stream.aread()
        async for line in stream.aiter_lines():
            if line:
                return line
    raise AssertionError(f"{path}: the stream ended with no event")


@pytest.mark.subprocess
async def test_a_read_token_reads_everything_and_every_verb_is_forbidden_it(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    home, _ = site
    tokens = _tokens_file(tmp_path)
    with (
        socket_port() as port,
        daemon(site, venv_bin, "--listen", f"127.0.0.1:{port}", "--tokens", str(tokens)) as served,
    ):
        served.wait_for("serving")
        async with RemoteHost(socket=home / "hearth.sock") as local:
            await local.provision("alpha", tier="solo", driver="fake")
            running = await local.start_provision("omega", tier="glacial", driver="fake")
        async with _tcp(port, READER) as reader, _tcp(port, CONSOLE) as console, _tcp(port, ROOT) as root:
            [made] = (await reader.get("/v1/operations", params={"slug": "alpha"})).json()
            reads = [
                "/v1/workspaces",
                "/v1/workspaces/alpha",
                "/v1/workspaces/alpha/status",
                "/v1/workspaces/alpha/logs",
                "/v1/operations",
                f"/v1/operations/{made['id']}",
                f"/v1/operations/{made['id']}/wait",
                "/v1/tiers",
                "/v1/drivers",
                "/v1/health",
                "/v1/ready",
                "/metrics",  # it scrapes
            ]
            for path in reads:
                answer = await reader.get(path)
                assert answer.status_code == 200, (path, answer.text)
            assert '"seq"' in await _first_line(reader, "/v1/events")  # it watches
            assert '"seq"' in await _first_line(reader, f"/v1/operations/{made['id']}/events")
            check = await reader.post(
                "/v1/check", json={"slug": "beta", "verb": "provision", "tier": "solo", "driver": "fake"}
            )
            assert check.status_code == 200 and check.json()["accepted"], check.text
            verbs: list[tuple[str, str, dict[str, Any] | None, str]] = [
                ("POST", "/v1/workspaces", {"slug": "beta", "tier": "solo", "driver": "fake"}, "operate"),
                ("POST", "/v1/workspaces/alpha/upgrade", {"tier": "team"}, "operate"),
                ("DELETE", "/v1/workspaces/alpha", None, "operate"),
                ("PATCH", "/v1/workspaces/alpha", {"labels": {"team": "a"}}, "operate"),
                ("DELETE", f"/v1/operations/{running.id}", None, "operate"),
                ("POST", "/v1/workspaces/alpha/adopt", {"driver": "fake", "tier": "solo"}, "admin"),
                ("POST", "/v1/workspaces/alpha/forget", None, "admin"),
                ("POST", "/v1/reconcile", {}, "admin"),
            ]
            for method, path, body, scope in verbs:
                _forbidden(await reader.request(method, path, json=body), scope)
            for method, path, body, scope in verbs:  # the console may operate, not administer
                if scope == "admin":
                    _forbidden(await console.request(method, path, json=body), "admin")
            cancelled = await console.delete(f"/v1/operations/{running.id}")
            assert cancelled.status_code == 202, cancelled.text
            labelled = await console.patch("/v1/workspaces/alpha", json={"labels": {"team": "a"}})
            assert labelled.status_code == 200, labelled.text
            reconciled = await root.post("/v1/reconcile", json={"dry_run": True})
            assert reconciled.status_code == 200, reconciled.text
            forgot = await root.post("/v1/workspaces/alpha/forget")
            assert forgot.status_code == 200, forgot.text
            assert (
                await reader.get("/v1/workspaces/alpha")
            ).status_code == 404  # nothing changed by the 403s but these
        async with RemoteHost(url=f"http://127.0.0.1:{port}", token=READER) as remote:
            with pytest.raises(Forbidden, match="operate") as caught:
                await remote.start_provision("gamma", tier="solo", driver="fake")
            assert caught.value.scope == "operate"
            assert await remote.operations(slug="gamma") == []  # refused before anything was recorded
        served.wait_for("403")
        assert served.stop() == 0
    assert not any(secret in line for line in served.lines for secret in (READER, CONSOLE, ROOT))


@pytest.mark.subprocess
async def test_a_token_removed_and_sighup_stops_at_once_and_its_stream_ends(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    home, _ = site
    tokens = _tokens_file(tmp_path)
    with (
        socket_port() as port,
        daemon(site, venv_bin, "--listen", f"127.0.0.1:{port}", "--tokens", str(tokens)) as served,
    ):
        served.wait_for("serving")
        async with RemoteHost(socket=home / "hearth.sock") as local:
            await local.provision("alpha", tier="solo", driver="fake")
            async with (
                _tcp(port, READER) as reader,
                _tcp(port, CONSOLE) as console,
                reader.stream("GET", "/v1/events") as revoked,
                console.stream("GET", "/v1/events") as kept,
            ):
                revoked_lines, kept_lines = revoked.aiter_lines(), kept.aiter_lines()
                assert '"seq"' in await anext(revoked_lines)  # both streams are open and sending
                assert '"seq"' in await anext(kept_lines)
                _tokens_file(
                    tmp_path, TOKENS.replace(f'[tokens.reader]\nsecret = "{READER}"\nscopes = ["read"]\n', "")
                )
                served.send(signal.SIGHUP)
                served.wait_for("revoked or changed: reader (1 stream(s) ended)")

                async def drained() -> list[str]:
                    return [line async for line in revoked_lines]

                await asyncio.wait_for(drained(), BOUND)  # the reader's stream ended
                refused = await reader.get("/v1/workspaces")
                assert refused.status_code == 401 and refused.json()["error"]["kind"] == "unauthorized"
                assert (await console.get("/v1/workspaces")).status_code == 200  # the others still work
                await local.provision("beta", tier="solo", driver="fake")

                async def beta_seen() -> None:
                    async for line in kept_lines:
                        if '"beta"' in line:
                            return
                    raise AssertionError("the console's stream ended")

                await asyncio.wait_for(beta_seen(), BOUND)  # the console's stream goes on
            _tokens_file(tmp_path, "[tokens\n")  # a broken file: no token works until it is fixed
            served.send(signal.SIGHUP)
            served.wait_for("every TCP request is refused until it is fixed")
            async with _tcp(port, CONSOLE) as console:
                assert (await console.get("/v1/workspaces")).status_code == 401
            _tokens_file(tmp_path)
            served.send(signal.SIGHUP)
            served.wait_for(": console, reader, root")  # fixed: every token again, none revoked
            async with _tcp(port, READER) as reader:
                assert (await reader.get("/v1/workspaces")).status_code == 200
        assert served.stop() == 0


@pytest.mark.subprocess
async def test_socket_scopes_narrow_the_unix_socket_and_bad_files_stop_the_daemon(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    home, _ = site
    with daemon(site, venv_bin, "--socket-scopes", "read,operate") as served:
        served.wait_for("serving")
        async with over(home / "hearth.sock") as client:
            made = await client.post(
                "/v1/workspaces",
                json={"slug": "alpha", "tier": "solo", "driver": "fake"},
                params={"wait": 20},
            )
            assert made.status_code == 200, made.text
            _forbidden(await client.post("/v1/workspaces/alpha/forget"), "admin")
            _forbidden(await client.post("/v1/reconcile", json={}), "admin")
        env = cli_env(venv_bin, HEARTH_URL=f"unix://{home / 'hearth.sock'}")
        said = hearth(venv_bin, site, "reconcile", "--json", env=env)  # through the socket
        assert said.returncode == 1 and said.stderr.startswith("hearth: forbidden: "), said.stderr
        assert "'admin'" in said.stderr and "--socket-scopes" in said.stderr
        assert json.loads(said.stdout)["error"] == {
            "kind": "forbidden",
            "message": said.stderr.strip().removeprefix("hearth: forbidden: "),
            "retryable": False,
            "scope": "admin",
        }
        assert served.stop() == 0
    loose = _tokens_file(tmp_path, mode=0o644)
    for extra, why in (
        (("--listen", "127.0.0.1:0", "--tokens", str(loose)), "make it 0600"),
        (
            ("--listen", "127.0.0.1:0", "--tokens", str(loose), "--token-file", str(loose)),
            "do not go together",
        ),
        (("--tokens", str(loose)), "--tokens is only for --listen"),
        (("--socket-scopes", "read,write"), "unknown scope"),
    ):
        with daemon(site, venv_bin, *extra) as refused:
            assert refused.process.wait(timeout=BOUND) in (1, 2)
            refused.wait_for(why)


async def test_a_wait_held_by_a_token_revoked_meanwhile_ends_at_once_with_401(tmp_path: Path) -> None:
    """A wait is held like a stream: revoked (SIGHUP) while it waits, it answers 401 at once
    rather than the operation its token may no longer read."""
    credentials = Credentials(
        {"reader": Token.of("reader", READER, ["read"]), "root": Token.of("root", ROOT, SCOPES)}
    )
    async with make_host(tmp_path) as host:
        app = create_app(host, credentials=credentials)
        state = app.state.hearth
        transport = httpx.ASGITransport(app=app)
        # a port: the app takes a request without one (ASGITransport's server port None) for the socket's
        async with httpx.AsyncClient(
            transport=transport, base_url="http://hearth:8080", timeout=BOUND
        ) as client:
            op = await host.start_provision("alpha", tier="glacial", driver="fake")
            waiting = asyncio.create_task(
                client.get(
                    f"/v1/operations/{op.id}/wait",
                    params={"timeout": 600},
                    headers={"Authorization": f"Bearer {READER}"},
                )
            )
            while not state.streams.get("reader"):  # the wait is held (bounded by the test's timeout)
                assert not waiting.done(), waiting.result().text
                await asyncio.sleep(0.01)
            assert state.revoke(credentials.replace({"root": credentials.tokens["root"]})) == 1
            answer = await asyncio.wait_for(waiting, BOUND)
            assert answer.status_code == 401, answer.text
            assert "revoked" in answer.json()["error"]["message"]
            await op.cancel(reason="the test is over")


@pytest.mark.subprocess
async def test_sighup_re_reads_the_token_file_too(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    """A single token rotated in ``--token-file`` works after SIGHUP; the old one stops."""
    token = tmp_path / "token"
    token.write_text(READER)
    token.chmod(0o600)
    with (
        socket_port() as port,
        daemon(site, venv_bin, "--listen", f"127.0.0.1:{port}", "--token-file", str(token)) as served,
    ):
        served.wait_for("serving")
        async with _tcp(port, READER) as old:
            assert (await old.get("/v1/workspaces")).status_code == 200
        token.write_text(ROOT)
        served.send(signal.SIGHUP)
        served.wait_for("revoked or changed: default")
        async with _tcp(port, READER) as old, _tcp(port, ROOT) as new:
            assert (await old.get("/v1/workspaces")).status_code == 401
            assert (await new.get("/v1/workspaces")).status_code == 200
        assert served.stop() == 0
