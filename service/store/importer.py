"""Import of the original local format: the ``agent_runs`` table that the TypeScript
``makeSqlitePersistence`` wrote (JSON in text columns, one row per run).

Importing is idempotent: a run already stored with the same content is left alone (its version
does not move), and a stored run that has gone further than the imported row is kept, by the
stale-write rule.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstore.client.problems import InvalidRun, StaleWrite

from .base import RunStore
from .records import snapshot_record

__all__ = ["ImportReport", "import_legacy", "legacy_snapshots"]

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


def _json_column(value: str | None, column: str, run_id: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"column {column} of run {run_id!r} is not JSON: {exc}") from None


def legacy_snapshots(path: str | Path) -> Iterator[tuple[str, dict[str, Any] | ValueError]]:
    """Each row of ``agent_runs`` as a camelCase snapshot (or the error that stops it)."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    connection = sqlite3.connect(uri, uri=True)
    try:
        rows = connection.execute(f"SELECT {_COLUMNS} FROM agent_runs ORDER BY run_id")
        for row in rows:
            (
                run_id,
                status,
                started_at,
                completed_at,
                input_,
                history,
                plan,
                trace,
                usage,
                step_index,
                iterations,
                revisions,
                text,
                error,
            ) = row
            try:
                snapshot: dict[str, Any] = {
                    "runId": run_id,
                    "status": status,
                    "startedAt": started_at,
                    "completedAt": completed_at,
                    "input": input_,
                    "history": _json_column(history, "history", run_id),
                    "plan": _json_column(plan, "plan", run_id),
                    "trace": _json_column(trace, "trace", run_id),
                    "usage": _json_column(usage, "usage", run_id),
                    "stepIndex": step_index,
                    "iterations": iterations,
                    "revisions": revisions,
                    "text": text,
                    "error": error,
                }
            except ValueError as exc:
                yield str(run_id), exc
                continue
            yield str(run_id), {k: v for k, v in snapshot.items() if v is not None}
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
