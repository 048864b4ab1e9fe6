"""FastAPI's per-request "is OpenTelemetry configured" check, asked through a StickyCheck."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runstore.service import Settings, create_app
from runstore.service.app import StickyCheck


def test_the_telemetry_check_is_asked_at_most_once_an_interval_until_yes() -> None:
    answers = iter([False, False, True])
    asked: list[float] = []

    def check() -> bool:
        asked.append(time.monotonic())
        return next(answers)

    sticky = StickyCheck(check, interval=0.05)
    assert not any(sticky() for _ in range(1000))
    assert len(asked) == 1
    time.sleep(0.06)
    assert not sticky()
    assert len(asked) == 2
    time.sleep(0.06)
    assert all(sticky() for _ in range(1000))
    time.sleep(0.06)
    assert sticky()
    assert len(asked) == 3  # a yes is final: never asked again


def test_the_app_asks_fastapi_s_telemetry_check_through_a_sticky_check(tmp_path: Path) -> None:
    app = create_app(Settings(db=str(tmp_path / "runs.db")))
    telemetry = getattr(app, "_native_telemetry", None)
    if telemetry is None:
        pytest.skip("this FastAPI has no native telemetry")
    assert isinstance(telemetry.enabled, StickyCheck)
    assert telemetry.enabled() is False  # no OpenTelemetry provider is configured here
