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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..primitives.errors import ConfigError

__all__ = ["CallScope", "call_scope", "current_scope"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
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
    """

    run_id: str | None = None
    tenant: str | None = None
    priority: int | None = None
    deadline: float | None = None
    limits: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    stage: str | None = None
    max_wait: float | None = None
    cost: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    completed: list[tuple[str, Any]] | None = None

    def __post_init__(self) -> None:
        for name in ("run_id", "tenant", "stage"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"CallScope.{name} must be a non-empty str or None, "
                                  f"got {value!r}")
        if self.priority is not None and (
            isinstance(self.priority, bool) or not isinstance(self.priority, int)
        ):
            raise ConfigError(f"CallScope.priority must be an int or None, got {self.priority!r}")
        for name in ("deadline", "max_wait"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or math.isnan(value) or (name == "max_wait" and not 0 < value < math.inf)
            ):
                raise ConfigError(f"CallScope.{name} must be a number"
                                  f"{' > 0, finite' if name == 'max_wait' else ''} or None, "
                                  f"got {value!r}")
        for name in ("limits", "cost"):
            if not isinstance(getattr(self, name), Mapping):
                raise ConfigError(f"CallScope.{name} must be a mapping, "
                                  f"got {getattr(self, name)!r}")


_FIELDS = frozenset(f.name for f in dataclasses.fields(CallScope))

_current: ContextVar[CallScope | None] = ContextVar("stageflow_plus_call_scope", default=None)


def current_scope() -> CallScope | None:
    """The scope set around the running code, if any."""
    return _current.get()


@contextmanager
def call_scope(scope: CallScope | None = None, **fields: Any) -> Iterator[CallScope]:
    """Set a :class:`CallScope` for the block; the previous one is back after it.

    * ``call_scope(**fields)`` merges: the fields given replace those of the scope already
      set (if any), the others are kept — ``call_scope(priority=2)`` inside
      ``call_scope(tenant="acme")`` runs as tenant ``"acme"`` with priority 2.
    * ``call_scope(scope)`` replaces the current scope with ``scope`` as it is (with
      ``fields``, they are applied over ``scope``).

    :raises ConfigError: an unknown field or a value of the wrong type.
    """
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise ConfigError(f"call_scope: unknown field {unknown[0]!r} "
                          f"(known: {', '.join(sorted(_FIELDS))})")
    if scope is not None and not isinstance(scope, CallScope):
        raise ConfigError(f"call_scope: scope must be a CallScope, got {scope!r}")
    base = scope if scope is not None else _current.get()
    value = dataclasses.replace(base, **fields) if base is not None else CallScope(**fields)
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)


def _set(scope: CallScope | None) -> object:
    return _current.set(scope)


def _reset(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
