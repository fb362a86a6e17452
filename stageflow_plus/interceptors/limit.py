"""Limits for plain asyncio code: ``async with chain.limit(...)``.

:meth:`ToolCallChain.limit <stageflow_plus.interceptors.chain.ToolCallChain.limit>` returns a
:class:`LimitedBlock`; entering it waits for admission, the block is the call, leaving it
releases::

    async with chain.limit(tool="llm", tenant="acme", priority=2, cost={"tokens": 1200}) as h:
        response = await client.chat.completions.create(...)
        h.report(response)                           # Retry-After, rate-limit headers, 5xx
        h.adjust({"tokens": response.usage.total_tokens})   # actual cost

The chain's steps see the block as the tool: what :meth:`CallHandle.report` was given is
the result they observe (a provider's Retry-After pauses the key for every caller, a
:class:`~stageflow_plus.interceptors.provider_feedback.RateLimitHeaderLearner` reads its
headers, a :class:`~stageflow_plus.interceptors.breaker.ToolCircuitBreaker` counts its 5xx),
and an exception leaving the block is the error they observe, then propagates unchanged.

Cancellation: cancelled while waiting, the call leaves the queue (or gives back a grant that
raced the cancellation) and takes nothing; cancelled inside the block, its permits come back
when the block exits. A chain whose only step is the fused admission step runs all of this in
the caller's task; a chain with other steps runs them in a helper task that waits for the
block (the steps then run in a copy of the caller's context). The block runs once: a step
that calls ``proceed`` twice (a retry) gets :class:`ConfigError` — use
:meth:`~stageflow_plus.interceptors.chain.ToolCallChain.run` with such chains.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..primitives.errors import ConfigError
from ..primitives.lease import Lease
from .call import Proceed, ToolCall, ToolCallInterceptor

if TYPE_CHECKING:
    from .chain import ToolCallChain

__all__ = ["CallHandle", "LimitedBlock", "make_call"]


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(
        value
    )


def make_call(
    chain: ToolCallChain,
    *,
    tool: str,
    tenant: str = "default",
    priority: int = 0,
    cost: Mapping[str, float] | None = None,
    run_id: str | None = None,
    deadline: float | None = None,
    timeout: float | None = None,
    where: str = "chain.limit()",
) -> ToolCall:
    """Build (and validate) the :class:`ToolCall` of :meth:`ToolCallChain.limit`'s
    arguments; a wrong one raises :class:`ConfigError` naming it (``where`` says who)."""
    if not isinstance(tool, str) or not tool:
        raise ConfigError(f"{where}: tool must be a non-empty str, got {tool!r}")
    if not isinstance(tenant, str):
        raise ConfigError(f"{where}: tenant must be a str, got {tenant!r}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigError(f"{where}: priority must be an int, got {priority!r}")
    if run_id is not None and not isinstance(run_id, str):
        raise ConfigError(f"{where}: run_id must be a str or None, got {run_id!r}")
    costs: dict[str, float] = {}
    if cost is not None:
        if not isinstance(cost, Mapping):
            raise ConfigError(f"{where}: cost must be a mapping such as {{'tokens': 1200}}, "
                              f"got {cost!r}")
        for name, amount in cost.items():
            if not isinstance(name, str) or not _number(amount) or not 0 <= amount < math.inf:
                raise ConfigError(f"{where}: cost[{name!r}] must be a finite number >= 0, "
                                  f"got {amount!r}")
            costs[name] = float(amount)
    if deadline is not None and not _number(deadline):
        raise ConfigError(f"{where}: deadline must be a time on the chain's clock "
                          f"(chain.now() + seconds), got {deadline!r}")
    if timeout is not None:
        if not _number(timeout) or timeout <= 0:
            raise ConfigError(f"{where}: timeout must be a number of seconds > 0, "
                              f"got {timeout!r}")
        bound = chain.now() + float(timeout)
        deadline = bound if deadline is None else min(deadline, bound)
    return ToolCall(tool=tool, run_id=run_id, tenant=tenant, priority=priority, cost=costs,
                    deadline=deadline)


class CallHandle:
    """What ``async with chain.limit(...) as handle`` gives: the admitted call.

    :ivar call: the :class:`ToolCall` the chain admitted.
    :ivar lease: its :class:`~stageflow_plus.primitives.lease.Lease` (``None`` when the
        chain has no limiter interceptors).
    :ivar result: what :meth:`report` was given (``None`` until then).
    """

    __slots__ = ("call", "lease", "result")

    def __init__(self, call: ToolCall) -> None:
        self.call = call
        self.lease: Lease | None = None
        self.result: Any = None

    @property
    def waited(self) -> float:
        """Seconds the call waited for admission."""
        return self.lease.waited if self.lease is not None else 0.0

    def report(self, result: Any) -> None:
        """What the provider answered (a response, a ``ToolOutput``, a dict with
        ``retry_after``, an object with ``headers``): the chain's steps observe it as the
        call's result when the block exits."""
        self.result = result

    def adjust(self, actual: Mapping[str, float]) -> None:
        """Reconcile the estimated cost with the actual one now, per dimension (e.g.
        ``{"tokens": 812}``): the rate buckets are charged or refunded the difference."""
        if self.lease is not None:
            self.lease.adjust(actual)

    def __repr__(self) -> str:
        return f"<CallHandle {self.call.tool!r} call #{self.call.call_id} lease={self.lease!r}>"


def _finish(chain: ToolCallChain, handle: CallHandle, error: BaseException | None) -> None:
    """The admission step's epilogue, the gate's own (:meth:`AdmissionGate._settle`): the
    observers see the outcome — an observer that raises is reported, never allowed to
    replace it — then the lease goes back. Cancelled inside the block: the permits come
    back, nobody observes."""
    lease = handle.lease
    if lease is None:
        return
    gate = chain.gate
    if gate is None or (error is not None and not isinstance(error, Exception)):
        lease.release()
    elif error is None:
        gate._settle(handle.call, lease, handle.result, False)
    else:
        gate._settle(handle.call, lease, error, True)


class LimitedBlock:
    """The async context manager :meth:`ToolCallChain.limit` returns (enter it once)."""

    __slots__ = ("_chain", "_entered", "_exited", "_handle", "_task")

    def __init__(self, chain: ToolCallChain, call: ToolCall) -> None:
        self._chain = chain
        self._handle = CallHandle(call)
        self._task: asyncio.Task[Any] | None = None
        self._entered: asyncio.Future[None] | None = None
        self._exited: asyncio.Future[Any] | None = None

    @property
    def call(self) -> ToolCall:
        """The call this block will make."""
        return self._handle.call

    async def __aenter__(self) -> CallHandle:
        if self._entered is not None or self._handle.lease is not None:
            raise RuntimeError("a chain.limit() block can be entered only once")
        chain, handle = self._chain, self._handle
        if chain.gate is not None and len(chain.steps) == 1:  # the admission step alone
            handle.lease = await chain.gate.acquire(handle.call)  # cancellation-safe
            return handle
        loop = asyncio.get_running_loop()
        self._entered = loop.create_future()
        self._exited = loop.create_future()
        self._task = loop.create_task(self._run_steps())
        self._task.add_done_callback(self._task_done)
        try:
            await self._entered
        except asyncio.CancelledError:
            self._task.cancel()  # its wait is abandoned, or its grant returned
            if self._entered.done() and not self._entered.cancelled():
                self._entered.exception()  # refused in the same instant: seen, not logged
            raise
        return handle

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, exited = self._task, self._exited
        if task is None or exited is None:
            _finish(self._chain, self._handle, exc)
            return
        if exc is None:
            exited.set_result(self._handle.result)
        elif isinstance(exc, Exception):
            exited.set_exception(exc)
        else:
            task.cancel()  # cancelled (or interrupted) inside the block
        try:
            await task
        except asyncio.CancelledError:
            if exc is None:  # the caller was cancelled while the steps finished
                task.cancel()
                raise
            return  # the block's own exception propagates
        except BaseException as error:
            if error is exc:
                return  # the steps passed the block's error on: it propagates unchanged
            raise

    # -- the steps around the block, in a helper task -----------------------------------
    def _task_done(self, task: asyncio.Task[Any]) -> None:
        entered = self._entered
        error = None if task.cancelled() else task.exception()  # (retrieved either way)
        if entered is not None and not entered.done():
            if error is not None:
                entered.set_exception(error)  # refused (or a step failed) before admission
            elif not task.cancelled():
                entered.set_exception(ConfigError(
                    "chain.limit(): a step of the chain returned without calling proceed(), "
                    "so the block cannot run"))

    async def _run_steps(self) -> Any:
        chain, handle = self._chain, self._handle
        proceed: Proceed = self._block
        for step in reversed(chain.steps):
            proceed = _bind(self._admission if step is chain.gate else step, proceed)
        return await proceed(handle.call)

    async def _admission(self, call: ToolCall, proceed: Proceed) -> Any:
        """The admission step, with the lease kept on the handle."""
        gate = self._chain.gate
        assert gate is not None
        self._handle.lease = await gate.acquire(call)
        try:
            result = await proceed(call)
        except BaseException as error:
            _finish(self._chain, self._handle, error)
            raise
        self._handle.result = result
        _finish(self._chain, self._handle, None)
        return result

    async def _block(self, call: ToolCall) -> Any:
        """The innermost target: admitted — let the block run, then return what it reported."""
        entered, exited = self._entered, self._exited
        assert entered is not None and exited is not None
        if entered.cancelled():  # the caller was cancelled while this call was admitted
            raise asyncio.CancelledError
        if entered.done():
            raise ConfigError(
                "chain.limit(): a step called proceed() a second time (a retry?), but the "
                "block runs once; use chain.run(call, fn) with this chain"
            )
        entered.set_result(None)
        return await exited

    def __repr__(self) -> str:
        return f"<LimitedBlock {self._handle.call.tool!r}>"


def _bind(step: ToolCallInterceptor | Any, nxt: Proceed) -> Proceed:
    def proceed(call: ToolCall) -> Any:
        return step(call, nxt)

    return proceed
