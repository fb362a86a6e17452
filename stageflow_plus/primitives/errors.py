"""The exceptions of stageflow-plus.

Every refusal is an ordinary :class:`Exception` (never a ``BaseException``), so it cannot be
mistaken for cancellation. The tree is two levels deep::

    StageflowPlusError
    ├── ConfigError                 invalid configuration (also a ValueError)
    └── Rejected                    a call was refused; carries reason, key, limiter, queue_depth,
        │                           retry_after
        ├── WouldBlock              try_acquire() found no room and did not wait
        ├── QueueFull               the wait queue (total or per key) was at its bound
        ├── DeadlineUnmeetable      the estimated wait exceeds the caller's remaining deadline
        ├── WaitTimeout             the caller waited until its deadline or max wait
        ├── Evicted                 shed from the queue to make room for a more urgent call
        ├── CostTooLarge            the call can never fit (cost above burst or capacity)
        ├── CircuitOpen             the tool's circuit breaker is open
        ├── LimiterClosed           the limiter was closed while the call waited
        └── BackendUnavailable      Redis unreachable under ``fail_closed`` (backends)

Elsewhere, also under :class:`StageflowPlusError`: ``OverrideError`` (and its
``InvalidRunOverride``, also Stageflow's ``CriticalInterceptorError``) and
``UnknownInterceptor`` (config errors of the Stageflow integration), ``WriteConflict`` and
``VersionConflict`` (output bag; also Stageflow ``OutputConflictError``), ``ToolFailed`` and
``BatchFailed`` (parallel batches). Every exception class the package exports is one
(``tests/test_errors.py`` walks every module).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "CircuitOpen",
    "ConfigError",
    "CostTooLarge",
    "DeadlineUnmeetable",
    "Evicted",
    "LimiterClosed",
    "QueueFull",
    "Rejected",
    "StageflowPlusError",
    "WaitTimeout",
    "WouldBlock",
]


class StageflowPlusError(Exception):
    """Root of every exception raised by stageflow-plus."""


class ConfigError(StageflowPlusError, ValueError):
    """Invalid configuration. The message names the offending entry and where it came from."""


class Rejected(StageflowPlusError):
    """A call was refused by a limiter and did not run.

    :ivar reason: a short machine-readable reason (``"queue_full"``, ``"deadline"``, ...).
    :ivar key: the limit key that refused (e.g. ``"tool:search"``), or ``None``.
    :ivar limiter: the name of the limiter that refused.
    :ivar queue_depth: how many calls were waiting when the refusal happened.
    :ivar retry_after: seconds after which a retry may succeed, when known.
    """

    reason: str = "rejected"

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        limiter: str = "",
        queue_depth: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.limiter = limiter
        self.queue_depth = queue_depth
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description, for events and logs."""
        return {
            "error_type": type(self).__name__,
            "reason": self.reason,
            "message": str(self),
            "key": self.key,
            "limiter": self.limiter,
            "queue_depth": self.queue_depth,
            "retry_after": self.retry_after,
        }


class WouldBlock(Rejected):
    """``try_acquire`` could not be satisfied at once (or others were already waiting)."""

    reason = "would_block"


class QueueFull(Rejected):
    """The queue was at its bound and the shedding policy refused this call."""

    reason = "queue_full"


class DeadlineUnmeetable(Rejected):
    """The estimated queue wait is longer than the caller's remaining deadline."""

    reason = "deadline"


class WaitTimeout(Rejected):
    """The call waited in the queue until its deadline (or ``max_wait``) passed."""

    reason = "wait_timeout"


class Evicted(Rejected):
    """The call was removed from the queue to make room for a more urgent call."""

    reason = "evicted"


class CostTooLarge(Rejected):
    """The call asks for more than a limit can ever grant (cost above burst or capacity)."""

    reason = "cost_too_large"


class CircuitOpen(Rejected):
    """The circuit breaker for this tool is open; the call failed fast."""

    reason = "circuit_open"


class LimiterClosed(Rejected):
    """The limiter was closed; waiting calls are refused."""

    reason = "closed"


class BackendUnavailable(Rejected):
    """The shared backend (Redis) could not be reached and the policy is ``fail_closed``.

    The call did not run. ``retry_after`` is when the backend will be tried again.
    Exported by :mod:`stageflow_plus.backends` and the package too (it lives here so that
    the backends need not import the interceptors).

    :ivar sent: the request had been written when the failure came (it may have run).
    """

    reason = "backend_unavailable"
    sent = False
