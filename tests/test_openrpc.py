"""The OpenRPC document of the protocol: committed, in step with the models, and well formed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from hearth_adaptersdk import codes
from hearth_adaptersdk._cli import main
from hearth_adaptersdk._schema import protocol_openrpc
from hearth_adaptersdk.wire import METHODS

ROOT = Path(__file__).resolve().parent.parent
OPENRPC_FILE = ROOT / "docs" / "protocol.openrpc.json"
DOCUMENT_URI = "urn:hearth:protocol.openrpc"

#: The members OpenRPC 1.3 allows on each object (besides ``x-`` extensions where noted).
INFO_KEYS = {"title", "description", "termsOfService", "version", "contact", "license"}
METHOD_KEYS = {
    "name",
    "description",
    "summary",
    "servers",
    "tags",
    "paramStructure",
    "params",
    "result",
    "errors",
    "links",
    "examples",
    "deprecated",
    "externalDocs",
}
DESCRIPTOR_KEYS = {"name", "description", "summary", "schema", "required", "deprecated"}
ERROR_KEYS = {"code", "message", "data"}  # no extensions allowed on an error object
COMPONENT_KEYS = {
    "schemas",
    "links",
    "errors",
    "examples",
    "examplePairings",
    "contentDescriptors",
    "tags",
}
COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9.\-_]+$")

REF = {
    "workspace_slug": "alpha",
    "tier": "solo",
    "driver": "fake",
    "endpoint": "fake://alpha",
    "secrets_vault_path": None,
    "created": "2026-11-22T10:06:01.692914Z",
    "last_status": "ready",
}
PROFILE = {"tier": "solo", "driver": "fake", "resource_caps": {"cpu": 1.0}, "driver_flags": {}}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return protocol_openrpc()


def _own_keys(obj: dict[str, Any]) -> set[str]:
    return {key for key in obj if not key.startswith("x-")}


def _pointer(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref}: only local references are used"
    target: Any = document
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(target, dict) and part in target, f"{ref} does not resolve"
        target = target[part]
    return target


def _refs(value: Any) -> list[str]:
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("$ref"), str):
                found.append(item["$ref"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _registry(document: dict[str, Any]) -> Registry[Any]:
    resource: Resource[Any] = DRAFT7.create_resource(document)
    registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
    return registry


def _validate(document: dict[str, Any], schema: dict[str, Any], value: object) -> None:
    """Check ``value`` against a schema of the document, with its references resolved in it."""
    rooted = json.loads(json.dumps(schema).replace('"#/components/', f'"{DOCUMENT_URI}#/components/'))
    jsonschema.Draft7Validator(rooted, registry=_registry(document)).validate(value)


def _method(document: dict[str, Any], name: str) -> dict[str, Any]:
    [method] = [m for m in document["methods"] if m["name"] == name]
    found: dict[str, Any] = method
    return found


def _params_schema(method: dict[str, Any]) -> dict[str, Any]:
    """The by-name params of a method as one object schema."""
    return {
        "type": "object",
        "properties": {param["name"]: param["schema"] for param in method["params"]},
        "required": [param["name"] for param in method["params"] if param.get("required")],
    }


def test_the_committed_openrpc_document_matches_the_models(document: dict[str, Any]) -> None:
    committed = json.loads(OPENRPC_FILE.read_text())
    assert committed == document, (
        "docs/protocol.openrpc.json is stale: run "
        "'hearth-adaptersdk schema --openrpc --output docs/protocol.openrpc.json' and commit it"
    )


def test_the_command_writes_the_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "openrpc.json"
    assert main(["schema", "--openrpc", "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == protocol_openrpc()
    assert main(["schema", "--openrpc"]) == 0
    assert json.loads(capsys.readouterr().out) == protocol_openrpc()
    assert main(["schema"]) == 0  # without --openrpc: the JSON Schema, as before
    assert "$defs" in json.loads(capsys.readouterr().out)


def test_the_document_has_the_structure_openrpc_requires(document: dict[str, Any]) -> None:
    assert {"openrpc", "info", "methods"} <= document.keys()
    assert _own_keys(document) <= {"openrpc", "info", "methods", "components", "servers", "externalDocs"}
    assert re.fullmatch(r"1\.3\.\d+", document["openrpc"])
    info = document["info"]
    assert {"title", "version"} <= info.keys() and _own_keys(info) <= INFO_KEYS
    assert all(isinstance(info[key], str) for key in ("title", "version"))
    names = [method["name"] for method in document["methods"]]
    assert len(names) == len(set(names)), "method names must be unique"
    for method in document["methods"]:
        assert {"name", "params"} <= method.keys(), method["name"]
        assert _own_keys(method) <= METHOD_KEYS, method["name"]
        assert method["paramStructure"] == "by-name"
        params = method["params"]
        assert len({p["name"] for p in params}) == len(params)
        required = [bool(p.get("required")) for p in params]
        assert required == sorted(required, reverse=True), f"{method['name']}: optional params last"
        for descriptor in [*params, *([method["result"]] if "result" in method else [])]:
            assert {"name", "schema"} <= descriptor.keys()
            assert _own_keys(descriptor) <= DESCRIPTOR_KEYS
            jsonschema.Draft7Validator.check_schema(descriptor["schema"])
        errors = [_pointer(document, e["$ref"]) if "$ref" in e else e for e in method.get("errors", [])]
        assert len({e["code"] for e in errors}) == len(errors), f"{method['name']}: unique error codes"
    components = document["components"]
    assert set(components) <= COMPONENT_KEYS
    for group in components.values():
        assert all(COMPONENT_NAME.match(name) for name in group)
    for schema in components["schemas"].values():
        jsonschema.Draft7Validator.check_schema(schema)
    for error in components["errors"].values():
        assert {"code", "message"} <= error.keys() and set(error) <= ERROR_KEYS
        assert isinstance(error["code"], int) and isinstance(error["message"], str)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = _refs(document)
    assert refs, "the document uses references"
    for ref in refs:
        _pointer(document, ref)


def test_every_method_and_notification_of_the_protocol_is_there(document: dict[str, Any]) -> None:
    methods = {method["name"]: method for method in document["methods"]}
    assert set(METHODS) <= methods.keys()
    assert {"initialize", "provision", "status", "upgrade", "teardown", "shutdown"} <= methods.keys()
    assert {"list", "validate_profile", "plan"} <= methods.keys()
    for name in ("progress", "cancel"):
        notification = methods[name]
        assert "result" not in notification and "errors" not in notification
        assert "notification" in notification["description"] and "no result" in notification["description"]
        assert notification["x-notification"] is True
    for name in METHODS:
        assert "result" in methods[name], name
    for name in ("list", "validate_profile", "plan"):
        assert methods[name]["x-optional"] is True
    assert methods["teardown"]["result"]["schema"] == {"type": "null"}
    assert methods["list"]["result"]["schema"]["type"] == "array"


def test_every_error_code_is_listed_with_a_data_schema(document: dict[str, Any]) -> None:
    errors = document["components"]["errors"]
    assert {error["code"]: kind for kind, error in errors.items()} == codes.ERROR_KINDS
    for kind, error in errors.items():
        data_schema = _pointer(document, error["data"]["$ref"])
        _validate(document, data_schema, {"kind": kind})
        with pytest.raises(jsonschema.ValidationError):
            _validate(document, data_schema, {"kind": "something else"})
    failure = _pointer(document, errors["backend_failure"]["data"]["$ref"])
    _validate(document, failure, {"kind": "backend_failure", "rolled_back": True, "logs": ["x"]})
    with pytest.raises(jsonschema.ValidationError):
        _validate(document, failure, {"kind": "backend_failure", "rolled_back": "yes"})
    conflict = _pointer(document, errors["conflict"]["data"]["$ref"])
    _validate(document, conflict, {"kind": "conflict", "existing": REF})
    provision_errors = {e["$ref"].rsplit("/", 1)[1] for e in _method(document, "provision")["errors"]}
    assert {"conflict", "invalid_profile", "backend_failure", "cancelled"} <= provision_errors
    assert "parse_error" not in provision_errors
    assert "unsupported_version" in {
        e["$ref"].rsplit("/", 1)[1] for e in _method(document, "initialize")["errors"]
    }


def test_the_schemas_accept_protocol_messages_and_refuse_broken_ones(document: dict[str, Any]) -> None:
    provision = _method(document, "provision")
    _validate(document, _params_schema(provision), {"slug": "alpha", "profile": PROFILE})
    with pytest.raises(jsonschema.ValidationError):
        _validate(document, _params_schema(provision), {"slug": "Not A Slug", "profile": PROFILE})
    _validate(document, provision["result"]["schema"], REF)
    status = _method(document, "status")
    _validate(document, _params_schema(status), {"ref": REF})
    with pytest.raises(jsonschema.ValidationError):
        _validate(document, _params_schema(status), {"ref": {**REF, "last_status": "on fire"}})
    plan = _method(document, "plan")
    _validate(document, _params_schema(plan), {"slug": "alpha", "ref": None, "profile": PROFILE})
    _validate(
        document,
        plan["result"]["schema"],
        {"actions": [{"action": "replace", "resource": "vm", "reason": "resize", "destructive": True}]},
    )
    progress = _method(document, "progress")
    _validate(document, _params_schema(progress), {"request_id": 2, "message": "step 1", "fraction": 0.2})
    with pytest.raises(jsonschema.ValidationError):
        _validate(document, _params_schema(progress), {"request_id": 2, "message": "x", "fraction": 2})
    _validate(document, _params_schema(_method(document, "cancel")), {"id": 2})
