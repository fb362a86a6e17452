"""Stageflow integration: tool-runner wrappers, call scope, events.

.. versionadded:: 0.1.0
"""

from .events import StageflowEventListener
from .scope import CallScope, call_scope, current_scope
from .tools import (
    CostEstimator,
    LimitedAdvancedToolExecutor,
    LimitedToolExecutor,
    LimitedToolRegistry,
    build_call,
)

__all__ = [
    "CallScope",
    "CostEstimator",
    "LimitedAdvancedToolExecutor",
    "LimitedToolExecutor",
    "LimitedToolRegistry",
    "StageflowEventListener",
    "build_call",
    "call_scope",
    "current_scope",
]
