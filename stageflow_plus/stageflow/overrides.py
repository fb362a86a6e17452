"""Per-run overrides read from ``ctx.data``, validated and held under the operator's ceilings.

A run tightens its own limits the way Stageflow takes ``ctx.data["_timeout_ms"]``:

=================  ==========================  ==============================================
key                type                        meaning
=================  ==========================  ==============================================
``_priority``      int                         the run's priority (higher goes first)
``_tenant``        str                         fair-share owner, only one the operator grants
                                               the run's org (default: ``ctx.org_id``)
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

Trust. ``ctx.data`` is the run's own data (often filled from a request), so nothing in it
can raise what the operator allows. A run's tenant — which decides its priority ceiling and
its fair-share weight — comes from trusted context, ``ctx.org_id``; ``_tenant`` may name
another tenant only when ``Ceilings.tenants_by_org`` grants it to the run's org (an org
may always name itself). Any other claim is refused with :class:`OverrideError`, never
silently replaced. The ceilings themselves (``max_priority``, ``tenant_max_priority``,
``max_concurrency``, ``max_rates``, ``max_wait_ms``) and the weights are operator config and
have no ``ctx.data`` key.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import logging
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from .._logging import LogDigest, get_logger, stdlib_emit
from ..primitives.dimensions import check_dimension
from ..primitives.errors import ConfigError
from .redact import redact_text

__all__ = [
    "MIN_PRIORITY",
    "OVERRIDE_KEYS",
    "Ceilings",
    "OverrideError",
    "RunOverrides",
    "read_overrides",
]

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
_N = TypeVar("_N", int, float)

MIN_PRIORITY = -(2**31)
"""The lowest priority a run may ask for (a run may lower its own priority, within reason)."""


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
    :ivar tenants: every tenant a run may have, whether from its org or granted
        (``None``: not restricted).
    :ivar tenants_by_org: the tenants a run of an org may claim with ``_tenant`` beyond
        its own org (a run without ``org_id`` is of org ``"default"``). Nothing else may be
        claimed.
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
    tenants_by_org: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("default_priority", "max_priority"):
            _int(getattr(self, name), f"Ceilings.{name}")
        if self.default_priority > self.max_priority:
            raise ConfigError(f"Ceilings.default_priority ({self.default_priority}) is above "
                              f"Ceilings.max_priority ({self.max_priority})")
        for name in ("tenant_max_priority", "max_rates", "tenants_by_org"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and k for k in value
            ):
                raise ConfigError(
                    f"Ceilings.{name} must be a mapping with non-empty str keys, "
                    f"got {_short(value)}"
                )
        for tenant, ceiling in self.tenant_max_priority.items():
            _int(ceiling, f"Ceilings.tenant_max_priority[{tenant!r}]")
            if ceiling < self.default_priority:
                raise ConfigError(f"Ceilings.tenant_max_priority[{tenant!r}] ({ceiling}) is below "
                                  f"Ceilings.default_priority ({self.default_priority})")
        if self.tenants is not None:
            object.__setattr__(self, "tenants", _names(self.tenants, "Ceilings.tenants"))
        object.__setattr__(self, "tenants_by_org", MappingProxyType({
            org: _names(allowed, f"Ceilings.tenants_by_org[{org!r}]")
            for org, allowed in self.tenants_by_org.items()
        }))
        if self.tenants is not None:
            for org, allowed in self.tenants_by_org.items():
                for tenant in sorted(allowed - self.tenants):
                    raise ConfigError(f"Ceilings.tenants_by_org[{org!r}] grants {tenant!r}, "
                                      "which is not in Ceilings.tenants")
        if self.max_concurrency is not None:
            _int(self.max_concurrency, "Ceilings.max_concurrency", minimum=1)
        for dim, rate in self.max_rates.items():
            _number(rate, f"Ceilings.max_rates[{dim!r}]", positive=True, error=ConfigError)
        if self.max_wait_ms is not None:
            _number(self.max_wait_ms, "Ceilings.max_wait_ms", positive=True, error=ConfigError)
        if self.on_excess not in ("clamp", "error"):
            raise ConfigError(
                f"Ceilings.on_excess must be 'clamp' or 'error', got {_short(self.on_excess)}"
            )

    def priority_ceiling(self, tenant: str) -> int:
        """The highest priority ``tenant``'s runs may have."""
        return self.tenant_max_priority.get(tenant, self.max_priority)

    def tenant_of(self, org: str | None, claimed: object = None) -> str:
        """The tenant of a run of ``org`` that names ``claimed`` (``None``: names none).

        :raises OverrideError: the claim is not a non-empty str, is neither the org itself
            nor granted to it by :attr:`tenants_by_org`, or is outside :attr:`tenants`.
        """
        identity = org if org is not None else "default"
        tenant = identity
        if claimed is not None:
            if not isinstance(claimed, str) or not claimed:
                raise OverrideError(
                    f"ctx.data['_tenant'] must be a non-empty str, got {_short(claimed)}"
                )
            granted = self.tenants_by_org.get(identity, frozenset())
            if claimed != identity and claimed not in granted:
                allowed = ", ".join(sorted({identity, *granted}))
                raise OverrideError(
                    f"ctx.data['_tenant'] = {claimed!r}: a run of org {identity!r} may not "
                    f"claim that tenant (allowed: {allowed}); the operator grants tenants "
                    "to an org in ceilings.tenants_by_org"
                )
            tenant = claimed
        if self.tenants is not None and tenant not in self.tenants:
            source = "ctx.data['_tenant']" if claimed is not None else "the run's org_id"
            raise OverrideError(
                f"{source} = {tenant!r} is not a configured tenant "
                f"(known: {', '.join(sorted(self.tenants))})"
            )
        return tenant


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
    data: Mapping[str, Any], ceilings: Ceilings, *, org: str | None = None
) -> RunOverrides:
    """Validate the override keys of ``data`` (a run's ``ctx.data``) against ``ceilings``.

    :param org: the run's org from trusted context (``ctx.org_id``); the run's tenant is
        this org unless ``_tenant`` names one :attr:`Ceilings.tenants_by_org` grants it.
    :raises OverrideError: a value of the wrong type or range, a tenant the run may not
        claim, or an excessive value when ``ceilings.on_excess == "error"``.
    """
    if not isinstance(data, Mapping):
        raise OverrideError(f"ctx.data must be a mapping, got {type(data).__name__}")
    clamped: list[str] = []

    def cap(key: str, value: _N, ceiling: _N | None) -> _N:
        if ceiling is None or value <= ceiling:
            return value
        if ceilings.on_excess == "error":
            top, _, dim = key.partition(".")
            where = f"ctx.data[{top!r}]" + (f"[{dim!r}]" if dim else "")
            raise OverrideError(f"{where} = {value!r} exceeds the operator's ceiling {ceiling!r}")
        clamped.append(key)
        _clamps.note(
            logging.WARNING, key, "clamped", what="overrides clamped", event="override.clamps",
            first=lambda: ("override.clamped", f"stageflow-plus: ctx.data[{key!r}] = {value!r} "
                           f"exceeds the operator's ceiling {ceiling!r}: clamped to it",
                           {"key": key, "asked": value, "ceiling": ceiling}))
        return ceiling

    claimed = data.get("_tenant")
    if claimed is None and "_tenant" in data:
        raise OverrideError("ctx.data['_tenant'] must be a non-empty str, got None")
    tenant = ceilings.tenant_of(org, claimed)
    priority = ceilings.default_priority
    if "_priority" in data:
        priority = _int(data["_priority"], "ctx.data['_priority']", MIN_PRIORITY,
                        error=OverrideError)
    priority = cap("_priority", priority, ceilings.priority_ceiling(tenant))

    concurrency = None
    if "_concurrency" in data:
        asked = _int(data["_concurrency"], "ctx.data['_concurrency']", 1, error=OverrideError)
        concurrency = cap("_concurrency", asked, ceilings.max_concurrency)
    rates: dict[str, float] = {}
    for dim, value in _mapping(data, "_rates").items():
        asked_rate = _number(value, f"ctx.data['_rates'][{dim!r}]", positive=True)
        rates[dim] = float(cap(f"_rates.{dim}", asked_rate, ceilings.max_rates.get(dim)))
    max_queue = None
    if "_max_queue" in data:
        max_queue = _int(data["_max_queue"], "ctx.data['_max_queue']", 0, error=OverrideError)
    max_wait = None
    if "_max_wait_ms" in data:
        asked_wait = _number(data["_max_wait_ms"], "ctx.data['_max_wait_ms']", positive=True)
        max_wait = float(cap("_max_wait_ms", asked_wait, ceilings.max_wait_ms)) / 1000.0
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
    if key not in data:
        return _EMPTY
    value = data[key]
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k for k in value):
        raise OverrideError(f"ctx.data[{key!r}] must be a mapping of dimension names to "
                            f"numbers, got {_short(value)}")
    for dim in value:
        try:
            check_dimension(dim, f"ctx.data[{key!r}] key")
        except ConfigError as error:
            raise OverrideError(str(error)) from None
    return value


def _short(value: Any) -> str:
    return redact_text(reprlib.repr(value))  # a run's data may hold anything


def _int(
    value: Any, where: str, minimum: int | None = None, *, error: type[ConfigError] = ConfigError
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where} must be an int, got {_short(value)}")
    if minimum is not None and value < minimum:
        raise error(f"{where} must be >= {minimum}, got {_short(value)}")
    return value


def _number(
    value: Any, where: str, *, positive: bool, error: type[ConfigError] = OverrideError
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{where} must be a number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        number = math.inf
    if math.isnan(number):
        raise error(f"{where} must be a number, got {_short(value)}")
    if math.isinf(number) or number < 0 or (positive and number == 0):
        raise error(f"{where} must be a finite number {'>' if positive else '>='} 0, "
                    f"got {_short(value)}")
    return number


def _names(value: Any, where: str) -> frozenset[str]:
    """A set of non-empty names from a set, list or tuple (a str is not a list of names)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (set, frozenset, list, tuple)):
        raise ConfigError(f"{where} must be a list of names, got {_short(value)}")
    if not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must hold non-empty str names, got {_short(value)}")
    return frozenset(value)
