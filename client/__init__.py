"""The runstore client: snapshots, an HTTP client with persistence hooks, and embedded mode."""

from __future__ import annotations

from ._models import RunPatch, RunSnapshot, RunSummary

__all__ = ["RunPatch", "RunSnapshot", "RunSummary"]
