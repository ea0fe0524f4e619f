"""The `bench` marker: tests that run the benchmark harness (smoke sizes only, no speed assertions)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker here, beside the only tests that use it."""
    config.addinivalue_line("markers", "bench: runs `python -m bench --quick` (real processes, about a minute)")

