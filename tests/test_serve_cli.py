"""``hearth serve`` as its users meet it (issue 12): the CLI through the daemon, Ctrl-C, the
daemon's own duties (self-healing reconcile, SIGHUP, JSON logs), TLS and tokens, and clients
racing one slug. Every test runs the real ``hearth serve`` (uvicorn on a Unix socket) and the
real ``hearth-adapter-fake`` in their own processes; only processes the test started are
signalled, by the pid it recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import grp
import json
import os
import select
import shlex
import signal
import ssl
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth import Host, InvalidInput, RemoteHost, Unauthorized
from hearth._cli._parser import build_parser
from tests.helpers import left_by_a_dead_host
from tests.test_serve import BOUND, DAEMON_SETTINGS, Daemon, a_site, daemon, over, short_dir, socket_port

SETTINGS = DAEMON_SETTINGS
#: A daemon that reconciles every 0.3 s (only where the test is about it: a reconcile holds
#: the slugs it settles, which other tests' comparisons would see as "busy").
HEALING = DAEMON_SETTINGS + "[serve]\nreconcile_interval = 0.3\n"
Completed = subprocess.CompletedProcess[str]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with a_site(tmp_path, SETTINGS) as found:
        yield found


def cli_env(venv_bin: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    for name in ("HEARTH_HOME", "HEARTH_URL", "HEARTH_TOKEN"):
        if name not in extra:
            env.pop(name, None)
    return env


def hearth(
    venv_bin: Path, site: tuple[Path, Path], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``hearth ARGS --home HOME --project PROJECT``, bounded."""
    home, project = site
    where = ["--home", str(home), "--project", str(project)] if env is None else []
    return subprocess.run(
        [str(venv_bin / "hearth"), *args, *where],
        env=env or cli_env(venv_bin),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BOUND * 2,
        check=False,
    )


def requests_seen(lines: list[str]) -> list[str]:
    return [line for line in lines if '"' in line and "HTTP/1.1" in line]


def more_requests(served: Daemon, before: int) -> bool:
    """Whether the daemon logs a request past the first ``before`` (its log trails the answer)."""
    with served.changed:
        return (
            served.changed.wait_for(
                lambda: len(requests_seen(served.lines)) > before or "<eof>" in served.lines, BOUND
            )
            and len(requests_seen(served.lines)) > before
        )


def without_times(document: Any) -> Any:
    """A JSON document without the moments it was observed at (they differ between two asks)."""
    if isinstance(document, dict):
        return {k: without_times(v) for k, v in document.items() if k != "observed_at"}
    if isinstance(document, list):
        return [without_times(v) for v in document]
    return document


def test_the_cli_goes_through_the_daemon_and_prints_what_it_prints_alone(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    with daemon(site, venv_bin) as served:
        served.wait_for("serving")
        made = hearth(venv_bin, site, "provision", "omega", "--tier", "solo", "--driver", "fake")
        assert made.returncode == 0, made.stderr
        assert made.stdout == "omega: ready (tier solo, driver fake)\n  endpoint: fake://omega\n"
        served.wait_for('"POST /v1/workspaces HTTP/1.1" 202')
        again = hearth(venv_bin, site, "provision", "omega", "--tier", "solo", "--driver", "fake", "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["workspace_slug"] == "omega"
        for command in (
            ["status", "omega"],
            ["status", "omega", "--json"],
            ["ls"],
            ["ls", "--json"],
            ["logs", "omega"],
            ["logs", "omega", "--json"],
            ["plan", "omega", "--tier", "team"],
            ["reconcile", "--dry-run", "--json"],
            ["status", "nobody"],
            ["status", "nobody", "--json"],
            ["logs", "nobody"],
            ["provision", "omega", "--tier", "team", "--driver", "fake"],
            ["upgrade", "omega", "--tier", "nonesuch"],
        ):
            before = len(requests_seen(served.lines))
            through = hearth(venv_bin, site, *command)
            alone = hearth(venv_bin, site, *command, "--local")
            assert through.returncode == alone.returncode, (command, through.stderr, alone.stderr)
            assert through.stderr == alone.stderr, command
            if "--json" in command and through.stdout:
                assert without_times(json.loads(through.stdout)) == without_times(json.loads(alone.stdout))
            else:
                assert through.stdout == alone.stdout, command
            if command[0] != "ls":  # ls reads the home's store itself: no daemon needed
                assert more_requests(served, before), command
        assert hearth(venv_bin, site, "status", "nobody").returncode == 2
        conflict = hearth(venv_bin, site, "provision", "omega", "--tier", "team", "--driver", "fake")
        assert conflict.returncode == 1 and "hearth: conflict:" in conflict.stderr
        gone = hearth(venv_bin, site, "teardown", "omega")
        assert gone.returncode == 0 and gone.stdout == "omega: tier_torn_down\n", gone.stderr
        assert hearth(venv_bin, site, "teardown", "omega").returncode == 0
        # a provision or teardown that had nothing to do recorded nothing, as when run alone
        logs = hearth(venv_bin, site, "logs", "omega", "--json")
        assert [op["verb"] for op in json.loads(logs.stdout)] == ["provision", "teardown"], logs.stdout
        # --local never asks the daemon
        before = len(requests_seen(served.lines))
        assert hearth(venv_bin, site, "status", "omega", "--local").returncode == 0
        assert hearth(venv_bin, site, "logs", "omega", "--local").returncode == 0
        assert len(requests_seen(served.lines)) == before
        assert served.stop() == 0


async def test_ctrl_c_through_the_daemon_cancels_the_operation_and_says_what_became_of_it(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    home, project = site
    with daemon(site, venv_bin) as served:
        served.wait_for("serving")
        argv = [str(venv_bin / "hearth"), "provision", "sigma", "--tier", "glacial", "--driver", "fake"]
        argv += ["--home", str(home), "--project", str(project)]
        cli = await asyncio.create_subprocess_exec(
            *argv, env=cli_env(venv_bin), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            async with over(home / "hearth.sock") as client:
                async with client.stream("GET", "/v1/events", params={"slug": "sigma"}) as events:
                    async for line in events.aiter_lines():
                        if line and json.loads(line)["kind"] == "progress":
                            break  # the adapter is at work
                cli.send_signal(signal.SIGINT)
                _, raw = await asyncio.wait_for(cli.communicate(), BOUND)
                err = raw.decode()
                assert cli.returncode == 130, err
                assert err.startswith("hearth: cancelled: interrupted by SIGINT; provision of 'sigma'"), err
                # the words of a Ctrl-C of the CLI run alone
                alone = "provision of 'sigma' was cancelled and rolled back"
                assert err == f"hearth: cancelled: interrupted by SIGINT; {alone}\n", err
                [op] = (await client.get("/v1/operations", params={"slug": "sigma"})).json()
                assert op["state"] == "cancelled" and op["error"]["rolled_back"] is True, op
                assert (await client.get("/v1/workspaces/sigma")).status_code == 404
                assert (await client.get("/v1/health")).json()["status"] == "ok"
        finally:
            if cli.returncode is None:
                cli.kill()
                await asyncio.wait_for(cli.communicate(), BOUND)
        assert served.stop() == 0


def test_hearth_url_names_a_daemon_and_a_dead_ones_socket_is_passed_by(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    home, _ = site
    with short_dir() as elsewhere:
        custom = elsewhere / "custom.sock"
        with daemon(site, venv_bin, "--socket", str(custom)) as served:
            served.wait_for("serving")
            env = cli_env(venv_bin, HEARTH_URL=f"unix://{custom}")
            made = hearth(venv_bin, site, "provision", "tau", "--tier", "solo", "--driver", "fake", env=env)
            assert made.returncode == 0, made.stderr
            listed = hearth(venv_bin, site, "ls", "--json", env=env)
            assert [ref["workspace_slug"] for ref in json.loads(listed.stdout)] == ["tau"]
            served.wait_for('"GET /v1/workspaces HTTP/1.1" 200')  # logged without its query
            mixed = subprocess.run(
                [str(venv_bin / "hearth"), "status", "tau", "--home", str(home)],
                env=env, capture_output=True, text=True, timeout=BOUND, check=False,
            )  # fmt: skip
            assert mixed.returncode == 2 and "--home is for a host run here" in mixed.stderr
            assert served.stop() == 0
        nobody = cli_env(venv_bin, HEARTH_URL=f"unix://{custom}")
        missing = hearth(venv_bin, site, "status", "tau", env=nobody)
        assert missing.returncode == 1
        assert missing.stderr.startswith("hearth: daemon_unavailable: no hearth daemon at unix://")
    with daemon(site, venv_bin) as killed:
        killed.wait_for("serving")
        assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    assert (home / "hearth.sock").is_socket()  # left behind: nobody answers on it
    alone = hearth(venv_bin, site, "status", "tau", "-v")
    assert alone.returncode == 0 and alone.stdout.startswith("tau: ready"), alone.stderr
    assert "not using the daemon" in alone.stderr


#: What ``hearth status`` through a daemon must not load: the standard library does the asking.
HEAVY = ("asyncio", "httpx", "pydantic")


def loaded_by_status(venv_bin: Path, slug: str, env: dict[str, str], *where: str) -> list[str]:
    """The heavy modules ``hearth status SLUG`` loads, run in a process of its own."""
    code = (
        "import sys\nfrom hearth._cli import main\n"
        f"code = main(['status', {slug!r}, *{list(where)!r}])\n"
        f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [str(venv_bin / "python"), "-c", code],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=BOUND, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1].split(" ", 1)[1:]


def test_status_through_hearth_url_prints_what_the_home_socket_prints(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    """``HEARTH_URL=unix://`` (and ``http://`` with a token) asks the daemon as the home's socket
    does, with the standard library alone: the same output, --json, errors and exit statuses."""
    home, _ = site
    token = tmp_path / "token"
    token.write_text("a-token-that-is-long-enough\n")
    token.chmod(0o600)
    with (
        socket_port() as port,
        daemon(site, venv_bin, "--listen", f"127.0.0.1:{port}", "--token-file", str(token)) as served,
    ):
        served.wait_for("serving")
        made = hearth(venv_bin, site, "provision", "kappa", "--tier", "solo", "--driver", "fake")
        assert made.returncode == 0, made.stderr
        unix = cli_env(venv_bin, HEARTH_URL=f"unix://{home / 'hearth.sock'}")
        tcp = cli_env(
            venv_bin, HEARTH_URL=f"http://127.0.0.1:{port}/", HEARTH_TOKEN="a-token-that-is-long-enough"
        )
        for command in (
            ["status", "kappa"],
            ["status", "kappa", "--json"],
            ["status", "kappa", "--timeout", "20"],
            ["status", "nobody"],
            ["status", "nobody", "--json"],
        ):
            through_home = hearth(venv_bin, site, *command)
            assert through_home.returncode in (0, 2), through_home.stderr
            for env in (unix, tcp):
                named = hearth(venv_bin, site, *command, env=env)
                assert named.returncode == through_home.returncode, (command, named.stderr)
                assert named.stderr == through_home.stderr, command
                if "--json" in command:
                    assert without_times(json.loads(named.stdout)) == without_times(
                        json.loads(through_home.stdout)
                    )
                else:
                    assert named.stdout == through_home.stdout, command
        wrong = cli_env(venv_bin, HEARTH_URL=f"http://127.0.0.1:{port}", HEARTH_TOKEN="not-the-token-at-all")
        refused = hearth(venv_bin, site, "status", "kappa", "--json", env=wrong)
        assert refused.returncode == 1 and refused.stderr.startswith("hearth: unauthorized:"), refused.stderr
        assert json.loads(refused.stdout)["error"]["kind"] == "unauthorized"
        assert loaded_by_status(venv_bin, "kappa", cli_env(venv_bin), "--home", str(home)) == ["[]"]
        assert loaded_by_status(venv_bin, "kappa", unix) == ["[]"]
        assert loaded_by_status(venv_bin, "kappa", tcp) == ["[]"]
        assert served.stop() == 0
    gone = hearth(venv_bin, site, "status", "kappa", env=unix)
    assert gone.returncode == 1
    assert gone.stderr.startswith(f"hearth: daemon_unavailable: no hearth daemon at unix://{home}"), (
        gone.stderr
    )


def test_the_status_fast_path_reads_hearth_url_as_remote_host_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's reading of ``HEARTH_URL`` (standard library) names the daemon ``RemoteHost``
    does, refuses what it refuses in its words, and bounds a status as it does."""
    from hearth import _address
    from hearth._cli import _route

    for name in [name for name in os.environ if name.lower() in ("http_proxy", "all_proxy")]:
        monkeypatch.delenv(name)
    args = build_parser().parse_args(["status", "x"])
    for value in ("unix:///run/h.sock", "unix:///a//b/", "http://127.0.0.1:8080/", "http://[::1]:9/p/"):
        monkeypatch.setenv("HEARTH_URL", value)
        address = _route.status_address(args)
        assert address is not None and address.shown == RemoteHost().address, value
    for value in ("unix://relative.sock", "ftp://host", "hearth.sock"):
        monkeypatch.setenv("HEARTH_URL", value)
        with pytest.raises(InvalidInput) as theirs:
            RemoteHost()
        with pytest.raises(InvalidInput) as ours:
            _route.status_address(args)
        assert ours.value.message == theirs.value.message
    monkeypatch.setenv("HEARTH_URL", "https://127.0.0.1:8443")
    assert _route.status_address(args) is None  # TLS: RemoteHost, whose certificate check is httpx's
    monkeypatch.setenv("HEARTH_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert _route.status_address(args) is None  # httpx would use the proxy: RemoteHost it is
    remote_bound = RemoteHost().timeout + _address.DAEMON_DEFAULTS
    assert remote_bound == _route.REMOTE_STATUS_BOUND
    assert _route.ANSWER_MARGIN == _address.MARGIN


def test_a_daemon_serving_another_project_is_not_used(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    home, _ = site
    other = tmp_path / "other"
    (other / ".hearth").mkdir(parents=True)
    with daemon(site, venv_bin) as served:
        served.wait_for("serving")
        before = len(requests_seen(served.lines))
        run = subprocess.run(
            [str(venv_bin / "hearth"), "status", "phi", "--home", str(home), "--project", str(other), "-v"],
            env=cli_env(venv_bin), capture_output=True, text=True, timeout=BOUND, check=False,
        )  # fmt: skip
        assert run.returncode == 2 and "hearth: not_found" in run.stderr
        assert "serves the project" in run.stderr and "running the host here" in run.stderr
        assert len(requests_seen(served.lines)) == before
        assert served.stop() == 0


async def test_clients_racing_one_slug_through_the_daemon_get_one_operation(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    home, _ = site
    with daemon(site, venv_bin) as served:
        served.wait_for("serving")
        body = {"slug": "chi", "tier": "solo", "driver": "fake"}
        async with over(home / "hearth.sock") as one, over(home / "hearth.sock") as two:
            answers = await asyncio.gather(
                *(client.post("/v1/workspaces", json=body) for client in (one, two, one, two, one, two))
            )
            assert {a.status_code for a in answers} <= {200, 202}, [a.text for a in answers]
            assert len({a.json()["id"] for a in answers}) == 1
            ident = answers[0].json()["id"]
            done = (await one.get(f"/v1/operations/{ident}/wait", params={"timeout": 20})).json()
            assert done["state"] == "succeeded", done
            assert [op["id"] for op in (await two.get("/v1/operations", params={"slug": "chi"})).json()] == [
                ident
            ]
            # a cancel through DELETE rolls the real adapter's work back
            slow = await one.post("/v1/workspaces", json={"slug": "psi", "tier": "glacial", "driver": "fake"})
            async with one.stream("GET", "/v1/events", params={"slug": "psi"}) as events:
                async for line in events.aiter_lines():
                    if line and json.loads(line)["kind"] == "progress":
                        break
            cancelled = await two.delete(f"/v1/operations/{slow.json()['id']}", params={"reason": "test"})
            assert cancelled.status_code == 202
            ended = (await one.get(f"/v1/operations/{slow.json()['id']}/wait", params={"timeout": 20})).json()
            assert ended["state"] == "cancelled" and ended["error"]["rolled_back"] is True, ended
            assert (await one.get("/v1/workspaces/psi")).status_code == 404
        assert served.stop() == 0


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=BOUND,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


async def test_tls_and_the_token_through_a_remote_host(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    token = tmp_path / "token"
    token.write_text("a-token-that-is-long-enough\n")
    token.chmod(0o600)
    trust = ssl.create_default_context(cafile=str(cert))
    with socket_port() as port:
        tls = ["--listen", f"127.0.0.1:{port}", "--token-file", str(token)]
        tls += ["--tls-cert", str(cert), "--tls-key", str(key)]
        with daemon(site, venv_bin, *tls) as served:
            served.wait_for("serving")
            assert f"https://127.0.0.1:{port}" in served.wait_for("serving")
            url = f"https://127.0.0.1:{port}"
            async with RemoteHost(url=url, token="a-token-that-is-long-enough", verify=trust) as remote:
                ref = await remote.provision("upsilon", tier="solo", driver="fake")
                assert ref.workspace_slug == "upsilon"
                assert (await remote.status("upsilon")).state == "ready"
            async with RemoteHost(url=url, token="not-the-token-at-all", verify=trust) as wrong:
                with pytest.raises(Unauthorized):
                    await wrong.deployment("upsilon")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=BOUND) as plain:
                with pytest.raises(httpx.HTTPError):  # no plain HTTP on a TLS listener
                    await plain.get("/v1/health")
            assert served.stop() == 0
    with daemon(site, venv_bin, "--tls-cert", str(cert), "--tls-key", str(key)) as refused:
        assert refused.process.wait(timeout=BOUND) == 2
        refused.wait_for("are for --listen")


async def test_the_daemon_heals_on_its_own_reloads_on_sighup_and_logs_json(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    home, project = site
    (project / ".hearth" / "hearth.toml").write_text(HEALING)
    with daemon(site, venv_bin, "--log-json") as served:
        served.wait_for("serving")
        async with RemoteHost(socket=home / "hearth.sock") as remote:
            await remote.provision("rho", tier="solo", driver="fake")
            async with Host(project_dir=project, home=home) as elsewhere:  # a host that then "dies"
                record = await elsewhere.deployment("rho")
                await left_by_a_dead_host(
                    elsewhere, record.model_copy(update={"state": "provisioning", "ref": None}), "provision"
                )
            # nobody asks: the daemon's own reconcile (every 0.3 s here) settles it
            served.wait_for("reconcile: rho: provisioning -> ready")
            assert (await remote.deployment("rho")).state == "ready"
            settings = project / ".hearth" / "hearth.toml"
            settings.write_text(HEALING + "[tiers.fresh]\nresource_caps = { cpu = 3 }\n")
            served.send(signal.SIGHUP)
            served.wait_for("SIGHUP: settings re-read")
            assert "fresh" in [tier.name for tier in await remote.tiers()]
            settings.write_text("[tiers\n")
            served.send(signal.SIGHUP)
            served.wait_for("SIGHUP: the settings are invalid")
            with pytest.raises(InvalidInput, match="not valid TOML"):  # as the CLI run alone says
                await remote.status("rho")
            assert (await remote.health())["status"] == "ok"
        assert served.stop() == 0
    entries = [json.loads(line) for line in served.lines if line != "<eof>"]
    assert entries and all({"at", "level", "logger", "message"} <= set(entry) for entry in entries)
    access = [entry for entry in entries if entry["logger"] == "hearth.access"]
    fields = {"method", "path", "status", "duration_ms", "actor", "operation"}
    assert access and all(fields <= set(entry) for entry in access)
    assert not any(entry["logger"] == "uvicorn.access" for entry in entries)  # one line per request, ours


def children(pid: int) -> set[int]:
    """The processes ``pid`` started (from /proc), and theirs."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found |= {int(child), *children(int(child))}
    return found


def watch_exits(pids: set[int]) -> dict[int, int]:
    """A pidfd for each process (Linux): it turns readable when the process ends."""
    fds = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds[pid] = os.pidfd_open(pid)
    return fds


def all_ended(fds: dict[int, int], bound: float) -> bool:
    try:
        deadline = time.monotonic() + bound
        for fd in fds.values():
            readable, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not readable:
                return False
        return True
    finally:
        for fd in fds.values():
            os.close(fd)


async def test_sigterm_mid_provision_leaves_nothing_running(site: tuple[Path, Path], venv_bin: Path) -> None:
    home, _ = site
    with daemon(site, venv_bin) as served:
        served.wait_for("serving")
        async with over(home / "hearth.sock") as client:
            started = await client.post(
                "/v1/workspaces", json={"slug": "eta", "tier": "glacial", "driver": "fake"}
            )
            async with client.stream("GET", "/v1/events", params={"slug": "eta"}) as events:
                async for line in events.aiter_lines():
                    if line and json.loads(line)["kind"] == "progress":
                        break
        adapters = children(served.process.pid)
        assert adapters, "the daemon runs the fake adapter"
        exits = watch_exits(adapters)
        assert served.stop() == 0
    assert all_ended(exits, BOUND), f"still running after the daemon stopped: {sorted(exits)}"
    with daemon(site, venv_bin) as again:
        again.wait_for("serving")
        async with over(home / "hearth.sock") as client:
            op = (await client.get(f"/v1/operations/{started.json()['id']}")).json()
            assert op["state"] == "interrupted", op
        assert again.stop() == 0


def test_the_systemd_unit_runs_options_the_cli_has() -> None:
    unit = (Path(__file__).resolve().parent.parent / "docs" / "deploy" / "hearth.service").read_text()
    [command] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(command)
    assert Path(argv[0]).name == "hearth"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.socket_group == "hearth" and args.log_json


def test_socket_group_shares_the_socket_with_a_group(site: tuple[Path, Path], venv_bin: Path) -> None:
    home, _ = site
    group = grp.getgrgid(os.getgid()).gr_name
    with daemon(site, venv_bin, "--socket-group", group) as served:
        served.wait_for("serving")
        info = (home / "hearth.sock").stat()
        assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getgid()
        assert served.stop() == 0
    with daemon(site, venv_bin, "--socket-group", "no-such-group-here") as refused:
        assert refused.process.wait(timeout=BOUND) == 1
        refused.wait_for("--socket-group 'no-such-group-here': no such group")


def test_a_sigterm_during_startup_still_stops_the_daemon(site: tuple[Path, Path], venv_bin: Path) -> None:
    """Before Python sets its handlers the default action ends it (-15); after, at any moment
    of the start, it stops cleanly (0) instead of being swallowed."""
    with daemon(site, venv_bin) as early:
        early.send(signal.SIGTERM)
        assert early.process.wait(timeout=BOUND) in (0, -signal.SIGTERM)
    with daemon(site, venv_bin) as starting:
        starting.wait_for("Started server process")  # uvicorn has not said it listens yet
        starting.send(signal.SIGTERM)
        assert starting.process.wait(timeout=BOUND) == 0
    assert not (site[0] / "hearth.sock").exists()


def test_a_daemon_never_takes_over_a_socket_another_one_serves(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    home, project = site
    with daemon(site, venv_bin) as first:
        first.wait_for("serving")
        with (
            short_dir() as other,
            daemon((other, project), venv_bin, "--socket", str(home / "hearth.sock")) as second,
        ):
            assert second.process.wait(timeout=BOUND) == 1
            second.wait_for(f"already serves the socket {home / 'hearth.sock'}")
        assert hearth(venv_bin, site, "ls").returncode == 0
        assert first.stop() == 0
    with daemon(site, venv_bin, "--socket", str(tmp_path / "no" / "such" / "dir.sock")) as nowhere:
        assert nowhere.process.wait(timeout=BOUND) == 1
        nowhere.wait_for("hearth: serve_error: cannot lock")


def test_a_certificate_that_cannot_be_used_is_refused_at_start(
    site: tuple[Path, Path], venv_bin: Path, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    key.chmod(0o600)
    token = tmp_path / "token"
    token.write_text("a-token-that-is-long-enough\n")
    token.chmod(0o600)
    with socket_port() as port:
        argv = ["--listen", f"127.0.0.1:{port}", "--token-file", str(token)]
        with daemon(site, venv_bin, *argv, "--tls-cert", str(cert), "--tls-key", str(key)) as refused:
            assert refused.process.wait(timeout=BOUND) == 1
            refused.wait_for("cannot be used")


def test_a_daemon_that_stops_answering_is_given_up_on_within_the_bound(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    with daemon(site, venv_bin) as served:
        served.wait_for("serving")
        assert hearth(venv_bin, site, "provision", "nu", "--tier", "solo", "--driver", "fake").returncode == 0
        served.send(signal.SIGSTOP)
        try:
            stuck = hearth(venv_bin, site, "status", "nu", "--timeout", "1")
            assert stuck.returncode == 1, stuck.stderr
            assert stuck.stderr.startswith("hearth: timeout: the hearth daemon at unix://"), stuck.stderr
            assert "did not answer" in stuck.stderr
        finally:
            served.send(signal.SIGCONT)
        assert served.stop() == 0


def test_a_restarted_daemon_settles_what_a_killed_one_left(site: tuple[Path, Path], venv_bin: Path) -> None:
    home, _ = site
    with daemon(site, venv_bin) as killed:
        killed.wait_for("serving")
        made = subprocess.Popen(
            [str(venv_bin / "hearth"), "provision", "xi", "--tier", "glacial", "--driver", "fake",
             "--home", str(home), "--project", str(site[1])],
            env=cli_env(venv_bin), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            killed.wait_for('"POST /v1/workspaces HTTP/1.1" 202')
            assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
            with daemon(site, venv_bin) as again:
                again.wait_for("serving")
                # the CLI waited through the restart (issue 20), and says how the work ended
                _, err = made.communicate(timeout=BOUND)
                assert made.returncode == 1 and "interrupted" in err, err
                settled(site, venv_bin, again)
        finally:
            if made.poll() is None:
                made.kill()
                made.communicate(timeout=BOUND)


async def test_a_daemon_with_periodic_reconcile_off_still_settles_at_start(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    """``reconcile_interval = 0`` turns off the periodic rounds, not the one at start (issue 21,
    3): what a killed daemon left is settled before anyone reads the slug."""
    home, project = site
    (project / ".hearth" / "hearth.toml").write_text(SETTINGS + "[serve]\nreconcile_interval = 0\n")
    with daemon(site, venv_bin) as killed:
        killed.wait_for("serving")
        await _started_until(home, "xi", "glacial", lambda event: event.get("state") == "running")
        assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    with daemon(site, venv_bin) as again:
        again.wait_for("serving")
        again.wait_for("reconcile: xi: provisioning -> ")  # nobody read the slug
        assert again.stop() == 0


async def test_a_killed_daemon_s_operation_ends_with_the_record_its_restart_settled(
    site: tuple[Path, Path], venv_bin: Path
) -> None:
    """kill -9 mid-provision, then a restart: the operation's stream ends with its final event,
    which carries the record the restart's reconcile settled, after the ``workspace`` event
    with that record; nothing of the operation follows (issue 21, 2)."""
    home, project = site
    with daemon(site, venv_bin) as killed:
        killed.wait_for("serving")
        ident = await _started_until(home, "xi", "glacial", lambda event: event.get("state") == "running")
        assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    with daemon(site, venv_bin) as again:
        again.wait_for("serving")
        seen: list[dict[str, Any]] = []
        async with over(home / "hearth.sock") as client, asyncio.timeout(BOUND):
            async with client.stream("GET", "/v1/events", params={"slug": "xi", "after": 0}) as events:
                async for line in events.aiter_lines():
                    event = json.loads(line) if line else {}
                    if event.get("operation") == ident:
                        seen.append(event)
                    if event.get("operation") == ident and event["kind"] == "state" and event["state"] in (
                        "succeeded", "failed", "cancelled", "interrupted"
                    ):  # fmt: skip
                        break
            answer = await client.get("/v1/workspaces/xi")
        record = answer.json() if answer.status_code == 200 else None
        *_, changed, final = seen
        assert (final["state"], final["record_state"]) == ("interrupted", record and record["state"]), final
        assert final["record_state"] != "provisioning"  # as the record is: settled
        assert (changed["kind"], changed["record"]) == ("workspace", record), changed
        assert {event["generation"] for event in seen} == {1}
        async with Host(project_dir=project, home=home) as elsewhere:  # the store, as it is
            mine = [e for e in await elsewhere.store.events(slug="xi", limit=10_000) if e.operation == ident]
            assert mine[-1].seq == final["seq"]  # nothing of it after its final event
        assert again.stop() == 0


def settled(site: tuple[Path, Path], venv_bin: Path, again: Daemon) -> None:
    """The killed daemon's operation, as the restarted one settles it on an access."""
    record = hearth(venv_bin, site, "ls", "--json")  # the store as it is, healed or not
    listed = {ref["workspace_slug"]: ref["last_status"] for ref in json.loads(record.stdout)}
    looked = hearth(venv_bin, site, "logs", "xi", "--json")  # an access: settles the slug
    [op] = json.loads(looked.stdout)
    assert op["state"] == "interrupted", op
    after = {
        ref["workspace_slug"]: ref["last_status"]
        for ref in json.loads(hearth(venv_bin, site, "ls", "--json").stdout)
    }
    assert after.get("xi") in (None, "failed"), (listed, after)
    assert again.stop() == 0


async def test_a_second_ctrl_c_stops_waiting_for_the_rollback(venv_bin: Path, tmp_path: Path) -> None:
    """The adapter never answers the cancel; the cancel grace is a minute; the second Ctrl-C
    ends the wait at once (well within the bound here) and the record says it is not confirmed."""
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(
        '[tiers.hang.driver_flags.fake]\nhang_at = "provision"\n[timeouts]\ncancel_grace = 60\n'
    )
    where = ["--home", str(tmp_path / "home"), "--project", str(project)]
    cli = await asyncio.create_subprocess_exec(
        str(venv_bin / "hearth"), "provision", "omicron", "--tier", "hang", "--driver", "fake",
        "--local", *where,
        env=cli_env(venv_bin), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        async with Host(project_dir=project, home=tmp_path / "home") as looking, asyncio.timeout(BOUND):
            async for event in looking.watch(slug="omicron"):
                if event.kind == "state" and event.state == "running":
                    break  # the request goes to the adapter now (and hangs there)
        cli.send_signal(signal.SIGINT)
        await asyncio.sleep(0.5)
        cli.send_signal(signal.SIGINT)
        _, raw = await asyncio.wait_for(cli.communicate(), 20)
    finally:
        if cli.returncode is None:
            cli.kill()
            await cli.communicate()
    assert cli.returncode == 130
    assert "its rollback is not confirmed" in raw.decode(), raw
    listed = hearth(venv_bin, (tmp_path / "home", project), "ls", "--json", "--local")
    [ref] = json.loads(listed.stdout)
    assert ref["last_status"] == "failed"


def test_the_status_fast_path_bounds_by_the_settings_defaults(tmp_path: Path) -> None:
    """``hearth status`` through the daemon reads the bounds without the settings' models: its
    copy of the defaults stays the models' own, and a project's values count."""
    from hearth._cli._route import status_default as _status_default
    from hearth._settings import Timeouts

    args = build_parser().parse_args(["status", "x", "--project", str(tmp_path)])
    assert _status_default(args) == Timeouts().status + Timeouts().handshake
    (tmp_path / ".hearth").mkdir()
    (tmp_path / ".hearth" / "hearth.toml").write_text("[timeouts]\nstatus = 7\n")
    assert _status_default(args) == 7 + Timeouts().handshake


#: A tier whose work takes 2 s, and a daemon that lets work in flight finish when it stops.
STEADY = """
[tiers.steady.driver_flags.fake]
delay = 2
[timeouts]
cancel_grace = 5
drain_grace = 5
"""


def _cli_provision(site: tuple[Path, Path], venv_bin: Path, slug: str) -> subprocess.Popen[str]:
    home, project = site
    return subprocess.Popen(
        [str(venv_bin / "hearth"), "provision", slug, "--tier", "steady", "--driver", "fake",
         "--home", str(home), "--project", str(project)],
        env=cli_env(venv_bin), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_the_cli_waits_through_a_daemon_restart(site: tuple[Path, Path], venv_bin: Path) -> None:
    """Issue 20: the daemon stops (SIGTERM: it finishes the work) and starts again; the CLI
    rides it out and prints the outcome (it exited 1 at the SIGTERM). Since issue 21 the daemon
    answers while it drains: the CLI waiting on the work in flight gets its outcome then, and a
    CLI that starts work meanwhile is refused (503 ``unavailable``), asks again after the
    ``Retry-After``, through the outage, and runs it on the new daemon."""
    (site[1] / ".hearth" / "hearth.toml").write_text(STEADY)
    made = later = None
    with daemon(site, venv_bin) as first:
        first.wait_for("serving")
        try:
            made = _cli_provision(site, venv_bin, "rho")
            first.wait_for('"POST /v1/workspaces HTTP/1.1" 202')
            first.send(signal.SIGTERM)
            first.wait_for("closing the host (drain grace 5")
            later = _cli_provision(site, venv_bin, "sigma")
            first.wait_for('"POST /v1/workspaces HTTP/1.1" 503')
            out, err = made.communicate(timeout=BOUND)  # the work in flight ends in the drain
            assert made.returncode == 0, err
            assert out.startswith("rho: ready (tier steady, driver fake)"), out
            assert first.process.wait(timeout=BOUND) == 0  # once that work is done
            first.close()
            assert later.poll() is None  # still asking: no daemon now
            with daemon(site, venv_bin) as again:
                again.wait_for("serving")
                out, err = later.communicate(timeout=BOUND)
                assert later.returncode == 0, err
                assert out.startswith("sigma: ready (tier steady, driver fake)"), out
                assert again.stop() == 0
        finally:
            for cli in (made, later):
                if cli is not None and cli.poll() is None:
                    cli.kill()
                    cli.communicate(timeout=BOUND)


def test_timeout_bounds_every_call_through_a_frozen_daemon(site: tuple[Path, Path], venv_bin: Path) -> None:
    """Issue 20: ``--timeout 2`` through a daemon frozen with SIGSTOP returns within 2 s and
    the margin (5 s), kind ``timeout``, naming the path with ``/v1`` (it took the default 30 s)."""
    with daemon(site, venv_bin) as served:
        served.wait_for("serving")
        sock = site[0] / "hearth.sock"
        served.send(signal.SIGSTOP)

        def timed(
            command: list[str], env: dict[str, str] | None
        ) -> tuple[subprocess.CompletedProcess[str], float]:
            began = time.monotonic()
            stuck = hearth(venv_bin, site, *command, env=env)
            return stuck, time.monotonic() - began

        try:
            calls = [
                (command, env)
                for env in (None, cli_env(venv_bin, HEARTH_URL=f"unix://{sock}"))
                for command in (
                    ["status", "pi", "--timeout", "2"],
                    ["provision", "pi", "--tier", "solo", "--driver", "fake", "--timeout", "2"],
                )
            ]
            # each waits out its bound: side by side, not one after the other
            with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
                ended = list(pool.map(lambda call: timed(*call), calls))
            for (command, _), (stuck, took) in zip(calls, ended, strict=True):
                assert stuck.returncode == 1, stuck.stderr
                assert stuck.stderr.startswith("hearth: timeout: the hearth daemon at unix://"), stuck.stderr
                assert " /v1/" in stuck.stderr, stuck.stderr
                assert took < 2 + 5 + 3, (command, took)
        finally:
            served.send(signal.SIGCONT)
        assert served.stop() == 0


def test_timeout_bounds_the_wait_on_a_daemon_frozen_mid_verb(site: tuple[Path, Path], venv_bin: Path) -> None:
    """Issue 20: the daemon freezes (SIGSTOP) while ``provision --timeout 2`` waits for the
    outcome: the CLI gives up within twice 2 s plus the margin, kind ``timeout`` (it waited the
    daemon's 30 s step plus the bound)."""
    home, project = site
    with daemon(site, venv_bin) as served:
        served.wait_for("serving")
        began = time.monotonic()
        made = subprocess.Popen(
            [str(venv_bin / "hearth"), "provision", "sigma", "--tier", "glacial", "--driver", "fake",
             "--timeout", "2", "-v", "--home", str(home), "--project", str(project)],
            env=cli_env(venv_bin), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert made.stderr is not None
            for line in made.stderr:  # -v: httpx logs each answer; the CLI ends by its bound
                if "HTTP Request: POST" in line:
                    break  # started: the CLI now waits for the outcome
            served.send(signal.SIGSTOP)
            try:
                _, err = made.communicate(timeout=BOUND * 2)
                err = err.splitlines()[-1] if err.strip() else err
            finally:
                served.send(signal.SIGCONT)
            took = time.monotonic() - began
            assert made.returncode == 1 and err.startswith("hearth: timeout: "), err
            assert " /v1/" in err and "hearth logs sigma" in err, err
            assert took < 2 * (2 + 5) + 3, took
        finally:
            if made.poll() is None:
                made.kill()
                made.communicate(timeout=BOUND)
        assert served.stop() == 0


async def _started_until(home: Path, slug: str, tier: str, until: Callable[[dict[str, Any]], bool]) -> int:
    """Start a provision of ``slug`` through the home's daemon; its id, once one of the slug's
    events satisfies ``until``."""
    async with over(home / "hearth.sock") as client:
        started = await client.post("/v1/workspaces", json={"slug": slug, "tier": tier, "driver": "fake"})
        async with client.stream("GET", "/v1/events", params={"slug": slug}) as events:
            async for line in events.aiter_lines():
                if line and until(json.loads(line)):
                    break
    return int(started.json()["id"])


async def _after_a_restart(site: tuple[Path, Path], venv_bin: Path, ident: int) -> dict[str, Any]:
    """Operation ``ident`` as a daemon started afresh on ``site`` reports it."""
    with daemon(site, venv_bin) as again:
        again.wait_for("serving")
        async with over(site[0] / "hearth.sock") as client:
            op = (await client.get(f"/v1/operations/{ident}")).json()
        assert again.stop() == 0
    return dict(op)


async def test_a_second_sigterm_cuts_the_daemon_s_drain_short(tmp_path: Path, venv_bin: Path) -> None:
    """The first SIGTERM starts the drain (operations in flight get ``drain_grace``, two minutes
    here); a second one cancels them at once: the daemon exits well before the grace, and the
    operation is recorded ``interrupted`` (its rollback awaited, within ``cancel_grace``)."""
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(
        "[tiers.glacial.driver_flags.fake]\ndelay = 600\n[timeouts]\ncancel_grace = 5\ndrain_grace = 120\n"
    )
    with short_dir() as home, daemon((home, project), venv_bin) as served:
        served.wait_for("serving")
        ident = await _started_until(home, "rho", "glacial", lambda event: event["kind"] == "progress")
        served.send(signal.SIGTERM)
        served.wait_for("closing the host (drain grace 120")  # the drain is under way
        began = time.monotonic()
        served.send(signal.SIGTERM)
        code = served.process.wait(timeout=BOUND)
        assert code == 0 and time.monotonic() - began < BOUND, served.lines
        served.wait_for("SIGTERM again")
        op = await _after_a_restart((home, project), venv_bin, ident)
        assert op["state"] == "interrupted", op


async def test_a_third_sigterm_stops_waiting_for_the_rollbacks(tmp_path: Path, venv_bin: Path) -> None:
    """The adapter never answers the cancel and the cancel grace is a minute: after the second
    SIGTERM cancelled the operation, a third ends the wait for its rollback at once."""
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    (project / ".hearth" / "hearth.toml").write_text(
        '[tiers.hang.driver_flags.fake]\nhang_at = "provision"\n'
        "[timeouts]\ncancel_grace = 60\ndrain_grace = 120\n"
    )
    with short_dir() as home, daemon((home, project), venv_bin) as served:
        served.wait_for("serving")
        # once running, the request goes to the adapter (and hangs there)
        ident = await _started_until(home, "tau", "hang", lambda event: event.get("state") == "running")
        served.send(signal.SIGTERM)
        served.wait_for("closing the host (drain grace 120")
        began = time.monotonic()
        served.send(signal.SIGTERM)
        served.wait_for("SIGTERM again: cancelling")
        # the third cuts the wait for the rollback short; one that lands while the cancelled
        # task has not yet begun that wait cuts an earlier step, so it is sent until the daemon
        # ends (each a few seconds apart, all well within the minute of the cancel grace)
        code = None
        while code is None and time.monotonic() - began < BOUND:
            served.send(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = served.process.wait(timeout=3)
        assert code == 0 and time.monotonic() - began < BOUND, served.lines
        served.wait_for("no longer waiting for the rollbacks")
        op = await _after_a_restart((home, project), venv_bin, ident)
        assert op["state"] == "interrupted", op
