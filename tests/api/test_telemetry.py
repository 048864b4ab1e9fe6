"""FastAPI's native OpenTelemetry, on only when RUNSTORE_TELEMETRY asks for it (service/app.py):
when on, FastAPI asks on every request whether a provider is configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from runstore.service import Settings, create_app


@pytest.mark.parametrize("on", [False, True])
def test_fastapi_s_telemetry_follows_the_setting(tmp_path: Path, on: bool) -> None:
    app = create_app(Settings(db=str(tmp_path / "runs.db"), telemetry=on))
    config = getattr(app, "_telemetry", None)
    if config is None:
        pytest.skip("this FastAPI has no native telemetry")
    assert (config["tracing"], config["metrics"], config["logs"]) == (on, on, on)
    assert app._native_telemetry.enabled() is False  # no provider is configured here
