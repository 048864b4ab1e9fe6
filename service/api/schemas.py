"""Response shapes, for the OpenAPI document (the routes write their JSON directly)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from runstore.client.models import RunSummary, WriteAck
from runstore.client.problems import PROBLEM_TYPE_PREFIX

__all__ = ["Deleted", "FieldProblem", "Health", "Problem", "RunList", "WriteAck"]


class FieldProblem(BaseModel):
    path: str = Field(description="JSON path of the bad field, such as $.trace[3] or query.limit.")
    message: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description=f"{PROBLEM_TYPE_PREFIX}<slug>; the slugs are in the docs.")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = Field(None, description="With 422: each bad field.")
    request_id: str | SkipJsonSchema[None] = Field(
        None,
        alias="requestId",
        description="The request's id, as its X-Request-Id answer header says (request ids on).",
    )
    # Left out when they do not apply, never null.
    holder: str | SkipJsonSchema[None] = Field(
        None, description="With lease-held: who holds the live lease."
    )
    expires_at: int | SkipJsonSchema[None] = Field(
        None,
        alias="expiresAt",
        description="With lease-held: when the live lease expires (ms, by the store's clock).",
    )


class RunList(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    runs: list[RunSummary]
    next_cursor: str | None = Field(
        alias="nextCursor", description="Pass as cursor for the next page; null on the last."
    )


class Deleted(BaseModel):
    deleted: int = Field(description="How many runs were deleted.")


class Health(BaseModel):
    status: str
    details: dict[str, Any] | None = None
