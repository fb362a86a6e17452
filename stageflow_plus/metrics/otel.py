"""OpenTelemetry metrics for chains (``pip install 'stageflow-plus[otel]'``).

::

    from stageflow_plus.metrics import OTelMetrics

    metrics = OTelMetrics(tenants=["acme"])   # the global MeterProvider, or meter_provider=
    metrics.attach(chain)

Instruments (meter ``stageflow_plus``; every point has the attribute ``limiter``):

=====================================  ===================  ===============================
``stageflow_plus.calls.in_flight``     observable gauge     admitted, not yet released
``stageflow_plus.calls.waiting``       observable gauge     ``priority`` (and a total
                                                            without it)
``stageflow_plus.calls.waiting_by_tenant``  observable gauge ``tenant``
``stageflow_plus.calls.admitted``      observable counter
``stageflow_plus.calls.rejected``      observable counter   ``reason``
``stageflow_plus.calls.cancelled``     observable counter
``stageflow_plus.wait``                histogram (s)        ``priority``, every admission
``stageflow_plus.bucket.available``    observable gauge     ``key``, ``dimension``
``stageflow_plus.bucket.capacity``     observable gauge     ``key``, ``dimension``
``stageflow_plus.pool.in_use``         observable gauge     ``key``
``stageflow_plus.pool.capacity``       observable gauge     ``key``
``stageflow_plus.provider.pauses``     counter              ``key``
``stageflow_plus.limit.changes``       counter              ``key``, ``reason``
``stageflow_plus.limit``               observable gauge     ``key``: the last value set
=====================================  ===================  ===============================

Attribute values are bounded as for Prometheus (:class:`~stageflow_plus.metrics.core.
LabelBudget`). Observable instruments read ``chain.statistics()`` on the chain's event
loop when the reader collects; one snapshot per chain serves every instrument of a
collection (it is reused for ``snapshot_ttl`` seconds).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .._logging import get_logger
from .core import (
    DEFAULT_WAIT_BUCKETS,
    ChainSnapshot,
    LabelBudget,
    MetricsRecorder,
    attach_recorder,
    key_label,
    on_loop,
)

__all__ = ["OTelMetrics"]

log = get_logger("metrics")

Reader = Callable[[ChainSnapshot], Iterator[tuple[float, dict[str, str]]]]


class OTelMetrics:
    """OpenTelemetry instruments for the chains attached to it (see the module docstring).

    :param meter_provider: default: the global one (``opentelemetry.metrics``).
    :param tenants: tenants that always get their own attribute value.
    :param max_tenants: further tenants labelled as they appear (then ``"other"``).
    :param max_priorities: distinct priority values.
    :param max_keys: distinct pool, bucket, pause and limit keys.
    :param buckets: advisory bucket bounds of the wait histogram, seconds.
    :param snapshot_ttl: seconds one statistics snapshot serves the instruments.
    :param collect_timeout: seconds a collection waits for the chain's event loop.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        tenants: Iterable[str] = (),
        max_tenants: int = 20,
        max_priorities: int = 16,
        max_keys: int = 50,
        buckets: Sequence[float] = DEFAULT_WAIT_BUCKETS,
        snapshot_ttl: float = 0.1,
        collect_timeout: float = 5.0,
    ) -> None:
        provider = meter_provider if meter_provider is not None else (
            otel_metrics.get_meter_provider())
        self.meter = provider.get_meter("stageflow_plus")
        self._budgets = dict(tenants=LabelBudget(tenants, max_tenants),
                             priorities=LabelBudget((), max_priorities),
                             keys=LabelBudget((), max_keys), reasons=LabelBudget((), 32))
        self._bounds = tuple(buckets)
        self.snapshot_ttl = snapshot_ttl
        self.collect_timeout = collect_timeout
        self._recorders: list[MetricsRecorder] = []
        self._cache: tuple[float, list[ChainSnapshot]] = (-float("inf"), [])
        meter = self.meter
        self._wait = meter.create_histogram(
            "stageflow_plus.wait", unit="s", description="Time calls waited for admission.",
            explicit_bucket_boundaries_advisory=list(self._bounds))
        self._pauses = meter.create_counter(
            "stageflow_plus.provider.pauses", description="Provider pauses (Retry-After).")
        self._changes = meter.create_counter(
            "stageflow_plus.limit.changes", description="Limit changes at run time.")
        observed: list[tuple[str, Callable[..., Any], str, Reader]] = [
            ("calls.in_flight", meter.create_observable_gauge,
             "Calls admitted and not yet released.",
             lambda s: iter([(s.stats.in_flight, {})])),
            ("calls.waiting", meter.create_observable_gauge, "Calls waiting for admission.",
             lambda s: iter([(s.stats.tasks_waiting, {}),
                             *((n, {"priority": p}) for p, n in s.waiting_by_priority)])),
            ("calls.waiting_by_tenant", meter.create_observable_gauge,
             "Calls waiting, by tenant.",
             lambda s: ((n, {"tenant": t}) for t, n in s.waiting_by_tenant)),
            ("calls.admitted", meter.create_observable_counter, "Calls admitted.",
             lambda s: iter([(s.stats.admitted, {})])),
            ("calls.rejected", meter.create_observable_counter,
             "Calls refused by a limiter, by reason.",
             lambda s: ((n, {"reason": r}) for r, n in s.rejected)),
            ("calls.cancelled", meter.create_observable_counter,
             "Calls cancelled while waiting.", lambda s: iter([(s.stats.cancelled, {})])),
            ("bucket.available", meter.create_observable_gauge,
             "Tokens available in a rate bucket.",
             lambda s: ((a, {"key": k, "dimension": d}) for k, d, a, _, _ in s.buckets)),
            ("bucket.capacity", meter.create_observable_gauge,
             "Capacity (burst) of a rate bucket.",
             lambda s: ((c, {"key": k, "dimension": d}) for k, d, _, c, _ in s.buckets)),
            ("pool.in_use", meter.create_observable_gauge,
             "Permits held in a concurrency pool.",
             lambda s: ((u, {"key": k}) for k, u, _ in s.pools)),
            ("pool.capacity", meter.create_observable_gauge, "Capacity of a concurrency pool.",
             lambda s: ((c, {"key": k}) for k, _, c in s.pools)),
            ("limit", meter.create_observable_gauge,
             "The last value a limit was set to at run time.",
             lambda s: ((v, {"key": k}) for k, v in s.limits)),
        ]
        for name, create, description, read in observed:
            create(f"stageflow_plus.{name}", callbacks=[self._callback(read)],
                   description=description)

    def attach(self, chain: Any) -> MetricsRecorder:
        """Record ``chain``'s metrics (adds its listener); chains need distinct names."""
        return attach_recorder(chain, self._recorders, "OTelMetrics",
                               lambda: _OTelRecorder(self, chain, bounds=self._bounds,
                                                     **self._budgets))

    def _snapshots(self) -> list[ChainSnapshot]:
        taken, cached = self._cache
        now = time.monotonic()
        if now - taken <= self.snapshot_ttl:
            return cached
        out = []
        for recorder in self._recorders:
            try:
                snapshot = on_loop(recorder.loop, recorder.snapshot, self.collect_timeout)
            except TimeoutError:
                log.warning("stageflow-plus: skipped the metrics of %r: its event loop did not "
                            "answer within %gs", recorder.chain.gate.limiter.name,
                            self.collect_timeout)
                continue
            if snapshot is not None:
                out.append(snapshot)
        self._cache = (now, out)
        return out

    def _callback(self, read: Reader) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, {"limiter": s.limiter, **attributes})
                    for s in self._snapshots() for value, attributes in read(s)]

        return callback


class _OTelRecorder(MetricsRecorder):
    """Records waits into the OpenTelemetry histogram and counts pauses and limit changes
    on the OpenTelemetry counters (besides the recorder's own bookkeeping)."""

    __slots__ = ("_owner",)

    def __init__(self, owner: OTelMetrics, chain: Any, **kwargs: Any) -> None:
        super().__init__(chain, **kwargs)
        self._owner = owner
        name = chain.gate.limiter.name
        record = owner._wait.record
        self.observe_wait = lambda priority, wait: record(
            wait, {"limiter": name, "priority": priority})

    def on_paused(self, key: str, retry_after: float) -> None:
        super().on_paused(key, retry_after)
        self._owner._pauses.add(1, {"limiter": self.chain.gate.limiter.name,
                                    "key": self._key(key)})

    def on_limit_changed(self, key: str, old: float, new: float, reason: str) -> None:
        super().on_limit_changed(key, old, new, reason)
        self._owner._changes.add(1, {"limiter": self.chain.gate.limiter.name,
                                     "key": self._key(key), "reason": self.reasons(reason)})

    def _key(self, key: str) -> str:
        return key_label(self.keys, key)
