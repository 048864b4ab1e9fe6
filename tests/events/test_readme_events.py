"""The README's live-following session runs as shown: terminal 1's commands, with terminal 2's
``curl -N`` started after the first of them, prints exactly the events the README shows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import ServerProcess

pytestmark = pytest.mark.server

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _session() -> tuple[list[str], str, list[str]]:
    blocks = _FENCE.findall(README.read_text(encoding="utf-8"))
    agent = next(body for lang, body in blocks if body.startswith("# terminal 1"))
    shown = next(body for lang, body in blocks if lang == "text" and "curl -N" in body)
    command, *output = shown.splitlines()
    commands = [line for line in agent.splitlines() if not line.startswith("#")]
    return commands, command.removeprefix("$ ").split("#")[0].strip(), output


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README session uses curl")
def test_the_readme_follows_a_run_with_curl(tmp_path: Path) -> None:
    commands, follow, expected = _session()
    with ServerProcess(tmp_path / "runs.db") as server:
        env = {**os.environ, "S": server.url}

        def run(command: str) -> None:
            subprocess.run(["bash", "-c", command], env=env, check=True, capture_output=True)

        run(commands[0])
        watcher = subprocess.Popen(
            ["bash", "-c", follow], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert watcher.stdout is not None
        first = watcher.stdout.readline()  # the stream is open: the run event has come
        for command in commands[1:]:
            run(command)
        rest = watcher.stdout.read()  # until curl ends: after the finishing write
        watcher.stdout.close()
        watcher.wait(30)
    printed = (first + rest).decode().splitlines()
    assert printed == [*expected, ""]
    assert watcher.returncode == 0
