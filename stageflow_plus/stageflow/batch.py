"""Parallel batches of independent tool calls under a chain's limits.

:func:`run_batch` starts every call at once as its own task; the
:class:`~stageflow_plus.interceptors.chain.ToolCallChain` decides how many actually run
together. The answer is a :class:`BatchResult` whose items are in **input order**, each
with its own value or exception — a failure never hides the others' results.

Strategies:

``"all"``
    Every call runs to completion. The batch is ok only if every call succeeded.
``"first_success"``
    As soon as one call succeeds the others are cancelled (their permits are released
    before :func:`run_batch` returns) and marked ``cancelled``. Ok when one succeeded.
``"majority"``
    A quorum: ok when more than half succeed. **Once the outcome is decided** — a majority
    succeeded, or so many failed that a majority no longer can — the remaining calls are
    cancelled and marked ``cancelled``. Their answers could not change the outcome, and
    cancelling returns their permits (and provider quota) to other work at once.

A call "succeeds" when it returns without raising and its result is not a failed
``ToolOutput`` (``success=False``, e.g. an unknown action type); such an output becomes a
:class:`ToolFailed` error on its item, the output kept as ``value``.

Each call receives its own ``copy.deepcopy`` of ``ctx``, so one call mutating its context
cannot leak into another. With asyncio's FIFO scheduling the outcome (items, completion
order, winner) is deterministic for deterministic tools.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from stageflow.tools import ToolRegistry

from ..interceptors.chain import ToolCallChain
from ..primitives.errors import ConfigError, StageflowPlusError
from .tools import CostEstimator, LimitedToolRegistry, build_call

__all__ = [
    "BatchFailed",
    "BatchItem",
    "BatchResult",
    "BatchTarget",
    "Strategy",
    "ToolFailed",
    "run_batch",
]

Strategy = Literal["all", "first_success", "majority"]
"""How a batch decides it is done and ok (see the module docstring)."""

BatchTarget = Callable[[Any, dict[str, Any]], Awaitable[Any]]
"""``async (action, ctx) -> result``: anything shaped like ``ToolRegistry.execute``."""

_STRATEGIES: tuple[str, ...] = ("all", "first_success", "majority")


class ToolFailed(StageflowPlusError):
    """A tool answered with a failed output (``success=False``) instead of raising.

    :ivar output: the tool's output.
    """

    def __init__(self, message: str, output: Any) -> None:
        super().__init__(message)
        self.output = output


class BatchFailed(ExceptionGroup[Exception], StageflowPlusError):
    """A batch was not ok: an ``ExceptionGroup`` of its calls' errors.

    Handle it with ``except*`` per error type, or read :attr:`result` for every item
    (groups made by ``split``/``except*`` are plain ``ExceptionGroup`` objects).

    :ivar result: the batch's full result.
    """

    result: BatchResult | None = None


@dataclass(frozen=True, slots=True)
class BatchItem:
    """The outcome of one call of a batch.

    :ivar index: the call's position in the input.
    :ivar ok: the call succeeded.
    :ivar value: what the call returned (``None`` if it raised or was cancelled).
    :ivar error: the exception it raised, or :class:`ToolFailed` for a failed output.
    :ivar cancelled: the batch cancelled the call once its outcome was decided.
    """

    index: int
    ok: bool
    value: Any = None
    error: Exception | None = None
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A finished batch.

    :ivar items: one per call, in input order.
    :ivar strategy: the strategy it ran with.
    :ivar ok: whether the strategy's condition holds.
    :ivar order: indices of the calls that finished (not cancelled), in finishing order.
    :ivar winner: for ``"first_success"``, the index of the first call that succeeded.
    """

    items: tuple[BatchItem, ...]
    strategy: Strategy
    ok: bool
    order: tuple[int, ...] = ()
    winner: int | None = None

    @property
    def succeeded(self) -> int:
        """How many calls succeeded."""
        return sum(1 for item in self.items if item.ok)

    @property
    def failed(self) -> int:
        """How many calls raised or returned a failed output."""
        return sum(1 for item in self.items if item.error is not None)

    @property
    def cancelled(self) -> int:
        """How many calls the batch cancelled."""
        return sum(1 for item in self.items if item.cancelled)

    @property
    def values(self) -> tuple[Any, ...]:
        """Every item's value, in input order (``None`` for failed or cancelled calls)."""
        return tuple(item.value for item in self.items)

    def raise_for_status(self) -> None:
        """Raise :class:`BatchFailed` (an ``ExceptionGroup``) unless the batch is ok."""
        if self.ok:
            return
        errors = [item.error for item in self.items if item.error is not None]
        if not errors:  # only possible if calls cancelled themselves
            errors = [ToolFailed("no call succeeded", None)]
        message = (
            f"batch ({self.strategy}) failed: {self.failed} of {len(self.items)} calls failed, "
            f"{self.cancelled} cancelled"
        )
        error = BatchFailed(message, errors)
        error.result = self
        raise error


def _runner(
    target: ToolRegistry | BatchTarget,
    chain: ToolCallChain | None,
    cost_of: CostEstimator | None,
) -> BatchTarget:
    if isinstance(target, LimitedToolRegistry):
        if chain is not None:
            raise ConfigError(
                "the registry is already limited by its own chain; pass chain=None or a "
                "plain ToolRegistry"
            )
        return target.execute
    if isinstance(target, ToolRegistry):
        return target.execute if chain is None else LimitedToolRegistry(
            chain, target, cost_of=cost_of
        ).execute
    if not callable(target):
        raise ConfigError(f"target must be a ToolRegistry or an async callable, got {target!r}")
    if chain is None:
        return target
    limited: ToolCallChain = chain
    plain: BatchTarget = target

    async def run(action: Any, ctx: dict[str, Any]) -> Any:
        now = limited.now() if limited.gate is not None else None
        call = build_call(action, ctx, cost_of=cost_of, now=now)
        return await limited.run(call, lambda c: plain(c.action, c.context))

    return run


def _classify(index: int, value: Any) -> BatchItem:
    if getattr(value, "success", True) is False:
        message = getattr(value, "error", None) or "tool returned success=False"
        return BatchItem(index, False, value, ToolFailed(str(message), value))
    return BatchItem(index, True, value)


async def _cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the calls still running and wait until each has unwound (permits released).

    If ``run_batch`` itself is cancelled meanwhile (a stage timeout, a cancel token), it
    still waits for the calls to unwind — nothing leaks — and then re-raises the
    cancellation: a cancel is never swallowed.
    """
    for task in tasks:
        task.cancel()
    pending = [task for task in tasks if not task.done()]
    interrupted = False
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
        pending = [task for task in pending if not task.done()]
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: one() records every Exception on its item
    if interrupted:
        raise asyncio.CancelledError


async def run_batch(
    calls: Iterable[Any],
    target: ToolRegistry | BatchTarget,
    *,
    chain: ToolCallChain | None = None,
    strategy: Strategy = "all",
    ctx: Mapping[str, Any] | None = None,
    cost_of: CostEstimator | None = None,
) -> BatchResult:
    """Run independent tool calls concurrently and collect their outcomes in input order.

    :param calls: the actions (objects with ``type`` and ``payload``).
    :param target: a ``ToolRegistry`` (a :class:`LimitedToolRegistry` brings its own chain)
        or an ``async (action, ctx) -> result`` callable.
    :param chain: the limits to run the calls under (not with a ``LimitedToolRegistry``).
    :param strategy: ``"all"``, ``"first_success"`` or ``"majority"`` (module docstring).
    :param ctx: the context dict; every call gets its own deep copy.
    :param cost_of: cost estimator for the calls' admission.
    :raises ConfigError: unknown strategy, an empty batch for a strategy other than ``"all"``,
        or a chain given alongside a ``LimitedToolRegistry``.

    Cancelling ``run_batch`` cancels every call and waits for them to finish unwinding
    (permits released) before the cancellation propagates. Calls cancelled by the strategy
    have likewise released their permits when ``run_batch`` returns.
    """
    if strategy not in _STRATEGIES:
        raise ConfigError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    actions = list(calls)
    n = len(actions)
    if n == 0 and strategy != "all":
        raise ConfigError(f"an empty batch has no outcome under strategy {strategy!r}")
    run = _runner(target, chain, cost_of)
    base = dict(ctx) if ctx is not None else {}
    contexts = [copy.deepcopy(base) for _ in actions]  # before any call starts
    need = n // 2 + 1
    items: list[BatchItem | None] = [None] * n
    order: list[int] = []
    winner: int | None = None
    good = 0
    decided: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def is_decided(done: int, good: int) -> bool:
        if done == n:
            return True
        if strategy == "first_success":
            return good > 0
        if strategy == "majority":
            return good >= need or done - good > n - need
        return False

    def finished(item: BatchItem) -> None:
        nonlocal winner, good
        items[item.index] = item
        order.append(item.index)
        if item.ok:
            good += 1
            if winner is None:
                winner = item.index
        if not decided.done() and is_decided(len(order), good):
            decided.set_result(None)

    async def one(index: int, action: Any, context: dict[str, Any]) -> None:
        # Reports from inside the task (not a done-callback): the decision is taken in the
        # same step the call finishes, so ordering is FIFO and quiescence checks see it.
        try:
            value = await run(action, context)
        except Exception as exc:  # captured beside the other calls' results
            finished(BatchItem(index, False, None, exc))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # KeyboardInterrupt and the like: stop the batch
            if not decided.done():
                decided.set_exception(exc)
            raise
        else:
            finished(_classify(index, value))

    tasks = [
        asyncio.ensure_future(one(index, action, context))
        for index, (action, context) in enumerate(zip(actions, contexts, strict=True))
    ]
    try:
        if n:
            await decided
    finally:
        await _cancel_and_wait(tasks)
    result_items = tuple(
        item if item is not None else BatchItem(i, False, cancelled=True)
        for i, item in enumerate(items)
    )
    ok = {"all": good == n, "first_success": good > 0, "majority": good >= need}[strategy]
    return BatchResult(
        result_items,
        strategy,
        ok,
        tuple(order),
        winner if strategy == "first_success" else None,
    )
