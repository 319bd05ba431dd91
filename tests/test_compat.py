"""A 1.1 adapter meets today's kit and host (issue 22; the kit of 1.3 skips its stop and start checks).

``compat/hearth-1.1.tar.gz`` holds the SDK and the fake adapter exactly as revision 1.1 shipped
them (``git archive f6074a2 adaptersdk/src/hearth_adaptersdk adapters/fake/src/hearth_adapter_fake``),
so that a change to the kit or the host that would fail an adapter which kept to the 1.1 rules
fails here: revision 1.2 promises that such an adapter stays valid."""

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from hearth_adaptersdk.conformance import run_conformance
from tests.conftest import install_script, trust_project_adapters
from tests.test_cli import Cli
from tests.test_conformance import DATA_DIR, FAKE_OPTIONS, STARTS, STOP_CANCELLED, STOP_START, STOPS

ARCHIVE = Path(__file__).parent / "compat" / "hearth-1.1.tar.gz"

pytestmark = pytest.mark.subprocess


@pytest.fixture
def cli(tmp_path: Path, venv_bin: Path) -> Cli:
    return Cli(tmp_path, venv_bin)


@pytest.fixture
def adapter_1_1(tmp_path: Path) -> Callable[[Path], Path]:
    """Install the 1.1 fake as ``folder/hearth-adapter-fake``, importing only the 1.1 sources."""
    root = tmp_path / "hearth-1.1"
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    paths = [str(root / "adaptersdk" / "src"), str(root / "adapters" / "fake" / "src")]

    def install(folder: Path) -> Path:
        source = (
            f"import sys\nsys.path[:0] = {paths!r}\n"
            "import hearth_adaptersdk\n"
            f"assert hearth_adaptersdk.__file__.startswith({str(root)!r}), hearth_adaptersdk.__file__\n"
            "from hearth_adapter_fake.__main__ import main\nmain()\n"
        )
        return install_script(folder, "hearth-adapter-fake", source)

    return install


async def test_a_1_1_adapter_passes_every_check_1_1_defined(
    adapter_1_1: Callable[[Path], Path], tmp_path: Path
) -> None:
    report = await run_conformance(adapter_1_1(tmp_path / "bin"), FAKE_OPTIONS)
    outcomes = {check.name: check.outcome for check in report.checks}
    assert len(outcomes) == 35, report.render()
    assert {name for name, outcome in outcomes.items() if outcome != "pass"} == {
        DATA_DIR,
        STOP_START,
        STOPS,
        STARTS,
        STOP_CANCELLED,
    }, report.render()
    # the checks of 1.3 are skipped: a 1.1 adapter announces neither stop nor start
    assert {outcomes[name] for name in (STOP_START, STOPS, STARTS, STOP_CANCELLED)} == {"skip"}
    # the one check revision 1.2 added finds what the 1.1 fake did: it journaled each read at once
    [data_dir] = [check for check in report.checks if check.name == DATA_DIR]
    assert "journal.jsonl (rewritten)" in data_dir.detail, report.render()


def test_a_1_1_adapter_serves_todays_host(cli: Cli, adapter_1_1: Callable[[Path], Path]) -> None:
    adapter_1_1(cli.project / ".hearth" / "adapters")
    trust_project_adapters(cli.project, cli.home)
    [fake, *_] = [row for row in cli.json("adapters") if row["driver"] == "fake"]
    assert fake["source"] == "project" and fake["status"] == "ok", fake
    assert cli.json("provision", "alpha", "--tier", "solo", "--driver", "fake")["last_status"] == "ready"
    assert cli.json("status", "alpha")["state"] == "ready"
    planned = cli.json("plan", "alpha", "--tier", "team")
    assert [action["action"] for action in planned["actions"]], planned
    assert cli.json("upgrade", "alpha", "--tier", "team")["tier"] == "team"
    assert cli.json("teardown", "alpha")["state"] == "tier_torn_down"
    assert cli.json("status", "alpha")["state"] == "tier_torn_down"
