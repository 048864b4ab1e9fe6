"""Import of the original local format: the ``agent_runs`` table that the TypeScript
``makeSqlitePersistence`` wrote (JSON in text columns, one row per run).

Importing is idempotent: a run already stored with the same content is left alone (its version
does not move), and a stored run that has gone further than the imported row is kept, by the
stale-write rule.

JSON columns are read by the server's strict parser (:func:`..strict_json.parse_strict`):
``NaN``, ``Infinity``, numbers a double cannot hold, duplicate keys, invalid UTF-8 and deep
nesting are refused, never silently changed. A refused row is reported by run id and reason
and skipped; the rest are imported (issue 14).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstore.client.problems import InvalidRun, MalformedJson, StaleWrite

# The server's parser, so that an import accepts what a PUT accepts.
from ..strict_json import parse_strict
from .base import RunStore
from .records import snapshot_record

__all__ = ["ImportReport", "SourceUnreadable", "import_legacy", "legacy_snapshots"]

_TEXT_COLUMNS = ("run_id", "status", "input", "result_text", "error")
_JSON_COLUMNS = ("history", "plan", "trace", "usage")


class SourceUnreadable(Exception):
    """The legacy database could not be read (not SQLite, damaged, no agent_runs table)."""


_COLUMNS = (
    "run_id, status, started_at, completed_at, input, history, plan, trace, usage, "
    "step_index, iterations, revisions, result_text, error"
)


@dataclass
class ImportReport:
    """What an import did, run by run."""

    imported: int = 0
    unchanged: int = 0
    kept_newer: int = 0
    invalid: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"imported {self.imported}, unchanged {self.unchanged}, "
            f"kept newer stored {self.kept_newer}, invalid {len(self.invalid)}"
        )


def _text(value: Any, column: str) -> Any:
    """A text column, read as bytes (so that one bad row cannot stop the import), decoded."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"column {column} is not valid UTF-8 (byte {exc.start})") from None


def _json(value: Any, column: str) -> Any:
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else str(value).encode()
    try:
        return parse_strict(raw)
    except MalformedJson as exc:
        detail = exc.detail.removeprefix("The body ").removeprefix("The body's ")
        raise ValueError(f"column {column}: {detail}") from None


def _snapshot(row: sqlite3.Row) -> dict[str, Any]:
    """A row as a camelCase snapshot; ValueError names the first bad column."""
    text = {column: _text(row[column], column) for column in _TEXT_COLUMNS}
    parsed = {column: _json(row[column], column) for column in _JSON_COLUMNS}
    snapshot: dict[str, Any] = {
        "runId": text["run_id"],
        "status": text["status"],
        "startedAt": row["started_at"],
        "completedAt": row["completed_at"],
        "input": text["input"],
        "history": parsed["history"],
        "plan": parsed["plan"],
        "trace": parsed["trace"],
        "usage": parsed["usage"],
        "stepIndex": row["step_index"],
        "iterations": row["iterations"],
        "revisions": row["revisions"],
        "text": text["result_text"],
        "error": text["error"],
    }
    return {name: value for name, value in snapshot.items() if value is not None}


def legacy_snapshots(path: str | Path) -> Iterator[tuple[str, dict[str, Any] | ValueError]]:
    """Each row of ``agent_runs`` as a camelCase snapshot, or the error that refuses it, with
    its run id (bytes that are not UTF-8 shown escaped). SourceUnreadable if the file cannot
    be read."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise SourceUnreadable(str(exc)) from None
    connection.text_factory = bytes
    connection.row_factory = sqlite3.Row
    try:
        rows = connection.execute(f"SELECT {_COLUMNS} FROM agent_runs ORDER BY run_id")
        for row in rows:
            raw_id = row["run_id"]
            run_id = (
                raw_id.decode("utf-8", "backslashreplace")
                if isinstance(raw_id, bytes)
                else str(raw_id)
            )
            try:
                yield run_id, _snapshot(row)
            except ValueError as exc:
                yield run_id, exc
    except sqlite3.Error as exc:
        raise SourceUnreadable(str(exc)) from None
    finally:
        connection.close()


async def import_legacy(source: str | Path, store: RunStore) -> ImportReport:
    """Copy every run of a legacy database into an open store; see the module docstring."""
    report = ImportReport()
    for run_id, snapshot in legacy_snapshots(source):
        if isinstance(snapshot, ValueError):
            report.invalid.append((run_id, str(snapshot)))
            continue
        try:
            record = snapshot_record(snapshot)
        except InvalidRun as exc:
            report.invalid.append((run_id, exc.detail))
            continue
        stored = await store.get_run(record.run_id)
        if stored is not None and json.loads(stored.body) == snapshot:
            report.unchanged += 1
            continue
        try:
            await store.put_run(record)
        except StaleWrite:
            report.kept_newer += 1
        else:
            report.imported += 1
    return report
