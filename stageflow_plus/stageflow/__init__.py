"""Stageflow integration: stage adapters, config builder, plugins, overrides, tool wrappers.

.. versionadded:: 0.1.0
"""

from .. import _accel
from ..interceptors.dimensions import UnchargedDimensionWatch
from ..primitives.dimensions import KNOWN_DIMENSIONS, register_dimension
from .adapters import (
    PARTIAL_KEY,
    REFUSED_KEY,
    CallScopeInterceptor,
    InvalidRunOverride,
    LimitAwareCircuitBreaker,
    PartialResults,
    RefusalRecord,
    StageLimitInterceptor,
)
from .batch import (
    BatchFailed,
    BatchItem,
    BatchResult,
    BatchTarget,
    Strategy,
    ToolFailed,
    run_batch,
)
from .config import StageflowPlus, build, load_config
from .env import ENV_VARS
from .events import StageflowEventListener
from .order import check_order
from .output_bag import BagStatistics, ToolResultBag, VersionConflict, Versioned, WriteConflict
from .overrides import OVERRIDE_KEYS, Ceilings, OverrideError, RunOverrides, read_overrides
from .plugins import (
    ENTRY_POINT_GROUP,
    UnknownInterceptor,
    available_interceptors,
    load_interceptor,
)
from .scope import CallScope, call_scope, current_scope
from .tools import (
    CostEstimator,
    LimitedAdvancedToolExecutor,
    LimitedToolExecutor,
    LimitedToolRegistry,
    build_call,
)

_accel.restore_docs()  # the compiled CallScope's and build_call's docstrings

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_VARS",
    "KNOWN_DIMENSIONS",
    "OVERRIDE_KEYS",
    "PARTIAL_KEY",
    "REFUSED_KEY",
    "BagStatistics",
    "BatchFailed",
    "BatchItem",
    "BatchResult",
    "BatchTarget",
    "CallScope",
    "CallScopeInterceptor",
    "Ceilings",
    "CostEstimator",
    "InvalidRunOverride",
    "LimitAwareCircuitBreaker",
    "LimitedAdvancedToolExecutor",
    "LimitedToolExecutor",
    "LimitedToolRegistry",
    "OverrideError",
    "PartialResults",
    "RefusalRecord",
    "RunOverrides",
    "StageLimitInterceptor",
    "StageflowEventListener",
    "StageflowPlus",
    "Strategy",
    "ToolFailed",
    "ToolResultBag",
    "UnchargedDimensionWatch",
    "UnknownInterceptor",
    "VersionConflict",
    "Versioned",
    "WriteConflict",
    "available_interceptors",
    "build",
    "build_call",
    "call_scope",
    "check_order",
    "current_scope",
    "load_config",
    "load_interceptor",
    "read_overrides",
    "register_dimension",
    "run_batch",
]
