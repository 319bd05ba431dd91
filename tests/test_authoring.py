"""The authoring kit: the committed schema, the scaffold, and an adapter in another language."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

from hearth_adaptersdk._scaffold import scaffold
from hearth_adaptersdk._schema import protocol_schema
from hearth_adaptersdk.conformance import KitOptions, run_conformance

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "protocol.schema.json"
NODE_ADAPTER = ROOT / "examples" / "node" / "hearth-adapter-nodeecho"


def test_the_committed_schema_matches_the_models() -> None:
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == protocol_schema(), (
        "docs/protocol.schema.json is stale: run "
        "'hearth-adaptersdk schema --output docs/protocol.schema.json' and commit it"
    )


def test_the_schema_accepts_protocol_messages_and_refuses_broken_ones() -> None:
    schema = protocol_schema()

    def check(definition: str, value: object) -> None:
        jsonschema.validate(value, {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]})

    ref = {
        "workspace_slug": "alpha",
        "tier": "solo",
        "driver": "fake",
        "endpoint": "fake://alpha",
        "secrets_vault_path": None,
        "created": "2026-01-01T00:00:00Z",
        "last_status": "ready",
    }
    check("DeploymentRef", ref)
    check("ProvisionParams", {"slug": "alpha", "profile": {"tier": "solo", "driver": "fake"}})
    check("Progress", {"request_id": 3, "message": "working", "fraction": 0.5, "level": "info"})
    with pytest.raises(jsonschema.ValidationError):
        check("DeploymentRef", {**ref, "workspace_slug": "Not A Slug"})
    with pytest.raises(jsonschema.ValidationError):
        check("DeploymentRef", {**ref, "last_status": "on fire"})
    assert schema["errors"]["-32031"] == "backend_failure"
    assert set(schema["methods"]) == {
        "initialize",
        "provision",
        "status",
        "upgrade",
        "teardown",
        "shutdown",
        "list",
        "validate_profile",
        "plan",
        "stop",
        "start",
    }
    check("DeploymentRef", {**ref, "last_status": "stopped"})  # 1.3


def test_the_scaffold_refuses_bad_names_and_busy_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a driver name"):
        scaffold("Bad_Name", tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        scaffold("fine", tmp_path / "busy")


async def test_a_scaffolded_driver_passes_the_kit_in_memory(tmp_path: Path) -> None:
    import importlib
    import sys

    scaffold("made-here", tmp_path / "pkg")
    sys.path.insert(0, str(tmp_path / "pkg" / "src"))
    try:
        module = importlib.import_module("hearth_adapter_made_here")
        report = await run_conformance(module.MadeHereDriver())
    finally:
        sys.path.remove(str(tmp_path / "pkg" / "src"))
        sys.modules.pop("hearth_adapter_made_here", None)
        sys.modules.pop("hearth_adapter_made_here.driver", None)
    assert report.passed, report.render()


@pytest.mark.subprocess
def test_a_freshly_scaffolded_adapter_installs_is_found_on_path_and_passes() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "scaffold-check"), "scaffoldtest"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "15 passed, 0 failed" in done.stdout or "passed, 0 failed" in done.stdout
    assert "kit passed in" in done.stdout
    assert shutil.which("hearth-adapter-scaffoldtest") is None  # uninstalled again


@pytest.mark.subprocess
async def test_the_node_adapter_passes_the_kit() -> None:
    if shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the Node.js example: node is not installed")
        pytest.skip("node is not installed")
    options = KitOptions(
        failing_profile={"tier": "x", "driver": "nodeecho", "driver_flags": {"fail": True}},
        refused_profile={"tier": "x", "driver": "nodeecho", "driver_flags": {"colour": 1}},
        slow_profile={"tier": "s", "driver": "nodeecho", "driver_flags": {"delay": 30}},
        slow_stop_profile={"tier": "s", "driver": "nodeecho", "driver_flags": {"stop_delay": 30}},
    )
    report = await run_conformance(NODE_ADAPTER, options)
    assert report.passed, report.render()
    assert all(check.outcome == "pass" for check in report.checks), report.render()
