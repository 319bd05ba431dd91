"""Trusting project adapters and the project's adapter lock (issue 14).

A repository's ``.hearth/adapters`` runs only once the user trusted it (its sha256 recorded in
the home); a changed file is refused until trusted again. ``.hearth/adapters.lock`` pins each
driver's adapter (sha256 and version); one that does not match is refused.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from hearth import AdapterRefused, InvalidInput, StoreError, discover, discover_all
from hearth._adapters._discovery import (
    file_sha256,
    lock_file,
    read_lock,
    trust_adapters,
    trust_file,
)
from hearth._adapters._locking import lock_adapters
from tests.conftest import install_script, trust_project_adapters
from tests.test_cli import Cli

SCRIPT = "print('never run')\n"
#: An adapter whose ``--version`` reads a file beside it: its content (and sha256) stays the
#: same while its version changes, as with a pip-installed entry point.
VERSIONED = (
    "import pathlib, sys\n"
    "if '--version' in sys.argv:\n"
    "    here = pathlib.Path(sys.argv[0]).parent\n"
    "    print('hearth-adapter-v ' + (here / 'VERSION').read_text().strip())\n"
)


def _install(folder: Path, driver: str, source: str = SCRIPT) -> Path:
    return install_script(folder, f"hearth-adapter-{driver}", source)


def _discover(driver: str, places: dict[str, Path]):  # type: ignore[no-untyped-def]
    return discover(driver, project_dir=places["project"], home=places["home"], path_env=str(places["path"]))


def _write_lock(project: Path, entries: dict[str, dict[str, object]]) -> Path:
    path = lock_file(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"lock_version": 1, "adapters": entries}))
    return path


# --- trust -------------------------------------------------------------------------------------


def test_an_untrusted_project_adapter_is_refused_and_nothing_else_runs_in_its_place(
    places: dict[str, Path],
) -> None:
    project = _install(places["project"] / ".hearth" / "adapters", "x")
    _install(places["path"], "x")  # installed: but the project chose its own, so no fallback
    with pytest.raises(AdapterRefused) as caught:
        _discover("x", places)
    message = caught.value.message
    assert f"hearth-adapter-x at {project} (project)" in message
    assert "not trusted (a project's adapters run only once you trust them)" in message
    assert "hearth adapters" not in message  # the library names no command; the CLI adds it
    [candidate, _] = discover_all(
        project_dir=places["project"], home=places["home"], path_env=str(places["path"])
    )
    assert (candidate.trust, candidate.acceptable, candidate.blocking) == ("untrusted", False, True)


def test_trusting_records_the_sha256_in_a_private_file_and_the_adapter_runs(
    places: dict[str, Path],
) -> None:
    project = _install(places["project"] / ".hearth" / "adapters", "x")
    [trusted] = trust_adapters(places["project"], places["home"])
    assert (trusted.driver, trusted.path, trusted.was) == ("x", project, "untrusted")
    record = trust_file(places["home"])
    assert record == places["home"] / "trusted-adapters.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    [entry] = json.loads(record.read_text())["adapters"].values()
    assert entry["sha256"] == trusted.sha256 and entry["driver"] == "x"
    found = _discover("x", places)
    assert (found.path, found.source) == (project, "project")
    assert trust_adapters(places["project"], places["home"])[0].was == "trusted"  # idempotent


def test_a_changed_project_adapter_is_refused_until_trusted_again(places: dict[str, Path]) -> None:
    project = _install(places["project"] / ".hearth" / "adapters", "x")
    trust_project_adapters(places["project"], places["home"])
    project.write_text(project.read_text() + "print('something else')\n")
    with pytest.raises(AdapterRefused, match="changed since you trusted it"):
        _discover("x", places)
    [again] = trust_adapters(places["project"], places["home"], ["x"])
    assert again.was == "changed"
    assert _discover("x", places).path == project


def test_trust_names_a_driver_the_project_does_not_have(places: dict[str, Path]) -> None:
    _install(places["project"] / ".hearth" / "adapters", "x")
    with pytest.raises(InvalidInput, match="no project adapter for driver 'y'"):
        trust_adapters(places["project"], places["home"], ["y"])
    assert not trust_file(places["home"]).exists()  # nothing was written
    assert trust_adapters(places["project"], places["home"], ["x"])[0].driver == "x"


def test_user_folder_and_path_adapters_need_no_trust(places: dict[str, Path]) -> None:
    user = _install(places["home"] / "adapters", "u")
    _install(places["path"], "p")
    assert _discover("u", places).path == user
    assert _discover("p", places).source == "path"
    found = discover_all(project_dir=places["project"], home=places["home"], path_env=str(places["path"]))
    assert {c.trust for c in found} == {"not_needed"}


def test_a_trust_file_others_can_write_trusts_nothing(places: dict[str, Path]) -> None:
    _install(places["project"] / ".hearth" / "adapters", "x")
    trust_project_adapters(places["project"], places["home"])
    trust_file(places["home"]).chmod(0o666)
    with pytest.raises(AdapterRefused, match="the trust file cannot be used"):
        _discover("x", places)
    with pytest.raises(StoreError, match="fix or remove it"):
        trust_adapters(places["project"], places["home"])


# --- the lock ----------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_a_lock_pins_the_sha256_and_a_different_adapter_is_refused(places: dict[str, Path]) -> None:
    on_path = _install(places["path"], "x")
    lock = _write_lock(
        places["project"],
        {"x": {"version": None, "protocol_version": 1, "sha256": file_sha256(on_path), "source": "path"}},
    )
    assert _discover("x", places).path == on_path
    [candidate] = discover_all(
        project_dir=places["project"], home=places["home"], path_env=str(places["path"])
    )
    assert candidate.lock == "locked"
    _install(places["home"] / "adapters", "x", "print('another one')\n")  # comes first
    with pytest.raises(AdapterRefused) as caught:
        _discover("x", places)
    assert f"does not match {lock}" in caught.value.message and "sha256" in caught.value.message
    _install(places["path"], "y")  # a driver the lock does not name runs as before
    assert _discover("y", places).path == places["path"] / "hearth-adapter-y"


@pytest.mark.subprocess
def test_a_lock_pins_the_version_too(places: dict[str, Path]) -> None:
    adapter = _install(places["path"], "v", VERSIONED)
    (places["path"] / "VERSION").write_text("1.0\n")
    _write_lock(
        places["project"],
        {"v": {"version": "1.0", "protocol_version": 1, "sha256": file_sha256(adapter), "source": "path"}},
    )
    assert _discover("v", places).path == adapter
    (places["path"] / "VERSION").write_text("2.0\n")  # same file, another version behind it
    with pytest.raises(AdapterRefused, match=r"it has version '2\.0', the lock has '1\.0'"):
        _discover("v", places)


def test_a_broken_lock_refuses_every_adapter(places: dict[str, Path]) -> None:
    _install(places["path"], "x")
    lock = lock_file(places["project"])
    lock.parent.mkdir(parents=True)
    lock.write_text("{not json")
    with pytest.raises(AdapterRefused, match="cannot be used"):
        _discover("x", places)
    with pytest.raises(InvalidInput):
        read_lock(places["project"])


@pytest.mark.subprocess
async def test_lock_adapters_records_version_protocol_sha256_and_source(
    places: dict[str, Path], venv_bin: Path
) -> None:
    entries = await lock_adapters(
        places["project"],
        places["home"],
        ["fake"],
        data_root=places["home"] / "data",
        path_env=str(venv_bin),
    )
    fake = entries["fake"]
    assert (fake.version, fake.protocol_version, fake.source) == ("0.1.0", 1, "path")
    assert fake.sha256 == file_sha256(venv_bin / "hearth-adapter-fake")
    written = json.loads(lock_file(places["project"]).read_text())
    assert written == {"lock_version": 1, "adapters": {"fake": fake.to_json()}}
    assert read_lock(places["project"]) == entries
    assert discover("fake", project_dir=places["project"], home=places["home"], path_env=str(venv_bin))


# --- the command line --------------------------------------------------------------------------

#: A project adapter that is the fake adapter, and leaves a mark when it runs.
WRAPPER = (
    "import os, pathlib, sys\n"
    "pathlib.Path(sys.argv[0]).with_name('ran').touch()\n"
    "os.execv({exe!r}, [{exe!r}, *sys.argv[1:]])\n"
)


@pytest.fixture
def cli(tmp_path: Path, venv_bin: Path) -> Cli:
    return Cli(tmp_path, venv_bin)


def _project_fake(cli: Cli, venv_bin: Path) -> Path:
    exe = str(venv_bin / "hearth-adapter-fake")
    return _install(cli.project / ".hearth" / "adapters", "fake", WRAPPER.format(exe=exe))


@pytest.mark.subprocess
def test_the_cli_refuses_an_untrusted_adapter_and_says_how_to_trust_it(cli: Cli, venv_bin: Path) -> None:
    wrapper = _project_fake(cli, venv_bin)
    code, line, error = cli.error("provision", "alpha", "--tier", "solo", "--driver", "fake")
    assert code == 1 and error["kind"] == "adapter_refused"
    assert "not trusted" in line and "run 'hearth adapters trust fake' after reading it" in line
    assert not (wrapper.parent / "ran").exists()  # nothing ran, not even --version
    rows = cli.json("adapters")
    project, on_path = [row for row in rows if row["driver"] == "fake"]
    assert project["status"].startswith("refused: not trusted")
    assert "run 'hearth adapters trust fake' after reading it" in project["status"]
    assert (project["trust"], project["lock"], project["version"]) == ("untrusted", "no_lock", None)
    assert project["sha256"] and len(project["sha256"]) == 64
    assert (on_path["status"], on_path["trust"], on_path["sha256"]) == ("shadowed", "not_needed", None)
    assert not (wrapper.parent / "ran").exists()

    [trusted] = cli.json("adapters", "trust")
    assert (trusted["driver"], trusted["path"], trusted["was"]) == ("fake", str(wrapper), "untrusted")
    assert "trusted fake" in cli.run("adapters", "trust", "fake").stdout  # already trusted: fine
    assert cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")["last_status"] == "ready"
    assert (wrapper.parent / "ran").exists()  # the project's own adapter served it
    project, on_path = [row for row in cli.json("adapters") if row["driver"] == "fake"]
    assert (project["status"], project["trust"], on_path["status"]) == ("ok", "trusted", "shadowed")

    wrapper.write_text(wrapper.read_text() + "# changed\n")
    _, line, _ = cli.error("status", "alpha")
    assert "changed since you trusted it" in line and "hearth adapters trust fake" in line


@pytest.mark.subprocess
def test_the_cli_writes_a_lock_and_refuses_what_does_not_match(cli: Cli) -> None:
    done = cli.json("adapters", "lock", "fake")
    lock = cli.project / ".hearth" / "adapters.lock"
    assert done["path"] == str(lock)
    assert done["adapters"]["fake"]["version"] == "0.1.0"
    assert done["adapters"]["fake"]["protocol_version"] == 1
    assert done["adapters"]["fake"]["source"] == "path"
    assert json.loads(lock.read_text())["adapters"] == done["adapters"]
    [fake] = [row for row in cli.json("adapters") if row["driver"] == "fake"]
    assert (fake["status"], fake["lock"]) == ("ok", "locked")
    assert cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")["last_status"] == "ready"

    document = json.loads(lock.read_text())
    document["adapters"]["fake"]["version"] = "9.9.9"
    lock.write_text(json.dumps(document))
    _, line, error = cli.error("status", "alpha")
    assert error["kind"] == "adapter_refused"
    assert "the lock has '9.9.9'" in line and "'hearth adapters lock' updates it" in line
    [fake] = [row for row in cli.json("adapters") if row["driver"] == "fake"]
    assert fake["lock"] == "mismatch" and "the lock has '9.9.9'" in fake["status"]
    assert cli.json("adapters", "lock", "fake")["adapters"]["fake"]["version"] == "0.1.0"
    assert cli.json("status", "alpha")["state"] == "ready"


@pytest.mark.subprocess
def test_lock_refuses_an_untrusted_project_adapter(cli: Cli, venv_bin: Path) -> None:
    _project_fake(cli, venv_bin)
    _, line, error = cli.error("adapters", "lock", "fake")
    assert error["kind"] == "adapter_refused" and "hearth adapters trust fake" in line
    assert not (cli.project / ".hearth" / "adapters.lock").exists()


def test_the_trust_record_is_keyed_by_the_adapters_path(places: dict[str, Path], tmp_path: Path) -> None:
    _install(places["project"] / ".hearth" / "adapters", "x")
    trust_project_adapters(places["project"], places["home"])
    other = tmp_path / "clone"  # the same file in another checkout is another adapter
    other.mkdir(mode=0o755)
    _install(other / ".hearth" / "adapters", "x")
    with pytest.raises(AdapterRefused, match="not trusted"):
        discover("x", project_dir=other, home=places["home"], path_env="")
