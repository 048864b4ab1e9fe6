"""Storage backends behind one interface, :class:`RunStore`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Cursor, RunPage, RunQuery, RunStore, StoredRun, WriteResult
from .records import PatchRecord, SnapshotRecord, patch_record, snapshot_record
from .sqlite import SQLiteEngine, SQLiteStore

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "Cursor",
    "PatchRecord",
    "RunPage",
    "RunQuery",
    "RunStore",
    "SQLiteEngine",
    "SQLiteStore",
    "SnapshotRecord",
    "StoredRun",
    "WriteResult",
    "open_store",
    "patch_record",
    "snapshot_record",
]


def open_store(settings: Settings, *, engine: SQLiteEngine | None = None) -> RunStore:
    """The backend the settings name: PostgreSQL with a database URL, else the SQLite file
    (``engine``: that file, already opened and checked)."""
    if settings.database_url is not None:
        from .postgres import PostgresStore

        return PostgresStore(settings.database_url.get_secret_value())
    return SQLiteStore(settings.db, wal_autocheckpoint=settings.wal_autocheckpoint, engine=engine)
