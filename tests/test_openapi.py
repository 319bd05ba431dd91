"""docs/openapi.json as a generator reads it (issue 21): valid, every ``$ref`` defined, each
route with its own statuses and a camelCase operationId, typed errors, enums, the bearer scheme,
and openapi-typescript generating from it as committed. ``tests/test_serve.py`` checks that the
document is what ``create_app`` describes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from hearth import _errors
from hearth._errors import CONFLICT_REASONS, RETRYABLE, AdapterError, HearthError
from hearth._lifecycle._checks import KEY_MAX
from hearth._models import OperationState
from hearth._server._app import create_app
from hearth._server._schemas import STATUS
from hearth._states import STATES
from hearth_adaptersdk import codes
from tests import helpers

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = ROOT / "docs" / "openapi.json"
#: What openapi-typescript is installed from (into a cache outside the clone).
OPENAPI_TYPESCRIPT = "openapi-typescript@7"
Json = dict[str, Any]

#: What any route answers (no token on TCP, a slow request, a fault, a full or stopping daemon).
ALWAYS = {"401", "403", "408", "500", "503"}
#: Each route's operationId, and the statuses it answers besides ``ALWAYS``.
ROUTES: dict[tuple[str, str], tuple[str, set[str]]] = {
    ("get", "/v1/workspaces"): ("listWorkspaces", {"200", "400"}),
    ("post", "/v1/workspaces"): (
        "provisionWorkspace",
        {"200", "202", "400", "409", "413", "422", "502", "504"},
    ),
    ("get", "/v1/workspaces/{slug}"): ("getWorkspace", {"200", "400", "404"}),
    ("delete", "/v1/workspaces/{slug}"): (
        "teardownWorkspace",
        {"200", "202", "400", "404", "409", "502", "504"},
    ),
    ("get", "/v1/workspaces/{slug}/status"): (
        "getWorkspaceStatus",
        {"200", "400", "404", "422", "502", "504"},
    ),
    ("get", "/v1/workspaces/{slug}/logs"): ("getWorkspaceLogs", {"200", "400", "404"}),
    ("post", "/v1/workspaces/{slug}/upgrade"): (
        "upgradeWorkspace",
        {"200", "202", "400", "404", "409", "413", "422", "502", "504"},
    ),
    ("post", "/v1/workspaces/{slug}/adopt"): (
        "adoptWorkspace",
        {"200", "400", "404", "409", "413", "422", "423", "502", "504"},
    ),
    ("post", "/v1/workspaces/{slug}/forget"): ("forgetWorkspace", {"200", "400", "404", "409", "423"}),
    ("get", "/v1/operations"): ("listOperations", {"200", "400"}),
    ("get", "/v1/operations/{ident}"): ("getOperation", {"200", "400", "404"}),
    ("get", "/v1/operations/{ident}/wait"): ("waitOperation", {"200", "202", "400", "404"}),
    ("delete", "/v1/operations/{ident}"): ("cancelOperation", {"202", "400", "404", "409"}),
    ("get", "/v1/events"): ("watchEvents", {"200", "400"}),
    ("get", "/v1/tiers"): ("listTiers", {"200", "400"}),
    ("get", "/v1/drivers"): ("listDrivers", {"200", "400"}),
    ("post", "/v1/check"): ("checkVerb", {"200", "400", "413", "502", "504"}),
    ("post", "/v1/plan"): ("planWorkspace", {"200", "400", "404", "409", "413", "422", "502", "504"}),
    ("post", "/v1/reconcile"): ("reconcileWorkspaces", {"200", "400", "404", "413"}),
    ("get", "/v1/health"): ("getHealth", {"200"}),
    ("get", "/v1/ready"): ("getReadiness", {"200"}),
    ("get", "/metrics"): ("getMetrics", {"200"}),
}
STARTS = ("provisionWorkspace", "upgradeWorkspace", "teardownWorkspace", "stopWorkspace", "startWorkspace")


@pytest.fixture(scope="module")
def document() -> Json:
    return typing.cast(Json, json.loads(OPENAPI.read_text()))


def operations(document: Json) -> Iterator[tuple[str, str, Json]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def by_id(document: Json) -> dict[str, Json]:
    return {operation["operationId"]: operation for _, _, operation in operations(document)}


def resolved(document: Json, schema: Json) -> Json:
    """``schema``, its ``$ref`` followed (within the document)."""
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    return schema


def not_null(document: Json, schema: Json) -> Json:
    """The non-null branch of an optional (``anyOf [X, null]``)."""
    branches = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    assert len(branches) == 1, schema
    return resolved(document, branches[0])


# --- valid ---------------------------------------------------------------------------------------
def test_the_document_is_valid_openapi(document: Json) -> None:
    validate(document)  # raises on the first problem


def test_every_ref_is_defined(document: Json) -> None:
    """A dangling ``$ref`` aborts openapi-typescript; orval binds the DOM's ``Event`` instead."""

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(document))
    assert "#/components/schemas/Event" in found
    for ref in sorted(found):
        assert ref.startswith("#/"), ref
        resolved(document, {"$ref": ref})  # a KeyError names what is missing


# --- named and precise ---------------------------------------------------------------------------
def test_each_route_has_its_camelcase_operation_id(document: Json) -> None:
    named = {(method, path): operation["operationId"] for method, path, operation in operations(document)}
    for route, (name, _) in ROUTES.items():
        assert named.get(route) == name, route
    ids = list(named.values())
    assert len(set(ids)) == len(ids), ids
    assert all(name.isalnum() and name[0].islower() for name in ids), ids


def test_each_route_lists_only_the_statuses_it_answers(document: Json) -> None:
    for method, path, operation in operations(document):
        statuses = set(operation["responses"])
        assert statuses >= ALWAYS, (method, path)
        if (method, path) in ROUTES:
            assert statuses == ROUTES[method, path][1] | ALWAYS, (method, path, sorted(statuses))
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):  # every error has the error body; never FastAPI's 422
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_a_start_answers_the_operation_and_its_location_on_200_and_202(document: Json) -> None:
    routes = by_id(document)
    for name in STARTS:
        for status in ("200", "202"):
            response = routes[name]["responses"][status]
            assert response["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Operation"
            }, (name, status)
            assert "Location" in response["headers"], (name, status)


def test_the_bearer_token_is_a_security_scheme_the_unix_socket_does_without(document: Json) -> None:
    assert document["components"]["securitySchemes"]["bearerAuth"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "description": "",
    }
    assert document["security"] == [{"bearerAuth": []}, {}]  # optional: the Unix socket needs none
    assert "Unix socket" in document["info"]["description"]
    for method, path, operation in operations(document):
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], (method, path)


def test_errors_in_records_are_typed(document: Json) -> None:
    schemas = document["components"]["schemas"]
    for model in ("Operation", "CheckResult", "Event"):
        error = schemas[model]["properties"]["error"]
        assert {"$ref": "#/components/schemas/ErrorDetail"} in error["anyOf"], model
    assert schemas["ErrorBody"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    for branch in _branches(document).values():
        assert {"kind", "message", "retryable"} <= set(branch["required"]), branch["title"]
        assert branch["additionalProperties"] is True, branch["title"]  # an adapter's data, newer fields


# --- typed errors (issue 21) ---------------------------------------------------------------------
def _tree_kinds() -> set[str]:
    """Every kind an error of the tree (``_errors.py``) can have: each class's own, each adapter
    error's by its code, and the protocol's other kinds (an ``AdapterError`` of another code).
    (The daemon's ``ServeError`` says it cannot start, on the command line, never in a body.)"""
    kinds: set[str] = set()
    pending: list[type[HearthError]] = [HearthError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ == _errors.__name__ and isinstance(cls.__dict__.get("kind"), str):
            kinds.add(cls.__dict__["kind"])
    by_class = {cls: code for code, cls in _errors._BY_CODE.items()}
    for cls in AdapterError.__subclasses__():
        kinds.add(codes.kind_of(by_class[cls]))
    return kinds | set(codes.ERROR_KINDS.values())


def _branches(document: Json) -> dict[str, Json]:
    """Each kind of ``ErrorDetail``'s discriminator, and the schema it maps to."""
    detail = document["components"]["schemas"]["ErrorDetail"]
    mapping = detail["discriminator"]["mapping"]
    return {kind: resolved(document, {"$ref": ref}) for kind, ref in mapping.items()}


def test_the_error_body_is_a_union_discriminated_by_kind_covering_every_kind(document: Json) -> None:
    detail = document["components"]["schemas"]["ErrorDetail"]
    assert detail["discriminator"]["propertyName"] == "kind"
    refs = {branch["$ref"] for branch in detail["oneOf"]}
    assert set(detail["discriminator"]["mapping"].values()) == refs
    branches = _branches(document)
    assert set(branches) == _tree_kinds()
    assert set(STATUS) <= set(branches) and set(RETRYABLE) <= set(branches)
    for kind, branch in branches.items():  # each branch names the kinds it is mapped from
        named = branch["properties"]["kind"]
        assert kind == named.get("const") or kind in named.get("enum", []), (kind, named)


def test_each_kind_has_its_own_fields_typed(document: Json) -> None:
    kinds = _branches(document)

    def field(kind: str, name: str) -> Json:
        prop = kinds[kind]["properties"][name]
        return not_null(document, prop) if "anyOf" in prop else resolved(document, prop)

    assert field("busy", "operation")["type"] == "integer" and "operation" in kinds["busy"]["required"]
    assert set(field("conflict", "reason")["enum"]) == set(CONFLICT_REASONS)
    assert "reason" in kinds["conflict"]["required"]
    assert field("conflict", "existing") == document["components"]["schemas"]["DeploymentRef"]
    assert field("conflict", "operation")["type"] == "integer"
    assert field("invalid_transition", "state")["type"] == "string"
    assert field("invalid_transition", "operation")["type"] == "integer"
    assert field("unsupported", "reason")["type"] == "string"
    assert field("invalid_profile", "errors") == {"items": {"type": "string"}, "type": "array"}
    assert field("backend_failure", "rolled_back")["type"] == "boolean"
    assert field("backend_failure", "logs")["items"] == {"type": "string"}
    assert field("cancelled", "rolled_back")["type"] == "boolean"
    assert field("cancelled", "changed_nothing")["type"] == "boolean"
    assert field("timeout", "rolled_back")["type"] == "boolean"
    assert field("unavailable", "retry_after")["type"] == "integer"
    assert field("adapter_crashed", "exit_code")["type"] == "integer"
    assert field("adapter_crashed", "stderr_tail")["items"] == {"type": "string"}
    problem = resolved(document, field("invalid_input", "errors")["items"])
    assert set(problem["required"]) == {"loc", "msg"}
    for kind in ("busy", "conflict", "invalid_transition"):  # no default keyword: optional is optional
        assert all("default" not in prop for prop in kinds[kind]["properties"].values()), kind


def test_503_and_423_answers_say_retry_after(document: Json) -> None:
    seen = set()
    for method, path, operation in operations(document):
        for status in ("423", "503"):
            if status in operation["responses"]:
                seen.add(status)
                headers = operation["responses"][status]["headers"]
                assert headers["Retry-After"]["schema"]["type"] == "integer", (method, path, status)
    assert seen == {"423", "503"}


def test_verbs_and_state_filters_are_enums(document: Json) -> None:
    schemas = document["components"]["schemas"]
    verbs = {"provision", "upgrade", "teardown", "adopt", "forget", "stop", "start"}
    assert set(schemas["Operation"]["properties"]["verb"]["enum"]) == verbs
    # an event no operation caused (a ``workspace`` event of reconcile's) has no verb
    assert set(not_null(document, schemas["Event"]["properties"]["verb"])["enum"]) == verbs
    checked = {"provision", "upgrade", "teardown", "stop", "start"}
    assert set(schemas["CheckResult"]["properties"]["verb"]["enum"]) == checked
    routes = by_id(document)
    for name, states in (
        ("listWorkspaces", set(STATES)),
        ("listOperations", set(typing.get_args(OperationState))),
    ):
        (state,) = [p for p in routes[name]["parameters"] if p["name"] == "state"]
        assert set(not_null(document, state["schema"])["enum"]) == states, name


def test_the_idempotency_key_says_its_length(document: Json) -> None:
    routes = by_id(document)
    for name in STARTS:
        (key,) = [p for p in routes[name]["parameters"] if p["name"] == "Idempotency-Key"]
        assert key["in"] == "header" and key["required"] is False
        schema = not_null(document, key["schema"])
        assert (schema["minLength"], schema["maxLength"]) == (1, KEY_MAX), name


def test_a_body_field_with_a_default_is_optional_and_has_no_default_keyword(document: Json) -> None:
    """openapi-typescript makes a property with ``default`` required: ``reuse`` and ``dry_run``
    say their default in words."""
    schemas = document["components"]["schemas"]
    for model, field in (("NewWorkspace", "reuse"), ("ReconcileRequest", "dry_run")):
        assert field not in schemas[model].get("required", []), model
        assert "default" not in schemas[model]["properties"][field], model
        assert "Default: false." in schemas[model]["properties"][field]["description"], model


async def test_what_the_document_narrows_still_answers_400_invalid_input(tmp_path: Path) -> None:
    """The enums and the key's length are checked before the host sees them: 400
    ``invalid_input`` with the error body, as the document says; never FastAPI's 422. And
    ``/openapi.json`` serves the document as committed, the bearer scheme included."""
    async with helpers.make_host(tmp_path, idle_timeout=None) as host:
        transport = httpx.ASGITransport(app=create_app(host))
        async with httpx.AsyncClient(transport=transport, base_url="http://hearth", timeout=30) as client:
            answers = [
                await client.get("/v1/workspaces", params={"state": "sleeping"}),
                await client.get("/v1/operations", params={"state": "sleeping"}),
                await client.post(
                    "/v1/workspaces",
                    json={"slug": "eta", "tier": "solo", "driver": "fake"},
                    headers={"Idempotency-Key": "k" * (KEY_MAX + 1)},
                ),
            ]
            for answer in answers:
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"]["kind"] == "invalid_input", answer.text
            assert (await client.get("/v1/operations")).json() == []  # the long key started nothing
            long_enough = await client.post(
                "/v1/workspaces",
                json={"slug": "eta", "tier": "solo", "driver": "fake"},
                headers={"Idempotency-Key": "k" * KEY_MAX},
            )
            assert long_enough.status_code in (200, 202), long_enough.text
            await client.delete(f"/v1/operations/{long_enough.json()['id']}")
            served = (await client.get("/openapi.json")).json()
            assert served == json.loads(OPENAPI.read_text())  # the scheme and all, as committed


# --- generatable ---------------------------------------------------------------------------------
def _node_tools_or_skip() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must generate TypeScript from docs/openapi.json: {reason}")
        pytest.skip(reason)


def _openapi_typescript() -> Path:
    """openapi-typescript, installed once into a cache outside the clone."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hearth" / "npm"
    tool = cache / "node_modules" / ".bin" / "openapi-typescript"
    if not tool.exists():
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", OPENAPI_TYPESCRIPT],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            why = f"npm could not install {OPENAPI_TYPESCRIPT}: {done.stderr.strip()[-500:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(why)
            pytest.skip(why)
    return tool


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_openapi_typescript_generates_a_client_from_the_committed_document(tmp_path: Path) -> None:
    _node_tools_or_skip()
    tool = _openapi_typescript()
    output = tmp_path / "hearth.d.ts"
    done = subprocess.run(
        [str(tool), str(OPENAPI), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    types = output.read_text()
    for name in ("provisionWorkspace", "getOperation", "watchEvents"):
        assert f"    {name}: {{" in types, name
    assert "reuse?: boolean;" in types  # optional in the request body, as its default makes it
    # the error body: a union by kind, each kind with its own fields
    assert 'ErrorDetail: components["schemas"]["ErrorInvalidInput"] | components["schemas"]' in types
    assert '"key_reused" | "other_tier" | "other_driver" | "recorded" | "backend"' in types
    assert "retryable: boolean;" in types


def test_every_answer_but_health_ready_and_metrics_documents_hearth_seq(document: Json) -> None:
    """``Hearth-Seq`` (the store's last event when the answer was read) is on every 2xx answer
    the daemon sends but liveness, readiness and the scrape, and the document says so, so that
    generated clients know the header a console lists and then streams by."""
    for route, path in document["paths"].items():
        for method, operation in path.items():
            for status, response in operation["responses"].items():
                if not status.startswith("2"):
                    continue
                named = "Hearth-Seq" in response.get("headers", {})
                assert named == (route not in ("/v1/health", "/v1/ready", "/metrics")), (
                    method,
                    route,
                    status,
                )
