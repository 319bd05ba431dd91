"""The three forms of the protocol agree: the prose of docs/protocol.md (its machine-readable
tables), docs/protocol.schema.json and docs/protocol.openrpc.json, on the nullability of the
``resource_caps`` members and on the errors each method may be answered with (issue 22)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from hearth_adaptersdk import codes
from hearth_adaptersdk.wire import ProvisioningProfile

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _table(name: str) -> list[list[str]]:
    """The rows (cells stripped of backticks) of the table after ``<!-- table: name -->``."""
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    marker = f"<!-- table: {name} -->"
    assert marker in text, f"docs/protocol.md has no {marker}"
    lines = text.split(marker, 1)[1].lstrip("\n").splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")])
    assert len(rows) > 2, f"the table {name} is empty"
    return rows[2:]  # without the header and its rule


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DOCS / name).read_text(encoding="utf-8"))
    return data


def _nullable(prop: dict[str, Any]) -> bool:
    options = prop.get("anyOf", [prop])
    return any(option.get("type") == "null" for option in options)


def _prose_caps() -> dict[str, bool]:
    rows = _table("resource-caps")
    caps = {}
    for member, _type, null in rows:
        assert null in ("yes", "no"), f"resource-caps: {member}: null must be yes or no"
        caps[member] = null == "yes"
    return caps


def test_resource_caps_nullability_agrees() -> None:
    prose = _prose_caps()
    assert set(prose) == {"cpu", "memory_mb", "storage_mb"}
    schema = _load("protocol.schema.json")["$defs"]["ResourceCaps"]["properties"]
    openrpc = _load("protocol.openrpc.json")["components"]["schemas"]["ResourceCaps"]["properties"]
    for member, null in prose.items():
        assert _nullable(schema[member]) is null, f"schema: resource_caps.{member}"
        assert _nullable(openrpc[member]) is null, f"openrpc: resource_caps.{member}"


def test_the_prose_allows_the_nulls_the_host_sends() -> None:
    """The host writes a tier's caps with every member, unset ones as null."""
    sent = ProvisioningProfile(tier="solo", driver="fake").model_dump(mode="json")["resource_caps"]
    prose = _prose_caps()
    for member, value in sent.items():
        if value is None:
            assert prose[member], f"the host sends resource_caps.{member}: null, the prose forbids it"


def test_the_types_section_does_not_contradict_the_table() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    line = next(x for x in text.splitlines() if x.startswith("- **ProvisioningProfile**"))
    for member, null in _prose_caps().items():
        shown = re.search(rf'"{member}": ([^,}}]+)', line)
        assert shown is not None, member
        assert ("null" in shown.group(1)) is null, f"Types: resource_caps.{member}: {shown.group(1)}"


def _prose_errors() -> dict[str, list[str]]:
    return {method: [kind.strip() for kind in kinds.split(",")] for method, kinds in _table("method-errors")}


def test_every_method_has_a_row() -> None:
    methods = {m["name"] for m in _load("protocol.openrpc.json")["methods"] if "result" in m}
    assert set(_prose_errors()) == methods == set(METHODS)


METHODS = (
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
)


@pytest.mark.parametrize("method", METHODS)
def test_each_methods_errors_agree(method: str) -> None:
    prose = _prose_errors()[method]
    known = set(codes.ERROR_KINDS.values())
    assert set(prose) <= known, f"{method}: unknown kinds {set(prose) - known}"
    assert codes.kind_of(codes.PARSE_ERROR) not in prose  # a request is never answered -32700
    entry = next(m for m in _load("protocol.openrpc.json")["methods"] if m["name"] == method)
    listed = [ref["$ref"].rsplit("/", 1)[1] for ref in entry.get("errors", [])]
    assert sorted(listed) == sorted(prose), f"{method}: OpenRPC {listed}, prose {prose}"


def test_teardown_and_initialize_lists_follow_the_rules() -> None:
    errors = _prose_errors()
    assert "invalid_transition" not in errors["teardown"]  # teardown is never refused for its state
    assert "cancelled" not in errors["initialize"]  # the host never waits for -32800 to it
    assert "not_initialized" not in errors["initialize"]
