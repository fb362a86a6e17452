"""Limiter events on Stageflow's event sink, beside Stageflow's own ``tool.*`` events.

Types: ``tool.queued`` (a call had to wait), ``tool.rejected`` (refused by a limiter, with
reason, key, queue depth and retry_after), ``tool.throttled`` (a provider's Retry-After
paused a key for every caller), ``tool.observer_error`` (an interceptor's after-call hook
raised, e.g. a failing ``actual_cost``; the tool's outcome was kept). They go to
``stageflow.events.get_event_sink()`` of the calling context, with ``try_emit`` (never
blocks the call).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import Any

from stageflow.events import get_event_sink

from ..interceptors.observe import call_fields
from ..primitives.errors import Rejected

__all__ = ["StageflowEventListener"]


class StageflowEventListener:
    """Emits ``tool.queued`` / ``tool.rejected`` / ``tool.throttled`` /
    ``tool.observer_error`` to the event sink."""

    __slots__ = ()

    immediate_events = False  # nothing is emitted for an immediate admission

    def on_queued(self, info: Any, depth: int) -> None:
        _emit("tool.queued", {"queue_depth": depth, **call_fields(info)})

    def on_admitted(self, info: Any, wait: float) -> None:
        pass

    def on_rejected(self, info: Any, error: Rejected) -> None:
        _emit("tool.rejected", {**error.to_dict(), **call_fields(info)})

    def on_released(self, info: Any, held: float) -> None:
        pass

    def on_paused(self, key: str, retry_after: float) -> None:
        _emit("tool.throttled", {"key": key, "retry_after": retry_after})

    def on_observer_error(self, info: Any, hook: str, error: Exception) -> None:
        _emit("tool.observer_error",
              {"hook": hook, "error_type": type(error).__name__, **call_fields(info)})


def _emit(event_type: str, data: dict[str, Any]) -> None:
    get_event_sink().try_emit(type=event_type, data=data)
