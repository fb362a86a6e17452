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
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NoReturn, Protocol

from ..primitives.dimensions import check_dimension
from ..primitives.errors import ConfigError

__all__ = [
    "LIMIT_KEYS",
    "MAX_PRIORITY_MAGNITUDE",
    "Proceed",
    "ToolCall",
    "ToolCallInterceptor",
    "check_cost",
    "check_limits",
]

# (Final: compiled code reads these without a dictionary lookup per ToolCall)
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_MAX_FLOAT: Final = sys.float_info.max



# call ids 1, 2, 3, ... (the bound method: compiled, next() would cost a builtins lookup)
_next_call_id: Final[Callable[[], int]] = itertools.count(1).__next__

MAX_PRIORITY_MAGNITUDE: Final = 2**31
"""``ToolCall.priority`` lies in ``[-2**31, 2**31]``: aging arithmetic stays exact in floats."""


def check_cost(cost: Any, where: str, context: str = "") -> Mapping[str, float]:
    """Validate a cost mapping (``{"tokens": 1200}``) and return it.

    Every key must be a ``str`` and every value a finite ``int`` or ``float`` >= 0 (not a
    ``bool``). Anything else — NaN, infinities, negatives, strings, ``None``, a non-mapping —
    raises :class:`~stageflow_plus.primitives.errors.ConfigError` naming ``where`` (e.g.
    ``"ToolCall.cost"``), the entry, ``context`` (e.g. ``" of tool 'search'"``) and the value.
    """
    if type(cost) is not dict and not isinstance(cost, Mapping):
        raise ConfigError(
            f"{where}{context} must be a mapping of cost names to numbers, got {_show(cost)}"
        )
    for name, value in cost.items():
        kind = type(value)
        if (kind is not float and kind is not int) or type(name) is not str:
            _refuse_cost_entry(name, value, where, context)
        if not 0 <= value <= _MAX_FLOAT:  # (NaN fails every comparison)
            _refuse_cost_entry(name, value, where, context)
    return cost


def _plain_cost(cost: Any) -> bool:
    """Whether ``cost`` is a ``dict`` that :func:`check_cost` accepts: the common case,
    checked without building the error context the hot paths (``ToolCall``, ``make_call``)
    would otherwise format per call; anything else goes to :func:`check_cost`."""
    if type(cost) is not dict:
        return False
    for name, value in cost.items():
        kind = type(value)
        if (kind is not float and kind is not int) or type(name) is not str:
            return False
        if not 0 <= value <= _MAX_FLOAT:
            return False
    return True


def _show(value: Any) -> str:
    """``value`` for an error message: its type and a repr cut to 60 characters."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _refuse_cost_entry(name: Any, value: Any, where: str, context: str) -> None:
    if not isinstance(name, str):
        raise ConfigError(f"{where}{context}: cost names must be strings, got {_show(name)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}[{name!r}]{context} must be a number, got {_show(value)}")
    if not 0 <= value <= _MAX_FLOAT:
        raise ConfigError(
            f"{where}[{name!r}]{context} must be a finite number >= 0, got {_show(value)}"
        )


def _check_fields(tool: Any, priority: Any, tenant: Any, run_id: Any) -> None:
    """The slow path of ``ToolCall`` checks: subclasses of str/int pass, the rest fails."""
    if not isinstance(tool, str):
        _refuse(tool, "tool", "a str", tool)
    if isinstance(priority, bool) or not isinstance(priority, int):
        _refuse(tool, "priority", "an int", priority)
    if not -MAX_PRIORITY_MAGNITUDE <= priority <= MAX_PRIORITY_MAGNITUDE:
        _refuse(tool, "priority", f"an int within ±{MAX_PRIORITY_MAGNITUDE}", priority)
    if not isinstance(tenant, str):
        _refuse(tool, "tenant", "a str", tenant)
    if run_id is not None and not isinstance(run_id, str):
        _refuse(tool, "run_id", "a str or None", run_id)


LIMIT_KEYS = ("concurrency", "max_queue", "rates")
"""The per-run limits a ``ToolCall.limits`` mapping may hold."""


def check_limits(limits: Any, where: str) -> None:
    """Validate a per-run limits mapping (``{"concurrency": 2, "rates": {"tokens": 50.0},
    "max_queue": 10}``): ``concurrency`` an int >= 1, ``max_queue`` an int >= 0, ``rates`` a
    mapping of registered dimension names to units per second (finite, > 0).

    :raises ConfigError: naming ``where`` (e.g. ``"ToolCall.limits of tool 'search'"``),
        the entry and the value — an unknown key too (it would be silently ignored).
    """
    if not isinstance(limits, Mapping):
        raise ConfigError(f"{where} must be a mapping of {', '.join(LIMIT_KEYS)}, "
                          f"got {_show(limits)}")
    for key, value in limits.items():
        if key == "concurrency" or key == "max_queue":
            least = 1 if key == "concurrency" else 0
            if type(value) is not int or value < least:
                raise ConfigError(f"{where}[{key!r}] must be an int >= {least}, "
                                  f"got {_show(value)}")
        elif key == "rates":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}['rates'] must be a mapping of dimension names to "
                                  f"units per second, got {_show(value)}")
            for dimension, rate in value.items():
                check_dimension(dimension, f"{where}['rates'] key")
                if (type(rate) is not float and type(rate) is not int) or not (
                        0 < rate <= _MAX_FLOAT):
                    raise ConfigError(f"{where}['rates'][{dimension!r}] must be a finite "
                                      f"number > 0 (per second), got {_show(rate)}")
        else:
            raise ConfigError(f"{where}: unknown limit {key!r} (known: "
                              f"{', '.join(LIMIT_KEYS)})")


def _refuse(tool: Any, name: str, expected: str, value: Any) -> NoReturn:
    raise ConfigError(f"ToolCall.{name} of tool {tool!r} must be {expected}, got {_show(value)}")


@dataclass(frozen=True, slots=True, eq=False, init=False)
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
    :ivar deadline: absolute time on the chain's clock by which the call must *start*; a
        call whose deadline has passed is refused with ``DeadlineUnmeetable``, even when
        capacity is free (``-inf``: always refused; ``inf``: the same as ``None``).
    :ivar context: the caller's context object, passed through to the tool untouched.
    :ivar limits: per-run limit overrides already validated against the operator's ceilings.
    :ivar call_id: unique per process, for logs and events (given only by
        ``dataclasses.replace``, which keeps it).

    Every field is checked at construction: a wrong value raises
    :class:`~stageflow_plus.primitives.errors.ConfigError` naming the field, the tool and
    the value (``tool`` and ``tenant`` are ``str``; ``run_id`` a ``str`` or ``None``;
    ``priority`` an ``int`` within ±2**31; every ``cost`` a finite number >= 0; ``deadline``
    a number or ``None``, not NaN). A call is frozen: assigning a field raises
    ``dataclasses.FrozenInstanceError``.
    """

    # (no defaults here: __init__ below is the constructor, written out because the one
    # dataclass generates sets each field through object.__setattr__ and calls factories;
    # this one costs a few type checks, and is compiled in the accelerated build)
    tool: str
    payload: Mapping[str, Any]
    action: Any
    run_id: str | None
    tenant: str
    priority: int
    cost: Mapping[str, float]
    deadline: float | None
    context: Any
    limits: Mapping[str, Any]
    call_id: int

    def __init__(
        self,
        tool: Any,
        payload: Any = _EMPTY,
        action: Any = None,
        run_id: Any = None,
        tenant: Any = "default",
        priority: Any = 0,
        cost: Any = _EMPTY,
        deadline: Any = None,
        context: Any = None,
        limits: Any = _EMPTY,
        call_id: Any = None,
    ) -> None:
        # Checked here, at once, for every call: a wrong value would otherwise be refused
        # only when the call has to queue (i.e. only under load), or not at all (a NaN cost
        # neither fits nor fails, so its bucket's timer would re-arm for "now" forever).
        # The common case costs a few type checks; the messages are built only on failure.
        if (
            type(tool) is not str
            or type(priority) is not int
            or type(tenant) is not str
            or not -MAX_PRIORITY_MAGNITUDE <= priority <= MAX_PRIORITY_MAGNITUDE
            or (run_id is not None and type(run_id) is not str)
        ):
            _check_fields(tool, priority, tenant, run_id)
        if cost is not _EMPTY and not _plain_cost(cost):
            check_cost(cost, "ToolCall.cost", f" of tool {tool!r}")  # other mappings; refusals
        if limits is not _EMPTY and limits:
            check_limits(limits, f"ToolCall.limits of tool {tool!r}")
        if deadline is not None and (
            (type(deadline) is not float and type(deadline) is not int) or deadline != deadline
        ):
            _refuse(tool, "deadline", "a number or None (not NaN)", deadline)
        object.__setattr__(self, "tool", tool)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "run_id", run_id)
        object.__setattr__(self, "tenant", tenant)
        object.__setattr__(self, "priority", priority)
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "deadline", deadline)
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "limits", limits)
        object.__setattr__(self, "call_id", _next_call_id() if call_id is None else call_id)

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
