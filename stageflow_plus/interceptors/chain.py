"""ToolCallChain: the ordered interceptors around every tool call.

The order is declared here, once::

    [interceptors that must fail fast: circuit breakers]      outermost
    [Backpressure · PriorityFairQueue · TokenBucketRateLimiter · ConcurrencyLimiter]
        → fused into ONE admission step (all limits acquired together, or none)
    [your other interceptors]
    tool                                                        innermost

Rules checked when the chain is built (``ConfigError`` otherwise): the limiter interceptors
stand next to each other (they are one step); at most one of each; an interceptor whose
class sets ``outside_limits = True`` (e.g. a circuit breaker, a retry-with-backoff) stands
before them, so an open breaker spends no permit or token and a retry's backoff holds none.

A chain with limiter interceptors also holds a
:class:`~stageflow_plus.interceptors.pause.ProviderPause` in its admission step (added as
``ProviderPause()``, keyed by tool, unless you list one or pass ``provider_pause=False``): a
provider's Retry-After then pauses the key for every caller, whatever limiters you chose.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from ..primitives.clock import Clock
from ..primitives.errors import ConfigError
from ..primitives.lease import LimiterListener
from ..primitives.stats import LimiterStatistics
from .backpressure import Backpressure
from .call import Proceed, ToolCall, ToolCallInterceptor
from .concurrency import ConcurrencyLimiter
from .gate import AdmissionGate, LimitPart, unenforced_limits
from .limit import LimitedBlock, make_call
from .observe import LoggingListener, MultiListener, StructlogListener
from .pause import ProviderPause
from .priority import PriorityFairQueue
from .rate import TokenBucketRateLimiter

__all__ = ["LIMITER_ORDER", "ToolCallChain"]

T = TypeVar("T")

LIMITER_ORDER: tuple[type[LimitPart], ...] = (
    Backpressure,
    PriorityFairQueue,
    TokenBucketRateLimiter,
    ConcurrencyLimiter,
)
"""The canonical order of the limiter interceptors inside their fused admission step."""


class _Next:
    """``proceed`` for step ``i``: calls step ``i`` with the ``proceed`` of step ``i + 1``."""

    __slots__ = ("_next", "_step")

    def __init__(self, step: ToolCallInterceptor, nxt: Proceed) -> None:
        self._step = step
        self._next = nxt

    def __call__(self, call: ToolCall) -> Awaitable[Any]:
        return self._step(call, self._next)


class ToolCallChain:
    """Runs interceptors around a tool call in the declared order.

    :param interceptors: the steps, outermost first (see the module docstring for rules).
    :param clock: the clock of the shared limiter (default: the loop's clock).
    :param listener: limiter events go here (default: a
        :class:`~stageflow_plus.interceptors.observe.LoggingListener` on the chain's clock:
        stdlib logging, per-call events at DEBUG, refusals aggregated at WARNING).
    :param name: the limiter's name in errors, events and statistics.
    :param provider_pause: add a ``ProviderPause()`` to the admission step when none is
        listed (default ``True``; see the module docstring).
    """

    __slots__ = ("_gate_only", "gate", "interceptors", "pause", "steps")

    def __init__(
        self,
        interceptors: Sequence[ToolCallInterceptor] = (),
        *,
        clock: Clock | Callable[[], float] | None = None,
        listener: LimiterListener | None = None,
        name: str = "stageflow-plus",
        provider_pause: bool = True,
    ) -> None:
        if not isinstance(provider_pause, bool):
            raise ConfigError(f"provider_pause must be True or False, got {provider_pause!r}")
        self.interceptors = tuple(interceptors)
        for index, step in enumerate(self.interceptors):
            if not callable(step):
                raise ConfigError(
                    f"interceptor #{index} ({step!r}) is not callable: an interceptor is "
                    "`async (call, proceed) -> result`"
                )
        positions = [i for i, s in enumerate(self.interceptors) if isinstance(s, LimitPart)]
        if positions and positions != list(range(positions[0], positions[-1] + 1)):
            between = [
                type(self.interceptors[i]).__name__
                for i in range(positions[0], positions[-1])
                if i not in positions
            ]
            raise ConfigError(
                f"limiter interceptors must stand together (they form one admission step); "
                f"{', '.join(between)} stands between them"
            )
        for index, step in enumerate(self.interceptors):
            if getattr(step, "outside_limits", False) and positions and index > positions[0]:
                raise ConfigError(
                    f"{type(step).__name__} must come before the limiter interceptors "
                    f"(outside_limits=True): it is #{index}, the limits start at #{positions[0]}"
                )
        self.gate: AdmissionGate | None = None
        #: the pause step of the admission step (``None`` without limiters or when off)
        self.pause: ProviderPause | None = None
        steps: list[ToolCallInterceptor] = []
        for index, step in enumerate(self.interceptors):
            if positions and index == positions[0]:
                parts = [self.interceptors[i] for i in positions]
                parts.sort(
                    key=lambda p: (
                        LIMITER_ORDER.index(type(p))
                        if type(p) in LIMITER_ORDER
                        else len(LIMITER_ORDER)
                    )
                )
                pauses = [p for p in parts if isinstance(p, ProviderPause)]
                if not pauses and provider_pause:
                    pauses.append(ProviderPause())
                    parts.append(pauses[0])
                self.pause = pauses[0] if pauses else None
                self.gate = AdmissionGate(
                    parts,  # type: ignore[arg-type]  # all LimitPart by construction
                    clock=clock,
                    listener=listener if listener is not None else LoggingListener(clock=clock),
                    name=name,
                )
                steps.append(self.gate)
            elif not isinstance(step, LimitPart):
                steps.append(step)
        self.steps = tuple(steps)
        self._gate_only = len(steps) == 1 and steps[0] is self.gate

    def run(
        self, call: ToolCall, target: Callable[[ToolCall], Awaitable[T]]
    ) -> Coroutine[Any, Any, T]:
        """Run ``call`` through every step and finally ``target(call)`` (a coroutine whose
        result is ``target``'s, as far as the steps pass it on unchanged)."""
        if self._gate_only:
            # the common case, the admission step alone: its coroutine is the whole run
            return self.gate(call, target)  # type: ignore[misc]
        if self.gate is None and call.limits:  # per-run limits and no limiter to apply them
            raise unenforced_limits(call, frozenset())
        return self._run_steps(call, target)

    async def _run_steps(
        self, call: ToolCall, target: Callable[[ToolCall], Awaitable[Any]]
    ) -> Any:
        proceed: Proceed = target
        for step in reversed(self.steps):
            proceed = _Next(step, proceed)
        return await proceed(call)

    def limit(
        self,
        *,
        tool: str,
        tenant: str = "default",
        priority: int = 0,
        cost: Mapping[str, float] | None = None,
        run_id: str | None = None,
        deadline: float | None = None,
        timeout: float | None = None,
    ) -> LimitedBlock:
        """Limit a block of plain asyncio code: ``async with chain.limit(tool=...) as h:``.

        Entering waits for admission (or raises the typed refusal), the block is the call,
        leaving releases its permits. The handle (:class:`~stageflow_plus.interceptors.limit.
        CallHandle`) reports what the provider answered (``h.report(response)``) and the
        actual cost (``h.adjust({"tokens": n})``). Cancelled while waiting, the call leaves
        the queue; cancelled inside the block, its permits come back. See
        :mod:`~stageflow_plus.interceptors.limit`.

        :param tool: the call's tool (its per-tool limits and rate key).
        :param tenant: the fair-share owner.
        :param priority: higher is more urgent.
        :param cost: estimated cost per dimension, e.g. ``{"tokens": 1200}``.
        :param run_id: the run the call belongs to (per-run limits), if any.
        :param deadline: absolute time on the chain's clock by which the call must start.
        :param timeout: seconds the call may wait for admission (with ``deadline``, the
            earlier wins).
        :raises ConfigError: an argument is invalid (the message names it).

        .. versionadded:: 0.2.0
        """
        return LimitedBlock(self, make_call(
            self, tool=tool, tenant=tenant, priority=priority, cost=cost, run_id=run_id,
            deadline=deadline, timeout=timeout,
        ))

    def set_log_listener(self, listener: LimiterListener) -> None:
        """Replace the chain's log listener (the default :class:`LoggingListener`, or a
        :class:`StructlogListener` set before) with ``listener``, keeping every other
        listener (Stageflow events, metrics). With no log listener, ``listener`` is added.

        .. versionadded:: 0.2.0
        """
        if self.gate is None:
            return
        limiter = self.gate.limiter
        existing = _listeners_of(limiter)
        kept = [x for x in existing if not isinstance(x, (LoggingListener, StructlogListener))]
        everyone = [listener, *kept]
        limiter.listener = everyone[0] if len(everyone) == 1 else MultiListener(everyone)

    def add_listener(self, listener: LimiterListener) -> None:
        """Also send limiter events to ``listener`` (once per listener class)."""
        if self.gate is None:
            return
        limiter = self.gate.limiter
        existing = _listeners_of(limiter)
        if any(type(x) is type(listener) for x in existing):
            return
        limiter.listener = MultiListener([*existing, listener])

    def now(self) -> float:
        """The current time on the chain's clock (for computing deadlines)."""
        if self.gate is None:
            raise ConfigError("this chain has no limiter interceptors, hence no clock")
        return self.gate.limiter.clock.now()

    def statistics(self) -> LimiterStatistics | None:
        """The fused limiter's statistics, or ``None`` when the chain has no limiter."""
        return self.gate.statistics() if self.gate is not None else None

    def __repr__(self) -> str:
        return f"ToolCallChain({list(self.interceptors)!r})"


def _listeners_of(limiter: Any) -> tuple[LimiterListener, ...]:
    """The listeners ``limiter`` sends events to (those of a :class:`MultiListener`)."""
    current = limiter.listener
    if isinstance(current, MultiListener):
        return tuple(current.listeners)
    return (current,) if current is not None else ()
