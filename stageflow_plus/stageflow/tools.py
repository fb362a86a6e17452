"""Limited versions of Stageflow's tool runners that keep their interfaces.

* :class:`LimitedToolRegistry` — a ``ToolRegistry`` whose ``execute`` goes through a
  :class:`~stageflow_plus.interceptors.chain.ToolCallChain`.
* :class:`LimitedToolExecutor` — the legacy ``ToolExecutor`` stage; its plan's actions run
  **concurrently** under the limits (instead of one by one), results counted in plan order.
* :class:`LimitedAdvancedToolExecutor` — ``AdvancedToolExecutor`` with admission before the
  tool's lifecycle: an admitted call emits Stageflow's ``tool.*`` events as before; a refused
  one raises the typed :class:`~stageflow_plus.primitives.errors.Rejected` and emits
  ``tool.rejected``. A tool requiring HITL approval holds its permit while approval is
  awaited (admission comes first, so approval never waits on a refused call).

Every wrapper builds the :class:`~stageflow_plus.interceptors.call.ToolCall` once, from the
action, the context and the current :class:`~stageflow_plus.stageflow.scope.CallScope`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from stageflow.tools import AdvancedToolExecutor, ToolExecutor, ToolRegistry
from stageflow.tools.base import ToolOutput
from stageflow.tools.definitions import ToolOutput as AdvancedToolOutput
from stageflow.tools.executor import ToolExecutorResult

from ..interceptors.call import ToolCall
from ..interceptors.chain import ToolCallChain
from ..interceptors.gate import AdmissionGate
from ..llm.answers import _DATA_ONLY
from ..primitives.errors import ConfigError
from .calls import CostEstimator, RegistryRunner, build_call, make_call
from .events import StageflowEventListener
from .scope import _current

__all__ = [
    "CostEstimator",
    "LimitedAdvancedToolExecutor",
    "LimitedToolExecutor",
    "LimitedToolRegistry",
    "build_call",
]

logger = logging.getLogger("stageflow_plus.tools")

_DATA_ONLY.update((ToolOutput, AdvancedToolOutput))  # answers only in their data

def _clock(chain: ToolCallChain) -> Callable[[], float] | None:
    gate = chain.gate
    return gate.limiter.clock.now if gate is not None else None


def _record(call: ToolCall, result: Any) -> Any:
    scope = _current.get()
    if scope is not None and scope.completed is not None:
        scope.completed.append((call.tool, result))
    return result


def _attach_events(chain: ToolCallChain) -> ToolCallChain:
    chain.add_listener(StageflowEventListener())
    return chain


class LimitedToolRegistry(ToolRegistry):
    """A ``ToolRegistry`` whose ``execute`` runs under a chain of limits.

    It shares its tools with ``registry`` (default: Stageflow's global registry): registering
    in either is visible in both. Unknown action types answer exactly as Stageflow does
    (``ToolOutput(success=False)``) without touching any limit. Refusals raise
    :class:`~stageflow_plus.primitives.errors.Rejected` subclasses.
    """

    def __init__(
        self,
        chain: ToolCallChain,
        registry: ToolRegistry | None = None,
        *,
        cost_of: CostEstimator | None = None,
    ) -> None:
        super().__init__()
        if registry is None:
            from stageflow.tools import get_tool_registry

            registry = get_tool_registry()
        self.wrapped = registry
        self._tools = registry._tools  # shared, so registration works through either object
        self._factories = registry._factories
        self.chain = _attach_events(chain)
        self.cost_of = cost_of
        self._cost_of = cost_of  # (the runner's: a cost_of set later takes the chained path)
        self._clock = _clock(self.chain)
        #: the gate when it is the whole chain (then an uncontended call runs compiled)
        self._gate: AdmissionGate | None = (
            self.chain.gate if self.chain.steps == (self.chain.gate,) else None
        )
        self._runner = RegistryRunner(self._gate, self, ToolRegistry.execute,
                                      self._run_recorded, cost_of)

    def execute(
        self, action: Any, ctx: dict[str, Any]
    ) -> Coroutine[Any, Any, ToolOutput | None]:
        """Run ``action`` under the chain (a coroutine: the tool's output, or a refusal
        raised). Nothing is read or acquired before it is awaited."""
        gate = self._gate
        if gate is not None and not gate.limiter._waiting and self.cost_of is self._cost_of:
            # nobody queued: compiled coroutines build, admit, run, release
            return self._runner.run(action, ctx)
        return self._execute_chained(action, ctx)

    async def _execute_chained(self, action: Any, ctx: dict[str, Any]) -> ToolOutput | None:
        # (a Python frame: a call that queues behind others unwinds cheaply when cancelled)
        if action.type not in self._tools and not self.can_execute(action.type):
            return await ToolRegistry.execute(self, action, ctx)
        call = make_call(action, ctx, self.cost_of, self._clock)
        return await self.chain.run(call, self._runner)

    async def _run_recorded(self, call: ToolCall) -> ToolOutput | None:
        output = await ToolRegistry.execute(self, call.action, call.context)
        _record(call, output)
        return output


class LimitedToolExecutor(ToolExecutor):
    """The legacy ``ToolExecutor`` with the plan's actions run concurrently under limits.

    Results are aggregated in plan order with Stageflow's rules (a missing tool, a failed
    output or an exception counts as failed; any failure requires re-entry). A refusal by a
    limiter counts as failed and is logged with its reason.
    """

    def __init__(
        self,
        chain: ToolCallChain,
        *,
        registry: ToolRegistry | None = None,
        cost_of: CostEstimator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tool_registry = LimitedToolRegistry(
            chain, registry if registry is not None else self.tool_registry, cost_of=cost_of
        )

    async def execute(self, ctx: Any, plan: Any = None) -> ToolExecutorResult:
        if plan is None:
            return ToolExecutorResult()
        actions = list(plan.actions)
        outcomes = await asyncio.gather(
            *(self.tool_registry.execute(action, ctx.to_dict()) for action in actions),
            return_exceptions=True,
        )
        result = ToolExecutorResult()
        for action, outcome in zip(actions, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                result.actions_failed += 1
                logger.error("Error executing action %s: %s", action.type, outcome)
            elif outcome is None:
                result.actions_failed += 1
            elif outcome.success:
                result.actions_executed += 1
                if outcome.artifacts:
                    result.artifacts_produced.extend(outcome.artifacts)
                if action.payload.get("requires_reentry"):
                    result.requires_reentry = True
            else:
                result.actions_failed += 1
                logger.error("Action %s failed: %s", action.type, outcome.error)
        if result.actions_failed > 0:
            result.requires_reentry = True
        return result


class LimitedAdvancedToolExecutor(AdvancedToolExecutor):
    """``AdvancedToolExecutor`` whose ``execute`` waits for admission first.

    Same constructor arguments as ``AdvancedToolExecutor`` plus ``chain`` and ``cost_of``;
    or :meth:`wrap` an executor you already have. Unknown action types raise Stageflow's
    ``ToolNotFoundError`` without touching a limit.

    :ivar wrapped: the executor given to :meth:`wrap` (``None`` for a new one).
    """

    wrapped: AdvancedToolExecutor | None = None

    @classmethod
    def wrap(
        cls,
        executor: AdvancedToolExecutor,
        chain: ToolCallChain,
        *,
        cost_of: CostEstimator | None = None,
    ) -> LimitedAdvancedToolExecutor:
        """Limit an existing executor, keeping everything it has.

        The result shares ``executor``'s registered tools, undo store, approval service and
        config (the same objects: registering, undoing or approving through either is seen
        by both) and runs each admitted call through ``executor.execute`` itself, so a
        subclass's behaviour is kept too; ``undo_action`` and any other attribute reach
        ``executor``. Use it wherever ``executor`` was used.

        :raises ConfigError: ``executor`` is not an ``AdvancedToolExecutor``, or is limited
            already.

        .. versionadded:: 0.2.0
        """
        if isinstance(executor, LimitedAdvancedToolExecutor):
            raise ConfigError("LimitedAdvancedToolExecutor.wrap: this executor already runs "
                              "under a chain (wrap the original executor once)")
        if not isinstance(executor, AdvancedToolExecutor):
            raise ConfigError("LimitedAdvancedToolExecutor.wrap: expected a Stageflow "
                              f"AdvancedToolExecutor, got {type(executor).__name__}")
        limited = cls.__new__(cls)
        limited.__dict__.update(executor.__dict__)  # the same tools, stores and config objects
        limited.wrapped = executor
        limited.chain = _attach_events(chain)
        limited.cost_of = cost_of
        limited._clock = _clock(limited.chain)
        return limited

    def __getattr__(self, name: str) -> Any:
        # only for names not found on this object: a wrapped executor's own extras
        wrapped = self.__dict__.get("wrapped")
        if wrapped is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(wrapped, name)

    def __init__(
        self,
        chain: ToolCallChain,
        *args: Any,
        cost_of: CostEstimator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.chain = _attach_events(chain)
        self.cost_of = cost_of
        self._clock = _clock(self.chain)

    async def execute(self, action: Any, ctx: Any) -> AdvancedToolOutput:
        """Run ``action`` under the chain (the tool's output, or a refusal raised)."""
        if not self.can_execute(action.type):
            return await self._execute_unlimited(action, ctx)
        call = make_call(action, ctx, self.cost_of, self._clock)
        return await self.chain.run(call, self._run_tool)

    async def undo_action(self, action_id: Any, ctx: Any) -> bool:
        """Undo an action (through the wrapped executor when there is one)."""
        if self.wrapped is not None:
            return await self.wrapped.undo_action(action_id, ctx)
        return await super().undo_action(action_id, ctx)

    def _execute_unlimited(self, action: Any, ctx: Any) -> Awaitable[AdvancedToolOutput]:
        if self.wrapped is not None:
            return self.wrapped.execute(action, ctx)
        return AdvancedToolExecutor.execute(self, action, ctx)

    async def _run_tool(self, call: ToolCall) -> AdvancedToolOutput:
        output = await self._execute_unlimited(call.action, call.context)
        _record(call, output)
        return output
