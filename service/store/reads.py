"""Reading runs back, the same on every backend: the rows a read selects, and what they become.

A backend runs the SQL (its own dialect where the two differ, as in joining a run's items) on its
own connections; turning the rows into a :class:`StoredRun` or a :class:`RunPage` is done here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import Cursor, Lease, RunPage, RunQuery, StoredRun, list_filters
from .records import render_snapshot, render_summary

__all__ = ["GET_COLUMNS", "list_sql", "run_page", "stored_run"]

# What a backend's get query selects before the run's steps and turns, each joined by commas.
GET_COLUMNS = "version, doc, plan, history_length"


def stored_run(row: Sequence[Any] | None) -> StoredRun | None:
    """The run from the row of a get query (GET_COLUMNS, steps, turns), or None for no row."""
    if row is None:
        return None
    version, doc, plan, history_length, trace, history = row
    # An empty history is stored as a length of 0 and no turns, which joins to NULL.
    if history_length is not None and history is None:
        history = ""
    return StoredRun(int(version), render_snapshot(doc, plan, trace or "", history))


def list_sql(
    query: RunQuery, mark: str, clock: str, clock_params: Sequence[Any] = ()
) -> tuple[str, list[Any]]:
    """The SELECT of one page of ``query`` and its parameters; ``mark``: ``?`` or ``%s``;
    ``clock``: the store's clock in ms as SQL (with ``clock_params``), which says whose lease
    is live.

    It asks for one row past the page, which tells whether there is a next page.
    """
    where, params = list_filters(query, mark)
    sql = (
        "SELECT run_id, started_at, doc, trace_length, version, updated_at, lease, "
        f"lease_holder, lease_expires_at, lease_ttl_ms, {clock} FROM runs "
        f"{where} ORDER BY started_at DESC, run_id DESC LIMIT {mark}"
    )
    return sql, [*clock_params, *params, query.limit + 1]


def live_lease_json(
    run_id: str, lease: int | None, holder: str, expires_at: int | None, ttl_ms: int, now: int
) -> str:
    """A run's lease columns (and the store's clock) as the summary's ``lease``: the lease
    object's JSON while it is live, else null."""
    if not lease or expires_at is None or expires_at <= now:
        return "null"
    return Lease(run_id, holder, lease, expires_at, ttl_ms).to_json()


def run_page(rows: Sequence[Sequence[Any]], query: RunQuery) -> RunPage:
    """The page from the rows of :func:`list_sql`."""
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        next_cursor = Cursor(int(rows[-1][1]), str(rows[-1][0]))
    return RunPage(
        [
            render_summary(row[2], row[3], row[4], row[5], live_lease_json(row[0], *row[6:]))
            for row in rows
        ],
        next_cursor,
    )
