"""ConcurrencyLimiter: caps calls in flight — globally, per tool, per run, per tenant, per key.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ..primitives.errors import ConfigError
from ..primitives.idle import sweep_idle
from ..primitives.resources import ConcurrencyPool, Resource
from ..primitives.stats import PoolStatistics
from .call import ToolCall
from .gate import LimitPart

__all__ = ["ConcurrencyLimiter", "Partition"]

_NO_OVERRIDES: Mapping[str, int] = MappingProxyType({})


def _check_limit(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ConfigError(f"{where} must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class Partition:
    """One way of splitting calls into separately limited groups.

    :ivar name: the partition's name (``"global"``, ``"tool"``, ``"run"``, ``"tenant"`` or
        your own), used in keys such as ``"tool:search"``.
    :ivar key: maps a call to its group; ``None`` means the call is not limited here.
    :ivar limit: the cap for every group without an override (``None``: only overridden
        groups are limited).
    :ivar overrides: caps for particular groups, e.g. ``{"search": 5}``.
    """

    name: str
    key: Callable[[ToolCall], str | None]
    limit: int | None = None
    overrides: Mapping[str, int] = field(default_factory=lambda: _NO_OVERRIDES)

    def __post_init__(self) -> None:
        if self.limit is not None:
            _check_limit(self.limit, f"concurrency limit {self.name!r}")
        for group, cap in self.overrides.items():
            _check_limit(cap, f"concurrency limit {self.name!r} for {group!r}")

    def limit_for(self, group: str) -> int | None:
        return self.overrides.get(group, self.limit)


def _global_key(call: ToolCall) -> str:
    return "*"


def _tool_key(call: ToolCall) -> str:
    return call.tool


def _run_key(call: ToolCall) -> str | None:
    return call.run_id


def _tenant_key(call: ToolCall) -> str:
    return call.tenant


def _split(value: int | Mapping[str, int] | None, name: str = "per_tool"
           ) -> tuple[int | None, Mapping[str, int]]:
    if value is None or isinstance(value, int):
        return value, _NO_OVERRIDES
    if not isinstance(value, Mapping):
        raise ConfigError(f"ConcurrencyLimiter {name} must be an int or a mapping of key to "
                          f"int, got {type(value).__name__}")
    return None, dict(value)


def _pool_idle(pool: ConcurrencyPool) -> bool:
    """Nobody holds a permit of ``pool`` and nobody waits for one: it can be re-created."""
    return not pool.holders and not pool.queued


class _Pools:
    """The pools of one partition, created on first use, dropped once idle.

    Each new group sweeps the oldest few (:func:`~stageflow_plus.primitives.idle.
    sweep_idle`): memory stays bounded by the groups in use, whatever the number of distinct
    runs or tenants, at a constant cost per new group. A re-created pool starts with the
    partition's cap and no service-time history (used only by deadline-aware estimates).
    """

    __slots__ = ("partition", "pools")

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self.pools: OrderedDict[str, ConcurrencyPool] = OrderedDict()

    def get(self, group: str, cap: int) -> ConcurrencyPool:
        pool = self.pools.get(group)
        if pool is None:
            sweep_idle(self.pools, _pool_idle)
            pool = self.pools[group] = ConcurrencyPool(f"{self.partition.name}:{group}", cap)
        return pool


class ConcurrencyLimiter(LimitPart):
    """Caps calls in flight; a call needing several caps gets them all or waits for all.

    :param limit: global cap on calls in flight (``None``: no global cap).
    :param per_tool: an int caps every tool; a mapping caps only the tools it names.
    :param per_run: cap per pipeline run (``call.run_id``).
    :param per_tenant: an int caps every tenant; a mapping caps only those it names.
    :param partitions: further :class:`Partition` s (e.g. per model or per host).

    A call cancelled or timed out while waiting takes no permit; a call cancelled while
    running gives its permits back. Caps can be changed at runtime with :meth:`set_limit`
    without losing waiters. A per-run override in ``call.limits["concurrency"]`` can only
    tighten the run's cap (validated upstream against the operator's ceiling).

    Ordering: fused with the other limiter interceptors into one admission step; put it
    inside (after) any circuit breaker so an open breaker takes no permit.
    """

    __slots__ = ("_global_demand", "_groups", "_keyed_after_run", "_keyed_before_run", "_run")

    contributes_demands = True
    honours_limits = frozenset({"concurrency"})

    def __init__(
        self,
        limit: int | None = None,
        *,
        per_tool: int | Mapping[str, int] | None = None,
        per_run: int | None = None,
        per_tenant: int | Mapping[str, int] | None = None,
        partitions: Sequence[Partition] = (),
    ) -> None:
        super().__init__()
        specs: list[Partition] = []
        if limit is not None:
            specs.append(Partition("global", _global_key, limit))
        for name, value, key in (
            ("tool", per_tool, _tool_key),
            ("tenant", per_tenant, _tenant_key),
        ):
            if value is not None:
                default, overrides = _split(value, f"per_{name}")
                specs.append(Partition(name, key, default, overrides))
        specs.append(Partition("run", _run_key, per_run))  # always present for overrides
        specs.extend(partitions)
        names = [p.name for p in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"ConcurrencyLimiter: duplicate partition names {duplicates}")
        self._groups = tuple(_Pools(p) for p in specs)
        # the hot path: the global pool never changes identity (one group, never swept)
        self._global_demand: tuple[Resource, float] | None = None
        if limit is not None:
            self._global_demand = (self._groups[0].get("*", limit), 1.0)
        run_index = names.index("run")
        self._run = self._groups[run_index]
        self._keyed_before_run = tuple(
            g for g in self._groups[:run_index] if g.partition.name != "global"
        )
        self._keyed_after_run = self._groups[run_index + 1 :]

    def demand_template(self) -> tuple[tuple[Resource, str | None], ...] | None:
        """The global permit alone, when no other partition caps a call without per-run
        limits (no per-tool, per-tenant, per-run or custom partition)."""
        run = self._run.partition
        if (
            type(self).add_demands is not ConcurrencyLimiter.add_demands
            or self._keyed_before_run
            or self._keyed_after_run
            or run.limit is not None
            or run.overrides
        ):
            return None
        if self._global_demand is None:
            return ()
        return ((self._global_demand[0], None),)

    @property
    def partitions(self) -> tuple[Partition, ...]:
        return tuple(g.partition for g in self._groups)

    def add_demands(self, call: ToolCall, now: float, out: list[tuple[Resource, float]]) -> None:
        if self._global_demand is not None:
            out.append(self._global_demand)
        if self._keyed_before_run:
            self._add_keyed(self._keyed_before_run, call, out)
        run_id = call.run_id
        if run_id is not None:
            run = self._run
            partition = run.partition
            cap = (
                partition.overrides.get(run_id, partition.limit)
                if partition.overrides
                else partition.limit
            )
            limits = call.limits
            if limits:
                override = limits.get("concurrency")
                if override is not None:
                    cap = override if cap is None else min(cap, override)
            if cap is not None:
                out.append((self._pool(run, run_id, cap), 1.0))
        if self._keyed_after_run:
            self._add_keyed(self._keyed_after_run, call, out)

    @staticmethod
    def _add_keyed(
        groups: tuple[_Pools, ...], call: ToolCall, out: list[tuple[Resource, float]]
    ) -> None:
        for group in groups:
            partition = group.partition
            key = partition.key(call)
            if key is None:
                continue
            cap = partition.overrides.get(key, partition.limit)
            if cap is not None:
                out.append((ConcurrencyLimiter._pool(group, key, cap), 1.0))

    @staticmethod
    def _pool(group: _Pools, key: str, cap: int) -> ConcurrencyPool:
        pool = group.pools.get(key)
        if pool is None:
            return group.get(key, cap)
        if pool._capacity != cap and _pool_idle(pool):
            pool.capacity = cap  # a new run reusing a key takes its own cap
        return pool

    def set_limit(self, partition: str, limit: int, *, key: str | None = None) -> None:
        """Change a cap at runtime; waiters are kept and re-examined at once.

        :param partition: ``"global"``, ``"tool"``, ``"run"``, ``"tenant"`` or a custom name.
        :param key: one group (e.g. a tool name); ``None`` changes the partition's default.
        """
        limit = _check_limit(limit, f"concurrency limit {partition!r}")
        for group in self._groups:
            spec = group.partition
            if spec.name != partition:
                continue
            if key is None:
                new = Partition(spec.name, spec.key, limit, spec.overrides)
            else:
                new = Partition(spec.name, spec.key, spec.limit, {**spec.overrides, key: limit})
            group.partition = new
            for group_key, pool in group.pools.items():
                cap = new.limit_for(group_key)
                if cap is not None:
                    pool.capacity = cap
            self.demands_changed()  # e.g. a per-run cap where there was none
            if self._gate is not None:
                self._gate.limiter.dispatch()
            return
        known = ", ".join(g.partition.name for g in self._groups)
        raise ConfigError(f"ConcurrencyLimiter has no partition {partition!r} (known: {known})")

    def pool_statistics(self) -> tuple[PoolStatistics, ...]:
        return tuple(
            PoolStatistics(pool.key, pool.capacity, pool.in_use, pool.queued)
            for group in self._groups
            for pool in group.pools.values()
        )

    def __repr__(self) -> str:
        caps = ", ".join(
            f"{g.partition.name}={g.partition.limit}"
            for g in self._groups
            if g.partition.limit is not None or g.partition.overrides
        )
        return f"ConcurrencyLimiter({caps})"
