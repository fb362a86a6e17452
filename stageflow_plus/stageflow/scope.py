"""The call scope: run-level facts that reach every tool call made inside a stage.

Stages get a frozen ``StageContext`` without ``.data``, but a ``ContextVar`` set around the
stage is visible in the stage and in the tool calls it makes. The stage adapters set a
:class:`CallScope` there (run id, tenant, priority, deadline, validated per-run limits);
tool wrappers read it when they build a :class:`~stageflow_plus.interceptors.call.ToolCall`.
Outside a pipeline you can set one yourself with :func:`call_scope`: given fields, it merges
them into the scope already set (``call_scope(priority=2)`` inside
``call_scope(tenant="acme")`` keeps the tenant); given a :class:`CallScope`, it replaces it.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Final

from ..interceptors.call import _EMPTY, check_limits
from ..primitives.errors import ConfigError

__all__ = ["CallScope", "ScopeBlock", "call_scope", "current_scope"]



@dataclass(frozen=True, slots=True, init=False)
class CallScope:
    """What the current stage knows about the calls it will make.

    :ivar run_id: the pipeline run.
    :ivar tenant: the fair-share owner.
    :ivar priority: the run's priority (already capped by the operator's ceiling).
    :ivar deadline: absolute time on the chain's clock by which a call must start.
    :ivar limits: per-run limit overrides (already validated, tighten-only).
    :ivar stage: the stage making the calls.
    :ivar max_wait: longest a call may wait for admission, seconds (``None``: no bound).
    :ivar cost: default cost estimate of each call (the registry's estimator wins per key).
    :ivar completed: where the tool wrappers record ``(tool, result)`` of each call that
        completed, so a stage that times out still has its partial results (``None``: off).

    Every field is checked at construction (:class:`ConfigError` naming it); a scope is
    frozen.
    """

    # (no defaults here: __init__ below is the constructor, written out so that the common
    # case costs a few type checks; compiled in the accelerated build)
    run_id: str | None
    tenant: str | None
    priority: int | None
    deadline: float | None
    limits: Mapping[str, Any]
    stage: str | None
    max_wait: float | None
    cost: Mapping[str, float]
    completed: list[tuple[str, Any]] | None

    def __init__(
        self,
        run_id: Any = None,
        tenant: Any = None,
        priority: Any = None,
        deadline: Any = None,
        limits: Any = _EMPTY,
        stage: Any = None,
        max_wait: Any = None,
        cost: Any = _EMPTY,
        completed: Any = None,
    ) -> None:
        if not (
            (run_id is None or (type(run_id) is str and run_id))
            and (tenant is None or (type(tenant) is str and tenant))
            and (stage is None or (type(stage) is str and stage))
            and (priority is None or type(priority) is int)
            and (deadline is None or (type(deadline) is float and deadline == deadline)
                 or type(deadline) is int)
            and (max_wait is None or (type(max_wait) in (int, float)
                                      and 0 < max_wait < math.inf))
            and (limits is _EMPTY or type(limits) is dict)
            and (cost is _EMPTY or type(cost) is dict)
        ):
            _check_scope(run_id, tenant, priority, deadline, limits, stage, max_wait, cost)
        if limits is not _EMPTY and limits:
            check_limits(limits, "CallScope.limits")
        object.__setattr__(self, "run_id", run_id)
        object.__setattr__(self, "tenant", tenant)
        object.__setattr__(self, "priority", priority)
        object.__setattr__(self, "deadline", deadline)
        object.__setattr__(self, "limits", limits)
        object.__setattr__(self, "stage", stage)
        object.__setattr__(self, "max_wait", max_wait)
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "completed", completed)


def _check_scope(
    run_id: Any, tenant: Any, priority: Any, deadline: Any, limits: Any, stage: Any,
    max_wait: Any, cost: Any,
) -> None:
    """The slow path of ``CallScope``'s checks: subclasses pass, the rest fails."""
    for name, value in (("run_id", run_id), ("tenant", tenant), ("stage", stage)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"CallScope.{name} must be a non-empty str or None, "
                              f"got {value!r}")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise ConfigError(f"CallScope.priority must be an int or None, got {priority!r}")
    for name, value in (("deadline", deadline), ("max_wait", max_wait)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or math.isnan(value) or (name == "max_wait" and not 0 < value < math.inf)
        ):
            raise ConfigError(f"CallScope.{name} must be a number"
                              f"{' > 0, finite' if name == 'max_wait' else ''} or None, "
                              f"got {value!r}")
    for name, value in (("limits", limits), ("cost", cost)):
        if not isinstance(value, Mapping):
            raise ConfigError(f"CallScope.{name} must be a mapping, got {value!r}")


_FIELDS = frozenset(f.name for f in dataclasses.fields(CallScope))

# (Final: compiled code reads these per call from a static, not the module's dict)
_current: Final[ContextVar[CallScope | None]] = ContextVar("stageflow_plus_call_scope",
                                                          default=None)


def current_scope() -> CallScope | None:
    """The scope set around the running code, if any."""
    return _current.get()


class ScopeBlock:
    """The context manager :func:`call_scope` returns: sets its scope on entry (``as``
    gives it), puts the previous one back on exit. Enter it once."""

    __slots__ = ("_token", "scope")

    def __init__(self, scope: CallScope) -> None:
        self.scope = scope
        self._token: Token[CallScope | None] | None = None

    def __enter__(self) -> CallScope:
        if self._token is not None:
            raise RuntimeError("a call_scope() block can be entered only once")
        self._token = _current.set(self.scope)
        return self.scope

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        token = self._token
        if token is not None:
            _current.reset(token)


_KEEP: Final[Any] = object()
"""The default of :func:`call_scope`'s fields: keep the current scope's value."""


def call_scope(
    scope: CallScope | None = None,
    *,
    run_id: Any = _KEEP,
    tenant: Any = _KEEP,
    priority: Any = _KEEP,
    deadline: Any = _KEEP,
    limits: Any = _KEEP,
    stage: Any = _KEEP,
    max_wait: Any = _KEEP,
    cost: Any = _KEEP,
    completed: Any = _KEEP,
    **unknown: Any,
) -> ScopeBlock:
    """Set a :class:`CallScope` for the block; the previous one is back after it.

    * ``call_scope(**fields)`` merges: the fields given replace those of the scope already
      set (if any), the others are kept — ``call_scope(priority=2)`` inside
      ``call_scope(tenant="acme")`` runs as tenant ``"acme"`` with priority 2.
    * ``call_scope(scope)`` replaces the current scope with ``scope`` as it is (with
      ``fields``, they are applied over ``scope``).

    The fields are those of :class:`CallScope` (keyword-only).

    :raises ConfigError: an unknown field or a value of the wrong type (when called).
    """
    # (the fields are parameters, not **fields: no dict is built and read per block)
    if unknown:
        raise ConfigError(f"call_scope: unknown field {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(sorted(_FIELDS))})")
    if scope is not None and not isinstance(scope, CallScope):
        raise ConfigError(f"call_scope: scope must be a CallScope, got {scope!r}")
    base = scope if scope is not None else _current.get()
    if base is None:
        base = _NO_SCOPE
    elif (run_id is _KEEP and tenant is _KEEP and priority is _KEEP and deadline is _KEEP
          and limits is _KEEP and stage is _KEEP and max_wait is _KEEP and cost is _KEEP
          and completed is _KEEP):
        return ScopeBlock(base)
    return ScopeBlock(CallScope(
        base.run_id if run_id is _KEEP else run_id,
        base.tenant if tenant is _KEEP else tenant,
        base.priority if priority is _KEEP else priority,
        base.deadline if deadline is _KEEP else deadline,
        base.limits if limits is _KEEP else limits,
        base.stage if stage is _KEEP else stage,
        base.max_wait if max_wait is _KEEP else max_wait,
        base.cost if cost is _KEEP else cost,
        base.completed if completed is _KEEP else completed,
    ))


_NO_SCOPE: Final = CallScope()


def _set(scope: CallScope | None) -> object:
    return _current.set(scope)


def _reset(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
