"""docs/operations.md's settings table names every setting the server reads."""

from __future__ import annotations

from pathlib import Path

from runstore.service import Settings

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_setting_has_a_row() -> None:
    rows = [line for line in OPERATIONS.read_text().splitlines() if line.startswith("| `RUNSTORE_")]
    documented = {row.split("`")[1] for row in rows}
    settings = {f"RUNSTORE_{name.upper()}" for name in Settings.model_fields}
    assert settings - documented == set()
