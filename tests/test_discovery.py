"""Discovery: project, then user, then PATH; unsafe candidates are refused with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hearth import AdapterNotFound, AdapterRefused, InvalidInput, discover, discover_all
from tests.conftest import install_script, trust_project_adapters

SCRIPT = "print('never run')\n"


def _install(folder: Path, driver: str) -> Path:
    return install_script(folder, f"hearth-adapter-{driver}", SCRIPT)


def _discover(driver: str, places: dict[str, Path]):  # type: ignore[no-untyped-def]
    return discover(driver, project_dir=places["project"], home=places["home"], path_env=str(places["path"]))


def test_the_project_folder_wins_over_the_user_folder_and_path(places: dict[str, Path]) -> None:
    project = _install(places["project"] / ".hearth" / "adapters", "x")
    _install(places["home"] / "adapters", "x")
    _install(places["path"], "x")
    trust_project_adapters(places["project"], places["home"])
    found = _discover("x", places)
    assert (found.path, found.source, found.refused) == (project, "project", ())


def test_the_user_folder_wins_over_path(places: dict[str, Path]) -> None:
    user = _install(places["home"] / "adapters", "x")
    _install(places["path"], "x")
    assert _discover("x", places).path == user


def test_hearth_home_from_the_environment_is_the_user_folder(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    user = _install(places["home"] / "adapters", "x")
    monkeypatch.setenv("HEARTH_HOME", str(places["home"]))
    assert discover("x", path_env="").path == user


def test_a_group_writable_adapter_is_refused_and_the_next_one_chosen(places: dict[str, Path]) -> None:
    unsafe = _install(places["project"] / ".hearth" / "adapters", "x")
    unsafe.chmod(0o775)
    fallback = _install(places["path"], "x")
    found = _discover("x", places)
    assert found.path == fallback and found.source == "path"
    [refused] = found.refused
    assert refused.path == unsafe and "writable by group or others" in (refused.refusal or "")


def test_a_world_writable_folder_is_refused(places: dict[str, Path]) -> None:
    folder = places["path"] / "open"
    _install(folder, "x")
    folder.chmod(0o777)
    with pytest.raises(AdapterRefused, match=f"folder {folder} is writable"):
        _discover("x", {**places, "path": folder})


def test_a_sticky_world_writable_ancestor_is_fine(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    mine = sticky / "mine"
    mine.mkdir(mode=0o755)
    path = _install(mine, "x")
    assert discover("x", home=tmp_path / "nohome", path_env=str(mine)).path == path


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file to another user")
def test_an_adapter_owned_by_another_user_is_refused(places: dict[str, Path]) -> None:
    path = _install(places["path"], "x")
    os.chown(path, 4242, 4242)
    with pytest.raises(AdapterRefused, match="owned by uid 4242"):
        _discover("x", places)


def test_a_file_that_is_not_executable_is_refused(places: dict[str, Path]) -> None:
    path = _install(places["path"], "x")
    path.chmod(0o644)
    with pytest.raises(AdapterRefused, match="not executable"):
        _discover("x", places)


def test_no_candidate_names_where_it_looked_and_what_to_do(places: dict[str, Path]) -> None:
    with pytest.raises(AdapterNotFound) as caught:
        _discover("nothing", places)
    message = str(caught.value)
    assert "hearth-adapter-nothing" in message and str(places["home"] / "adapters") in message
    assert "pip install hearth-adapter-nothing" in message


def test_a_bad_driver_name_is_invalid_input(places: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput):
        _discover("../evil", places)


def test_discover_all_lists_every_candidate_with_its_source_and_refusal(places: dict[str, Path]) -> None:
    _install(places["project"] / ".hearth" / "adapters", "b")
    trust_project_adapters(places["project"], places["home"])
    _install(places["path"], "b").chmod(0o777)
    _install(places["path"], "a")
    (places["path"] / "not-an-adapter").write_text("")
    found = discover_all(project_dir=places["project"], home=places["home"], path_env=str(places["path"]))
    assert [(c.driver, c.source, c.acceptable) for c in found] == [
        ("a", "path", True),
        ("b", "project", True),
        ("b", "path", False),
    ]


def test_a_folder_named_twice_on_path_is_searched_once(tmp_path: Path) -> None:
    from hearth._adapters._discovery import search_path

    twice = os.pathsep.join([str(tmp_path / "bin"), "/usr/bin", str(tmp_path / "bin")])
    folders = [folder for source, folder in search_path(path_env=twice) if source == "path"]
    assert folders == [tmp_path / "bin", Path("/usr/bin")]
