"""Stage-level adapters: Stageflow ``BaseInterceptor`` s that carry our limits into stages.

* :class:`CallScopeInterceptor` (priority 8, after Stageflow's ``TimeoutInterceptor`` at 5)
  reads the run's overrides from ``ctx.data`` (validated, clamped to the operator's
  :class:`~stageflow_plus.stageflow.overrides.Ceilings`), turns the stage timeout
  (``_timeout.{stage}``) into a deadline, and sets the
  :class:`~stageflow_plus.stageflow.scope.CallScope` every tool call of the stage reads.
  When the stage fails or times out, the results of the calls that completed are published
  as ``ctx.data["_stageflow_plus.partial.{stage}"]`` (a :class:`PartialResults`).
* :class:`StageLimitInterceptor` (priority 12, inside the circuit breaker at 10) caps how
  many runs of a stage execute at once. It waits in ``before()`` — which Stageflow does not
  bound — only until the stage deadline; a refusal short-circuits the stage and is recorded
  as ``ctx.data["_stageflow_plus.refused.{stage}"]``. Its permit is released in ``after()``
  *or*, when the stage task is cancelled (Stageflow then skips ``after()``), by a done
  callback on the task: it never leaks.
* :class:`LimitAwareCircuitBreaker` replaces Stageflow's ``CircuitBreakerInterceptor`` (same
  name and priority): refusals by our limiters neither count as failures nor reset the
  count; its clock and thresholds are configurable.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stageflow.pipeline.interceptors import (
    BaseInterceptor,
    CircuitBreakerInterceptor,
    CriticalInterceptorError,
    ErrorAction,
    InterceptorResult,
)

from .._logging import LogDigest, get_logger, stdlib_emit
from ..primitives.clock import Clock, as_clock
from ..primitives.errors import ConfigError, Rejected
from ..primitives.lease import Lease
from ..primitives.limiter import Limiter
from ..primitives.ordering import PriorityFairOrdering
from ..primitives.resources import ConcurrencyPool
from .overrides import Ceilings, OverrideError, RunOverrides, read_overrides
from .scope import CallScope, _reset, _set, current_scope

__all__ = [
    "PARTIAL_KEY",
    "REFUSED_KEY",
    "CallScopeInterceptor",
    "InvalidRunOverride",
    "LimitAwareCircuitBreaker",
    "PartialResults",
    "RefusalRecord",
    "StageLimitInterceptor",
]

log = get_logger("stages")


def _refusal_line(stage: str, error: Rejected) -> tuple[str, str, dict[str, Any]]:
    return ("stage.rejected", f"stageflow-plus: stage {stage!r} refused: {error}",
            {"stage": stage, **error.to_dict()})


PARTIAL_KEY = "_stageflow_plus.partial.{stage}"
REFUSED_KEY = "_stageflow_plus.refused.{stage}"
_STAGEFLOW_TIMEOUT = "Stage timed out after "  # the error of a stage Stageflow timed out


class InvalidRunOverride(CriticalInterceptorError, OverrideError):
    """A run's ``ctx.data`` override is invalid; the stage does not run (raised, not logged).

    Stageflow swallows ordinary exceptions from ``before()``; this one is critical so a bad
    override is never silently ignored. It is both a Stageflow ``CriticalInterceptorError``
    and an :class:`OverrideError` (hence a ``StageflowPlusError``: one exception root); the
    original :class:`OverrideError` is its ``__cause__``.
    """


class RefusalRecord(dict[str, Any]):
    """What ``ctx.data[REFUSED_KEY]`` holds when one of our limiters refused the stage.

    A distinct type, so a run cannot hide its stage's failures from
    :class:`LimitAwareCircuitBreaker` by putting a look-alike dict under that key.
    """


@dataclass(frozen=True, slots=True)
class PartialResults:
    """What a failed or timed-out stage's tool calls completed before it ended.

    :ivar status: ``"timeout"`` or ``"failed"``.
    :ivar results: ``(tool, result)`` pairs in completion order.
    :ivar error: the stage's error text.
    """

    status: str
    results: tuple[tuple[str, Any], ...]
    error: str | None


def _stage_deadline(stage: str, ctx: Any, now: float) -> float | None:
    timeout_ms = ctx.data.get(f"_timeout.{stage}", ctx.data.get("_timeout_ms"))
    if isinstance(timeout_ms, (int, float)) and not isinstance(timeout_ms, bool) and timeout_ms > 0:
        return now + timeout_ms / 1000.0
    return None


def _org(ctx: Any) -> str | None:
    org = getattr(ctx, "org_id", None)  # trusted context, unlike ctx.data
    return str(org) if org is not None else None


def _run_overrides(owner: str, stage: str, ctx: Any, ceilings: Ceilings) -> RunOverrides:
    try:
        return read_overrides(ctx.data, ceilings, org=_org(ctx))
    except OverrideError as error:
        raise InvalidRunOverride(f"stage {stage!r}: {error}", interceptor_name=owner) from error


class CallScopeInterceptor(BaseInterceptor):
    """Sets the :class:`CallScope` of each stage from ``ctx.data`` and the stage timeout.

    :param ceilings: what a run may ask for (default: priority 0, no per-run ceilings).
    :param clock: the clock of the tool chains the stage uses (deadlines are absolute times
        on it; default: the loop's clock).
    :param collect_partial: record completed tool-call results for partial results.
    """

    name = "stageflow_plus.call_scope"
    priority = 8

    def __init__(
        self,
        *,
        ceilings: Ceilings | None = None,
        clock: Clock | Callable[[], float] | None = None,
        collect_partial: bool = True,
    ) -> None:
        self.ceilings = ceilings if ceilings is not None else Ceilings()
        self.clock = as_clock(clock)
        self.collect_partial = collect_partial
        self._active: dict[
            tuple[int, str],
            tuple[CallScope, object, asyncio.Task[Any] | None, Callable[[Any], None] | None],
        ] = {}

    async def before(self, stage_name: str, ctx: Any) -> InterceptorResult | None:
        overrides = _run_overrides(self.name, stage_name, ctx, self.ceilings)
        run_id = getattr(ctx, "pipeline_run_id", None)
        scope = CallScope(
            run_id=str(run_id) if run_id is not None else f"ctx-{id(ctx)}",
            tenant=overrides.tenant,
            priority=overrides.priority,
            deadline=_stage_deadline(stage_name, ctx, self.clock.now()),
            limits=overrides.limits(),
            stage=stage_name,
            max_wait=overrides.max_wait,
            cost=overrides.cost,
            completed=[] if self.collect_partial else None,
        )
        slot = (id(ctx), stage_name)
        task = asyncio.current_task()
        forget = None
        if task is not None:

            def forget(_: Any, slot: tuple[int, str] = slot) -> None:
                self._active.pop(slot, None)  # cancelled stage: Stageflow skips after()

            task.add_done_callback(forget)
        self._active[slot] = (scope, _set(scope), task, forget)
        return None

    async def after(self, stage_name: str, result: Any, ctx: Any) -> None:
        entry = self._active.pop((id(ctx), stage_name), None)
        if entry is None:
            return
        scope, token, task, forget = entry
        if task is not None and forget is not None:
            task.remove_done_callback(forget)
        with contextlib.suppress(ValueError):  # after() in another context: nothing to undo
            _reset(token)
        if getattr(result, "status", None) == "failed" and scope.completed is not None:
            error = getattr(result, "error", None)
            # Stageflow's own timeout message (pipeline/interceptors.py), not any "timed out"
            status = "timeout" if error and error.startswith(_STAGEFLOW_TIMEOUT) else "failed"
            ctx.data[PARTIAL_KEY.format(stage=stage_name)] = PartialResults(
                status, tuple(scope.completed), error
            )


class StageLimitInterceptor(BaseInterceptor):
    """Caps concurrent runs of stages (e.g. 4 LLM stages at once), bounded by the deadline.

    :param limits: stage name → most concurrent runs. Stages not listed are not limited.
    :param ceilings: for the run's priority and tenant (read like :class:`CallScopeInterceptor`).
    :param aging_interval: priority aging of waiting stages, seconds per level.
    :param clock: time source (default: the loop's clock).
    """

    name = "stageflow_plus.stage_limit"
    priority = 12

    def __init__(
        self,
        limits: Mapping[str, int],
        *,
        ceilings: Ceilings | None = None,
        aging_interval: float = 1.0,
        clock: Clock | Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(limits, Mapping) or not limits:
            raise ConfigError("StageLimitInterceptor limits must be a non-empty {stage: int}")
        self._pools: dict[str, ConcurrencyPool] = {}
        for stage, cap in limits.items():
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ConfigError(f"StageLimitInterceptor limits[{stage!r}] must be an int >= 1, "
                                  f"got {cap!r}")
            self._pools[stage] = ConcurrencyPool(f"stage:{stage}", cap)
        self.ceilings = ceilings if ceilings is not None else Ceilings()
        self.limiter = Limiter(
            name="stageflow-plus stages",
            ordering=PriorityFairOrdering(aging_interval=aging_interval),
            clock=clock,
        )
        self._leases: dict[tuple[int, str], tuple[Lease, asyncio.Task[Any] | None, Any]] = {}
        self._refusals = LogDigest(stdlib_emit(log), clock=clock)  # one line per stage per 10 s

    async def before(self, stage_name: str, ctx: Any) -> InterceptorResult | None:
        pool = self._pools.get(stage_name)
        if pool is None:
            return None
        overrides = _run_overrides(self.name, stage_name, ctx, self.ceilings)
        try:
            lease = await self.limiter.acquire(
                [(pool, 1.0)],
                priority=overrides.priority,
                tenant=overrides.tenant,
                deadline=_stage_deadline(stage_name, ctx, self.limiter.clock.now()),
                info=stage_name,
            )
        except Rejected as error:
            ctx.data[REFUSED_KEY.format(stage=stage_name)] = RefusalRecord(error.to_dict())
            self._refusals.note(
                logging.WARNING, stage_name, error.reason, what="stage runs refused",
                event="stage.refusals",
                first=functools.partial(_refusal_line, stage_name, error))
            return InterceptorResult(stage_ran=False, error=f"stageflow-plus: {error}")
        task = asyncio.current_task()
        slot = (id(ctx), stage_name)
        callback = None
        if task is not None:

            def callback(_: Any, lease: Lease = lease, slot: tuple[int, str] = slot) -> None:
                lease.release()  # cancelled stage: Stageflow skips after(); release here
                self._leases.pop(slot, None)

            task.add_done_callback(callback)
        self._leases[slot] = (lease, task, callback)
        scope = current_scope()
        if lease.waited > 0 and scope is not None and scope.stage == stage_name and (
            scope.deadline is not None
        ):
            # Stageflow starts the stage timeout after every before(): the wait for this
            # permit does not count against it, so the tool calls' deadline moves with it
            _set(dataclasses.replace(scope, deadline=scope.deadline + lease.waited))
        return None

    async def after(self, stage_name: str, result: Any, ctx: Any) -> None:
        entry = self._leases.pop((id(ctx), stage_name), None)
        if entry is None:
            return  # our before() did not acquire (not limited, refused, or short-circuited)
        lease, task, callback = entry
        if task is not None and callback is not None:
            task.remove_done_callback(callback)
        lease.release()

    def in_use(self, stage: str) -> int:
        """Runs of ``stage`` holding a permit now."""
        pool = self._pools.get(stage)
        return pool.in_use if pool is not None else 0


class LimitAwareCircuitBreaker(CircuitBreakerInterceptor):
    """Stageflow's per-stage circuit breaker that ignores our limiters' refusals.

    A stage refused by :class:`StageLimitInterceptor`, or failing with a
    :class:`~stageflow_plus.primitives.errors.Rejected` from a tool call, is neither counted
    as a downstream failure nor allowed to reset the failure count. Each failed stage run
    counts once (Stageflow's counts an exception twice: in ``on_error`` and ``after``).

    :param failure_threshold: failures that open the breaker (Stageflow: 5).
    :param reset_timeout: seconds before a half-open retry (Stageflow: 30).
    :param clock: time source (default: the loop's clock; Stageflow uses ``time.time``).
    """

    name = "circuit_breaker"
    priority = 10

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Clock | Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or (
            failure_threshold < 1
        ):
            raise ConfigError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
        if isinstance(reset_timeout, bool) or not isinstance(reset_timeout, (int, float)) or not (
            0 < reset_timeout < math.inf  # (nan fails this too)
        ):
            raise ConfigError(f"reset_timeout must be a finite number > 0, got {reset_timeout!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self.clock = as_clock(clock)

    def state(self, stage: str) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        return self._breaker_states.get(stage, "closed")

    async def before(self, stage_name: str, ctx: Any) -> InterceptorResult | None:
        if self._breaker_states.get(stage_name) == "open":
            elapsed = self.clock.now() - self._last_failure.get(stage_name, 0.0)
            if elapsed <= self.reset_timeout:
                return InterceptorResult(
                    stage_ran=False, error=f"Circuit breaker open for {stage_name}"
                )
            self._breaker_states[stage_name] = "half_open"
        return None

    async def after(self, stage_name: str, result: Any, ctx: Any) -> None:
        if type(ctx.data.get(REFUSED_KEY.format(stage=stage_name))) is RefusalRecord:
            return  # our refusal (not a run's look-alike): no verdict on the downstream
        if getattr(result, "error", None) == f"Circuit breaker open for {stage_name}":
            return  # our own short-circuit
        await super().after(stage_name, result, ctx)

    async def on_error(self, stage_name: str, error: Exception, ctx: Any) -> ErrorAction:
        # Stageflow's breaker counts a failure here *and* again in after() (status "failed"):
        # one failure counted twice. We count it once, in after(); here we only mark refusals.
        refusal = _find_refusal(error)
        if refusal is not None:
            ctx.data[REFUSED_KEY.format(stage=stage_name)] = RefusalRecord(refusal.to_dict())
        return ErrorAction.FAIL

    def _record_failure(self, stage_name: str) -> None:
        self._failure_counts[stage_name] = self._failure_counts.get(stage_name, 0) + 1
        self._last_failure[stage_name] = self.clock.now()
        if (
            self._failure_counts[stage_name] >= self.failure_threshold
            or self._breaker_states.get(stage_name) == "half_open"
        ):
            self._breaker_states[stage_name] = "open"


def _find_refusal(error: BaseException | None, depth: int = 0) -> Rejected | None:
    if error is None or depth > 8:
        return None
    if isinstance(error, Rejected):
        return error
    if isinstance(error, BaseExceptionGroup):
        found = [_find_refusal(e, depth + 1) for e in error.exceptions]
        refusals = [f for f in found if f is not None]
        return refusals[0] if len(refusals) == len(error.exceptions) else None
    return _find_refusal(error.__cause__, depth + 1)


