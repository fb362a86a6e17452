"""The admission gate: where the four limiter interceptors meet one wait queue.

:class:`ConcurrencyLimiter`, :class:`TokenBucketRateLimiter`, :class:`PriorityFairQueue` and
:class:`Backpressure` each own one concern, but a call needing several limits must get them
*all or none*. So in a :class:`~stageflow_plus.interceptors.chain.ToolCallChain` the limiter
interceptors are fused into one :class:`AdmissionGate`: capacity interceptors contribute
demands, the queue interceptor contributes the waiting order, backpressure contributes the
admission policy, and one :class:`~stageflow_plus.primitives.limiter.Limiter` acquires
everything together. Used on its own, each limiter interceptor builds a gate of one.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, cast

from .._logging import LogDigest, stdlib_emit
from ..llm.answers import _DATA_ONLY
from ..primitives.admission import AdmissionPolicy
from ..primitives.clock import Clock
from ..primitives.errors import ConfigError, QueueFull, StageflowPlusError
from ..primitives.lease import Lease, LimiterListener
from ..primitives.limiter import Limiter
from ..primitives.ordering import FifoOrdering, Ordering
from ..primitives.resources import Resource
from ..primitives.stats import BucketStatistics, LimiterStatistics, PoolStatistics
from ..primitives.waiter import Waiter
from .call import Proceed, ToolCall
from .gate_wait import admit_then_run
from .part import LimitPart

__all__ = ["AdmissionGate", "LimitPart", "quiet_result"]

logger = logging.getLogger("stageflow_plus")


def unenforced_limits(call: ToolCall, honoured: frozenset[str]) -> ConfigError:
    """The error for a call carrying per-run limits (``call.limits``) nobody enforces."""
    missing = sorted(set(call.limits) - honoured)
    hint = {"concurrency": "a ConcurrencyLimiter", "rates": "a TokenBucketRateLimiter"}
    needs = ", ".join(f"{k!r} needs {hint.get(k, 'an interceptor that enforces it')}"
                      for k in missing)
    return ConfigError(
        f"tool call {call.tool!r} of run {call.run_id!r} carries per-run limits this chain "
        f"does not enforce ({needs}); add it to the chain (config: [stageflow_plus.concurrency]"
        " or [stageflow_plus.rate]) or drop the override"
    )


# (Final: compiled code reads them from a static; _DATA_ONLY_TYPES is answers' set itself,
# which the Stageflow integration fills)
_SCALARS: Final = frozenset({type(None), bool, int, float, str, bytes, list, tuple})
_DATA_ONLY_TYPES: Final[set[type]] = _DATA_ONLY


def quiet_result(result: object) -> bool:
    """Whether ``result`` surely carries no provider answer (see
    :meth:`LimitPart.reads_quiet_results`): ``None`` or a plain scalar, list or tuple; or a
    dict — itself or a Stageflow ``ToolOutput``'s ``data`` (``None`` data: quiet) — with an
    integer ``status`` below 400 and none of ``retry_after``, ``retry_after_ms``,
    ``headers``, ``response``. Anything else may hold one (``False``)."""
    kind = type(result)
    data: Any
    if kind is dict:
        data = result
    elif kind in _DATA_ONLY_TYPES:
        data = getattr(result, "data", None)
        if data is None:
            return True
        if type(data) is not dict:
            return False
    else:
        return kind in _SCALARS
    status = data.get("status")
    return (
        type(status) is int and status < 400 and "retry_after" not in data
        and "retry_after_ms" not in data and "headers" not in data and "response" not in data
    )


def _default_ordering() -> Ordering:
    return FifoOrdering()


class AdmissionGate:
    """Acquires every limit of a call at once, runs it, then releases (an interceptor).

    :param parts: the limiter interceptors to fuse (at most one of each class).
    :param clock: the clock of the shared limiter (default: the loop's clock).
    :param listener: receives queued/admitted/rejected/released events.
    :param name: the limiter's name in errors and statistics.
    """

    __slots__ = (
        "_demanders",
        "_fair_cost",
        "_fixed",
        "_honoured",
        "_now",
        "_observer_log",
        "_observers",
        "_quiet_observers",
        "_run_waiting",
        "_shape",
        "_templates",
        "admission",
        "limiter",
        "ordering",
        "parts",
    )

    def __init__(
        self,
        parts: Sequence[LimitPart],
        *,
        clock: Clock | Callable[[], float] | None = None,
        listener: LimiterListener | None = None,
        name: str = "stageflow-plus",
    ) -> None:
        kinds = [type(p) for p in parts]
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ConfigError(f"a chain may hold one {kind.__name__}, got {kinds.count(kind)}")
        self.parts = tuple(parts)
        # (declared, not inferred: parts replace them in configure(), and compiled code
        # would otherwise keep the narrower type of the default)
        self.ordering: Ordering = _default_ordering()
        self.admission = AdmissionPolicy()
        self._fair_cost: Callable[[ToolCall], float] | None = None
        # every attribute is set before any part runs: compiled code reads attributes that
        # __init__ always sets without checking them, so a gate whose construction a part
        # aborted must hold no unset one (its repr, say, would crash the interpreter)
        self.limiter = Limiter(name=name, clock=clock)  # replaced once the parts configured
        self._now = self.limiter.clock.now
        self._demanders: tuple[LimitPart, ...] = ()
        self._observers: tuple[LimitPart, ...] = ()
        self._quiet_observers: tuple[LimitPart, ...] = ()
        self._honoured: frozenset[str] = frozenset()
        self._run_waiting: dict[str, int] = {}
        # the demands of calls without per-run limits, per demander: its template, or None
        # where the part is asked per call; _fixed: every demand, when they are all plain
        # (amount 1 each, no part asked): then a call's demands are this very tuple
        self._templates: tuple[tuple[tuple[Resource, str | None], ...] | None, ...] = ()
        self._fixed: tuple[tuple[Resource, float], ...] | None = None
        # every demander's template, flattened, when all have one (the call's shape)
        self._shape: tuple[tuple[Resource, str | None], ...] | None = None
        self._observer_log: LogDigest | None = None  # made on the first failing observer
        try:
            for part in self.parts:
                part._bind(self)
                part.configure(self)
        except BaseException:
            for part in self.parts:  # the parts may join another chain
                if part._gate is self:
                    part._gate = None
            raise
        self.limiter = Limiter(
            name=name,
            ordering=self.ordering,
            admission=self.admission,
            clock=clock,
            listener=listener,
        )
        self._now = self.limiter.clock.now
        self._demanders = tuple(p for p in self.parts if p.contributes_demands)
        # (per instance: a rate limiter with nothing to read in results observes none)
        self._observers = tuple(p for p in self.parts if p.observes_results and p.wants_results())
        # (of those, the ones that read results carrying no provider answer: the only ones a
        # quiet result is shown to)
        self._quiet_observers = tuple(p for p in self._observers if p.reads_quiet_results())
        self._honoured = frozenset({"max_queue"}).union(*(p.honours_limits for p in self.parts))
        self.refresh_templates()

    def refresh_templates(self) -> None:
        """Ask every part for its :meth:`~LimitPart.demand_template` again (a part calls
        this through :meth:`~LimitPart.demands_changed` when its template changed)."""
        self._templates = tuple(p.demand_template() for p in self._demanders)
        self._fixed = self._shape = None
        shape: list[tuple[Resource, str | None]] = []
        for template in self._templates:
            if template is None:
                return
            shape.extend(template)
        self._shape = tuple(shape)
        if all(dimension is None for _, dimension in shape):
            self._fixed = tuple((resource, 1.0) for resource, _ in shape)

    def _demands(self, call: ToolCall, now: float) -> list[tuple[Resource, float]]:
        """``call``'s demands, in part order: templates where a part has one (and the call
        carries no per-run limits), else the part's own ``add_demands``."""
        demands: list[tuple[Resource, float]] = []
        if call.limits:
            for part in self._demanders:
                part.add_demands(call, now, demands)
            return demands
        cost = call.cost
        shape = self._shape
        if shape is not None:  # every part has a template: the call's shape, filled in
            for resource, dimension in shape:
                demands.append(
                    (resource, 1.0 if dimension is None else float(cost.get(dimension, 0.0)))
                )
            return demands
        templates = self._templates
        for index, part in enumerate(self._demanders):
            template = templates[index]
            if template is None:
                part.add_demands(call, now, demands)
                continue
            for resource, dimension in template:
                if dimension is None:
                    demands.append((resource, 1.0))
                else:
                    demands.append((resource, float(cost.get(dimension, 0.0))))
        return demands

    def set_fair_cost(self, fair_cost: Callable[[ToolCall], float]) -> None:
        """How much of its tenant's share a call uses (set by the queue interceptor)."""
        self._fair_cost = fair_cost

    def demands_of(self, call: ToolCall) -> list[tuple[Resource, float]]:
        """The ``(resource, amount)`` pairs ``call`` needs right now."""
        return self._demands(call, self.limiter.clock.now())

    def check_limits(self, call: ToolCall) -> None:
        """Refuse (``ConfigError``) a call whose per-run limits no step here enforces."""
        if call.limits and not self._honoured.issuperset(call.limits):
            raise unenforced_limits(call, self._honoured)

    async def acquire(self, call: ToolCall) -> Lease:
        """Wait for admission of ``call`` (see :meth:`Limiter.acquire` for errors).

        A per-run queue bound (``call.limits["max_queue"]``) refuses with ``QueueFull`` when
        that many calls of the run already wait. A per-run limit that no interceptor of the
        gate enforces (e.g. ``"rates"`` without a rate limiter) raises ``ConfigError``.
        """
        self.check_limits(call)
        demands = self.demands_of(call)
        now = self.limiter.clock.now()
        deadline = call.deadline
        lease = None  # a passed deadline: refused by the queue even where capacity is free
        if deadline is None or deadline >= now:
            lease = self.limiter.take(demands, now, call)
        return lease if lease is not None else await self._wait(call, demands)

    def _wait(
        self, call: ToolCall, demands: Sequence[tuple[Resource, float]]
    ) -> Coroutine[Any, Any, Lease]:
        # not a coroutine itself: a queued call then holds no extra frame
        fair_cost = self._fair_cost(call) if self._fair_cost is not None else 1.0
        if call.limits and call.run_id is not None and "max_queue" in call.limits:
            return self._acquire_bounded_by_run(
                call, demands, fair_cost, call.limits["max_queue"]
            )
        return self.limiter.acquire(
            demands,
            priority=call.priority,
            tenant=call.tenant,
            cost=fair_cost,
            deadline=call.deadline,
            info=call,
        )

    async def _acquire_bounded_by_run(
        self,
        call: ToolCall,
        demands: Sequence[tuple[Resource, float]],
        fair_cost: float,
        bound: int,
    ) -> Lease:
        run = str(call.run_id)
        # a call admitted at once never suspends, so the count only holds calls that wait
        waiting = self._run_waiting.get(run, 0)
        now = self.limiter.clock.now()
        admissible_now = not len(self.limiter) and all(r.available(a, now) for r, a in demands)
        if waiting >= bound and not admissible_now:
            error = QueueFull(
                f"{self.limiter.name}: run {run!r} already has {waiting} calls waiting "
                f"(its per-run bound is {bound})",
                key=f"run:{run}",
                limiter=self.limiter.name,
                queue_depth=len(self.limiter),
            )
            self.limiter._count_rejection(error, call)  # counted like the limiter's own refusals
            raise error
        self._run_waiting[run] = waiting + 1
        try:
            return await self.limiter.acquire(
                demands,
                priority=call.priority,
                tenant=call.tenant,
                cost=fair_cost,
                deadline=call.deadline,
                info=call,
            )
        finally:
            left = self._run_waiting[run] - 1
            if left:
                self._run_waiting[run] = left
            else:
                del self._run_waiting[run]

    def __call__(self, call: ToolCall, proceed: Proceed) -> Coroutine[Any, Any, Any]:
        # a call arriving behind others (it will queue) waits in a Python frame: cancelled,
        # it unwinds through no compiled frame (see gate_wait); the rest run compiled
        if self.limiter._waiting and not call.limits:
            return admit_then_run(self, call, proceed)
        return self._run(call, proceed)

    def _admit(self, call: ToolCall) -> Lease | Waiter:
        """Admit ``call`` at once (its :class:`Lease`) or queue it (its :class:`Waiter`:
        ``await waiter.future`` gives the lease; a caller cancelled meanwhile must call
        ``limiter.abandon(waiter)``). Refusals raise as :meth:`acquire`'s do. Only for calls
        without per-run limits (:meth:`_run` admits those itself)."""
        now = self._now()
        fixed = self._fixed
        demands: Sequence[tuple[Resource, float]] = (
            fixed if fixed is not None else self._demands(call, now)
        )
        deadline = call.deadline
        if deadline is None or deadline >= now:
            lease = self.limiter.take(demands, now, call)
            if lease is not None:
                return lease
        # (a passed deadline: refused by the queue, never admitted)
        return self.limiter.enqueue(
            demands,
            now,
            priority=call.priority,
            tenant=call.tenant,
            cost=self._fair_cost(call) if self._fair_cost is not None else 1.0,
            deadline=deadline,
            info=call,
        )

    def _settle(self, call: ToolCall, lease: Lease, outcome: Any, failed: bool) -> None:
        """The tool returned ``outcome`` (raised it: ``failed``): the observers see it, then
        the lease is released, whatever an observer did."""
        try:
            if self._observers:
                if failed or not quiet_result(outcome):
                    self._observe(call, lease, outcome, failed, self._observers)
                elif self._quiet_observers:
                    self._observe(call, lease, outcome, False, self._quiet_observers)
        finally:
            lease.release()

    async def _run(self, call: ToolCall, proceed: Proceed) -> Any:
        # the hot path, flattened: one clock read, demands built once, and no coroutine
        # beyond this one when the call is admitted at once
        if call.limits:  # a per-run limit nobody enforces is never silently ignored
            self.check_limits(call)
            now = self._now()
            demands = self._demands(call, now)
            deadline = call.deadline
            taken = (
                self.limiter.take(demands, now, call) if deadline is None or deadline >= now
                else None
            )
            # (a passed deadline: refused by the queue, never admitted)
            lease = taken if taken is not None else await self._wait(call, demands)
        else:
            admitted = self._admit(call)
            if type(admitted) is Waiter:  # queued: waits in this frame, no second coroutine
                try:
                    lease = await admitted.future
                except asyncio.CancelledError:
                    self.limiter.abandon(admitted)  # leaves the queue or gives the grant back
                    raise
            else:
                lease = cast(Lease, admitted)
        try:
            result = await proceed(call)
        except Exception as error:
            self._settle(call, lease, error, True)
            raise  # the tool's own error, whatever an observer did
        except BaseException:
            lease.release()  # cancelled while running: permits come back
            raise
        self._settle(call, lease, result, False)
        return result  # the tool ran: its result is kept, whatever an observer did

    def _observe(self, call: ToolCall, lease: Lease, outcome: Any, failed: bool,
                 observers: tuple[LimitPart, ...]) -> None:
        """Run the ``observers``' ``after_error`` / ``after_result``; one that raises (e.g. a
        broken ``actual_cost``) is reported, never allowed to replace the tool's outcome:
        the estimate it failed to correct stays charged, the lease is released as usual."""
        for part in observers:
            try:
                if failed:
                    part.after_error(call, lease, outcome)
                else:
                    part.after_result(call, lease, outcome)
            except Exception as error:
                hook = f"{type(part).__name__}.{'after_error' if failed else 'after_result'}"
                self._report_observer_error(call, hook, error)

    def _report_observer_error(self, call: ToolCall, hook: str, error: Exception) -> None:
        """Log (``stageflow_plus`` logger, WARNING) and tell the listener's optional
        ``on_observer_error(info, hook, error)``. Logs the error's own text only for our
        errors (they name fields, never payloads); of a foreign one, its type only."""
        detail = str(error) if isinstance(error, StageflowPlusError) else type(error).__name__
        digest = self._observer_log
        if digest is None:  # aggregated: the first failure of a hook at once, then counts
            digest = self._observer_log = LogDigest(stdlib_emit(logger),
                                                    clock=self.limiter.clock)
        digest.note(
            logging.WARNING, hook, type(error).__name__,
            what=f"failures of {hook} (outcomes kept, estimates charged)",
            event="tool_call.observer_failures",
            first=lambda: (
                "tool_call.observer_failed",
                f"tool_call.observer_failed: {hook} raised for tool {call.tool!r} (call "
                f"{call.call_id}, run {call.run_id}): {detail}; the tool's outcome is kept, "
                "its estimated cost stays charged",
                {"tool": call.tool, "hook": hook}),
        )
        handler = getattr(self.limiter.listener, "on_observer_error", None)
        if handler is not None:
            try:
                handler(call, hook, error)
            except Exception as failure:  # a listener must not lose the outcome either
                logger.warning("tool_call.listener_failed: on_observer_error raised %s",
                               type(failure).__name__)

    def statistics(self) -> LimiterStatistics:
        """The limiter's snapshot with every pool and bucket of the fused interceptors."""
        now = self.limiter.clock.now()
        pools: tuple[PoolStatistics, ...] = ()
        buckets: tuple[BucketStatistics, ...] = ()
        for part in self.parts:
            pools += part.pool_statistics()
            buckets += part.bucket_statistics(now)
        return dataclasses.replace(self.limiter.statistics(), pools=pools, buckets=buckets)

    def __repr__(self) -> str:
        names = ", ".join(type(p).__name__ for p in self.parts)
        return f"<AdmissionGate [{names}] {self.limiter!r}>"
