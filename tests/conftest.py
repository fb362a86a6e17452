"""Shared fixtures: anyio runs async tests on asyncio; aggressive garbage collection."""

from __future__ import annotations

from collections.abc import Iterator

import gc_pressure
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def aggressive_gc() -> Iterator[None]:
    """Low collection thresholds for the whole test (see ``tests/gc_pressure.py``)."""
    with gc_pressure.aggressive_gc():
        yield
