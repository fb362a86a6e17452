"""A per-tool circuit breaker that feeds only on real downstream failures.

Stageflow's ``CircuitBreakerInterceptor`` counts per *stage*; one flaky tool inside a stage
that calls ten should not stop the other nine. :class:`ToolCircuitBreaker` keeps a breaker
per key (the tool, by default) and sits *outside* the limits in a
:class:`~stageflow_plus.interceptors.chain.ToolCallChain` (``outside_limits = True``): while
it is open a call fails fast with :class:`~stageflow_plus.primitives.errors.CircuitOpen`
before it queues or spends a token.

What counts as a failure: an exception raised by the tool, or a result the classifier calls a
failure (by default HTTP 5xx and 429, read from ``status`` / ``status_code`` attributes or
keys, or from ``ToolOutput.data``). What never counts, and never resets the count either:
refusals by our own limiters (:class:`~stageflow_plus.primitives.errors.Rejected` — queue
full, deadline, rate), which say nothing about the downstream's health.

States: *closed* → after ``failure_threshold`` consecutive failures *open* for
``reset_timeout`` seconds → *half-open*: up to ``half_open_calls`` probe calls; a success
closes it, a failure opens it again.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..primitives.clock import Clock, as_clock
from ..primitives.errors import CircuitOpen, ConfigError, Rejected
from .call import Proceed, ToolCall

__all__ = ["BreakerState", "ToolCircuitBreaker", "default_is_failure"]


def _status_of(outcome: Any) -> int | None:
    for source in (outcome, getattr(outcome, "data", None)):
        if source is None:
            continue
        for name in ("status_code", "status"):
            value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def default_is_failure(result: Any) -> bool:
    """A result is a failure when it carries an HTTP status of 429 or 5xx."""
    status = _status_of(result)
    return status is not None and (status == 429 or 500 <= status <= 599)


@dataclass(slots=True)
class BreakerState:
    """One key's breaker: ``state`` is ``"closed"``, ``"open"`` or ``"half_open"``."""

    state: str = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probes: int = 0
    trips: int = 0


class ToolCircuitBreaker:
    """Fails fast for a tool whose downstream keeps failing (a tool-call interceptor).

    :param failure_threshold: consecutive failures that open the breaker.
    :param reset_timeout: seconds open before probing (half-open).
    :param half_open_calls: probe calls let through while half-open.
    :param key: what a breaker is per — ``"tool"`` (default) or a function of the call.
    :param is_failure: classifies a *result* as a downstream failure (exceptions always are,
        except our own refusals).
    :param clock: time source (default: the loop's clock).
    """

    outside_limits = True

    __slots__ = (
        "_clock",
        "_half_open_calls",
        "_is_failure",
        "_key",
        "_reset_timeout",
        "_states",
        "_threshold",
    )

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_calls: int = 1,
        key: str | Callable[[ToolCall], str] = "tool",
        is_failure: Callable[[Any], bool] = default_is_failure,
        clock: Clock | Callable[[], float] | None = None,
    ) -> None:
        for name, value in (
            ("failure_threshold", failure_threshold),
            ("half_open_calls", half_open_calls),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ToolCircuitBreaker {name} must be an int >= 1, got {value!r}")
        if isinstance(reset_timeout, bool) or not isinstance(reset_timeout, (int, float)) or not (
            0 < reset_timeout < float("inf")
        ):
            raise ConfigError(
                f"ToolCircuitBreaker reset_timeout must be a number > 0, got {reset_timeout!r}"
            )
        if key == "tool":
            self._key: Callable[[ToolCall], str] = _tool_key
        elif callable(key):
            self._key = key
        else:
            raise ConfigError(f"ToolCircuitBreaker key must be 'tool' or a function, got {key!r}")
        self._threshold = failure_threshold
        self._reset_timeout = float(reset_timeout)
        self._half_open_calls = half_open_calls
        self._is_failure = is_failure
        self._clock = as_clock(clock)
        self._states: dict[str, BreakerState] = {}

    def state(self, key: str) -> BreakerState:
        """The breaker of ``key`` (closed if never used)."""
        return self._states.get(key) or BreakerState()

    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
        key = self._key(call)
        breaker = self._states.get(key)
        if breaker is None:
            breaker = self._states[key] = BreakerState()
        probing = self._admit(key, breaker)
        try:
            result = await proceed(call)
        except Rejected:
            if probing:
                breaker.probes -= 1  # our refusal is no verdict on the downstream
            raise
        except Exception:
            self._failed(breaker)
            raise
        except BaseException:
            if probing:
                breaker.probes -= 1
            raise
        if self._is_failure(result):
            self._failed(breaker)
        else:
            self._succeeded(breaker)
        return result

    def _admit(self, key: str, breaker: BreakerState) -> bool:
        if breaker.state == "closed":
            return False
        now = self._clock.now()
        if breaker.state == "open":
            remaining = breaker.opened_at + self._reset_timeout - now
            if remaining > 0:
                raise CircuitOpen(
                    f"circuit breaker for {key!r} is open after {breaker.failures} consecutive "
                    f"downstream failures; retry in {remaining:.1f}s",
                    key=key,
                    limiter="ToolCircuitBreaker",
                    retry_after=remaining,
                )
            breaker.state, breaker.probes = "half_open", 0
        if breaker.probes >= self._half_open_calls:
            raise CircuitOpen(
                f"circuit breaker for {key!r} is half-open and its probe call is still running",
                key=key,
                limiter="ToolCircuitBreaker",
                retry_after=self._reset_timeout,
            )
        breaker.probes += 1
        return True

    def _failed(self, breaker: BreakerState) -> None:
        breaker.failures += 1
        if breaker.state == "half_open" or breaker.failures >= self._threshold:
            if breaker.state != "open":
                breaker.trips += 1
            breaker.state = "open"
            breaker.opened_at = self._clock.now()
            breaker.probes = 0

    def _succeeded(self, breaker: BreakerState) -> None:
        breaker.state, breaker.failures, breaker.probes = "closed", 0, 0

    def __repr__(self) -> str:
        opened = sorted(k for k, b in self._states.items() if b.state != "closed")
        return f"ToolCircuitBreaker(threshold={self._threshold}, not closed={opened})"


def _tool_key(call: ToolCall) -> str:
    return call.tool
