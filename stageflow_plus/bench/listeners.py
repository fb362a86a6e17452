"""The listener every benchmark uses where it measures the limiter, not log rendering.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from typing import Any

from ..primitives import Rejected

__all__ = ["SilentListener"]


class SilentListener:
    """A limiter listener that drops every event.

    ``immediate_events = False`` tells the limiter not to report immediate admissions at all,
    so a benchmark with it pays for nothing it would throw away.
    """

    immediate_events = False

    def on_queued(self, info: Any, depth: int) -> None:
        """Ignored."""

    def on_admitted(self, info: Any, wait: float) -> None:
        """Ignored."""

    def on_rejected(self, info: Any, error: Rejected) -> None:
        """Ignored."""

    def on_released(self, info: Any, held: float) -> None:
        """Ignored."""
