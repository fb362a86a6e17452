"""Per-run overrides read from ``ctx.data``, validated and held under the operator's ceilings.

A run tightens its own limits the way Stageflow takes ``ctx.data["_timeout_ms"]``:

=================  ==========================  ==============================================
key                type                        meaning
=================  ==========================  ==============================================
``_priority``      int                         the run's priority (higher goes first)
``_tenant``        str                         fair-share owner (default: ``ctx.org_id``)
``_concurrency``   int >= 1                    tool calls of this run in flight at once
``_rates``         {dimension: number > 0}     per-second rates for this run only, e.g.
                                               ``{"requests": 5, "tokens": 2000}``
``_max_queue``     int >= 0                    tool calls of this run waiting at once
``_max_wait_ms``   number > 0                  longest a tool call may wait for admission
``_cost``          {dimension: number >= 0}    default cost estimate of each tool call
=================  ==========================  ==============================================

A wrong type or value raises :class:`OverrideError` (a ``ConfigError``) naming the key. A
value beyond a ceiling is **clamped to the ceiling** (and logged as
``stageflow_plus.override_clamped``): a run may ask for less, never for more. With
``Ceilings(on_excess="error")`` it is refused with :class:`OverrideError` instead.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from .._logging import LogDigest, get_logger, stdlib_emit
from ..primitives.errors import ConfigError

__all__ = ["OVERRIDE_KEYS", "Ceilings", "OverrideError", "RunOverrides", "read_overrides"]

log = get_logger("overrides")
_clamps = LogDigest(stdlib_emit(log))  # one line per override key per 10 s

OVERRIDE_KEYS = (
    "_priority",
    "_tenant",
    "_concurrency",
    "_rates",
    "_max_queue",
    "_max_wait_ms",
    "_cost",
)
"""Every ``ctx.data`` key this module reads."""

_EMPTY: Mapping[str, float] = MappingProxyType({})


class OverrideError(ConfigError):
    """A per-run override in ``ctx.data`` is invalid (or exceeds a ceiling with ``error``)."""


@dataclass(frozen=True)
class Ceilings:
    """What the operator allows runs to ask for.

    :ivar default_priority: the priority of a run that does not ask.
    :ivar max_priority: the highest priority any run may ask for.
    :ivar tenant_max_priority: a higher (or lower) ceiling for particular tenants.
    :ivar max_concurrency: the most in-flight calls a run may ask for (``None``: only the
        configured limits apply, which an override can never exceed anyway).
    :ivar max_rates: the highest per-second rate per dimension a run may ask for.
    :ivar max_wait_ms: the longest wait a run may ask for.
    :ivar tenants: the tenants a run may name (``None``: any).
    :ivar on_excess: ``"clamp"`` (default) lowers an excessive value to its ceiling;
        ``"error"`` refuses the run's value with :class:`OverrideError`.
    """

    default_priority: int = 0
    max_priority: int = 0
    tenant_max_priority: Mapping[str, int] = field(default_factory=dict)
    max_concurrency: int | None = None
    max_rates: Mapping[str, float] = field(default_factory=dict)
    max_wait_ms: float | None = None
    tenants: frozenset[str] | None = None
    on_excess: Literal["clamp", "error"] = "clamp"

    def __post_init__(self) -> None:
        for name in ("default_priority", "max_priority"):
            _int(getattr(self, name), f"Ceilings.{name}")
        for tenant, ceiling in self.tenant_max_priority.items():
            _int(ceiling, f"Ceilings.tenant_max_priority[{tenant!r}]")
        if self.max_concurrency is not None:
            _int(self.max_concurrency, "Ceilings.max_concurrency", minimum=1)
        for dim, rate in self.max_rates.items():
            _number(rate, f"Ceilings.max_rates[{dim!r}]", positive=True, error=ConfigError)
        if self.max_wait_ms is not None:
            _number(self.max_wait_ms, "Ceilings.max_wait_ms", positive=True, error=ConfigError)
        if self.on_excess not in ("clamp", "error"):
            raise ConfigError(
                f"Ceilings.on_excess must be 'clamp' or 'error', got {self.on_excess!r}"
            )

    def priority_ceiling(self, tenant: str) -> int:
        """The highest priority ``tenant``'s runs may have."""
        return self.tenant_max_priority.get(tenant, self.max_priority)


@dataclass(frozen=True, slots=True)
class RunOverrides:
    """A run's validated overrides (``None``: not asked for)."""

    priority: int
    tenant: str
    concurrency: int | None = None
    rates: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    max_queue: int | None = None
    max_wait: float | None = None
    cost: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    clamped: tuple[str, ...] = ()

    def limits(self) -> Mapping[str, Any]:
        """The ``ToolCall.limits`` mapping the limiters read."""
        out: dict[str, Any] = {}
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.rates:
            out["rates"] = self.rates
        if self.max_queue is not None:
            out["max_queue"] = self.max_queue
        return MappingProxyType(out)


def read_overrides(
    data: Mapping[str, Any], ceilings: Ceilings, *, default_tenant: str = "default"
) -> RunOverrides:
    """Validate the override keys of ``data`` (a run's ``ctx.data``) against ``ceilings``.

    :raises OverrideError: a value of the wrong type or range, an unknown tenant, or an
        excessive value when ``ceilings.on_excess == "error"``.
    """
    clamped: list[str] = []

    def cap(key: str, value: float, ceiling: float | None) -> float:
        if ceiling is None or value <= ceiling:
            return value
        if ceilings.on_excess == "error":
            raise OverrideError(
                f"ctx.data[{key!r}] = {value!r} exceeds the operator's ceiling {ceiling!r}"
            )
        clamped.append(key)
        _clamps.note(
            logging.WARNING, key, "clamped", what="overrides clamped", event="override.clamps",
            first=lambda: ("override.clamped", f"stageflow-plus: ctx.data[{key!r}] = {value!r} "
                           f"exceeds the operator's ceiling {ceiling!r}: clamped to it",
                           {"key": key, "asked": value, "ceiling": ceiling}))
        return ceiling

    tenant = data.get("_tenant", default_tenant)
    if not isinstance(tenant, str) or not tenant:
        raise OverrideError(f"ctx.data['_tenant'] must be a non-empty str, got {tenant!r}")
    if ceilings.tenants is not None and tenant not in ceilings.tenants:
        raise OverrideError(
            f"ctx.data['_tenant'] = {tenant!r} is not a configured tenant "
            f"(known: {', '.join(sorted(ceilings.tenants))})"
        )
    priority = ceilings.default_priority
    if "_priority" in data:
        priority = _int(data["_priority"], "ctx.data['_priority']", error=OverrideError)
    priority = int(cap("_priority", float(priority), ceilings.priority_ceiling(tenant)))

    concurrency = None
    if "_concurrency" in data:
        asked = _int(data["_concurrency"], "ctx.data['_concurrency']", 1, error=OverrideError)
        concurrency = int(cap("_concurrency", asked, ceilings.max_concurrency))
    rates: dict[str, float] = {}
    for dim, value in _mapping(data, "_rates").items():
        asked_rate = _number(value, f"ctx.data['_rates'][{dim!r}]", positive=True)
        rates[dim] = cap(f"_rates.{dim}", asked_rate, ceilings.max_rates.get(dim))
    max_queue = None
    if "_max_queue" in data:
        max_queue = _int(data["_max_queue"], "ctx.data['_max_queue']", 0, error=OverrideError)
    max_wait = None
    if "_max_wait_ms" in data:
        asked_wait = _number(data["_max_wait_ms"], "ctx.data['_max_wait_ms']", positive=True)
        max_wait = cap("_max_wait_ms", asked_wait, ceilings.max_wait_ms) / 1000.0
    cost = {
        dim: _number(value, f"ctx.data['_cost'][{dim!r}]", positive=False)
        for dim, value in _mapping(data, "_cost").items()
    }
    return RunOverrides(
        priority=priority,
        tenant=tenant,
        concurrency=concurrency,
        rates=MappingProxyType(rates) if rates else _EMPTY,
        max_queue=max_queue,
        max_wait=max_wait,
        cost=MappingProxyType(cost) if cost else _EMPTY,
        clamped=tuple(clamped),
    )


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise OverrideError(f"ctx.data[{key!r}] must be a mapping of str to numbers, got {value!r}")
    return value


def _int(
    value: Any, where: str, minimum: int | None = None, *, error: type[ConfigError] = ConfigError
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{where} must be >= {minimum}, got {value!r}")
    return value


def _number(
    value: Any, where: str, *, positive: bool, error: type[ConfigError] = OverrideError
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise error(f"{where} must be a number, got {value!r}")
    if math.isinf(value) or value < 0 or (positive and value == 0):
        raise error(f"{where} must be a finite number {'>' if positive else '>='} 0, "
                            f"got {value!r}")
    return float(value)
