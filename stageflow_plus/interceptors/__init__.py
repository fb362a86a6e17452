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
from .learner import RateLimitHeaderLearner, default_headers_of
from .limit import CallHandle, LimitedBlock
from .limited import limited
from .llm_cost import TokenEstimate
from .observe import LoggingListener, MultiListener, StructlogListener, notify_limit_changed
from .pause import PauseGate, ProviderPause
from .priority import PriorityFairQueue
from .provider_feedback import ProviderSettings, limits_from_provider, parse_duration
from .rate import TokenBucketRateLimiter, default_retry_after
from .retry import RetryDecision, RetryStatistics, ToolCallRetry
from .retry_budget import RetryBudget, RetryBudgetStatistics
from .usage_reconciler import UsageReconciler

_accel.restore_docs()  # the compiled gate's docstrings

__all__ = [
    "LIMITER_ORDER",
    "AdaptiveConcurrency",
    "AdmissionGate",
    "Backpressure",
    "BreakerState",
    "CallHandle",
    "ConcurrencyLimiter",
    "LimitPart",
    "LimitedBlock",
    "LoggingListener",
    "MultiListener",
    "Partition",
    "PauseGate",
    "PriorityFairQueue",
    "Proceed",
    "ProviderPause",
    "ProviderSettings",
    "RateLimitHeaderLearner",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryDecision",
    "RetryStatistics",
    "StructlogListener",
    "TokenBucketRateLimiter",
    "TokenEstimate",
    "ToolCall",
    "ToolCallChain",
    "ToolCallInterceptor",
    "ToolCallRetry",
    "ToolCircuitBreaker",
    "UsageReconciler",
    "default_headers_of",
    "default_is_drop",
    "default_is_failure",
    "default_retry_after",
    "limited",
    "limits_from_provider",
    "notify_limit_changed",
    "parse_duration",
]
