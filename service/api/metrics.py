"""``GET /metrics``: the server's Prometheus metrics (:mod:`runstore.service.metrics`).

Read scope under tokens (:mod:`.auth`); a scraper that should hold no token gets the same page
on ``RUNSTORE_METRICS_PORT`` instead (served by prometheus-client, from the app's lifespan).
Served only while metrics are on (``RUNSTORE_METRICS``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..metrics import CONTENT_TYPE, ServerMetrics
from .openapi import problem_responses

__all__ = ["metrics_router"]

metrics_router = APIRouter()


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics of the server",
    description="The Prometheus text exposition format (version 0.0.4): requests by route "
    "template, method and status class with latency histograms, store commit latency and "
    "writes per commit, write queue, waiting reads, SQLite WAL size or PostgreSQL pool, runs "
    "by status, live leases, open event streams, process and Python metrics. Read from memory: "
    "a scrape never touches the database.",
    tags=["health"],
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}},
        **problem_responses(401, 403),
    },
)
async def metrics(request: Request) -> Response:
    registry: ServerMetrics = request.app.state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE)
