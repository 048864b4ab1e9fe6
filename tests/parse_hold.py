"""A PUT's parser that waits, in the parser process, until a test lets it go.

The parser process imports this module by name (tests/ is on the path it is given), so a test
swaps it in for ``routes.snapshot_of``. For a PUT of the run :data:`HELD_RUN` it talks to the
test through files in the directory :data:`HOLD_DIR` names in the environment the process starts
with: ``pid`` (written when the parse begins: the process that parses) and ``release`` (written
by the test).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from runstore.service.api.parsers import BodyRules, snapshot_of
from runstore.service.store.records import SnapshotRecord

HOLD_DIR = "RUNSTORE_TEST_HOLD_DIR"
# Long enough never to run out on a loaded machine; a failing run waits this long once.
HOLD_SECONDS = 30


HELD_RUN = "held"


def held_snapshot_of(raw: bytes, run_id: str, rules: BodyRules) -> SnapshotRecord:
    """``snapshot_of``, made to wait for the test when the run is :data:`HELD_RUN`."""
    if run_id != HELD_RUN:
        return snapshot_of(raw, run_id, rules)
    hold = Path(os.environ[HOLD_DIR])
    (hold / "pid.tmp").write_text(str(os.getpid()))
    (hold / "pid.tmp").rename(hold / "pid")
    deadline = time.monotonic() + HOLD_SECONDS
    while not (hold / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return snapshot_of(raw, run_id, rules)


def wait_for_pid(hold: Path) -> int:
    """The id of the process that entered the held parse, once one has."""
    deadline = time.monotonic() + HOLD_SECONDS
    while not (hold / "pid").exists():
        assert time.monotonic() < deadline, "no parse began"
        time.sleep(0.01)
    return int((hold / "pid").read_text())
