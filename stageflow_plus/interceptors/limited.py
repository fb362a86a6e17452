"""``@limited(chain, ...)``: every call of an async function goes through a chain.

::

    @limited(chain, tool="llm", priority=1, cost={"tokens": 1200})
    async def summarize(text: str) -> str: ...

    @limited(chain, tool="llm",
             per_call=lambda text, *, user: {"tenant": user.org,
                                             "cost": {"tokens": len(text) // 4 + 500}})
    async def answer(text: str, *, user: User) -> str: ...

Each call runs as ``async with chain.limit(...)`` (see
:mod:`~stageflow_plus.interceptors.limit`): it waits for admission, runs, releases; its
return value is what the chain's steps observe (Retry-After, rate-limit headers), its
exception propagates unchanged. ``per_call`` receives the call's arguments and returns the
fields that vary per call; they override the decorator's.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ..primitives.errors import ConfigError
from .limit import LimitedBlock, make_call

if TYPE_CHECKING:
    from .chain import ToolCallChain

__all__ = ["CALL_FIELDS", "limited"]

P = ParamSpec("P")
T = TypeVar("T")

CALL_FIELDS = frozenset({"tool", "tenant", "priority", "cost", "run_id", "deadline", "timeout"})
"""The fields ``per_call`` may return (the keyword arguments of ``chain.limit()``)."""


def limited(
    chain: ToolCallChain,
    *,
    tool: str | None = None,
    tenant: str = "default",
    priority: int = 0,
    cost: Mapping[str, float] | None = None,
    run_id: str | None = None,
    timeout: float | None = None,
    per_call: Callable[..., Mapping[str, Any]] | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate an ``async def`` so that each call is limited by ``chain``.

    :param chain: the :class:`~stageflow_plus.interceptors.chain.ToolCallChain`.
    :param tool: the tool name (default: the function's qualified name).
    :param tenant: the fair-share owner.
    :param priority: higher is more urgent.
    :param cost: estimated cost per dimension, e.g. ``{"tokens": 1200}``.
    :param run_id: the run the calls belong to, if any.
    :param timeout: seconds a call may wait for admission.
    :param per_call: ``(*args, **kwargs) -> {"tenant": ..., "cost": ..., ...}``: fields
        derived from each call's arguments (keys from :data:`CALL_FIELDS`).
    :raises ConfigError: ``chain`` is not a chain, the function is not ``async def``,
        ``per_call`` is not callable; at call time, ``per_call`` returned an unknown field
        or an invalid value (the message names it).
    """
    from .chain import ToolCallChain  # (the chain module imports the limit module)

    if not isinstance(chain, ToolCallChain):
        raise ConfigError(f"@limited: the first argument must be a ToolCallChain, got {chain!r}")
    if per_call is not None and not callable(per_call):
        raise ConfigError(f"@limited: per_call must be a callable, got {per_call!r}")
    static: dict[str, Any] = {"tenant": tenant, "priority": priority, "cost": cost,
                              "run_id": run_id, "timeout": timeout}

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"@limited: {getattr(fn, '__qualname__', fn)!r} must be an "
                              "async def function")
        name = tool if tool is not None else fn.__qualname__
        fields = {"tool": name, **static}
        where = f"@limited({name!r})"

        @functools.wraps(fn)
        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            spec = fields
            if per_call is not None:
                derived = per_call(*args, **kwargs)
                if not isinstance(derived, Mapping):
                    raise ConfigError(f"{where}: per_call must return a mapping of call "
                                      f"fields, got {derived!r}")
                unknown = set(derived) - CALL_FIELDS
                if unknown:
                    raise ConfigError(f"{where}: per_call returned unknown field(s) "
                                      f"{sorted(unknown)} (known: {sorted(CALL_FIELDS)})")
                spec = {**fields, **derived}
            async with LimitedBlock(chain, make_call(chain, **spec, where=where)) as handle:
                result = await fn(*args, **kwargs)
                handle.report(result)
            return result

        return call

    return decorate
