"""The docker driver on a real Docker engine (scripts/test starts one; CI must have it)."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from hearth import Host
from hearth._server._app import create_app
from hearth_adapter_docker import DockerDriver
from hearth_adaptersdk import DeploymentRef, ProvisioningProfile
from hearth_adaptersdk.conformance import KitOptions, run_conformance
from hearth_adaptersdk.testing import Peer, RemoteError, open_peer

IMAGE = os.environ.get("HEARTH_TEST_IMAGE", "hearth-test/httpd:1")
#: The test image's httpd with SIGTERM ignored (inherited through exec), whatever its PID.
SIGTERM_IGNORED = ["sh", "-c", "trap '' TERM; exec httpd -f -p 8080 -h /www"]


def _profile(tier: str = "solo", **flags: Any) -> ProvisioningProfile:
    """The test image's httpd; it runs as PID 1 without a SIGTERM handler, so a stop waits out
    its ``stop_timeout`` (2 s here, not Docker's 10) before SIGKILL."""
    return ProvisioningProfile(
        tier=tier,
        driver="docker",
        resource_caps={"cpu": 1, "memory_mb": 64},
        driver_flags={"image": IMAGE, "port": 8080, "data_path": "/www", "stop_timeout": 2, **flags},
    )


async def _stop(peer: Peer, ref: DeploymentRef) -> DeploymentRef:
    reply = await peer.request("stop", {"ref": ref.model_dump(mode="json")}, timeout=60)
    return DeploymentRef.model_validate(reply.result)


async def _start(peer: Peer, ref: DeploymentRef) -> DeploymentRef:
    reply = await peer.request("start", {"ref": ref.model_dump(mode="json")}, timeout=60)
    return DeploymentRef.model_validate(reply.result)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


def _labelled(engine: docker.DockerClient, slug: str) -> list[str]:
    label = {"label": [f"hearth.workspace_slug={slug}"]}
    return (
        [c.name for c in engine.containers.list(all=True, filters=label)]
        + [n.name for n in engine.networks.list(filters=label)]
        + [v.name for v in engine.volumes.list(filters=label)]
    )


@pytest.mark.subprocess
async def test_the_conformance_kit_passes_on_the_real_engine(docker_url: str, venv_bin: Path) -> None:
    options = KitOptions(
        config={"url": docker_url},
        profile=_profile("conformance").model_dump(mode="json"),
        refused_profile=_profile(tier="huge").model_dump(mode="json") | {"resource_caps": {"cpu": 512}},
        failing_profile=_profile("broken", command=["sh", "-c", "echo boom; exit 3"]).model_dump(mode="json"),
        slow_profile=_profile("slow", command=["sh", "-c", "sleep 60"]).model_dump(mode="json"),
        # a stop slow enough to cancel: the httpd ignores SIGTERM, and SIGKILL waits 60 s
        slow_stop_profile=_profile("slowstop", command=SIGTERM_IGNORED, stop_timeout=60).model_dump(
            mode="json"
        ),
        timeout=120,
    )
    report = await run_conformance(venv_bin / "hearth-adapter-docker", options)
    assert report.passed, report.render()
    assert all(check.outcome == "pass" for check in report.checks), report.render()
    cancelled = next(check for check in report.checks if check.name.startswith("a cancelled stop"))
    assert cancelled.detail == "rolled back: ready again", report.render()  # not a race it won


async def test_http_reaches_the_endpoint_and_teardown_leaves_nothing(
    docker_url: str, engine: docker.DockerClient
) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        ref = await peer.provision("web", _profile())
        assert ref.endpoint is not None and ref.endpoint.startswith("http://127.0.0.1:")
        assert _get(ref.endpoint) == "hello from hearth\n"
        assert sorted(_labelled(engine, "web")) == ["hearth-web", "hearth-web", "hearth-web-data"]
        container = engine.containers.get("hearth-web")
        assert container.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
        assert container.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
        await peer.teardown(ref)
        assert _labelled(engine, "web") == []
        await peer.teardown(ref)  # idempotent
        assert (await peer.status(ref)).state == "absent"


async def test_upgrade_keeps_the_volume_data_and_a_failed_upgrade_keeps_the_old_one_serving(
    docker_url: str, engine: docker.DockerClient
) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        ref = await peer.provision("keep", _profile())
        engine.containers.get("hearth-keep").exec_run(["sh", "-c", "echo v1 > /www/data.txt"])
        upgraded = await peer.upgrade(ref, _profile("team"))
        assert upgraded.workspace_slug == "keep" and upgraded.tier == "team"
        assert upgraded.endpoint is not None
        assert _get(upgraded.endpoint + "/data.txt") == "v1\n"
        with pytest.raises(RemoteError) as caught:
            await peer.upgrade(upgraded, _profile("studio", command=["sh", "-c", "exit 7"]))
        assert caught.value.kind == "backend_failure"
        assert caught.value.data["rolled_back"] is True
        assert _get(upgraded.endpoint + "/data.txt") == "v1\n"  # the old container still serves
        assert [
            c.name
            for c in engine.containers.list(all=True, filters={"label": ["hearth.workspace_slug=keep"]})
        ] == ["hearth-keep"]
        assert (await peer.status(upgraded)).details["container"] == "hearth-keep"
        await peer.teardown(upgraded)
        assert _labelled(engine, "keep") == []


async def test_stop_and_start_keep_the_same_container_and_its_volume(
    docker_url: str, engine: docker.DockerClient
) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        ref = await peer.provision("nap", _profile())
        before = engine.containers.get("hearth-nap")
        before.exec_run(["sh", "-c", "echo kept > /www/data.txt && echo layer > /tmp/layer.txt"])
        stopped = await _stop(peer, ref)
        assert stopped.last_status == "stopped" and stopped.created == ref.created
        report = await peer.status(stopped)
        assert report.state == "stopped", report
        assert report.details["backend_id"] == before.id
        container = engine.containers.get("hearth-nap")
        assert container.status == "exited"
        finished = container.attrs["State"]["FinishedAt"]
        assert await _stop(peer, stopped) == stopped  # idempotent: nothing changed
        assert engine.containers.get("hearth-nap").attrs["State"]["FinishedAt"] == finished
        assert [r.last_status for r in await peer.list() if r.workspace_slug == "nap"] == ["stopped"]
        with pytest.raises(RemoteError) as refused:
            await peer.upgrade(stopped, _profile("team"))
        assert refused.value.kind == "invalid_transition" and refused.value.data["state"] == "stopped"
        started = await _start(peer, stopped)
        assert started.last_status == "ready" and started.created == ref.created
        assert started.endpoint is not None
        assert _get(started.endpoint + "/data.txt") == "kept\n"  # the volume
        after = engine.containers.get("hearth-nap")
        assert after.id == before.id
        assert after.exec_run(["cat", "/tmp/layer.txt"]).output == b"layer\n"  # the writable layer
        began = after.attrs["State"]["StartedAt"]
        assert await _start(peer, started) == started  # idempotent: not restarted
        assert engine.containers.get("hearth-nap").attrs["State"]["StartedAt"] == began
        assert (await peer.status(started)).state == "ready"
        assert [
            c.id for c in engine.containers.list(all=True, filters={"label": ["hearth.workspace_slug=nap"]})
        ] == [before.id]
        await peer.teardown(await _stop(peer, started))  # a stopped workspace is torn down
        assert _labelled(engine, "nap") == []
        assert (await peer.status(started)).state == "absent"


#: The test image's httpd, unless a file in its volume says to fail (``broken``) or to take a minute
#: (``slow``) first: a start that fails or can be cancelled, after a quick provision.
MOODY = [
    "sh",
    "-c",
    "if [ -f /www/broken ]; then echo broken on purpose; exit 3; fi; "
    "if [ -f /www/slow ]; then sleep 60; fi; exec httpd -f -p 8080 -h /www",
]


async def test_a_failed_or_cancelled_start_leaves_the_same_container_stopped(
    docker_url: str, engine: docker.DockerClient
) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        ref = await peer.provision("moody", _profile(command=MOODY))
        kept = engine.containers.get("hearth-moody").id
        engine.containers.get("hearth-moody").exec_run(["sh", "-c", ": > /www/broken"])
        stopped = await _stop(peer, ref)
        with pytest.raises(RemoteError) as caught:
            await _start(peer, stopped)
        assert caught.value.code == -32031 and caught.value.data["rolled_back"] is True
        assert "broken on purpose" in caught.value.data["logs"]
        assert (await peer.status(stopped)).state == "stopped"  # as it was, not failed
        volume = {"hearth-moody-data": {"bind": "/www", "mode": "rw"}}
        engine.containers.run(
            IMAGE, ["sh", "-c", "rm /www/broken && : > /www/slow"], volumes=volume, remove=True
        )
        waiting = asyncio.Event()
        peer.on_progress = lambda event: (
            waiting.set() if "waiting for" in event["params"]["message"] else None
        )
        sent, future = await peer.start_request("start", {"ref": stopped.model_dump(mode="json")})
        await waiting.wait()
        await peer.notify("cancel", {"id": sent["id"]})
        reply = await peer.finish(sent, future, 30)
        assert reply.error is not None and reply.error["code"] == -32800
        assert reply.error["data"]["rolled_back"] is True
        assert (await peer.status(stopped)).state == "stopped"
        assert engine.containers.get("hearth-moody").status == "exited"
        engine.containers.run(IMAGE, ["rm", "/www/slow"], volumes=volume, remove=True)
        started = await _start(peer, stopped)
        assert started.last_status == "ready" and engine.containers.get("hearth-moody").id == kept
        await peer.teardown(started)
        assert _labelled(engine, "moody") == []


async def test_a_stop_past_its_timeout_kills_and_docker_stop_or_start_by_hand_is_seen(
    docker_url: str, engine: docker.DockerClient
) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        ref = await peer.provision("stubborn", _profile(command=SIGTERM_IGNORED, stop_timeout=1))
        loop = asyncio.get_running_loop()
        began = loop.time()
        stopped = await _stop(peer, ref)
        assert 1 <= loop.time() - began < 8
        assert engine.containers.get("hearth-stubborn").attrs["State"]["ExitCode"] == 137  # SIGKILL
        engine.containers.get("hearth-stubborn").start()  # by hand: the mark is stale now
        assert (await peer.status(stopped)).state == "ready"
        engine.containers.get("hearth-stubborn").stop(timeout=1)  # by hand, without a mark
        outside = await peer.status(stopped)
        assert outside.state == "stopped" and "outside hearth" in (outside.message or ""), outside
        assert (await _start(peer, stopped)).last_status == "ready"
        await peer.teardown(ref)
        assert _labelled(engine, "stubborn") == []


async def test_a_container_that_exits_by_itself_is_failed_not_stopped(
    docker_url: str, engine: docker.DockerClient
) -> None:
    crashes = "httpd -p 8080 -h /www; while [ ! -f /www/crash ]; do sleep 0.1; done; exit 3"
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        ref = await peer.provision("crashy", _profile(command=["sh", "-c", crashes]))
        container = engine.containers.get("hearth-crashy")
        container.exec_run(["sh", "-c", ": > /www/crash"])
        assert container.wait(timeout=10)["StatusCode"] == 3
        crashed = await peer.status(ref)
        assert crashed.state == "failed" and "code 3" in (crashed.message or ""), crashed
        for verb in (_stop, _start):
            with pytest.raises(RemoteError) as refused:
                await verb(peer, ref)
            assert refused.value.kind == "invalid_transition" and refused.value.data["state"] == "failed"
        await peer.teardown(ref)
        assert _labelled(engine, "crashy") == []


async def test_stop_and_start_of_a_workspace_without_a_container_are_refused(docker_url: str) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        ref = await peer.provision("gone", _profile())
        await peer.teardown(ref)
        for verb in (_stop, _start):
            with pytest.raises(RemoteError) as refused:
                await verb(peer, ref)
            assert refused.value.code == -32021 and refused.value.data["state"] == "absent"


async def test_a_failed_provision_leaves_nothing_labelled_and_reports_the_logs(
    docker_url: str, engine: docker.DockerClient
) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        with pytest.raises(RemoteError) as caught:
            await peer.provision("bad", _profile(command=["sh", "-c", "echo no config found; exit 3"]))
        assert caught.value.code == -32031
        assert caught.value.data["rolled_back"] is True
        assert "no config found" in caught.value.data["logs"]
        assert "exited with code 3" in caught.value.message
        assert _labelled(engine, "bad") == []


async def test_cancel_while_waiting_rolls_back(docker_url: str, engine: docker.DockerClient) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        slow = _profile(command=["sh", "-c", "sleep 60"]).model_dump(mode="json")
        waiting = asyncio.Event()
        peer.on_progress = lambda event: (
            waiting.set() if "waiting for" in event["params"]["message"] else None
        )
        sent, future = await peer.start_request("provision", {"slug": "slow", "profile": slow})
        await waiting.wait()
        await peer.notify("cancel", {"id": sent["id"]})
        reply = await peer.finish(sent, future, 30)
        assert reply.error is not None and reply.error["code"] == -32800
        assert _labelled(engine, "slow") == []


async def test_what_docker_cannot_honour_is_refused_with_every_reason(docker_url: str) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        profile = ProvisioningProfile(
            tier="x",
            driver="docker",
            resource_caps={"cpu": 4096, "storage_mb": 10, "gpu": 1},
            driver_flags={"port": 99999, "colour": "red"},
        )
        with pytest.raises(RemoteError) as caught:
            await peer.provision("nope", profile)
        errors = caught.value.data["errors"]
        assert caught.value.kind == "invalid_profile"
        for expected in (
            "driver_flags.image",
            "driver_flags.port",
            "driver_flags.colour",
            "resource_caps.cpu",
            "resource_caps.storage_mb",
            "resource_caps.gpu",
        ):
            assert any(e.startswith(expected) for e in errors), (expected, errors)


async def test_an_image_that_is_missing_and_cannot_be_pulled_is_named(docker_url: str) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        with pytest.raises(RemoteError, match="hearth-test/does-not-exist:9") as caught:
            await peer.provision("ghost", _profile(image="hearth-test/does-not-exist:9"))
        assert caught.value.kind == "backend_failure"


async def test_another_tier_on_the_same_slug_is_a_conflict(docker_url: str) -> None:
    async with open_peer(DockerDriver(), config={"url": docker_url}) as peer:
        ref = await peer.provision("twice", _profile())
        assert await peer.provision("twice", _profile()) == ref
        with pytest.raises(RemoteError) as caught:
            await peer.provision("twice", _profile("team"))
        assert caught.value.kind == "conflict" and caught.value.data["existing"]["tier"] == "solo"
        await peer.teardown(ref)


async def test_an_unreachable_engine_is_backend_unavailable_with_a_hint(tmp_path: Path) -> None:
    async with open_peer(DockerDriver(), config={"url": f"unix://{tmp_path}/no.sock"}) as peer:
        with pytest.raises(RemoteError) as caught:
            await peer.provision("x", _profile())
        assert caught.value.code == -32030
        assert "cannot reach the Docker engine" in caught.value.message
        assert "[adapters.docker]" in caught.value.message


@pytest.mark.subprocess
def _docker_project(tmp_path: Path, docker_url: str) -> Path:
    """A project whose tiers solo and team run the test image on the docker driver."""
    project = tmp_path / "project"
    (project / ".hearth").mkdir(parents=True)
    flags = f'image = "{IMAGE}"\nport = 8080\ndata_path = "/www"\nstop_timeout = 2\n'
    (project / ".hearth" / "hearth.toml").write_text(
        "[tiers.solo]\nresource_caps = { cpu = 0.5, memory_mb = 64 }\n"
        f"[tiers.solo.driver_flags.docker]\n{flags}"
        "[tiers.team]\nresource_caps = { cpu = 1, memory_mb = 96 }\n"
        f"[tiers.team.driver_flags.docker]\n{flags}"
        f'[adapters.docker]\nurl = "{docker_url}"\n'
    )
    return project


def test_the_cli_runs_the_lifecycle_on_docker(
    docker_url: str, venv_bin: Path, tmp_path: Path, engine: docker.DockerClient
) -> None:
    import json
    import subprocess

    project = _docker_project(tmp_path, docker_url)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}

    def hearth(*args: str) -> Any:
        done = subprocess.run(
            [
                str(venv_bin / "hearth"),
                *args,
                "--json",
                "--project",
                str(project),
                "--home",
                str(tmp_path / "home"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    ref = hearth("provision", "cli", "--tier", "solo", "--driver", "docker")
    assert _get(ref["endpoint"]) == "hello from hearth\n"
    assert hearth("upgrade", "cli", "--tier", "team")["tier"] == "team"
    assert hearth("status", "cli")["state"] == "ready"
    engine.containers.get("hearth-cli").exec_run(["sh", "-c", "echo kept > /www/data.txt"])
    kept = engine.containers.get("hearth-cli").id
    assert hearth("stop", "cli")["last_status"] == "stopped"
    assert hearth("status", "cli")["state"] == "stopped"
    started = hearth("start", "cli")
    assert started["last_status"] == "ready"
    assert hearth("status", "cli")["state"] == "ready"
    assert engine.containers.get("hearth-cli").id == kept
    assert _get(started["endpoint"] + "/data.txt") == "kept\n"
    assert hearth("teardown", "cli")["state"] == "tier_torn_down"
    assert _labelled(engine, "cli") == []


@pytest.mark.subprocess
async def test_the_api_stops_and_starts_the_same_container(
    docker_url: str, tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Issue 25 through the API v1 (what a console does): stop, then start, the same container."""
    project = _docker_project(tmp_path, docker_url)
    async with Host(project_dir=project, home=tmp_path / "home") as host:
        transport = httpx.ASGITransport(app=create_app(host))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=180) as api:
            made = await api.post(
                "/v1/workspaces",
                json={"slug": "api", "tier": "solo", "driver": "docker"},
                params={"wait": 120},
            )
            assert made.status_code == 200 and made.json()["state"] == "succeeded", made.text
            kept = engine.containers.get("hearth-api").id
            for verb, state in (("stop", "stopped"), ("start", "ready")):
                done = await api.post(f"/v1/workspaces/api/{verb}", params={"wait": 120})
                assert done.status_code == 200 and done.json()["state"] == "succeeded", done.text
                status = await api.get("/v1/workspaces/api/status")
                assert status.json()["state"] == state, status.text
                assert engine.containers.get("hearth-api").id == kept
            gone = await api.delete("/v1/workspaces/api", params={"wait": 120})
            assert gone.status_code == 200 and gone.json()["state"] == "succeeded", gone.text
    assert _labelled(engine, "api") == []
