"""Who did what (issue 24): every operation records its actor (the principal the host
authenticated: the Unix socket's peer from ``SO_PEERCRED``, a TCP token's name, an embedded
host's process user or what the embedding program names) and, apart from it, the
``on_behalf_of`` a caller passes; both show on the operation, its events, ``hearth logs`` and
``GET /v1/operations?actor=``; the daemon logs one access line per request.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hearth import Host, InvalidInput, RemoteHost
from hearth._actors import RECONCILE_ACTOR, acting, process_actor
from tests.helpers import make_host
from tests.test_serve import BOUND, a_site, daemon, socket_port
from tests.test_serve_cli import cli_env, hearth

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with a_site(tmp_path) as found:
        yield found


def _me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


async def test_an_embedded_host_records_the_process_user_or_the_actor_it_is_given(tmp_path: Path) -> None:
    assert process_actor() == f"process:{os.getuid()}({_me()})"
    async with make_host(tmp_path) as host:
        op = await host.start_provision("alpha", tier="solo", driver="fake", on_behalf_of="ann@example.com")
        await op.result(timeout=BOUND)
        read = await host.operation(op.id)
        assert (read.actor, read.on_behalf_of) == (process_actor(), "ann@example.com")
        await host.teardown("alpha")
        [provision, teardown] = await host.logs("alpha")
        assert (teardown.actor, teardown.on_behalf_of) == (process_actor(), None)
        events = await host.store.events(operation=op.id)
        said = {(event.actor, event.on_behalf_of) for event in events}
        assert events and said == {(process_actor(), "ann@example.com")}
        for bad in ("", "x" * 201, "ann\nroot", 5):
            with pytest.raises(InvalidInput, match="on_behalf_of"):
                await host.start_provision("beta", tier="solo", driver="fake", on_behalf_of=bad)  # type: ignore[arg-type]
        assert await host.operations(slug="beta") == []  # a refused one records nothing
    async with make_host(tmp_path, actor="billing-job") as named:
        await named.provision("gamma", tier="solo", driver="fake")
        with acting(RECONCILE_ACTOR):  # what the daemon's own work records
            forgot = await named.forget("gamma")
        assert forgot.slug == "gamma"
        [made, forget] = await named.logs("gamma")
        assert (made.actor, forget.actor) == ("billing-job", RECONCILE_ACTOR)
        assert [op.slug for op in await named.operations(actor="billing-job")] == ["gamma"]
        assert [op.id for op in await named.operations(actor=process_actor())] == [provision.id, teardown.id]
        with pytest.raises(InvalidInput, match="actor"):
            await named.operations(actor="x" * 300)
    with pytest.raises(InvalidInput, match="actor"):
        Host(project_dir=tmp_path, home=tmp_path / "home", actor="bad\x1bactor")


@pytest.mark.subprocess
async def test_the_socket_peer_and_two_tokens_are_the_actors_in_logs_the_api_and_the_access_log(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    home, _ = site
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        '[tokens.alpha]\nsecret = "alpha-secret-0123456789"\nscopes = ["read", "operate"]\n'
        '[tokens.beta]\nsecret = "beta-secret-0123456789"\nscopes = ["read", "operate"]\n'
    )
    tokens.chmod(0o600)
    unix = f"unix:{os.getuid()}({_me()})"
    with (
        socket_port() as port,
        daemon(
            site, venv_bin, "--listen", f"127.0.0.1:{port}", "--tokens", str(tokens), "--log-json"
        ) as served,
    ):
        served.wait_for("serving")
        url = f"http://127.0.0.1:{port}"
        async with (
            RemoteHost(socket=home / "hearth.sock") as local,
            RemoteHost(url=url, token="alpha-secret-0123456789") as alpha,
            RemoteHost(url=url, token="beta-secret-0123456789") as beta,
        ):
            await local.provision("delta", tier="solo", driver="fake")
            await alpha.upgrade("delta", tier="team", on_behalf_of="zoë@example.com")
            await beta.teardown("delta", on_behalf_of="bob")
            [made, upgraded, gone] = await beta.logs("delta")
            assert [(op.actor, op.on_behalf_of) for op in (made, upgraded, gone)] == [
                (unix, None),
                ("token:alpha", "zoë@example.com"),
                ("token:beta", "bob"),
            ]
            assert [op.id for op in await local.operations(actor="token:alpha")] == [upgraded.id]
            assert [op.id for op in await local.operations(actor=unix)] == [made.id]
            assert await local.operations(actor="token:nobody") == []
            final = [event async for event in upgraded.events() if event.kind == "state"][-1]
            assert (final.actor, final.on_behalf_of) == ("token:alpha", "zoë@example.com")
        async with httpx.AsyncClient(base_url=url, timeout=BOUND) as client:
            listed = await client.get(
                "/v1/operations",
                params={"actor": "token:beta"},
                headers={"Authorization": "Bearer alpha-secret-0123456789"},
            )
            assert listed.status_code == 200, listed.text
            assert [(op["id"], op["actor"], op["on_behalf_of"]) for op in listed.json()] == [
                (gone.id, "token:beta", "bob")
            ]
            too_long = await client.post(
                "/v1/workspaces",
                json={"slug": "epsilon", "tier": "solo", "driver": "fake"},
                headers={"Authorization": "Bearer alpha-secret-0123456789", "Hearth-On-Behalf-Of": "x" * 201},
            )
            assert too_long.status_code == 400 and too_long.json()["error"]["kind"] == "invalid_input"
            not_utf8 = await client.post(
                "/v1/workspaces",
                json={"slug": "epsilon", "tier": "solo", "driver": "fake"},
                headers={
                    b"Authorization": b"Bearer alpha-secret-0123456789",
                    b"Hearth-On-Behalf-Of": b"zo\xeb",
                },
            )
            assert not_utf8.status_code == 400 and "must be UTF-8" in not_utf8.text, not_utf8.text
        env = cli_env(venv_bin, HEARTH_URL=f"unix://{home / 'hearth.sock'}")
        text = hearth(venv_bin, site, "logs", "delta", env=env)
        assert text.returncode == 0, text.stderr
        assert f"by {unix}" in text.stdout and "by token:alpha on behalf of zoë@example.com" in text.stdout
        assert "by token:beta on behalf of bob" in text.stdout
        as_json = hearth(venv_bin, site, "logs", "delta", "--json", env=env)
        assert [(op["actor"], op["on_behalf_of"]) for op in json.loads(as_json.stdout)] == [
            (unix, None),
            ("token:alpha", "zoë@example.com"),
            ("token:beta", "bob"),
        ]
        made_by_cli = hearth(
            venv_bin, site, "provision", "zeta", "--tier", "solo", "--driver", "fake",
            "--on-behalf-of", "zoë", env=env,
        )  # fmt: skip
        assert made_by_cli.returncode == 0, made_by_cli.stderr
        async with RemoteHost(socket=home / "hearth.sock") as local:
            [op] = await local.logs("zeta")
            assert (op.actor, op.on_behalf_of) == (unix, "zoë")  # UTF-8 through the CLI and the header
        served.wait_for('"path": "/v1/workspaces/zeta/logs"')
        assert served.stop() == 0
    access = [json.loads(line) for line in served.lines if '"hearth.access"' in line]
    started = [entry for entry in access if entry["method"] == "POST" and entry["path"] == "/v1/workspaces"]
    assert any(entry["operation"] == op.id and entry["actor"] == unix for entry in started), started
    upgrade = [entry for entry in access if entry["path"] == "/v1/workspaces/delta/upgrade"]
    assert upgrade and upgrade[0]["actor"] == "token:alpha" and upgrade[0]["operation"] == upgraded.id
    assert all({"status", "duration_ms"} <= set(entry) for entry in access)
    logged = "\n".join(served.lines)
    for secret in ("alpha-secret-0123456789", "beta-secret-0123456789"):
        assert secret not in logged  # never a secret
    assert "?actor=" not in logged and "include_torn_down" not in logged  # never a query


@pytest.mark.subprocess
async def test_a_request_cannot_write_a_line_or_an_escape_into_the_access_log(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    """The path arrives decoded: it is logged percent-encoded, as uvicorn's own line had it."""
    home, _ = site
    forged = "/v1/x%0a2026-12-07 03:34:40,000 INFO hearth.access: forged%1b[31mRED"
    with daemon(site, venv_bin) as served:
        served.wait_for("serving")
        transport = httpx.AsyncHTTPTransport(uds=str(home / "hearth.sock"))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=BOUND) as client:
            assert (await client.get(forged)).status_code == 404
        served.wait_for(
            "/v1/x%0A2026-12-07%2003%3A34%3A40%2C000%20INFO%20hearth.access%3A%20forged%1B%5B31mRED"
        )
        assert served.stop() == 0
    assert not any(line.startswith("2026-12-07 03:34:40,000") for line in served.lines)
    assert not any("\x1b" in line for line in served.lines)
