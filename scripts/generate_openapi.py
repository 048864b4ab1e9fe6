"""Write openapi.json from the app (``make openapi``); tests fail when the file drifts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runstore.service import Settings, create_app

ROOT = Path(__file__).resolve().parent.parent


def render() -> str:
    """The OpenAPI document as committed: sorted keys, two-space indent, final newline."""
    schema = create_app(Settings(tokens=None)).openapi()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    target = ROOT / "openapi.json"
    target.write_text(render())
    print(f"wrote {target.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
