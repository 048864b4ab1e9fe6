"""What routes read from a request besides its headers and body: the app's state (the store,
the settings, the body budget, the body parser, the event broker), put in the ASGI scope by the
lifespan, and the run id of the path, checked against the contract's pattern."""

from __future__ import annotations

from fastapi import Request

from runstore.client.models import RUN_ID_PATTERN, is_run_id
from runstore.client.problems import InvalidRun

from ..config import Settings
from ..events import EventBroker
from ..store.base import RunStore
from .limits import BodyBudget
from .offload import BodyParser

__all__ = ["body_budget_of", "body_parser_of", "broker_of", "run_id_of", "settings_of", "store_of"]


def store_of(request: Request) -> RunStore:
    store: RunStore = request.scope["state"]["store"]
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.scope["state"]["settings"]
    return settings


def body_budget_of(request: Request) -> BodyBudget:
    budget: BodyBudget = request.scope["state"]["body_budget"]
    return budget


def body_parser_of(request: Request) -> BodyParser:
    parser: BodyParser = request.scope["state"]["body_parser"]
    return parser


def broker_of(request: Request) -> EventBroker:
    broker: EventBroker = request.scope["state"]["events"]
    return broker


def run_id_of(request: Request) -> str:
    """The path's ``runId``; InvalidRun (422) if it is not an id a run can have."""
    run_id: str = request.path_params["runId"]
    if not is_run_id(run_id):
        raise InvalidRun(
            "The run id in the URL must be 1-200 characters of A-Z a-z 0-9 _ . ~ : @ - "
            "starting with a letter or digit.",
            errors=[
                {
                    "path": "path.runId",
                    "message": f"must be 1-200 characters matching {RUN_ID_PATTERN}",
                    "type": "string_pattern_mismatch",
                }
            ],
        )
    return run_id
