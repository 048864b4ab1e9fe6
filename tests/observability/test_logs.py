"""Log lines (docs/operations.md, "Logs"): RUNSTORE_LOG_FORMAT=json gives one JSON object per
line, uvicorn's included; every line of a request names its request id; the access log has
the route template, status, duration and run id; no token or body content is ever logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import ServerProcess, make_snapshot

pytestmark = pytest.mark.server

TOKEN = "secret-token-that-must-never-be-logged"
CONTENT = "body-content-that-must-never-be-logged"


def serve_and_write(tmp_path: Path, log_format: str) -> tuple[list[str], str]:
    """A server's output after a PUT and a PATCH (under a token), and the PATCH's request id."""
    env = {
        "RUNSTORE_LOG_FORMAT": log_format,
        "RUNSTORE_ACCESS_LOG": "true",
        "RUNSTORE_TOKENS": f"{TOKEN}:write",
    }
    server = ServerProcess(tmp_path / "runs.db", env=env)
    with server, server.client(headers={"authorization": f"Bearer {TOKEN}"}) as http:
        http.put("/runs/r-1", json=make_snapshot("r-1", input=CONTENT))
        patched = http.patch(
            "/runs/r-1",
            json={"trace": [{"said": CONTENT}], "traceFrom": 0},
            headers={"X-Request-Id": "patch-request-7"},
        )
        assert patched.status_code == 200
        assert http.get("/runs/absent").status_code == 404
    return [line for line in server.output if line.strip()], "patch-request-7"


def test_json_logs_are_one_object_per_line_with_the_request_s_fields(tmp_path: Path) -> None:
    lines, request_id = serve_and_write(tmp_path, "json")
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
    assert any(record["logger"].startswith("uvicorn") for record in records)
    (access,) = [record for record in records if record.get("request_id") == request_id]
    assert access["logger"] == "runstore.access"
    assert access["method"] == "PATCH"
    assert access["route"] == "/runs/{runId}"
    assert access["status"] == 200
    assert access["run_id"] == "r-1"
    assert access["duration_ms"] > 0
    missing = [record for record in records if record.get("status") == 404]
    assert missing[0]["route"] == "/runs/{runId}"
    assert missing[0]["request_id"]
    text = "\n".join(lines)
    assert TOKEN not in text
    assert CONTENT not in text


def test_text_logs_stay_readable_and_name_the_request(tmp_path: Path) -> None:
    lines, request_id = serve_and_write(tmp_path, "text")
    (access,) = [line for line in lines if f"[request {request_id}]" in line]
    assert access.startswith("INFO:  runstore.access: ")
    assert '"PATCH /runs/r-1 HTTP/1.1" 200' in access
    text = "".join(lines)
    assert TOKEN not in text
    assert CONTENT not in text
