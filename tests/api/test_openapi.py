"""openapi.json: committed, equal to what the app serves, and documenting every status code."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from runstore.client.models import OPTIONAL_FIELDS, REQUIRED_FIELDS

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "openapi.json"
PROBLEM = "application/problem+json"

# Every operation of the contract and the statuses it can answer (405 belongs to no operation;
# 500 should never happen). 401/403 come from auth, 408/413/415 from reading a body, 400 from a
# body or a conditional header, 422 from fields, path or query, 503 from the storage.
STATUSES: dict[tuple[str, str], set[int]] = {
    ("/runs/{runId}", "put"): {200, 201, 400, 401, 403, 408, 409, 412, 413, 415, 422, 503},
    ("/runs/{runId}", "patch"): {200, 400, 401, 403, 404, 408, 409, 412, 413, 415, 422, 503},
    ("/runs/{runId}", "get"): {200, 304, 400, 401, 403, 404, 422, 503},
    ("/runs/{runId}", "head"): {200, 304, 400, 401, 403, 404, 422, 503},
    ("/runs/{runId}", "delete"): {204, 400, 401, 403, 404, 409, 412, 422, 503},
    ("/runs/{runId}/lease", "post"): {200, 400, 401, 403, 404, 408, 409, 413, 415, 422, 503},
    ("/runs/{runId}/lease", "delete"): {204, 400, 401, 403, 404, 409, 422, 503},
    ("/claims", "post"): {200, 204, 400, 401, 403, 408, 413, 415, 422, 503},
    ("/runs", "get"): {200, 401, 403, 422, 503},
    ("/runs", "delete"): {200, 401, 403, 422, 503},
    ("/healthz", "get"): {200},
    ("/healthz", "head"): {200},
    ("/readyz", "get"): {200, 401, 403, 503},
    ("/metrics", "get"): {200, 401, 403},
    ("/runs/{runId}/events", "get"): {200, 400, 401, 403, 404, 422, 503},
    ("/events", "get"): {200, 401, 403, 422, 503},
    ("/ui/", "get"): {200, 304},
    ("/ui/{path}", "get"): {200, 304, 404},
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def load_generator() -> ModuleType:
    """scripts/generate_openapi.py, loaded from its path (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(
        "generate_openapi", ROOT / "scripts" / "generate_openapi.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(COMMITTED.read_text())
    return document


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def test_openapi_json_is_what_the_generator_renders() -> None:
    rendered = load_generator().render()

    assert COMMITTED.read_text() == rendered, "openapi.json is out of date: run make openapi"


@pytest.mark.anyio
async def test_openapi_json_is_what_the_app_serves(
    client: httpx.AsyncClient, committed: dict[str, Any]
) -> None:
    response = await client.get("/openapi.json")

    assert response.status_code == 200
    assert response.json() == committed


def test_every_operation_of_the_contract_is_documented_and_nothing_else(
    committed: dict[str, Any],
) -> None:
    assert set(operations(committed)) == set(STATUSES)


@pytest.mark.parametrize(("path", "method"), sorted(STATUSES))
def test_every_status_an_operation_can_answer_is_documented(
    committed: dict[str, Any], path: str, method: str
) -> None:
    responses = operations(committed)[path, method]["responses"]

    documented = {int(status) for status in responses}
    assert STATUSES[path, method] <= documented, sorted(STATUSES[path, method] - documented)
    for status, response in responses.items():
        if int(status) >= 400 and method != "head":
            schema = response["content"][PROBLEM]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}, (status, schema)


def schema_of(document: dict[str, Any], content: dict[str, Any]) -> dict[str, Any]:
    ref: str = content["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def test_put_takes_a_snapshot_with_the_contract_field_names(committed: dict[str, Any]) -> None:
    body = operations(committed)["/runs/{runId}", "put"]["requestBody"]

    snapshot = schema_of(committed, body["content"])

    assert body["required"] is True
    assert set(snapshot["required"]) == REQUIRED_FIELDS
    assert set(snapshot["properties"]) == REQUIRED_FIELDS | OPTIONAL_FIELDS
    assert snapshot.get("additionalProperties", True) is not False


def test_patch_takes_any_subset_plus_where_appends_start(committed: dict[str, Any]) -> None:
    body = operations(committed)["/runs/{runId}", "patch"]["requestBody"]

    patch = schema_of(committed, body["content"])

    assert not patch.get("required")
    assert set(patch["properties"]) == REQUIRED_FIELDS | OPTIONAL_FIELDS | {
        "traceFrom",
        "historyFrom",
    }


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        ("/runs/{runId}", "put", {"If-Match", "If-None-Match"}),
        ("/runs/{runId}", "patch", {"If-Match"}),
        ("/runs/{runId}", "delete", {"If-Match"}),
        ("/runs/{runId}", "get", {"If-None-Match"}),
        ("/runs/{runId}", "head", {"If-None-Match"}),
    ],
)
def test_conditional_headers_are_documented(
    committed: dict[str, Any], path: str, method: str, headers: set[str]
) -> None:
    parameters = operations(committed)[path, method]["parameters"]

    documented = {p["name"] for p in parameters if p["in"] == "header"}
    assert headers <= documented
    assert {p["name"] for p in parameters if p["in"] == "path"} == {"runId"}


def test_list_parameters_are_documented(committed: dict[str, Any]) -> None:
    parameters = operations(committed)["/runs", "get"]["parameters"]

    assert {p["name"] for p in parameters if p["in"] == "query"} == {
        "status",
        "startedAfter",
        "startedBefore",
        "limit",
        "cursor",
    }


def test_bearer_auth_is_documented(committed: dict[str, Any]) -> None:
    schemes = committed["components"]["securitySchemes"]

    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["bearer"].items()


@pytest.mark.parametrize("path", ["/runs/{runId}/events", "/events"])
def test_event_streams_are_documented_as_text_event_stream(
    committed: dict[str, Any], path: str
) -> None:
    content = operations(committed)[path, "get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]


# What client generators need (issue 15): openapi-typescript and openapi-python-client read
# these; tests/generated/ runs the clients they generate.


def walk(node: Any, where: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in the document, with where it is."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}[{index}]")


def test_operations_have_camel_case_ids_and_declared_tags(committed: dict[str, Any]) -> None:
    declared_tags = {tag["name"] for tag in committed["tags"]}
    ids = []
    for (path, method), operation in operations(committed).items():
        ids.append(operation["operationId"])
        assert re.fullmatch(r"[a-z][A-Za-z]*", operation["operationId"]), (path, method)
        assert operation["tags"], (path, method)
        assert set(operation["tags"]) <= declared_tags, (path, method)

    assert len(ids) == len(set(ids))
    assert operations(committed)["/runs/{runId}", "put"]["operationId"] == "putRun"


def test_head_answers_declare_no_body(committed: dict[str, Any]) -> None:
    for (path, method), operation in operations(committed).items():
        if method == "head":
            for status, response in operation["responses"].items():
                assert "content" not in response, (path, status)


def test_no_schema_property_has_a_default(committed: dict[str, Any]) -> None:
    # A default reads as "always present" to generators; in a PATCH absent and null differ.
    for where, node in walk(committed["components"]):
        for name, prop in node.get("properties", {}).items():
            if isinstance(prop, dict):
                assert "default" not in prop, f"{where}.properties.{name}"


def test_patch_fields_that_can_be_cleared_are_nullable_and_optional(
    committed: dict[str, Any],
) -> None:
    patch = committed["components"]["schemas"]["RunPatch"]

    for name in OPTIONAL_FIELDS:
        options = patch["properties"][name]["anyOf"]
        assert {"type": "null"} in options, name
    for name in REQUIRED_FIELDS:
        assert "anyOf" not in patch["properties"][name], name


def test_parameters_are_never_nullable(committed: dict[str, Any]) -> None:
    for (path, method), operation in operations(committed).items():
        for parameter in operation.get("parameters", []):
            assert "anyOf" not in parameter["schema"], (path, method, parameter["name"])


@pytest.mark.parametrize(
    ("status", "header"),
    [
        ("201", "Location"),
        ("401", "WWW-Authenticate"),
        ("403", "WWW-Authenticate"),
        ("409", "Retry-After"),
        ("503", "Retry-After"),
    ],
)
def test_headers_sent_with_a_status_are_declared_on_it(
    committed: dict[str, Any], status: str, header: str
) -> None:
    answering = [
        (path, method, operation["responses"][status])
        for (path, method), operation in operations(committed).items()
        if status in operation["responses"]
    ]

    assert answering
    for path, method, response in answering:
        assert header in response.get("headers", {}), (path, method)


@pytest.mark.parametrize(
    ("method", "statuses"),
    [("put", {"200", "201"}), ("patch", {"200"}), ("get", {"200", "304"}), ("head", {"200"})],
)
def test_etag_is_declared_where_it_is_sent(
    committed: dict[str, Any], method: str, statuses: set[str]
) -> None:
    responses = operations(committed)["/runs/{runId}", method]["responses"]

    for status in statuses:
        assert "ETag" in responses[status]["headers"], status


def test_descriptions_speak_of_the_wire_not_of_python(committed: dict[str, Any]) -> None:
    for where, node in walk(committed):
        for key in ("description", "summary"):
            text = node.get(key)
            if isinstance(text, str):
                assert "``" not in text, where
                assert not re.search(r"model_\w+|(?<!-)\bNone\b|pydantic", text), (where, text)
        if "properties" in node:
            for name, prop in node["properties"].items():
                assert "title" not in prop, f"{where}.properties.{name}"
