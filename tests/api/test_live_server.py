"""The main flows against a real uvicorn (``runstore serve`` in a subprocess) over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import ServerProcess, assert_problem, make_snapshot

pytestmark = pytest.mark.server

LIMIT = 4096


def test_a_run_written_step_by_step_over_http(server: ServerProcess) -> None:
    with server.client(timeout=30) as http:
        created = http.put("/runs/run-1", json=make_snapshot("run-1", steps=1))
        assert created.status_code == 201
        assert created.headers["location"] == "/runs/run-1"
        for n in range(1, 6):
            appended = http.patch(
                "/runs/run-1", json={"trace": [{"step": n}], "traceFrom": n, "stepIndex": n + 1}
            )
            assert appended.json() == {"runId": "run-1", "version": n + 1, "traceLength": n + 1}
        finished = http.patch(
            "/runs/run-1",
            json={"status": "completed", "completedAt": 1_700_000_100_000, "text": "Sunny."},
        )
        assert finished.headers["etag"] == '"7"'

        got = http.get("/runs/run-1")
        head = http.head("/runs/run-1")
        not_modified = http.get("/runs/run-1", headers={"If-None-Match": got.headers["etag"]})

    assert got.status_code == 200
    assert got.headers["content-type"] == "application/json"
    run = got.json()
    assert run["trace"] == [{"step": 0, "output": "result 0"}] + [{"step": n} for n in range(1, 6)]
    assert (run["status"], run["completedAt"], run["text"], run["stepIndex"]) == (
        "completed",
        1_700_000_100_000,
        "Sunny.",
        6,
    )
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == '"7"'
    assert int(head.headers["content-length"]) == len(got.content)
    assert not_modified.status_code == 304
    assert not_modified.content == b""


def test_list_and_delete_over_http(server: ServerProcess) -> None:
    with server.client(timeout=30) as http:
        for n in range(5):
            snapshot = make_snapshot(f"run-{n}", startedAt=1000 + n, completedAt=2000 + n)
            assert http.put(f"/runs/run-{n}", json=snapshot).status_code == 201
        first = http.get("/runs", params={"limit": 3}).json()
        second = http.get("/runs", params={"limit": 3, "cursor": first["nextCursor"]}).json()
        deleted_one = http.delete("/runs/run-4")
        retention = http.delete("/runs", params={"completedBefore": 2002})
        left = http.get("/runs").json()

    assert [s["runId"] for s in first["runs"] + second["runs"]] == [
        f"run-{n}" for n in (4, 3, 2, 1, 0)
    ]
    assert second["nextCursor"] is None
    assert deleted_one.status_code == 204
    assert retention.json() == {"deleted": 2}
    assert [s["runId"] for s in left["runs"]] == ["run-3", "run-2"]


def test_errors_are_problem_json_over_http(server: ServerProcess) -> None:
    with server.client(timeout=30) as http:
        http.put("/runs/run-1", json=make_snapshot("run-1", steps=2))
        before = http.get("/runs/run-1").content

        assert_problem(http.get("/runs/absent"), 404, "not-found")
        assert_problem(http.get("/no/such/path"), 404, "not-found")
        assert_problem(http.post("/runs/run-1", json={}), 405, "method-not-allowed")
        assert_problem(
            http.put("/runs/run-1", content=b"{nope", headers={"Content-Type": "application/json"}),
            400,
            "malformed-json",
        )
        assert_problem(
            http.put("/runs/run-1", content=b"{}", headers={"Content-Type": "text/plain"}),
            415,
            "unsupported-media-type",
        )
        problem = assert_problem(
            http.put("/runs/run-1", json=make_snapshot("run-1", stepIndex="2")),
            422,
            "invalid-fields",
        )
        assert problem["errors"][0]["path"] == "$.stepIndex"
        assert_problem(http.put("/runs/run-1", json=make_snapshot("run-1")), 409, "stale-write")
        assert_problem(
            http.patch("/runs/run-1", json={"trace": [], "traceFrom": 9}), 409, "trace-gap"
        )
        assert_problem(
            http.delete("/runs/run-1", headers={"If-Match": '"9"'}), 412, "precondition-failed"
        )
        assert http.get("/runs/run-1").content == before


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose body limit is RUNSTORE_MAX_BODY_BYTES=4096."""
    env = {"RUNSTORE_MAX_BODY_BYTES": str(LIMIT)}
    with ServerProcess(tmp_path / "runs.db", env=env) as process:
        with process.client(timeout=30) as http:
            assert http.put("/runs/run-1", json=make_snapshot("run-1")).status_code == 201
        yield process


def test_a_chunked_body_over_the_limit_is_413(small_server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        # Valid JSON that never ends within the limit: the server must stop it by counting.
        yield b'{"runId": "run-1", "input": "'
        for _ in range(1000):
            yield b"x" * 1024

    with small_server.client(timeout=30) as http:
        before = http.get("/runs/run-1").content
        response = http.put(
            "/runs/run-1", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_problem(response, 413, "body-too-large")
        assert http.get("/runs/run-1").content == before


def exchange(url: str, head: bytes, body: bytes) -> bytes:
    """Send a request's head and the start of its body on a raw socket; the whole answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as connection:
        connection.sendall(head + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_a_declared_length_over_the_limit_is_413_before_the_body_arrives(
    small_server: ServerProcess,
) -> None:
    head = (
        b"PUT /runs/run-1 HTTP/1.1\r\nHost: runstore\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )

    # Only 100 of the declared bytes are ever sent: an answer at all shows the server did
    # not wait for (or buffer) the rest, and it closes the connection after it.
    answer = exchange(small_server.url, head, b"{" + b" " * 99)

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413")
    headers = rest.split(b"\r\n\r\n", 1)[0].lower()
    assert b"content-type: application/problem+json" in headers
    assert b"connection: close" in headers
    with small_server.client(timeout=30) as http:
        assert http.get("/runs/run-1").json() == make_snapshot("run-1")


def test_a_body_at_the_limit_is_accepted_over_http(small_server: ServerProcess) -> None:
    snapshot = make_snapshot("run-1", steps=1, input="")
    snapshot["input"] = "x" * (LIMIT - len(httpx.Request("PUT", "/", json=snapshot).content))

    with small_server.client(timeout=30) as http:
        response = http.put("/runs/run-1", json=snapshot)

    assert len(response.request.content) == LIMIT
    assert response.status_code == 200


def free_listening_socket() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


def test_flags_win_over_environment_variables(tmp_path: Path) -> None:
    flag_db, env_db = tmp_path / "flag.db", tmp_path / "env.db"
    with free_listening_socket() as taken:
        # Were the environment used, the server could not bind: the port is taken and the
        # address (TEST-NET-1) is not this machine's.
        env = {
            "RUNSTORE_DB": str(env_db),
            "RUNSTORE_PORT": str(taken.getsockname()[1]),
            "RUNSTORE_HOST": "192.0.2.1",
        }
        with ServerProcess(flag_db, env=env, args=("--host", "127.0.0.1")) as server:
            assert server.url.startswith("http://127.0.0.1:")
            assert server.port != taken.getsockname()[1]
            with server.client(timeout=30) as http:
                assert http.put("/runs/run-1", json=make_snapshot("run-1")).status_code == 201

    assert flag_db.exists()
    assert not env_db.exists()


def test_the_environment_configures_the_server(tmp_path: Path) -> None:
    env_db = tmp_path / "from-env.db"
    env = {"RUNSTORE_DB": str(env_db), "RUNSTORE_TOKENS": "secret:admin"}

    with ServerProcess(env=env) as server, server.client(timeout=30) as http:
        unauthorized = http.get("/runs")
        created = http.put(
            "/runs/run-1",
            json=make_snapshot("run-1"),
            headers={"Authorization": "Bearer secret"},
        )

    assert_problem(unauthorized, 401, "unauthorized")
    assert created.status_code == 201
    assert env_db.exists()
