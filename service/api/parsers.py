"""What the routes make of a request body: a PUT's snapshot record, a PATCH's patch record, a
lease route's JSON value.

Each is a plain function of the body's bytes and a few values (no request, no settings object),
so that :mod:`.body` can run it on the event loop for a small body or in the parser process
(:mod:`.offload`) for a large one: a function given to another process travels by its name and
its arguments by pickle. This module imports nothing of HTTP, which keeps that process light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from runstore.client.problems import RunIdMismatch

from ..store.records import PatchRecord, SnapshotRecord, patch_record, snapshot_record, written_json
from ..strict_json import parse_json, parse_json_as
from .limits import check_items

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["BodyRules", "json_of", "patch_of", "snapshot_of"]


class BodyRules(NamedTuple):
    """The settings a body is parsed under."""

    max_depth: int
    max_items: int

    @classmethod
    def of(cls, settings: Settings) -> BodyRules:
        """The rules the server's settings set."""
        return cls(settings.max_json_depth, settings.max_items_per_write)


def check_body_run_id(body: Any, run_id: str) -> None:
    """RunIdMismatch if the body names a run other than the URL's."""
    if isinstance(body, dict):
        sent = body.get("runId")
        if isinstance(sent, str) and sent != run_id:
            raise RunIdMismatch(
                f"The body's runId {sent[:200]!r} differs from the URL's {run_id!r}.",
            )


def patch_of(raw: bytes, run_id: str, rules: BodyRules) -> PatchRecord:
    """The patch record of a PATCH body."""
    body = parse_json(raw, rules.max_depth)
    check_body_run_id(body, run_id)
    check_items(body, rules.max_items)
    return patch_record(body)


def snapshot_of(raw: bytes, run_id: str, rules: BodyRules) -> SnapshotRecord:
    """The snapshot record of a PUT body; its duplicate-key check counts what the record
    wrote, which encodes every part anyway (strict_json.parse_json_as)."""

    def record_of(body: Any) -> SnapshotRecord:
        check_body_run_id(body, run_id)
        return snapshot_record(body)

    def items_within_limit(body: Any) -> None:
        check_items(body, rules.max_items)

    return parse_json_as(raw, record_of, written_json, rules.max_depth, check=items_within_limit)


def json_of(raw: bytes, rules: BodyRules) -> Any:
    """The JSON value of a body (the lease routes validate it themselves)."""
    return parse_json(raw, rules.max_depth)
