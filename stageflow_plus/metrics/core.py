"""What both metrics exporters share: bounded labels, the per-chain recorder, snapshots.

* :class:`LabelBudget` — a label's values are the configured ones, then the first
  ``max_values`` others seen, then ``"other"``: whatever tenants, priorities or keys a run
  sends, a label has at most ``len(configured) + max_values + 1`` values.
* :class:`MetricsRecorder` — the listener attached to one chain: per admission it records the
  wait (by priority), and counts provider pauses and limit changes. Everything with state
  (in flight, queue depth by priority and tenant, buckets, pools, refusals by reason) is read
  from ``chain.statistics()`` when metrics are collected, not maintained per call.
* :func:`on_loop` — collection runs on the exporter's thread (an HTTP server, a periodic
  reader); the chain belongs to its event loop. Snapshots are taken *on* that loop.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..primitives.errors import ConfigError, Rejected
from ..primitives.stats import LimiterStatistics

__all__ = [
    "DEFAULT_WAIT_BUCKETS",
    "OTHER",
    "PER_RUN",
    "ChainSnapshot",
    "LabelBudget",
    "MetricsRecorder",
    "attach_recorder",
    "key_label",
    "on_loop",
]

T = TypeVar("T")

OTHER = "other"
"""The label value of everything beyond a label's budget."""

DEFAULT_WAIT_BUCKETS: tuple[float, ...] = (
    0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
"""Upper bounds (seconds) of the wait histogram; ``0.0`` counts the calls admitted at once."""

PER_RUN = "run:*"
"""The one label value of every per-run pool or bucket (they come and go with runs)."""


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"metrics: {name} must be an int >= 0, got {value!r}")


class LabelBudget:
    """Bounded values for one label: configured ones, the first ``max_values`` others seen,
    then :data:`OTHER` (stable: a value keeps its label once it has one).

    :param configured: values that always get their own label (e.g. your tenants).
    :param max_values: further distinct values labelled as they appear.
    """

    __slots__ = ("_known", "configured", "max_values")

    def __init__(self, configured: Iterable[str] = (), max_values: int = 20) -> None:
        _check_count("max_values", max_values)
        self.configured = tuple(str(v) for v in configured)
        self.max_values = max_values
        self._known: dict[str, None] = dict.fromkeys(self.configured)

    def __call__(self, value: Any) -> str:
        text = str(value)
        if text in self._known:
            return text
        if len(self._known) < len(self.configured) + self.max_values:
            self._known[text] = None
            return text
        return OTHER

    def __len__(self) -> int:
        """Values labelled so far (without :data:`OTHER`)."""
        return len(self._known)


def key_label(budget: LabelBudget, key: str) -> str:
    """``key``'s label value: :data:`PER_RUN` for per-run pools and buckets, else budgeted."""
    if key.startswith(("run:", "rate:run:")):
        return PER_RUN
    return budget(key)


@dataclass(slots=True)
class WaitHistogram:
    """Cumulative-ready bucket counts of waits (seconds) for one label set."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    samples: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.samples += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, count <= bound)`` pairs ending with ``(inf, samples)``."""
        running, out = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(frozen=True, slots=True)
class ChainSnapshot:
    """One chain's metrics at one moment (taken on the chain's loop).

    :ivar limiter: the chain's name (the ``limiter`` label).
    :ivar stats: ``chain.statistics()``.
    :ivar waiting_by_priority: ``(priority label, count)``, budgeted.
    :ivar waiting_by_tenant: ``(tenant label, count)``, budgeted.
    :ivar rejected: ``(reason label, count)``, budgeted.
    :ivar pools: ``(key label, in use, capacity)``, budgeted (per-run pools summed).
    :ivar buckets: ``(key label, dimension, available, capacity, paused seconds)``.
    :ivar waits: ``(priority label, cumulative buckets, sum, count)``.
    :ivar pauses: ``(key label, count)``.
    :ivar limit_changes: ``(key label, reason label, count)``.
    :ivar limits: ``(key label, current value)`` as last reported by ``on_limit_changed``.
    """

    limiter: str
    stats: LimiterStatistics
    waiting_by_priority: tuple[tuple[str, int], ...]
    waiting_by_tenant: tuple[tuple[str, int], ...]
    rejected: tuple[tuple[str, int], ...]
    pools: tuple[tuple[str, int, int], ...]
    buckets: tuple[tuple[str, str, float, float, float], ...]
    waits: tuple[tuple[str, tuple[tuple[float, int], ...], float, int], ...]
    pauses: tuple[tuple[str, int], ...]
    limit_changes: tuple[tuple[str, str, int], ...]
    limits: tuple[tuple[str, float], ...]


def _summed(pairs: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    out: dict[str, int] = {}
    for label, count in pairs:
        out[label] = out.get(label, 0) + count
    return tuple(sorted(out.items()))


class MetricsRecorder:
    """The listener a metrics exporter attaches to one chain (see the module docstring).

    ``immediate_events`` is ``True``: calls admitted at once are observed too (a zero wait),
    so the wait histogram counts every admission. Per event it does a dictionary lookup and
    a bisect, nothing else; ``observe_wait`` may be replaced (the OpenTelemetry exporter
    records into its histogram instead).
    """

    __slots__ = ("_hist", "_limit_changes", "_limits", "_pauses", "bounds", "chain", "keys",
                 "loop", "observe_wait", "priorities", "reasons", "tenants")

    immediate_events = True

    def __init__(
        self,
        chain: Any,
        *,
        tenants: LabelBudget,
        priorities: LabelBudget,
        keys: LabelBudget,
        reasons: LabelBudget,
        bounds: Sequence[float] = DEFAULT_WAIT_BUCKETS,
    ) -> None:
        self.chain = chain
        self.tenants, self.priorities, self.keys, self.reasons = tenants, priorities, keys, reasons
        self.bounds = tuple(sorted(float(b) for b in bounds))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._hist: dict[str, WaitHistogram] = {}
        self._pauses: dict[str, int] = {}
        self._limit_changes: dict[tuple[str, str], int] = {}
        self._limits: dict[str, float] = {}
        self.observe_wait: Callable[[str, float], None] = self._observe

    def bind_loop(self) -> None:
        """Remember the running event loop as the chain's (collection happens on it)."""
        with contextlib.suppress(RuntimeError):
            self.loop = asyncio.get_running_loop()

    # -- the listener protocol --------------------------------------------------------
    def on_queued(self, info: Any, depth: int) -> None:
        pass

    def on_admitted(self, info: Any, wait: float) -> None:
        if self.loop is None:
            self.bind_loop()
        self.observe_wait(self.priorities(getattr(info, "priority", "none")), wait)

    def on_rejected(self, info: Any, error: Rejected) -> None:
        pass  # counted by the limiter itself: read from statistics()

    def on_released(self, info: Any, held: float) -> None:
        pass

    def on_paused(self, key: str, retry_after: float) -> None:
        label = key_label(self.keys, key)
        self._pauses[label] = self._pauses.get(label, 0) + 1

    def on_limit_changed(self, key: str, old: float, new: float, reason: str) -> None:
        label = key_label(self.keys, key)
        slot = (label, self.reasons(reason))
        self._limit_changes[slot] = self._limit_changes.get(slot, 0) + 1
        self._limits[label] = float(new)

    def _observe(self, priority: str, wait: float) -> None:
        hist = self._hist.get(priority)
        if hist is None:
            hist = self._hist[priority] = WaitHistogram(self.bounds)
        hist.observe(wait)

    # -- collection ---------------------------------------------------------------------
    def snapshot(self) -> ChainSnapshot | None:
        """This chain's metrics now (call it on the chain's loop: see :func:`on_loop`)."""
        stats = self.chain.statistics()
        if stats is None:
            return None
        pools: dict[str, list[int]] = {}
        for pool in stats.pools:
            slot = pools.setdefault(key_label(self.keys, pool.key), [0, 0])
            slot[0] += pool.in_use
            slot[1] += pool.capacity
        buckets: dict[tuple[str, str], list[float]] = {}
        for bucket in stats.buckets:
            entry = buckets.setdefault((key_label(self.keys, bucket.key), bucket.dimension),
                                       [0.0, 0.0, 0.0])
            entry[0] += bucket.available
            entry[1] += bucket.burst
            entry[2] = max(entry[2], bucket.paused_for)
        return ChainSnapshot(
            limiter=stats.name,
            stats=stats,
            waiting_by_priority=_summed((self.priorities(p), n)
                                        for p, n in stats.waiting_by_priority),
            waiting_by_tenant=_summed((self.tenants(t), n) for t, n in stats.waiting_by_tenant),
            rejected=_summed((self.reasons(r), n) for r, n in stats.rejected),
            pools=tuple((k, v[0], v[1]) for k, v in sorted(pools.items())),
            buckets=tuple((k, d, v[0], v[1], v[2]) for (k, d), v in sorted(buckets.items())),
            waits=tuple((p, tuple(h.cumulative()), h.total, h.samples)
                        for p, h in sorted(self._hist.items())),
            pauses=tuple(sorted(self._pauses.items())),
            limit_changes=tuple((k, r, n) for (k, r), n in sorted(self._limit_changes.items())),
            limits=tuple(sorted(self._limits.items())),
        )


def attach_recorder(chain: Any, recorders: list[MetricsRecorder], owner: str,
                    make: Callable[[], MetricsRecorder]) -> MetricsRecorder:
    """``owner.attach(chain)``: a recorder made by ``make()``, added to ``chain``'s listeners
    and to ``recorders``. Refuses a chain without limiters, a second chain of the same name
    on one metrics object, and a chain some metrics object measures already."""
    if chain.gate is None:
        raise ConfigError(f"{owner}.attach: this chain has no limiter interceptors, so "
                          "there is nothing to measure")
    name = chain.gate.limiter.name
    if any(r.chain.gate.limiter.name == name for r in recorders):
        raise ConfigError(f"{owner}.attach: a chain named {name!r} is attached already; "
                          "give each chain its own ToolCallChain(name=...)")
    recorder = make()
    _add_recorder(chain, recorder, owner)
    recorders.append(recorder)
    return recorder


def _add_recorder(chain: Any, recorder: MetricsRecorder, owner: str) -> None:
    """Add ``recorder`` to ``chain``'s listeners, refusing a chain that has one already
    (a chain is measured by one metrics object)."""
    limiter = chain.gate.limiter
    current = limiter.listener
    existing = getattr(current, "listeners", (current,))
    if any(isinstance(x, MetricsRecorder) for x in existing):
        raise ConfigError(f"{owner}.attach: this chain is measured already (by another "
                          "PrometheusMetrics or OTelMetrics); attach a chain once")
    recorder.bind_loop()
    chain.add_listener(recorder)


def on_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], T],
            timeout: float = 5.0) -> T:
    """``fn()`` run on ``loop``'s thread (at once when that is this thread, or when the loop
    is not running: then nothing else touches the chain), waiting at most ``timeout``.

    :raises TimeoutError: the loop did not get to it in time (a stalled loop).
    """
    if loop is None or loop.is_closed() or not loop.is_running():
        return fn()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return fn()
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def job() -> None:
        if result.set_running_or_notify_cancel():
            try:
                result.set_result(fn())
            except BaseException as error:  # handed to the waiting thread
                result.set_exception(error)

    loop.call_soon_threadsafe(job)
    try:
        return result.result(timeout)
    except concurrent.futures.TimeoutError:
        result.cancel()
        raise TimeoutError(f"the chain's event loop did not answer within {timeout:g}s") from None
