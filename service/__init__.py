"""The runstore server: a FastAPI app over a durable run store."""

from __future__ import annotations

from .app import create_app
from .config import Settings

__all__ = ["Settings", "create_app"]
