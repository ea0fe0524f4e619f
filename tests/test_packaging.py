"""The package list in pyproject.toml (kept by hand for the migrations mapping) is complete."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "controller").rglob("__init__.py")
    }
    on_disk |= {"controller._migrations", "controller._migrations.versions"}
    assert on_disk == listed
