"""The wire models: the shapes the store, the server and the client share.

The run snapshot is the camelCase JSON of the agent framework's ``IRunSnapshot``. In Python the
fields are snake_case; both names are accepted when a model is built in Python, while the server
reads the camelCase names only (a snake_case key on the wire is an unknown field, kept as sent).
The server imports these models for its OpenAPI document and its field rules; the client builds
and reads them.

This module needs pydantic only, so the client can be installed without the server.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

__all__ = [
    "HOLDER_PATTERN",
    "MAX_INT",
    "MAX_TTL_MS",
    "MIN_TTL_MS",
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "RESERVED_FIELDS",
    "RUN_ID_PATTERN",
    "STATUS_PATTERN",
    "ClaimRequest",
    "ClaimedRun",
    "Lease",
    "LeaseRequest",
    "RunPatch",
    "RunSnapshot",
    "RunSummary",
    "WriteAck",
    "is_run_id",
]

RUN_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.~:@-]*$"
STATUS_PATTERN: Final = r"^[a-z][a-z0-9_-]{0,31}$"
# Integers in the snapshot's own fields are stored in 64-bit columns.
MAX_INT: Final = 2**63 - 1

RUN_ID_RE: Final = re.compile(RUN_ID_PATTERN)
# A lease's holder: 1-200 printable characters (no control character).
HOLDER_PATTERN: Final = r"^[^\x00-\x1f\x7f-\x9f]{1,200}$"
MIN_TTL_MS: Final = 1_000
MAX_TTL_MS: Final = 3_600_000


def is_run_id(value: object) -> bool:
    """Whether ``value`` is an id a run can have: 1-200 characters, all of them matching
    ``RUN_ID_PATTERN`` (whole: a trailing newline does not pass its ``$``)."""
    return (
        isinstance(value, str) and 0 < len(value) <= 200 and RUN_ID_RE.fullmatch(value) is not None
    )


RunId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=RUN_ID_PATTERN)]
Status = Annotated[str, StringConstraints(pattern=STATUS_PATTERN)]
Millis = Annotated[int, Field(ge=0, le=MAX_INT)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]

# Wire names of the snapshot's own fields.
REQUIRED_FIELDS: Final = frozenset(
    {
        "runId",
        "status",
        "startedAt",
        "input",
        "trace",
        "usage",
        "stepIndex",
        "iterations",
        "revisions",
    }
)
OPTIONAL_FIELDS: Final = frozenset({"completedAt", "history", "plan", "text", "error"})
# Names the store adds to summaries or reads from PATCH bodies; a snapshot may not use them.
RESERVED_FIELDS: Final = frozenset(
    {"traceLength", "version", "updatedAt", "traceFrom", "historyFrom"}
)

_CONFIG = ConfigDict(
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
    extra="allow",
)


class RunSnapshot(BaseModel):
    """A whole run as the agent framework holds it.

    Unknown fields are kept (``model_extra``) and sent back as they came, so that a newer
    framework does not lose data through an older client or store.
    """

    model_config = _CONFIG

    run_id: RunId
    status: Status
    started_at: Millis
    completed_at: Millis | None = None
    input: str
    history: list[dict[str, Any]] | None = None
    plan: dict[str, Any] | None = None
    trace: list[Any] = Field(default_factory=list)
    usage: dict[str, Any] = Field(default_factory=dict)
    step_index: Count = 0
    iterations: Count = 0
    revisions: Count = 0
    text: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """A run whose ``completedAt`` is set is finished; the store never un-finishes it."""
        return self.completed_at is not None

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON object sent to the store: optional fields that are None left out."""
        wire = self.model_dump(mode="json", by_alias=True)
        for name in OPTIONAL_FIELDS:
            if wire.get(name, 0) is None:
                del wire[name]
        return wire


class RunPatch(BaseModel):
    """The body of a PATCH: any subset of the snapshot's fields, plus where appends start.

    Fields not sent stay as stored; ``None`` on an optional field clears it. ``trace`` needs
    ``trace_from`` and ``history`` needs ``history_from`` (unless it clears the history).
    Only the fields that were set (``model_fields_set``) and the extra fields are sent.
    """

    model_config = _CONFIG

    run_id: RunId | None = None
    status: Status | None = None
    started_at: Millis | None = None
    completed_at: Millis | None = None
    input: str | None = None
    history: list[dict[str, Any]] | None = None
    history_from: Count | None = None
    plan: dict[str, Any] | None = None
    trace: list[Any] | None = None
    trace_from: Count | None = None
    usage: dict[str, Any] | None = None
    step_index: Count | None = None
    iterations: Count | None = None
    revisions: Count | None = None
    text: str | None = None
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON object of the fields that were set."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


_STRICT_CONFIG = ConfigDict(
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
    extra="forbid",
)
Holder = Annotated[str, StringConstraints(pattern=HOLDER_PATTERN)]
TtlMs = Annotated[int, Field(ge=MIN_TTL_MS, le=MAX_TTL_MS, description="1,000 to 3,600,000 ms.")]


class Lease(BaseModel):
    """A lease: ``holder`` owns run ``run_id`` until ``expires_at`` (ms by the store's clock;
    reason with ``ttl_ms``, never by comparing clocks). ``lease`` is the fencing token, sent as
    ``Runstore-Lease`` with every write under it."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
    )

    run_id: str
    holder: str
    lease: int = Field(ge=1, description="The fencing token: +1 with every lease granted.")
    expires_at: int
    ttl_ms: int


class LeaseRequest(BaseModel):
    """The body of ``POST /runs/{runId}/lease``: take a lease, or renew lease ``lease``."""

    model_config = _STRICT_CONFIG

    holder: Holder
    ttl_ms: TtlMs
    lease: Annotated[int, Field(ge=1, le=MAX_INT)] | None = Field(
        None, description="Renew this lease (the holder's current one) instead of taking one."
    )


class ClaimRequest(BaseModel):
    """The body of ``POST /claims``: take over the orphaned run that has waited longest."""

    model_config = _STRICT_CONFIG

    holder: Holder
    ttl_ms: TtlMs
    status: list[Status] = Field(default_factory=lambda: ["running"], min_length=1, max_length=32)
    stale_after_ms: Annotated[int, Field(ge=0, le=MAX_INT)] = Field(
        60_000,
        description="A run that never had a lease is orphaned once unwritten for this long.",
    )


class ClaimedRun(BaseModel):
    """What ``POST /claims`` answers: the run as stored and the new lease on it (the run's
    version comes as the answer's ETag)."""

    model_config = ConfigDict(frozen=True)

    run: RunSnapshot
    lease: Lease
    version: int = Field(default=0, exclude=True)


class RunSummary(BaseModel):
    """One row of ``GET /runs``: the snapshot without trace, history and plan."""

    model_config = _CONFIG

    run_id: str
    status: str
    started_at: int
    completed_at: int | None = None
    input: str
    usage: dict[str, Any] = Field(default_factory=dict)
    step_index: int = 0
    iterations: int = 0
    revisions: int = 0
    text: str | None = None
    error: str | None = None
    trace_length: int
    version: int
    updated_at: int
    lease: Lease | None = Field(None, description="The live lease on the run, or null.")


class WriteAck(BaseModel):
    """What a PUT or PATCH left stored: the run's new version and its trace length."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
    )

    run_id: str
    version: int = Field(description="Raised by one on every write of the run; also the ETag.")
    trace_length: int
    # Whether the write created the run: said by the answer's status (201), not by its body.
    created: bool = Field(default=False, exclude=True)
