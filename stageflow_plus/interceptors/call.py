"""The tool call that flows through the chain, and the "around" protocol.

A :class:`ToolCall` is built once when a call enters the chain and flows down unchanged:
interceptors read it, they never re-derive tenant, priority or deadline from a context.

The protocol every interceptor follows::

    result = await interceptor(call, proceed)

where ``proceed(call)`` runs the rest of the chain and, at its end, the tool.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

__all__ = ["Proceed", "ToolCall", "ToolCallInterceptor"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True, eq=False)
class ToolCall:
    """One tool call, as the limiters see it.

    :ivar tool: the tool's action type (e.g. ``"web_search"``).
    :ivar payload: the action's payload.
    :ivar action: the original action object, passed through to the tool.
    :ivar run_id: the pipeline run that made the call (``None`` outside a run).
    :ivar tenant: the fair-share owner (an org, a user, a team).
    :ivar priority: higher is more urgent; 0 is normal.
    :ivar cost: estimated cost per dimension, e.g. ``{"tokens": 1200}`` (a request counts 1
        under ``"requests"`` automatically).
    :ivar deadline: absolute time on the chain's clock by which the call must *start*.
    :ivar context: the caller's context object, passed through to the tool untouched.
    :ivar limits: per-run limit overrides already validated against the operator's ceilings.
    :ivar call_id: unique per process, for logs and events.
    """

    tool: str
    payload: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    action: Any = None
    run_id: str | None = None
    tenant: str = "default"
    priority: int = 0
    cost: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    deadline: float | None = None
    context: Any = None
    limits: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    call_id: int = field(default_factory=_ids.__next__)

    def __post_init__(self) -> None:
        # checked here, at once, because the compiled limiter would otherwise refuse a wrong
        # type only when the call has to queue (i.e. only under load)
        if type(self.priority) is not int or type(self.tenant) is not str:
            if isinstance(self.priority, bool) or not isinstance(self.priority, int):
                raise TypeError(f"ToolCall.priority must be an int, got {self.priority!r}")
            if not isinstance(self.tenant, str):
                raise TypeError(f"ToolCall.tenant must be a str, got {self.tenant!r}")

    def log_fields(self) -> dict[str, Any]:
        """The fields events and logs carry for this call."""
        return {
            "tool": self.tool,
            "call_id": self.call_id,
            "run_id": self.run_id,
            "tenant": self.tenant,
            "priority": self.priority,
            "cost": dict(self.cost),
        }


Proceed = Callable[[ToolCall], Awaitable[Any]]
"""Runs the rest of the chain (and finally the tool) for a call."""


class ToolCallInterceptor(Protocol):
    """An "around" step: do something before and/or after ``proceed(call)``."""

    async def __call__(self, call: ToolCall, proceed: Proceed) -> Any: ...
