"""Generate the blocking client modules from the async ones, or check that they are current.

    .venv/bin/python scripts/generate_sync.py          # rewrite _client.py, _persistence.py
    .venv/bin/python scripts/generate_sync.py --check  # exit 1 if either is not current

The async modules are the one source of the clients' behaviour (why: the docstring of
``client/_async_client.py``).
The ``unasync`` package drops ``async`` and ``await`` and renames tokens; the names it needs beyond
its own (``__aenter__``, ``AsyncIterator``, ...) are listed in ``RENAMES``. The output is then put
through ``ruff`` (import order, formatting) so the generated files pass ``make lint`` as they are.
``tests/client/test_sync_generated.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import difflib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import tokenize
from pathlib import Path

import unasync

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client"
# Async source -> generated blocking module, both in client/.
MODULES = {
    "_async_client.py": "_client.py",
    "_async_persistence.py": "_persistence.py",
}
RENAMES = {
    # The clients and the hooks.
    "AsyncRunStoreClient": "RunStoreClient",
    "AsyncRunPersistence": "RunPersistence",
    "AsyncPersistence": "Persistence",
    "_async_persistence": "_persistence",
    # httpx.
    "AsyncClient": "Client",
    "AsyncBaseTransport": "BaseTransport",
    "aclose": "close",
    # client/_concurrency.py.
    "AsyncSendWrite": "SendWrite",
    "AsyncReadRun": "ReadRun",
    "AsyncClose": "Close",
    "AsyncAcquireLease": "AcquireLease",
    "AsyncReleaseLease": "ReleaseLease",
    "AsyncRenewer": "Renewer",
    "async_sleep": "sleep",
}
# A name the async code may not leave in a generated module: a rename missing from RENAMES
# (unasync turns an unknown AsyncName into SyncName) or an event-loop library.
_LEFT_OVER = re.compile(r"^(Sync[A-Z]|anyio$|asyncio$|trio$|Awaitable$|Coroutine$)")


def header(source: str) -> str:
    return (
        f"# Generated from client/{source} by scripts/generate_sync.py: edit that file and run\n"
        "# `make sync-clients`; tests/client/test_sync_generated.py keeps this file current.\n\n"
    )


def ruff(arguments: list[str], text: str, filename: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *arguments, "--stdin-filename", str(filename), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff {' '.join(arguments)} failed on {filename}:\n{done.stderr}")
    return done.stdout


def left_over_names(text: str) -> set[str]:
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return {
        token.string
        for token in tokens
        if token.type == tokenize.NAME and _LEFT_OVER.match(token.string)
    }


def generate() -> dict[Path, str]:
    """The text each generated module should have."""
    rule = unasync.Rule("/_async/", "/_sync/", additional_replacements=RENAMES)
    generated: dict[Path, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for source, target in MODULES.items():
            copy = Path(scratch, "_async", source)
            copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(CLIENT / source, copy)
            unasync.unasync_files([str(copy)], [rule])
            text = header(source) + Path(scratch, "_sync", source).read_text()
            left = left_over_names(text)
            if left:
                raise SystemExit(f"{source}: no blocking twin for {sorted(left)}; see RENAMES")
            path = CLIENT / target
            text = ruff(["check", "--fix", "--select", "I", "--quiet"], text, path)
            generated[path] = ruff(["format", "--quiet"], text, path)
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a drift")
    args = parser.parse_args(argv)
    stale = 0
    for path, text in generate().items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale += 1
            name = str(path.relative_to(ROOT))
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    name,
                    f"{name} (generated)",
                )
            )
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"{stale} generated module(s) out of date: run `make sync-clients`.", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
