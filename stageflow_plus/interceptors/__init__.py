"""The tool-call interceptors and the chain that runs them.

.. versionadded:: 0.1.0
"""

from .. import _accel
from .adaptive import AdaptiveConcurrency
from .backpressure import Backpressure
from .breaker import BreakerState, ToolCircuitBreaker, default_is_failure
from .call import Proceed, ToolCall, ToolCallInterceptor
from .chain import LIMITER_ORDER, ToolCallChain
from .concurrency import ConcurrencyLimiter, Partition
from .drops import default_is_drop
from .gate import AdmissionGate, LimitPart
from .observe import MultiListener, StructlogListener
from .priority import PriorityFairQueue
from .provider_feedback import (
    ProviderSettings,
    RateLimitHeaderLearner,
    default_headers_of,
    limits_from_provider,
    parse_duration,
)
from .rate import TokenBucketRateLimiter, default_retry_after

_accel.restore_docs()  # the compiled gate's docstrings

__all__ = [
    "LIMITER_ORDER",
    "AdaptiveConcurrency",
    "AdmissionGate",
    "Backpressure",
    "BreakerState",
    "ConcurrencyLimiter",
    "LimitPart",
    "MultiListener",
    "Partition",
    "PriorityFairQueue",
    "Proceed",
    "ProviderSettings",
    "RateLimitHeaderLearner",
    "StructlogListener",
    "TokenBucketRateLimiter",
    "ToolCall",
    "ToolCallChain",
    "ToolCallInterceptor",
    "ToolCircuitBreaker",
    "default_headers_of",
    "default_is_drop",
    "default_is_failure",
    "default_retry_after",
    "limits_from_provider",
    "parse_duration",
]
