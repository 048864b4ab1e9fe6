"""The ``runstore`` command: ``serve`` and ``import``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .config import Settings

__all__ = ["main"]


def _settings(args: argparse.Namespace) -> Settings:
    # Flags win over the environment: pydantic-settings lets init arguments override it.
    overrides: dict[str, Any] = {
        name: value
        for name in ("db", "host", "port", "database_url")
        if (value := getattr(args, name, None)) is not None
    }
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    settings = _settings(args)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from .store.importer import import_legacy
    from .store.sqlite import SQLiteEngine

    settings = _settings(args)
    if settings.database_url is not None:
        print("runstore import writes to a SQLite store; unset RUNSTORE_DATABASE_URL.", file=sys.stderr)
        return 2
    with SQLiteEngine(settings.db) as engine:
        report = import_legacy(args.source, engine)
    print(f"{args.source} -> {settings.db}: {report.summary()}")
    for run_id, reason in report.invalid:
        print(f"  not imported: {run_id}: {reason}", file=sys.stderr)
    return 1 if report.invalid else 0


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
    import_.set_defaults(handler=_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:  %(name)s: %(message)s")
    handler: Any = args.handler
    code: int = handler(args)
    return code
