"""Prometheus metrics for chains (``pip install 'stageflow-plus[prometheus]'``).

::

    from prometheus_client import start_http_server
    from stageflow_plus.metrics import PrometheusMetrics

    metrics = PrometheusMetrics(tenants=["acme", "globex"])   # registers on REGISTRY
    metrics.attach(chain)                                       # any number of chains
    start_http_server(9464, addr="127.0.0.1")                   # GET /metrics

Exposed (every series has the label ``limiter``, the chain's name):

==============================================  ========  =================================
``stageflow_plus_calls_in_flight``              gauge     admitted, not yet released
``stageflow_plus_calls_waiting``                gauge     queued now
``stageflow_plus_calls_waiting_by_priority``    gauge     ``priority``
``stageflow_plus_calls_waiting_by_tenant``      gauge     ``tenant``
``stageflow_plus_calls_admitted_total``         counter
``stageflow_plus_calls_rejected_total``         counter   ``reason`` (queue_full, ...)
``stageflow_plus_calls_cancelled_total``        counter   cancelled while waiting
``stageflow_plus_wait_seconds``                 histogram ``priority``; ``le="0.0"`` counts
                                                          the calls admitted at once
``stageflow_plus_bucket_available``             gauge     ``key``, ``dimension`` (tokens
                                                          now; negative while in debt)
``stageflow_plus_bucket_capacity``              gauge     ``key``, ``dimension``
``stageflow_plus_bucket_paused_seconds``        gauge     ``key``, ``dimension``
``stageflow_plus_pool_in_use``                  gauge     ``key``
``stageflow_plus_pool_capacity``                gauge     ``key``
``stageflow_plus_provider_pauses_total``        counter   ``key`` (a provider's Retry-After)
``stageflow_plus_limit_changes_total``          counter   ``key``, ``reason``
``stageflow_plus_limit``                        gauge     ``key``: the last value set
==============================================  ========  =================================

Label values are bounded (:class:`~stageflow_plus.metrics.core.LabelBudget`): tenants are
the configured ones plus the first ``max_tenants`` others, then ``"other"``; keys likewise
(per-run pools and buckets share ``"run:*"``); priorities and reasons too. Gauges are read
from ``chain.statistics()`` at scrape time, on the chain's event loop.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .._logging import get_logger
from ..primitives.errors import ConfigError
from .core import (
    DEFAULT_WAIT_BUCKETS,
    ChainSnapshot,
    LabelBudget,
    MetricsRecorder,
    attach_recorder,
    on_loop,
)

__all__ = ["PrometheusMetrics"]

log = get_logger("metrics")


class PrometheusMetrics:
    """A Prometheus collector for the chains attached to it (see the module docstring).

    :param registry: where to register (default: ``prometheus_client.REGISTRY``; ``None``
        registers nowhere — call ``registry.register(metrics)`` yourself).
    :param namespace: the metric name prefix.
    :param tenants: tenants that always get their own label value.
    :param max_tenants: further tenants labelled as they appear (then ``"other"``).
    :param max_priorities: distinct priority label values.
    :param max_keys: distinct pool, bucket, pause and limit keys.
    :param buckets: upper bounds of the wait histogram, seconds.
    :param scrape_timeout: seconds a scrape waits for the chain's event loop.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        namespace: str = "stageflow_plus",
        tenants: Iterable[str] = (),
        max_tenants: int = 20,
        max_priorities: int = 16,
        max_keys: int = 50,
        buckets: Sequence[float] = DEFAULT_WAIT_BUCKETS,
        scrape_timeout: float = 5.0,
    ) -> None:
        if not isinstance(namespace, str) or not namespace.isidentifier():
            raise ConfigError(f"PrometheusMetrics: namespace must be an identifier, "
                              f"got {namespace!r}")
        self.namespace = namespace
        self._budgets = dict(tenants=LabelBudget(tenants, max_tenants),
                             priorities=LabelBudget((), max_priorities),
                             keys=LabelBudget((), max_keys), reasons=LabelBudget((), 32))
        self._bounds = tuple(buckets)
        self._recorders: list[MetricsRecorder] = []
        self._last: dict[str, ChainSnapshot] = {}
        self.scrape_timeout = scrape_timeout
        if registry is not None:
            registry.register(self)

    def attach(self, chain: Any) -> MetricsRecorder:
        """Collect ``chain``'s metrics (adds its listener); chains need distinct names."""
        return attach_recorder(chain, self._recorders, "PrometheusMetrics",
                               lambda: MetricsRecorder(chain, bounds=self._bounds, **self._budgets))

    def describe(self) -> list[Metric]:
        """No fixed description: the registry then collects once to learn the names."""
        return []

    def _snapshots(self) -> list[ChainSnapshot]:
        out = []
        for recorder in self._recorders:
            name = recorder.chain.gate.limiter.name
            try:
                snapshot = on_loop(recorder.loop, recorder.snapshot, self.scrape_timeout)
            except TimeoutError:
                snapshot = self._last.get(name)
                log.warning("stageflow-plus: metrics of %r are stale: its event loop did not "
                            "answer within %gs", name, self.scrape_timeout)
            if snapshot is not None:
                self._last[name] = snapshot
                out.append(snapshot)
        return out

    def collect(self) -> Iterator[Metric]:
        """Every metric of every attached chain (called by the registry at scrape time)."""
        snapshots = self._snapshots()
        ns = self.namespace

        def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{ns}_{name}", doc, labels=["limiter", *labels])

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(f"{ns}_{name}", doc, labels=["limiter", *labels])

        in_flight = gauge("calls_in_flight", "Calls admitted and not yet released.")
        waiting = gauge("calls_waiting", "Calls waiting for admission.")
        by_priority = gauge("calls_waiting_by_priority", "Calls waiting, by priority.",
                            ["priority"])
        by_tenant = gauge("calls_waiting_by_tenant", "Calls waiting, by tenant.", ["tenant"])
        admitted = counter("calls_admitted", "Calls admitted.")
        rejected = counter("calls_rejected", "Calls refused by a limiter, by reason.",
                           ["reason"])
        cancelled = counter("calls_cancelled", "Calls cancelled while waiting.")
        waits = HistogramMetricFamily(f"{ns}_wait_seconds", "Time calls waited for admission.",
                                      labels=["limiter", "priority"])
        available = gauge("bucket_available", "Tokens available in a rate bucket.",
                          ["key", "dimension"])
        capacity = gauge("bucket_capacity", "Capacity (burst) of a rate bucket.",
                         ["key", "dimension"])
        paused = gauge("bucket_paused_seconds", "Seconds until a provider pause ends.",
                       ["key", "dimension"])
        pool_used = gauge("pool_in_use", "Permits held in a concurrency pool.", ["key"])
        pool_cap = gauge("pool_capacity", "Capacity of a concurrency pool.", ["key"])
        pauses = counter("provider_pauses", "Provider pauses (Retry-After) of a key.", ["key"])
        changes = counter("limit_changes", "Limit changes at run time.", ["key", "reason"])
        limit = gauge("limit", "The last value a limit was set to at run time.", ["key"])
        for s in snapshots:
            name = s.limiter
            in_flight.add_metric([name], s.stats.in_flight)
            waiting.add_metric([name], s.stats.tasks_waiting)
            admitted.add_metric([name], s.stats.admitted)
            cancelled.add_metric([name], s.stats.cancelled)
            for label, n in s.waiting_by_priority:
                by_priority.add_metric([name, label], n)
            for label, n in s.waiting_by_tenant:
                by_tenant.add_metric([name, label], n)
            for label, n in s.rejected:
                rejected.add_metric([name, label], n)
            for label, cumulative, total, _ in s.waits:
                waits.add_metric([name, label], [(_le(b), n) for b, n in cumulative], total)
            for key, dim, level, cap, pause in s.buckets:
                available.add_metric([name, key, dim], level)
                capacity.add_metric([name, key, dim], cap)
                paused.add_metric([name, key, dim], pause)
            for key, used, cap_ in s.pools:
                pool_used.add_metric([name, key], used)
                pool_cap.add_metric([name, key], cap_)
            for key, n in s.pauses:
                pauses.add_metric([name, key], n)
            for key, reason, n in s.limit_changes:
                changes.add_metric([name, key, reason], n)
            for key, value in s.limits:
                limit.add_metric([name, key], value)
        yield from (in_flight, waiting, by_priority, by_tenant, admitted, rejected, cancelled,
                    waits, available, capacity, paused, pool_used, pool_cap, pauses, changes,
                    limit)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
