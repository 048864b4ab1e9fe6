"""Leases and claims (docs/api.md, "Leases"): one owner per run, with fencing.

``POST /runs/{runId}/lease`` takes or renews a lease, ``DELETE /runs/{runId}/lease`` releases
one, ``POST /claims`` hands an orphaned run to a new owner. The routes validate and call the
store; what each operation may do is decided by :mod:`..store.rules`, in the store's
transaction. Writes carry their lease in the ``Runstore-Lease`` header (:mod:`.routes`).
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import Response

from runstore.client.models import ClaimedRun, ClaimRequest, Lease, LeaseRequest
from runstore.client.problems import InvalidRun

from ..store.base import ClaimQuery
from ..store.records import validated
from .body import read_parsed
from .headers import LEASE_HEADER, header, parse_lease
from .openapi import ETAG_HEADER, JSON, LEASE_PARAM, RUN_ID_PARAM, problem_responses
from .parsers import BodyRules, json_of
from .request_state import body_budget_of, run_id_of, settings_of, store_of

__all__ = ["lease_router"]

lease_router = APIRouter(tags=["leases"])

_BODY_ERRORS: Final = (400, 401, 403, 408, 413, 415, 422, 503)
_LEASE_CONFLICT: Final = (
    "lease-held (another holder's lease is live: the problem names holder and expiresAt, and "
    "Retry-After says when it expires) or lease-lost (a newer lease exists)"
)


async def _body(request: Request) -> Any:
    # Small bodies, but held against the server's body budget like any other (limits).
    settings = settings_of(request)
    with body_budget_of(request).holding() as hold:
        return await read_parsed(request, settings, hold, json_of, BodyRules.of(settings))


def _conflict_doc() -> dict[int | str, dict[str, Any]]:
    problems = problem_responses(409)
    problems[409] = {**problems[409], "description": _LEASE_CONFLICT}
    return problems


@lease_router.post(
    "/runs/{runId}/lease",
    summary="Take or renew the lease on a run",
    response_model=Lease,
    responses={**problem_responses(*_BODY_ERRORS, 404), **_conflict_doc()},
    openapi_extra={
        "parameters": [RUN_ID_PARAM],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/LeaseRequest"}}},
        },
    },
)
async def acquire_lease(request: Request) -> Response:
    """Without ``lease``: a new lease (number previous + 1) when none is live. With ``lease``:
    renew that lease, which must be the holder's and the run's latest. ``ttlMs`` from now."""
    run_id = run_id_of(request)
    body = validated(LeaseRequest, await _body(request), "lease request")
    lease = await store_of(request).acquire_lease(
        run_id, body.holder, body.ttl_ms, lease=body.lease
    )
    return Response(lease.to_json().encode(), media_type=JSON)


@lease_router.delete(
    "/runs/{runId}/lease",
    summary="Release a lease",
    status_code=204,
    response_class=Response,
    responses={**problem_responses(400, 401, 403, 404, 422, 503), **_conflict_doc()},
    openapi_extra={"parameters": [RUN_ID_PARAM, {**LEASE_PARAM, "required": True}]},
)
async def release_lease(request: Request) -> Response:
    """End lease ``Runstore-Lease`` now; safe to repeat while it is the run's latest lease."""
    run_id = run_id_of(request)
    lease = parse_lease(header(request, b"runstore-lease"))
    if lease is None:
        raise InvalidRun(
            f"Say which lease to release: {LEASE_HEADER}: <n>.",
            errors=[
                {"path": f"header.{LEASE_HEADER}", "message": "is required", "type": "missing"}
            ],
        )
    await store_of(request).release_lease(run_id, lease)
    return Response(status_code=204)


@lease_router.post(
    "/claims",
    summary="Take over one orphaned run",
    response_model=ClaimedRun,
    responses={
        200: {"headers": ETAG_HEADER},
        204: {"description": "No run qualifies"},
        **problem_responses(*_BODY_ERRORS),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/ClaimRequest"}}},
        },
    },
)
async def claim_run(request: Request) -> Response:
    """The orphaned run (unfinished, with a status in ``status``, whose last lease expired, or
    that never had one and was last written ``staleAfterMs`` ago) that has waited longest, with
    a new lease for ``holder``; 204 when none qualifies. Two claimers never get the same run."""
    body = validated(ClaimRequest, await _body(request), "claim")
    claimed = await store_of(request).claim_run(
        ClaimQuery(
            holder=body.holder,
            ttl_ms=body.ttl_ms,
            statuses=tuple(dict.fromkeys(body.status)),
            stale_after_ms=body.stale_after_ms,
        )
    )
    if claimed is None:
        return Response(status_code=204)
    return Response(
        b'{"run":%s,"lease":%s}' % (claimed.run.body, claimed.lease.to_json().encode()),
        media_type=JSON,
        headers={"ETag": f'"{claimed.run.version}"'},
    )
