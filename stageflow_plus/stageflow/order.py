"""Where our stage interceptors must sit among Stageflow's, checked when a stack is built.

Stageflow runs ``before()`` in ascending ``priority``: the call scope must run after
``TimeoutInterceptor`` (it reads the stage timeout), and a stage limiter after the circuit
breaker (an open breaker must short-circuit before anything queues).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Sequence

from stageflow.pipeline.interceptors import (
    BaseInterceptor,
    CircuitBreakerInterceptor,
    TimeoutInterceptor,
)

from ..primitives.errors import ConfigError
from .adapters import CallScopeInterceptor, LimitAwareCircuitBreaker, StageLimitInterceptor

__all__ = ["check_order"]


def check_order(interceptors: Sequence[BaseInterceptor]) -> None:
    """Refuse interceptor orders that break the coordination with Stageflow's own.

    * the call scope must run after ``TimeoutInterceptor`` (it reads the stage timeout);
    * a stage limiter must run after the circuit breaker (an open breaker must short-circuit
      before anything queues) and after ``TimeoutInterceptor``;
    * a plain ``CircuitBreakerInterceptor`` counts our refusals as failures: use
      :class:`LimitAwareCircuitBreaker` with stage limiters.
    """
    def priority_of(kind: type) -> int | None:
        found = [i.priority for i in interceptors if isinstance(i, kind)]
        return min(found) if found else None

    timeout = priority_of(TimeoutInterceptor)
    breaker = priority_of(CircuitBreakerInterceptor)
    for interceptor in interceptors:
        where = f"interceptor {interceptor.name!r} (priority {interceptor.priority})"
        if isinstance(interceptor, (CallScopeInterceptor, StageLimitInterceptor)) and (
            timeout is not None and interceptor.priority <= timeout
        ):
            raise ConfigError(
                f"{where} must run after TimeoutInterceptor (priority {timeout}) to see the "
                "stage timeout; give it a higher priority"
            )
        if isinstance(interceptor, StageLimitInterceptor):
            if breaker is not None and interceptor.priority <= breaker:
                raise ConfigError(
                    f"{where} must run inside the circuit breaker (priority {breaker}) so an "
                    "open breaker queues nothing; give it a higher priority"
                )
            plain = [
                i for i in interceptors
                if isinstance(i, CircuitBreakerInterceptor)
                and not isinstance(i, LimitAwareCircuitBreaker)
            ]
            if plain:
                raise ConfigError(
                    f"{where}: Stageflow's plain CircuitBreakerInterceptor would count this "
                    "limiter's refusals as failures; use LimitAwareCircuitBreaker instead"
                )
