"""What a wheel holds: every package of the source tree is listed for setuptools, and a wheel
built from the tree holds every module under ``runstore.``, the viewer's static files
(``service/ui/``, package data) and the ``runstore`` command.

An editable install (``make test``) finds any package in the tree, so a package missing from
``pyproject.toml`` shows only in a built wheel, such as the container's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_in_the_tree_is_in_the_wheel() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join((name, *relative.parts)))
    assert found == listed


@pytest.mark.slow
def test_a_built_wheel_holds_every_module_and_the_command(tmp_path: Path) -> None:
    # Built from a copy, so the build leaves nothing (build/, *.egg-info) in the tree.
    source = tmp_path / "source"
    source.mkdir()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in config["package-dir"].values():
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), source],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("runstore-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        commands = archive.read(entry_points).decode()

    expected = {
        "/".join((*name.split("."), str(path.relative_to(ROOT / folder))))
        for name, folder in config["package-dir"].items()
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".typed", ".html", ".js", ".css")
        and "__pycache__" not in path.parts
    }
    modules = {name for name in names if ".dist-info/" not in name}
    assert modules == expected
    assert "runstore = runstore.service.cli:main" in commands
