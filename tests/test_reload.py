"""Long-lived hosts: settings read again when hearth.toml changes, adapters kept warm and
restarted when their config changes; queries: JSON-ready tiers and what discovery found."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import TypeAdapter, ValidationError

import hearth._settings as settings_module
from hearth import InvalidInput, Tier
from hearth._adapters._discovery import DriverInfo, driver_infos, probe_version
from hearth._adapters._supervisor import Supervisor
from hearth._settings import BUILTIN_TIERS, Settings, SettingsSource, load_settings
from hearth_adaptersdk import Driver, MemoryConnection, ResourceCaps
from tests.conftest import install_script

#: An mtime far from now (2020), so the file's identity is trusted at once (see ``RACY_NS``);
#: each edit sets a distinct one, so no test depends on the clock's resolution.
OLD_NS = 1_600_000_000_000_000_000


def _write(project: Path, text: str, mtime_ns: int) -> Path:
    path = project / ".hearth" / "hearth.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def _gpu(cpu: int) -> str:
    return f"[tiers.gpu]\nresource_caps = {{ cpu = {cpu} }}\n"


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    """Every time a SettingsSource reads the file (calls load_settings)."""
    seen: list[Path | None] = []

    def counting(project_dir: str | Path | None) -> Settings:
        seen.append(None if project_dir is None else Path(project_dir))
        return load_settings(project_dir)

    monkeypatch.setattr(settings_module, "load_settings", counting)
    return seen


# --- SettingsSource ----------------------------------------------------------------------------
def test_a_settings_source_picks_up_an_edited_tier(tmp_path: Path, loads: list[Path | None]) -> None:
    _write(tmp_path, _gpu(2), OLD_NS)
    source = SettingsSource(tmp_path)
    first = source.current()
    assert first.tier("gpu").resource_caps.cpu == 2 and source.generation == 1
    assert source.current() is first and len(loads) == 1  # unchanged: one stat, no read
    _write(tmp_path, _gpu(4), OLD_NS + 1_000)  # same size: only the mtime tells
    assert source.current().tier("gpu").resource_caps.cpu == 4
    assert source.generation == 2 and len(loads) == 2


def test_an_invalid_edit_raises_on_every_call_until_it_is_fixed(tmp_path: Path) -> None:
    _write(tmp_path, _gpu(2), OLD_NS)
    source = SettingsSource(tmp_path)
    assert source.current().tier("gpu").resource_caps.cpu == 2
    path = _write(tmp_path, _gpu(2) + "colour = 'red'\n", OLD_NS + 1_000)
    with pytest.raises(InvalidInput) as startup:
        load_settings(tmp_path)  # what a host starting now would say
    for _ in range(2):  # never the stale settings
        with pytest.raises(InvalidInput) as caught:
            source.current()
        assert str(caught.value) == str(startup.value)
        assert "the project's hearth.toml" in str(caught.value) and "colour" in str(caught.value)
        assert str(path) not in str(caught.value)  # no path of the host's in an API's error
    _write(tmp_path, _gpu(8), OLD_NS + 2_000)
    assert source.current().tier("gpu").resource_caps.cpu == 8
    assert source.generation == 2


def test_removing_the_file_falls_back_to_the_builtins_and_creating_it_counts(tmp_path: Path) -> None:
    path = _write(tmp_path, _gpu(2), OLD_NS)
    source = SettingsSource(tmp_path)
    assert "gpu" in source.current().tiers
    path.unlink()
    builtins = source.current()
    assert dict(builtins.tiers) == BUILTIN_TIERS and builtins.source is None
    _write(tmp_path, _gpu(3), OLD_NS + 1_000)
    assert source.current().tier("gpu").resource_caps.cpu == 3
    assert source.generation == 3


def test_overlays_are_laid_over_every_load(tmp_path: Path) -> None:
    _write(tmp_path, "[timeouts]\nhandshake = 5\nstatus = 7\n" + _gpu(2), OLD_NS)
    mine = Tier("gpu", ResourceCaps(cpu=16))
    source = SettingsSource(tmp_path, {"gpu": mine}, {"handshake": 2.0})
    for edit in range(2):
        settings = source.current()
        assert settings.tier("gpu") is mine and settings.timeouts.handshake == 2.0
        assert settings.timeouts.status == 7 + edit
        _write(tmp_path, "[timeouts]\nhandshake = 5\nstatus = 8\n" + _gpu(4), OLD_NS + 1_000)


@pytest.mark.parametrize(
    ("overrides", "problem"), [({"nap": 1.0}, "unknown timeout"), ({"status": 0}, "positive")]
)
def test_bad_timeout_overrides_are_invalid_input(overrides: dict[str, float], problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        SettingsSource(None, timeout_overrides=overrides)


def test_without_a_project_the_builtins_are_served(loads: list[Path | None]) -> None:
    source = SettingsSource(None)
    assert dict(source.current().tiers) == BUILTIN_TIERS
    assert source.current() is source.current() and loads == [None]


# --- Supervisor --------------------------------------------------------------------------------
class _Recorder(Driver):
    """An in-process driver that notes the config it was set up with and when it closes."""

    events: ClassVar[list[tuple[str, str, Any]]] = []

    async def setup(self, config: Any, data_dir: Path | None) -> None:
        await super().setup(config, data_dir)
        self.events.append(("setup", self.name, config))

    async def close(self) -> None:
        self.events.append(("close", self.name, self.config))


class _Alpha(_Recorder):
    name: ClassVar[str] = "alpha"


class _Beta(_Recorder):
    name: ClassVar[str] = "beta"


def _settings(**adapters: dict[str, Any]) -> Settings:
    return Settings(dict(BUILTIN_TIERS), adapters)


def _supervisor(tmp_path: Path, settings: Settings, idle_timeout: float | None) -> Supervisor:
    _Recorder.events.clear()
    return Supervisor(
        settings,
        tmp_path / "state",
        project_dir=None,
        home=None,
        handshake_timeout=10.0,
        idle_timeout=idle_timeout,
        in_process={"alpha": lambda: MemoryConnection(_Alpha()), "beta": lambda: MemoryConnection(_Beta())},
    )


async def test_without_an_idle_timeout_an_adapter_stays_warm(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, _settings(), idle_timeout=None)
    try:
        async with supervisor.use("alpha") as first:
            pass
        assert supervisor._slots["alpha"].idle_timer is None  # nothing will close it
        assert supervisor.running() == {"alpha": first}
        async with supervisor.use("alpha") as again:
            assert again is first
        assert [e[0] for e in _Recorder.events] == ["setup"]
    finally:
        await supervisor.close()
    assert _Recorder.events[-1] == ("close", "alpha", {})


async def test_with_an_idle_timeout_the_timer_is_still_set(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, _settings(), idle_timeout=3600.0)
    try:
        async with supervisor.use("alpha"):
            pass
        assert supervisor._slots["alpha"].idle_timer is not None
    finally:
        await supervisor.close()


async def test_update_settings_restarts_only_the_adapter_whose_config_changed(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, _settings(alpha={"x": 1}, beta={"y": 1}), idle_timeout=None)
    try:
        async with supervisor.use("alpha") as alpha, supervisor.use("beta") as beta:
            pass
        supervisor.update_settings(_settings(alpha={"x": 2}, beta={"y": 1}))
        assert supervisor.running() == {"beta": beta}  # alpha was idle: closed now
        await alpha.close()  # the close under way; waits for it
        async with supervisor.use("alpha") as restarted:
            assert restarted is not alpha
        assert supervisor.running() == {"alpha": restarted, "beta": beta}
        assert _Recorder.events == [
            ("setup", "alpha", {"x": 1}),
            ("setup", "beta", {"y": 1}),
            ("close", "alpha", {"x": 1}),
            ("setup", "alpha", {"x": 2}),
        ]
    finally:
        await supervisor.close()


async def test_an_adapter_in_use_is_restarted_after_its_calls_finish(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, _settings(alpha={"x": 1}), idle_timeout=None)
    try:
        async with supervisor.use("alpha") as alpha:
            supervisor.update_settings(_settings(alpha={"x": 2}))
            assert supervisor.running() == {"alpha": alpha}  # a call holds it
            async with supervisor.use("alpha") as shared:  # one process per driver meanwhile
                assert shared is alpha
        assert supervisor.running() == {}
        await alpha.close()
        async with supervisor.use("alpha") as restarted:
            assert restarted is not alpha
        assert [e for e in _Recorder.events if e[0] == "setup"] == [
            ("setup", "alpha", {"x": 1}),
            ("setup", "alpha", {"x": 2}),
        ]
    finally:
        await supervisor.close()


async def test_update_settings_with_the_same_config_keeps_adapters_running(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, _settings(alpha={"x": 1}), idle_timeout=None)
    try:
        async with supervisor.use("alpha") as alpha:
            pass
        supervisor.update_settings(_settings(alpha={"x": 1}, beta={"new": True}))
        assert supervisor.running() == {"alpha": alpha}
    finally:
        await supervisor.close()


# --- discovery ---------------------------------------------------------------------------------
VERSION_SCRIPT = "import sys\nprint('hearth-adapter-demo 1.2.3' if '--version' in sys.argv else 'no')\n"
HANGING_SCRIPT = "import time\ntime.sleep(600)\n"


@pytest.mark.subprocess
async def test_driver_infos_lists_versions_refusals_and_in_process_drivers(places: dict[str, Path]) -> None:
    unsafe = install_script(places["project"] / ".hearth" / "adapters", "hearth-adapter-demo", "")
    unsafe.chmod(0o777)
    on_path = install_script(places["path"], "hearth-adapter-demo", VERSION_SCRIPT)
    infos = await driver_infos(
        places["project"],
        places["home"],
        in_process_drivers=["mem"],
        version_probe=30.0,
        path_env=str(places["path"]),
    )
    refused, found, mem = infos
    assert (refused.path, refused.source, refused.acceptable, refused.version, refused.chosen) == (
        str(unsafe),
        "project",
        False,
        None,
        False,
    )
    assert "writable by group or others" in (refused.refusal or "")
    assert found == DriverInfo(
        driver="demo",
        path=str(on_path),
        source="path",
        version="hearth-adapter-demo 1.2.3",
        acceptable=True,
        chosen=True,
    )
    assert mem == DriverInfo(driver="mem", acceptable=True, in_process=True, chosen=True)
    document = TypeAdapter(list[DriverInfo]).dump_python(infos, mode="json")
    assert document[2] == {
        "driver": "mem",
        "path": None,
        "source": None,
        "version": None,
        "acceptable": True,
        "refusal": None,
        "in_process": True,
        "chosen": True,
    }


@pytest.mark.subprocess
async def test_an_in_process_driver_shadows_its_executables(places: dict[str, Path]) -> None:
    install_script(places["path"], "hearth-adapter-demo", VERSION_SCRIPT)
    infos = await driver_infos(
        None, places["home"], in_process_drivers={"demo"}, version_probe=30.0, path_env=str(places["path"])
    )
    assert [(i.in_process, i.chosen, i.version) for i in infos] == [
        (True, True, None),
        (False, False, "hearth-adapter-demo 1.2.3"),
    ]


@pytest.mark.subprocess
async def test_a_version_probe_that_hangs_is_stopped_within_its_bound(places: dict[str, Path]) -> None:
    hanging = install_script(places["path"], "hearth-adapter-sleepy", HANGING_SCRIPT)
    assert await probe_version(hanging, 0.3) is None  # the leak check sees its group is gone


@pytest.mark.subprocess
async def test_a_version_probe_leaves_the_loop_free_and_stops_when_cancelled(places: dict[str, Path]) -> None:
    hanging = install_script(places["path"], "hearth-adapter-sleepy", HANGING_SCRIPT)
    probe = asyncio.create_task(probe_version(hanging, 60.0))
    ticked = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, ticked.set)
    await ticked.wait()  # a blocking probe would hold the loop until its end
    assert not probe.done()
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe


# --- JSON --------------------------------------------------------------------------------------
def test_tiers_are_json_ready_and_read_back() -> None:
    tiers = TypeAdapter(Tier)
    tier = Tier(
        "gpu", ResourceCaps.model_validate({"cpu": 8, "gpus": 1}), {"docker": {"image": "x:1", "ports": [80]}}
    )
    document = tiers.dump_python(tier, mode="json")
    assert document == {
        "name": "gpu",
        "resource_caps": {"cpu": 8.0, "memory_mb": None, "storage_mb": None, "gpus": 1},
        "driver_flags": {"docker": {"image": "x:1", "ports": [80]}},
        "autostop": None,
    }
    assert tiers.validate_python(document) == tier
    assert tiers.validate_python({**document, "autostop": 3600}) == Tier(
        "gpu", tier.resource_caps, tier.driver_flags, 3600
    )
    older = {key: value for key, value in document.items() if key != "autostop"}  # a daemon before autostop
    assert tiers.validate_python(older) == tier
    assert tier.profile("docker").driver_flags == {"image": "x:1", "ports": [80]}
    with pytest.raises(ValidationError):
        tiers.validate_python({**document, "colour": "red"})
    builtin = TypeAdapter(Settings).dump_python(load_settings(None), mode="json")
    assert builtin["tiers"]["solo"]["resource_caps"]["memory_mb"] == 1024
    assert builtin["timeouts"]["handshake"] == 10.0
