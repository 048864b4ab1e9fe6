"""The README and every page of docs/ run as written, against a real server on a free port.

Their ``console`` blocks are one shell session: every ``$`` command runs, in order, in one bash,
and must print what the page shows under it (``updatedAt`` is the server's clock, so its value
is not compared). Their ``python`` blocks run, in order, as scripts; each must succeed, and a
line ``print(...)  # text`` must print the start of ``text``. The README's ``pip install`` lines
run too, each in a new virtual environment, in a copy of the checkout made a git repository (as
a clone is). Other blocks (``sh``: ``make``, Docker) are instructions for a reader's machine and
are not run here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ServerProcess

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
_RUNNABLE = re.compile(r"^```(console|python)$", re.MULTILINE)
# Every page with a block the test runs: a block added to any page of docs/ runs too.
PAGES = tuple(
    str(page.relative_to(ROOT))
    for page in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
    if _RUNNABLE.search(page.read_text(encoding="utf-8"))
)
# The address the pages use; the tests substitute their own server's.
DOCUMENTED_URL = "http://127.0.0.1:8000"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_UPDATED_AT = re.compile(r'"updatedAt":\d+')
# Each answer's request id is new (docs/api.md, Operations); the page shortens them.
_REQUEST_ID = re.compile(r'"requestId":"[^"]+"')
_PRINTED = re.compile(r"^\s*print\(.*\)\s+# (.+)$")


@dataclass(frozen=True)
class Command:
    text: str
    expected: tuple[str, ...]


def blocks(page: str, language: str) -> list[str]:
    text = (ROOT / page).read_text(encoding="utf-8")
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def session(block: str) -> list[Command]:
    """The ``$`` commands of a console block (with the lines that continue them: after a ``\\``,
    or inside a quoted string) and the lines shown after each."""
    commands: list[Command] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), f"output with no command before it: {line!r}"
        text = [line[2:]]
        while text[-1].endswith("\\") or "\n".join(text).count("'") % 2:
            i += 1
            text.append(lines[i])
        i += 1
        expected: list[str] = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        commands.append(Command("\n".join(text), tuple(expected)))
    return commands


def normalised(lines: list[str] | tuple[str, ...]) -> list[str]:
    return [
        _REQUEST_ID.sub('"requestId":"-"', _UPDATED_AT.sub('"updatedAt":0', line)) for line in lines
    ]


def run_session(commands: list[Command], url: str, cwd: Path) -> list[list[str]]:
    """Every command in one bash, so variables carry over; each command's output lines."""
    marker = "__runstore_readme_command__"
    script = "\n".join(f"echo {marker}\n{command.text}" for command in commands)
    script = script.replace(DOCUMENTED_URL, url)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    outputs = done.stdout.split(marker + "\n")[1:]
    return [output.splitlines() for output in outputs]


def run_python(code: str, url: str, cwd: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code.replace(DOCUMENTED_URL, url)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{code}\n---\n{done.stderr}"
    return done.stdout.splitlines()


@pytest.mark.skipif(shutil.which("curl") is None, reason="the sessions use curl")
@pytest.mark.parametrize("page", PAGES)
def test_the_page_runs_as_written(page: str, tmp_path: Path) -> None:
    consoles = blocks(page, "console")
    programs = blocks(page, "python")
    assert consoles or programs
    with ServerProcess(tmp_path / "runs.db") as server:
        commands = [command for block in consoles for command in session(block)]
        outputs = run_session(commands, server.url, tmp_path) if commands else []
        assert len(outputs) == len(commands)
        for command, output in zip(commands, outputs, strict=True):
            assert normalised(output) == normalised(command.expected), command.text
        for code in programs:
            printed = run_python(code, server.url, tmp_path)
            promised = [m.group(1) for line in code.splitlines() if (m := _PRINTED.match(line))]
            assert len(printed) >= len(promised), code
            for line, comment in zip(printed, promised, strict=False):
                assert comment.startswith(line), (line, comment)


def test_the_pages_a_newcomer_follows_are_run() -> None:
    assert {"README.md", "docs/client.md"} <= set(PAGES)


def test_the_readme_is_a_short_page() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024


def test_every_local_link_of_the_docs_leads_somewhere() -> None:
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def install_lines() -> list[str]:
    """The README's ``pip install`` commands, as written."""
    return [
        line
        for block in blocks("README.md", "sh")
        for line in block.splitlines()
        if line.startswith("pip install ")
    ]


def installs_server(line: str) -> bool:
    return "[server]" in line.partition("#")[0]


def test_the_readme_installs_with_and_without_the_server() -> None:
    lines = install_lines()

    assert any(installs_server(line) and "git+" in line for line in lines)
    assert any(installs_server(line) and "git+" not in line for line in lines)
    assert any(not installs_server(line) for line in lines)


def checkout_copy(destination: Path) -> Path:
    """The checkout's files (committed or not, but not ignored), committed in a new repository:
    what a clone of this tree would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    identity = ["-c", "user.name=runstore tests", "-c", "user.email=tests@runstore.invalid"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-q", "-m", "copy"]):
        subprocess.run(["git", *command], cwd=destination, check=True, capture_output=True)
    return destination


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="the copy of the checkout is a git one")
@pytest.mark.parametrize("line", install_lines())
def test_the_install_commands_run_as_written(line: str, tmp_path: Path) -> None:
    checkout = checkout_copy(tmp_path / "runstore")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    env = {
        **{name: value for name, value in os.environ.items() if name != "VIRTUAL_ENV"},
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    installed = run(line)
    assert installed.returncode == 0, installed.stderr
    client = run("python -c 'from runstore.client import RunStoreClient, embedded_persistence'")
    assert client.returncode == 0, client.stderr
    if installs_server(line):
        server = run("python -c 'from runstore.service import create_app'")
        assert server.returncode == 0, server.stderr
        assert "serve" in run("runstore --help").stdout
    else:
        assert run("python -c 'import fastapi'").returncode != 0, "the server's dependencies"
        refused = run("runstore serve --db runs.db")
        assert refused.returncode != 0
        assert 'pip install ".[server]"' in refused.stderr
