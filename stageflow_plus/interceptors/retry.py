"""ToolCallRetry: retry a tool call outside the limits, so no permit is held while it sleeps.

It stands *before* the limiter interceptors (``outside_limits = True``, checked by the
chain): each attempt goes through admission again, and the backoff sleeps holding nothing —
unlike a client library's own retries inside a limited tool (set ``max_retries=0`` on the
``openai`` / ``anthropic`` client there), which sleep with the permit and the tokens taken.

What is retried:

* a provider's answer (a result or an exception, as
  :func:`~stageflow_plus.llm.answers.read_answer` sees it) with a status the official
  clients retry (408, 409, 429, 5xx, 529), unless it says ``x-should-retry: false`` (and
  any status that says ``x-should-retry: true``);
* a transient network error (``TimeoutError``, ``ConnectionError``, the clients' and
  httpx's / aiohttp's connection and timeout errors);
* a :class:`~stageflow_plus.primitives.errors.Rejected` that carries ``retry_after``
  (e.g. ``BackendUnavailable``, ``QueueFull``), except the refusals a retry cannot fix
  (``CostTooLarge``, ``DeadlineUnmeetable``, ``WaitTimeout``, ``CircuitOpen``,
  ``LimiterClosed``).

How long it waits: the provider's Retry-After or the refusal's ``retry_after`` when there is
one (capped at ``max_pause``), else exponential backoff with full jitter,
``U(0, min(cap, base · 2^attempt))``. Never beyond the call's deadline, at most
``max_attempts`` attempts in all, and only while the :class:`RetryBudget` allows (about 10 %
extra calls per window): past that the last outcome is returned or raised, unchanged. A
cancelled call stops at once (nothing is held while it sleeps).

Stageflow's own ``RetryInterceptor`` retries a whole *stage* after it failed (every tool
call of the stage again, after sleeping in ``on_error`` while the stage keeps its stage
permit). Use :class:`ToolCallRetry` for provider answers and network errors of single tool
calls; keep Stageflow's for stage-level failures that are not a tool call's (its default
retryable errors are ``TimeoutError``/``ConnectionError``/``OSError``). Do not let both
retry the same errors: the attempts multiply.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..llm.answers import RETRYABLE_STATUSES, read_answer
from ..primitives.clock import Clock, as_clock
from ..primitives.errors import ConfigError, Rejected
from .call import Proceed, ToolCall
from .pause import DEFAULT_MAX_PAUSE, check_seconds
from .retry_budget import RetryBudget

__all__ = ["NO_RETRY_REASONS", "RetryDecision", "RetryStatistics", "ToolCallRetry"]

logger = logging.getLogger("stageflow_plus")

NO_RETRY_REASONS = frozenset({"cost_too_large", "deadline", "wait_timeout", "circuit_open",
                              "closed"})
"""Reasons of refusals a retry cannot fix."""

_TRANSIENT = frozenset({
    "APIConnectionError", "APITimeoutError", "TransportError", "TimeoutException",
    "NetworkError", "RemoteProtocolError", "ClientConnectionError", "ServerDisconnectedError",
    "ClientOSError", "ServerTimeoutError",
})


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Whether an outcome is worth another attempt, and how long the provider asked to wait.

    :ivar retry: retry it.
    :ivar wait: the provider's (or refusal's) wait in seconds, ``None`` for backoff.
    """

    retry: bool
    wait: float | None = None


@dataclass(frozen=True, slots=True)
class RetryStatistics:
    """Counters of a :class:`ToolCallRetry`.

    :ivar calls: calls that entered the step.
    :ivar retries: attempts after the first.
    :ivar recovered: calls that succeeded after a retry.
    :ivar gave_up: calls returned or raised with a retryable outcome (attempts, deadline or
        budget exhausted).
    :ivar budget_refused: retries the budget refused.
    """

    calls: int
    retries: int
    recovered: int
    gave_up: int
    budget_refused: int


def _transient(error: BaseException) -> bool:
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    return any(kind.__name__ in _TRANSIENT for kind in type(error).__mro__)


def default_decision(outcome: Any, *, is_error: bool) -> RetryDecision:
    """The default rule (see the module docstring)."""
    if isinstance(outcome, Rejected):
        if outcome.reason in NO_RETRY_REASONS or outcome.retry_after is None:
            return RetryDecision(False)
        return RetryDecision(True, outcome.retry_after)
    answer = read_answer(outcome)
    if answer is not None and answer.status is not None:
        should = answer.should_retry
        retry = should if should is not None else answer.status in RETRYABLE_STATUSES
        return RetryDecision(retry, answer.retry_after if retry else None)
    if is_error and isinstance(outcome, BaseException):
        return RetryDecision(_transient(outcome))
    return RetryDecision(False)


class ToolCallRetry:
    """Retries a tool call's retryable outcomes, outside the limits (an interceptor).

    :param max_attempts: attempts in all, the first included (default 3, the SRE book's cap).
    :param base: backoff of the first retry's jitter range, seconds (default 0.5).
    :param cap: the largest backoff range, seconds (default 8, as the official clients).
    :param max_pause: the longest provider wait honoured, seconds (default 60).
    :param budget: the :class:`RetryBudget` (default: 10 % extra calls per 10 s, at least
        3); ``None`` for no budget.
    :param decide: ``(outcome, is_error) -> RetryDecision`` (default: see the module).
    :param rng: ``() -> float`` in ``[0, 1)`` for the jitter (seed it in tests).
    :param clock: sleeps and reads time on it (default: the loop's clock); use the chain's.
    """

    __slots__ = ("_base", "_budget", "_cap", "_clock", "_counts", "_decide", "_max_attempts",
                 "_max_pause", "_rng")

    outside_limits = True

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        base: float = 0.5,
        cap: float = 8.0,
        max_pause: float = DEFAULT_MAX_PAUSE,
        budget: RetryBudget | bool | None = True,
        decide: Callable[..., RetryDecision] | None = None,
        rng: Callable[[], float] | None = None,
        clock: Clock | Callable[[], float] | None = None,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not (
            1 <= max_attempts <= 100
        ):
            raise ConfigError(f"ToolCallRetry max_attempts must be an int in [1, 100], got "
                              f"{max_attempts!r}")
        self._max_attempts = max_attempts
        self._base = check_seconds(base, "ToolCallRetry base", allow_zero=False)
        self._cap = check_seconds(cap, "ToolCallRetry cap", allow_zero=False)
        self._max_pause = check_seconds(max_pause, "ToolCallRetry max_pause", allow_zero=False)
        self._clock = as_clock(clock)
        if budget is True:
            budget = RetryBudget(clock=self._clock.now)
        elif budget is False:
            budget = None
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigError(f"ToolCallRetry budget must be a RetryBudget, True or None, got "
                              f"{budget!r}")
        self._budget = budget
        self._decide = decide if decide is not None else default_decision
        self._rng = rng if rng is not None else random.Random().random
        self._counts = [0, 0, 0, 0]  # calls, retries, recovered, gave_up

    @property
    def budget(self) -> RetryBudget | None:
        """The retry budget (``None``: unbudgeted)."""
        return self._budget

    def backoff(self, attempt: int) -> float:
        """Full jitter: ``U(0, min(cap, base · 2^attempt))`` for the retry after ``attempt``."""
        return self._rng() * min(self._cap, self._base * 2.0 ** min(attempt, 60))

    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any:
        counts = self._counts
        counts[0] += 1
        if self._budget is not None:
            self._budget.record_call(self._clock.now())
        attempt = 0
        while True:
            error: Exception | None = None
            result: Any = None
            try:
                result = await proceed(call)
            except Exception as exc:
                error = exc
            outcome = error if error is not None else result
            decision = self._decide(outcome, is_error=error is not None)
            if not decision.retry:
                if attempt and error is None:
                    counts[2] += 1
                return self._finish(result, error)
            delay = self._delay(decision, attempt)
            if not self._may_retry(call, attempt, delay):
                counts[3] += 1
                return self._finish(result, error)
            counts[1] += 1
            attempt += 1
            logger.debug("stageflow_plus: retrying %s (attempt %d) in %.3fs", call.tool,
                         attempt + 1, delay)
            await self._sleep(delay)

    @staticmethod
    def _finish(result: Any, error: Exception | None) -> Any:
        if error is not None:
            raise error
        return result

    def _delay(self, decision: RetryDecision, attempt: int) -> float:
        wait = decision.wait
        if wait is not None and not isinstance(wait, bool) and 0 <= wait < math.inf:
            return min(float(wait), self._max_pause)
        return self.backoff(attempt)

    def _may_retry(self, call: ToolCall, attempt: int, delay: float) -> bool:
        if attempt + 1 >= self._max_attempts:
            return False
        now = self._clock.now()
        if call.deadline is not None and now + delay >= call.deadline:
            return False
        return self._budget is None or self._budget.try_spend(now)

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        handle = self._clock.call_at(self._clock.now() + seconds, wake)
        try:
            await future
        finally:
            handle.cancel()

    def statistics(self) -> RetryStatistics:
        """The counters so far."""
        calls, retries, recovered, gave_up = self._counts
        refused = self._budget.refused if self._budget is not None else 0
        return RetryStatistics(calls, retries, recovered, gave_up, refused)

    def __repr__(self) -> str:
        return (f"ToolCallRetry(max_attempts={self._max_attempts}, base={self._base:g}, "
                f"cap={self._cap:g}, budget={self._budget!r})")
