"""The ``runstore`` command: ``serve``, ``import`` and ``backup``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import logging
import signal
import sqlite3
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

if TYPE_CHECKING:
    from .config import Settings
    from .events import EventBroker
    from .store import RunStore
    from .store.importer import ImportReport

__all__ = ["main"]


# What ``pip install "runstore[server]"`` adds to a client-only install; every command needs
# them (settings read by pydantic-settings, the store's JSON by orjson and msgspec).
SERVER_MODULES: Final = ("pydantic_settings", "fastapi", "uvicorn", "orjson", "msgspec")
INSTALL_SERVER: Final = (
    'install the server: pip install "runstore[server]" (in a checkout: pip install ".[server]")'
)


def _settings(args: argparse.Namespace) -> Settings:
    from .config import Settings

    # Flags win over the environment: pydantic-settings lets init arguments override it.
    overrides: dict[str, Any] = {
        name: value
        for name in ("db", "host", "port", "database_url")
        if (value := getattr(args, name, None)) is not None
    }
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        # A bad flag or RUNSTORE_* variable is a usage error: one line each, no traceback.
        for error in exc.errors(include_url=False):
            name = ".".join(str(part) for part in error["loc"])
            if not name:  # a rule between settings, which its message names
                reason = error["msg"].removeprefix("Value error, ")
                print(f"runstore: invalid settings: {reason}", file=sys.stderr)
                continue
            print(
                f"runstore: invalid setting {name} (RUNSTORE_{name.upper()} or "
                f"--{name.replace('_', '-')}): {error['msg']}",
                file=sys.stderr,
            )
        raise SystemExit(2) from None


def _source_problem(source: str) -> str | None:
    """One line saying why ``source`` cannot be imported from, or None if its table reads."""
    from .store.importer import SourceUnreadable, legacy_snapshots

    try:
        next(iter(legacy_snapshots(source)), None)
    except SourceUnreadable as exc:
        return (
            f"runstore import: cannot read {source}: {exc}. It must be a SQLite file with the "
            "agent_runs table that makeSqlitePersistence writes."
        )
    return None


def _open_store(settings: Settings) -> RunStore | str:
    """The store the server will use, opened and checked; or one line saying what keeps it
    from opening, and what to do.

    Opening runs the checks (``PRAGMA quick_check``, the schema version) here, where a failure
    is a message and an exit status instead of a traceback from the lifespan. The SQLite engine
    opened for them is handed to the app, so a large file is checked once.
    """
    from .store import open_store

    if settings.database_url is not None:
        problem = _postgres_problem(settings.database_url.get_secret_value())
        return problem if problem is not None else open_store(settings)
    from .store.sqlite import SQLiteEngine
    from .store.sqlite_schema import CorruptDatabase, ForeignDatabase

    try:
        engine = SQLiteEngine(settings.db, wal_autocheckpoint=settings.wal_autocheckpoint)
    except ForeignDatabase as exc:
        return (
            f"runstore: {settings.db}: {exc}; it will not be served or changed. Serve a new "
            f"file, and copy legacy agent_runs into it with: runstore import {settings.db} "
            "--db runs.db"
        )
    except CorruptDatabase as exc:
        return (
            f"runstore: the database {settings.db} is damaged (quick_check: {exc}); it will not "
            "be served. Restore the latest backup (runstore backup; docs/operations.md) "
            f"or salvage what is left with: sqlite3 {settings.db} .recover"
        )
    except (sqlite3.Error, OSError) as exc:
        return (
            f"runstore: cannot open the database {settings.db}: {exc}. Check --db (RUNSTORE_DB) "
            "and that the file and its directory are readable and writable."
        )
    return open_store(settings, engine=engine)


def _postgres_problem(url: str) -> str | None:
    """The PostgreSQL side of :func:`_open_store`: wait for the database (as long as the
    store's start-up timeout) and create or migrate the schema, as the server will."""
    try:
        from .store.postgres import PostgresStore
    except ImportError:
        return "runstore: PostgreSQL needs psycopg: pip install 'runstore[server,postgres]'"
    from runstore.client.problems import StoreUnavailable

    async def open_and_close() -> None:
        async with PostgresStore(url, min_connections=1, max_connections=1):
            pass

    try:
        asyncio.run(open_and_close())
    except StoreUnavailable as exc:
        return f"runstore: {exc.detail} Check --database-url (RUNSTORE_DATABASE_URL)."
    return None


def _stop_requested(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _tune_gc() -> None:
    """Collect cycles less often: a request allocates hundreds of containers (a parsed 50-step
    body, thousands) and nearly all of them die by reference counting, so the collector's default
    pace (every 700 allocations) spent a tenth of the server's time re-scanning live request
    data. What start-up built (modules, the app, its schemas) lives as long as the process and
    is moved out of the collector's sight with ``gc.freeze()``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .connections import guarded_protocol
    from .logs import configure_logging

    settings = _settings(args)
    configure_logging(settings.log_format, settings.log_level)
    # uvicorn re-raises SIGTERM once its graceful shutdown is done, which would end the process
    # with status 143; a stop that was asked for and completed is a success. Before uvicorn
    # takes the signal over (and after it hands it back), it stops the process at once.
    signal.signal(signal.SIGTERM, _stop_requested)
    store = _open_store(settings)
    if isinstance(store, str):
        print(store, file=sys.stderr)
        return 1
    app = create_app(settings, store=store)
    broker: EventBroker = app.state.events

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # uvicorn waits for open connections before the lifespan ends, and an event
            # stream stays open until told: end the streams first (on the loop's thread).
            broker.close_threadsafe()
            super().handle_exit(sig, frame)

    _tune_gc()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(
            max_head_bytes=settings.max_head_bytes,
            head_timeout=settings.head_timeout,
            max_connections=settings.max_connections,
        ),
        timeout_keep_alive=settings.keep_alive_timeout,
        backlog=settings.backlog,
        # The app writes the access log (api.instrument), with the request id and duration;
        # uvicorn's loggers propagate to the handler configure_logging set up.
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    Server(config).run()
    return 0


def _import(args: argparse.Namespace) -> int:
    from runstore.client.problems import StoreUnavailable

    from .store import open_store
    from .store.importer import SourceUnreadable, import_legacy
    from .store.sqlite_schema import CorruptDatabase

    settings = _settings(args)
    problem = _source_problem(args.source)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    store = open_store(settings)

    async def run() -> ImportReport:
        async with store:
            return await import_legacy(args.source, store)

    try:
        report = asyncio.run(run())
    except StoreUnavailable as exc:
        print(f"runstore import: {exc.detail}", file=sys.stderr)
        return 1
    except SourceUnreadable as exc:
        print(f"runstore import: cannot read {args.source} midway: {exc}", file=sys.stderr)
        return 1
    except (sqlite3.Error, CorruptDatabase) as exc:
        print(f"runstore import: cannot open the store {settings.db}: {exc}", file=sys.stderr)
        return 1
    target = settings.db
    if settings.database_url is not None:
        from .store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        target = f"PostgreSQL at {store.target}"
    print(f"{args.source} -> {target}: {report.summary()}")
    for run_id, reason in report.invalid:
        print(f"  not imported: {run_id}: {reason}", file=sys.stderr)
    return 1 if report.invalid else 0


def _backup(args: argparse.Namespace) -> int:
    from .backup import BackupError, backup_sqlite

    settings = _settings(args)
    if settings.database_url is not None:
        print(
            "runstore backup copies a SQLite store; this one is PostgreSQL "
            "(RUNSTORE_DATABASE_URL is set). Back it up with pg_dump, for example: "
            "pg_dump --format=custom --file=runs.dump <database URL>",
            file=sys.stderr,
        )
        return 2
    try:
        report = backup_sqlite(settings.db, args.out)
    except BackupError as exc:
        print(f"runstore backup: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runstore", description="Durable, shared storage for AI-agent run snapshots."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--db", help="SQLite database file (RUNSTORE_DB, default ./runs.db)")
    serve.add_argument("--host", help="address to listen on (RUNSTORE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (RUNSTORE_PORT, default 8000)")
    serve.add_argument(
        "--database-url", help="postgresql://... to use PostgreSQL (RUNSTORE_DATABASE_URL)"
    )
    serve.set_defaults(handler=_serve)

    import_ = commands.add_parser(
        "import", help="copy runs from an original agent_runs SQLite file into the store"
    )
    import_.add_argument("source", help="SQLite file with an agent_runs table")
    import_.add_argument("--db", help="store to import into (RUNSTORE_DB, default ./runs.db)")
    import_.add_argument(
        "--database-url",
        help="postgresql://... to import into PostgreSQL instead (RUNSTORE_DATABASE_URL)",
    )
    import_.set_defaults(handler=_import)

    backup = commands.add_parser(
        "backup", help="copy a live SQLite store to a file, consistently, while it serves"
    )
    backup.add_argument("out", help="the backup file to write (replaced only once complete)")
    backup.add_argument("--db", help="the store to copy (RUNSTORE_DB, default ./runs.db)")
    backup.set_defaults(handler=_backup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        # A client-only install (issue 15): say what to do in one line, not a traceback.
        print(f"runstore: {', '.join(missing)} not installed; {INSTALL_SERVER}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:  %(name)s: %(message)s")
    handler: Any = args.handler
    code: int = handler(args)
    return code
