"""AdaptiveConcurrency: learns a concurrency limit per tool (or provider) from its calls.

It measures every call the admission gate runs — the round trip from admission to answer,
the calls in flight, and whether the answer was a *drop* (429, 503, a timeout, a
``Retry-After``; see :func:`~stageflow_plus.interceptors.drops.default_is_drop`) — and feeds
one :class:`~stageflow_plus.primitives.adaptive.AdaptiveLimit` per group of a
:class:`ConcurrencyLimiter` partition, which sets that group's limit at runtime::

    chain = ToolCallChain([
        Backpressure(max_queue=200, max_wait=2.0),
        PriorityFairQueue(),
        ConcurrencyLimiter(per_tool=8),                 # 8: where every tool starts
        AdaptiveConcurrency("tool", settings=AdaptiveSettings(min_limit=2, max_limit=64)),
    ])

The rules are in :mod:`stageflow_plus.primitives.adaptive`. Errors are measured too (the
gate's ``after_error`` hook): a drop lowers the limit; other exceptions are ignored (their
round trip says nothing about capacity); our own refusals never reach it.

Changes are logged (``logging.getLogger("stageflow_plus.adaptive")``, INFO, one line per
change, nothing per call), sent to the chain's listener as ``on_limit_changed(key, old, new,
reason)`` when it has that method, and visible in :meth:`AdaptiveConcurrency.statistics`.

Lowering a limit lets the calls in flight finish (nobody new is admitted until they drop
below it); raising it admits waiters at once. Per call the interceptor adds to running
sums — no allocation beyond the float the clock returns; the policy decides once per window.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from ..primitives.adaptive import AdaptiveLimit, AdaptiveSettings, AdaptiveStatistics, LimitPolicy
from ..primitives.errors import ConfigError
from ..primitives.lease import Lease
from ..primitives.resources import ConcurrencyPool
from .call import ToolCall
from .concurrency import ConcurrencyLimiter, Partition
from .drops import default_is_drop
from .part import LimitPart

if TYPE_CHECKING:
    from .gate import AdmissionGate

__all__ = ["AdaptiveConcurrency", "PolicyFactory"]

logger = logging.getLogger("stageflow_plus.adaptive")

PolicyFactory = Callable[[AdaptiveSettings, int, float], LimitPolicy]
"""Makes the policy of one group: ``(settings, starting limit, now) -> LimitPolicy``."""

MAX_GROUPS = 10_000
"""Groups adapted at most; calls of further groups keep their static limit (logged once)."""


class _Group:
    """One adapted group: its policy, its pool (found in leases) and the limit applied."""

    __slots__ = ("applied", "group", "key", "policy", "pool")

    def __init__(self, group: str, key: str, policy: LimitPolicy, applied: int) -> None:
        self.group = group
        self.key = key  # the pool's key, e.g. "tool:search"
        self.policy = policy
        self.pool: ConcurrencyPool | None = None
        self.applied = applied


class AdaptiveConcurrency(LimitPart):
    """Sets a :class:`ConcurrencyLimiter` partition's limits from what its calls experience.

    :param partition: the partition to adapt: ``"tool"`` (default), ``"global"``,
        ``"tenant"`` or a custom :class:`Partition` name (e.g. per provider or model). Not
        ``"run"``: runs come and go too fast to learn from.
    :param settings: how the limit learns (:class:`AdaptiveSettings`; defaults: bounds 1 to
        1000, windows of at least 1 s, 3 no-load round trips and 10 calls).
    :param keys: adapt only these groups (default: every group of the partition).
    :param is_drop: classifies a result or exception as a drop (default
        :func:`~stageflow_plus.interceptors.drops.default_is_drop`).
    :param policy: makes each group's policy (default :class:`AdaptiveLimit`); the benchmark
        passes AIMD and Vegas baselines here.

    The starting limit of a group is the limit its partition gives it (``ConcurrencyLimiter(
    per_tool=8)`` starts every tool at 8), clamped into the settings' bounds; the partition
    must give every adapted group a limit (``ConfigError`` otherwise).

    Ordering: a limiter interceptor — it stands with the others (any position among them);
    it needs a :class:`ConcurrencyLimiter` in the same chain.
    """

    __slots__ = (
        "_concurrency",
        "_full",
        "_groups",
        "_is_drop",
        "_key",
        "_keys",
        "_make_policy",
        "_now",
        "partition",
        "settings",
    )

    observes_results = True

    def __init__(
        self,
        partition: str = "tool",
        *,
        settings: AdaptiveSettings | None = None,
        keys: Collection[str] | None = None,
        is_drop: Callable[[Any], bool] = default_is_drop,
        policy: PolicyFactory | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(partition, str) or not partition:
            raise ConfigError(f"AdaptiveConcurrency partition must be a name, got {partition!r}")
        if partition == "run":
            raise ConfigError(
                "AdaptiveConcurrency cannot adapt the 'run' partition: runs come and go too "
                "fast to learn from (adapt 'tool', 'global', 'tenant' or a custom partition)"
            )
        if settings is not None and not isinstance(settings, AdaptiveSettings):
            raise ConfigError(f"AdaptiveConcurrency settings must be AdaptiveSettings, got "
                              f"{settings!r}")
        if not callable(is_drop):
            raise ConfigError(f"AdaptiveConcurrency is_drop must be callable, got {is_drop!r}")
        if keys is not None:
            if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
                raise ConfigError(f"AdaptiveConcurrency keys must be a collection of names, "
                                  f"got {keys!r}")
            keys = frozenset(keys)
        self.partition = partition
        self.settings = settings if settings is not None else AdaptiveSettings()
        self._keys: frozenset[str] | None = keys
        self._is_drop = is_drop
        self._make_policy: PolicyFactory = policy if policy is not None else AdaptiveLimit
        self._groups: dict[str, _Group | None] = {}
        self._concurrency: ConcurrencyLimiter | None = None
        self._key: Callable[[ToolCall], str | None] = _no_key
        self._now: Callable[[], float] | None = None
        self._full = False

    # wiring -------------------------------------------------------------------------------
    def configure(self, gate: AdmissionGate) -> None:
        limiters = [p for p in gate.parts if isinstance(p, ConcurrencyLimiter)]
        if not limiters:
            raise ConfigError(
                "AdaptiveConcurrency needs a ConcurrencyLimiter in the same chain (it sets "
                f"that limiter's {self.partition!r} limits)"
            )
        concurrency = limiters[0]
        spec = self._spec(concurrency)
        missing = (
            sorted(k for k in self._keys if spec.limit_for(k) is None)
            if self._keys is not None
            else ([] if spec.limit is not None else ["(every group)"])
        )
        if missing:
            raise ConfigError(
                f"AdaptiveConcurrency({self.partition!r}) needs a starting limit for "
                f"{', '.join(missing)}: give the ConcurrencyLimiter one (e.g. per_tool=8) "
                "or list the keys it caps"
            )
        self._concurrency = concurrency
        self._key = spec.key

    def _spec(self, concurrency: ConcurrencyLimiter) -> Partition:
        for spec in concurrency.partitions:
            if spec.name == self.partition:
                return spec
        known = ", ".join(p.name for p in concurrency.partitions)
        raise ConfigError(
            f"AdaptiveConcurrency: the ConcurrencyLimiter has no partition {self.partition!r} "
            f"(known: {known}); give it one, e.g. ConcurrencyLimiter(per_tool=8)"
        )

    # the hot path -------------------------------------------------------------------------
    def after_result(self, call: ToolCall, lease: Lease, result: Any) -> None:
        self._sample(call, lease, self._is_drop(result))

    def after_error(self, call: ToolCall, lease: Lease, error: Exception) -> None:
        if self._is_drop(error):  # other errors say nothing about capacity
            self._sample(call, lease, True)

    def _sample(self, call: ToolCall, lease: Lease, dropped: bool) -> None:
        group = self._key(call)
        if group is None:
            return
        state = self._groups.get(group)
        if state is None:
            state = self._start(group)
            if state is None:
                return
        pool = state.pool
        if pool is None or pool.in_use == 0:  # (its own call holds one: 0 means replaced)
            pool = state.pool = _pool_in(lease, state.key)
        now = self._now
        if now is None:
            now = self._now = self.gate.limiter.clock.now
        limit = state.policy.sample(
            now(), lease.acquired_at, pool.in_use if pool is not None else 0, dropped
        )
        if limit != state.applied:
            self._apply(state, limit)

    # once per group / per change ----------------------------------------------------------
    def _start(self, group: str) -> _Group | None:
        if group in self._groups:
            return None  # a group seen and not adapted (not in keys, or over MAX_GROUPS)
        concurrency = self._concurrency
        if concurrency is None or (self._keys is not None and group not in self._keys):
            self._groups[group] = None
            return None
        if len(self._groups) >= MAX_GROUPS:
            if not self._full:
                self._full = True
                logger.warning("adaptive %s: %d groups adapted already; %r and later groups "
                               "keep their static limits", self.partition, MAX_GROUPS, group)
            self._groups[group] = None
            return None
        start = self._spec(concurrency).limit_for(group)
        now = self.gate.limiter.clock.now()
        s = self.settings
        policy = self._make_policy(s, start if start is not None else s.min_limit, now)
        state = _Group(group, f"{self.partition}:{group}", policy, start or 0)
        self._groups[group] = state
        if policy.limit != state.applied:  # the starting limit clamped into the bounds
            self._apply(state, policy.limit)
        return state

    def _apply(self, state: _Group, limit: int) -> None:
        old = state.applied
        state.applied = limit
        assert self._concurrency is not None
        self._concurrency.set_limit(self.partition, limit, key=state.group)
        reason = state.policy.reason or "bounds"
        stats = state.policy.statistics(state.key)
        logger.info(
            "adaptive limit %s: %d -> %d (%s; rtt %.1f ms, no-load %.1f ms, capacity %.1f, "
            "drops %d)", state.key, old, limit, reason, stats.rtt * 1000,
            stats.rtt_noload * 1000, stats.capacity, stats.drops_in_window,
        )
        hook = getattr(self.gate.limiter.listener, "on_limit_changed", None)
        if hook is not None:
            hook(state.key, old, limit, reason)

    # introspection ------------------------------------------------------------------------
    def limit_of(self, group: str) -> int | None:
        """The adapted limit of ``group`` (e.g. a tool name), ``None`` if not adapted yet."""
        state = self._groups.get(group)
        return state.applied if state is not None else None

    def statistics(self) -> tuple[AdaptiveStatistics, ...]:
        """One snapshot per adapted group, sorted by key."""
        return tuple(
            state.policy.statistics(state.key)
            for _, state in sorted(self._groups.items())
            if state is not None
        )

    def __repr__(self) -> str:
        limits = ", ".join(f"{s.group}={s.applied}" for s in self._groups.values() if s)
        return f"AdaptiveConcurrency({self.partition!r}, {{{limits}}})"


def _no_key(call: ToolCall) -> str | None:
    return None


def _pool_in(lease: Lease, key: str) -> ConcurrencyPool | None:
    for resource, _amount in lease.demands:
        if isinstance(resource, ConcurrencyPool) and resource.key == key:
            return resource
    return None
