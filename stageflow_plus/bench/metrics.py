"""What the benchmark measures, from per-call records.

* **efficiency** — achieved throughput (calls completed over the span from the first call
  made to the last completion) over the provider's sustainable maximum, the tightest of RPM,
  TPM at the workload's mean call size, and ``max_concurrent / latency``. A strategy that
  spends the provider's initial burst can exceed 1 on short spans.
* **efficiency_burst_aware** — stricter, never above 1: calls completed over the most the
  provider could complete in the same span *including* its initial burst.
* **queue wait** — from the call being made to its (last) request being sent, including any
  retry backoff; percentiles per priority over completed calls.
* **Jain's fairness index** — ``(Σx)² / (n·Σx²)`` over tenants' weighted admissions counted
  only at moments when every tenant had a call waiting (1.0 = equal shares; with two tenants
  the worst is 0.5).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..primitives.stats import percentiles_of
from .provider import ProviderLimits
from .workloads import CallSpec, Workload

__all__ = ["CallRecord", "contended_jain", "jain_index", "summarize"]

STATUSES = ("ok", "http_429", "shed", "error", "timeout")


@dataclass(slots=True)
class CallRecord:
    """What happened to one call (times are loop seconds since the workload started).

    :ivar spec: the call.
    :ivar made: when the call was made (its burst's stage ran it).
    :ivar sent: when its last request was sent (``None`` if never sent).
    :ivar done: when it finished (answered, refused by a limiter, or cut off).
    :ivar status: one of ``ok``, ``http_429`` (given up on a 429), ``shed`` (refused by a
        client-side limiter), ``error``, ``timeout`` (cut off by the time limit).
    :ivar attempts: requests sent for this call.
    :ivar got_429: 429 answers received for this call.
    """

    spec: CallSpec
    made: float
    sent: float | None = None
    done: float | None = None
    status: str = "timeout"
    attempts: int = 0
    got_429: int = 0

    @property
    def wait(self) -> float | None:
        """Seconds from being made to the last request being sent."""
        return None if self.sent is None else max(0.0, self.sent - self.made)


def jain_index(shares: Sequence[float]) -> float | None:
    """Jain's fairness index of ``shares`` (``None`` when all are zero or none given)."""
    total = sum(shares)
    squares = sum(x * x for x in shares)
    if not shares or squares == 0:
        return None
    return total * total / (len(shares) * squares)


def _contended_jain(records: Sequence[CallRecord], weights: Mapping[str, float]) -> float | None:
    """Jain over admissions made while every tenant had a call waiting."""
    return contended_jain(records, weights)[0]


def contended_jain(
    records: Sequence[CallRecord], weights: Mapping[str, float]
) -> tuple[float | None, int]:
    """Jain over admissions made while every tenant had a call waiting, and how many such
    admissions there were (``None`` below 10: nothing to judge)."""
    tenants = sorted({r.spec.tenant for r in records})
    if len(tenants) < 2:
        return None, 0
    events: list[tuple[float, int, str]] = []  # (time, +1 arrive / -1 leave, tenant)
    admissions: list[tuple[float, str]] = []
    for r in records:
        end = r.sent if r.sent is not None else r.done
        if end is None:
            continue
        events.append((r.made, 1, r.spec.tenant))
        events.append((end, -1, r.spec.tenant))
        if r.status == "ok" and r.sent is not None:
            admissions.append((r.sent, r.spec.tenant))
    # a call admitted at t still counts as waiting at t (leaves sort after arrivals at t)
    events.sort(key=lambda e: (e[0], -e[1]))
    admissions.sort()
    waiting = dict.fromkeys(tenants, 0)
    counts = dict.fromkeys(tenants, 0.0)
    contended = 0
    i = 0
    for at, tenant in admissions:
        while i < len(events) and (events[i][0] < at or (events[i][0] == at and events[i][1] > 0)):
            waiting[events[i][2]] += events[i][1]
            i += 1
        if all(waiting[t] > 0 for t in tenants):
            counts[tenant] += 1.0 / weights.get(tenant, 1.0)
            contended += 1
    if sum(counts.values()) < 10:
        return None, contended  # tenants were (almost) never contending: nothing to judge
    return jain_index(list(counts.values())), contended


def aging_bound(aging_interval: float, top: int, low: int, max_queue: int,
                calls_per_second: float) -> float:
    """``PriorityFairQueue``'s documented bound ``τ·(P − p) + 2·Q·S/C``, with ``S/C`` read as
    the time to serve one call at the binding limit (``1 / calls_per_second``)."""
    return aging_interval * (top - low) + 2.0 * max_queue / calls_per_second


def summarize(
    records: Sequence[CallRecord],
    workload: Workload,
    limits: ProviderLimits,
    *,
    provider_stats: Mapping[str, Any] | None = None,
    bound_s: float | None = None,
) -> dict[str, Any]:
    """One strategy's metrics on one workload (JSON-ready)."""
    by_status = dict.fromkeys(STATUSES, 0)
    for r in records:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    completed = [r for r in records if r.status == "ok"]
    http_429 = sum(r.got_429 for r in records)
    ends = [r.done for r in completed if r.done is not None]
    starts = [r.made for r in records]
    span = (max(ends) - min(starts)) if ends and starts else 0.0
    capacity = limits.max_calls_in(span, workload.mean_tokens) if span > 0 else math.inf
    burst_aware = len(completed) / capacity if capacity > 0 and span > 0 else 0.0
    sustainable = limits.max_calls_per_second(workload.mean_tokens)
    throughput = len(completed) / span if span > 0 else 0.0
    waits: dict[str, Any] = {}
    p99: dict[str, float] = {}
    for priority in workload.priorities:
        values = [r.wait for r in completed if r.spec.priority == priority and r.wait is not None]
        pct = percentiles_of(values)
        waits[str(priority)] = {
            "count": pct.samples,
            "p50_ms": round(pct.p50 * 1000, 1),
            "p95_ms": round(pct.p95 * 1000, 1),
            "p99_ms": round(pct.p99 * 1000, 1),
            "max_ms": round(pct.max * 1000, 1),
        }
        p99[str(priority)] = round(pct.p99 * 1000, 1)
    lowest = str(workload.priorities[0])
    highest = str(workload.priorities[-1])
    ratio = (p99[highest] / p99[lowest]) if len(p99) > 1 and p99[lowest] > 0 else None
    weights = workload.weights or dict.fromkeys(workload.tenants, 1.0)
    jain, contended = contended_jain(records, weights)
    attempts = sum(r.attempts for r in records)
    result: dict[str, Any] = {
        "calls": len(records),
        "completed": len(completed),
        "http_429": http_429,
        "by_status": by_status,
        "requests_sent": attempts,
        "span_s": round(span, 3),
        "throughput_per_s": round(throughput, 2),
        "max_throughput_per_s": round(sustainable, 2),
        "efficiency": round(throughput / sustainable, 4),
        "efficiency_burst_aware": round(burst_aware, 4),
        "wait_ms_by_priority": waits,
        "wait_p99_ms_by_priority": p99,
        "p99_ratio_highest_to_lowest": None if ratio is None else round(ratio, 4),
        "max_wait_ms_lowest_priority": waits[lowest]["max_ms"] if waits else 0.0,
        "jain_fairness": _round(jain),
        "jain_contended_admissions": contended,
        "completed_by_tenant": {
            t: sum(1 for r in completed if r.spec.tenant == t) for t in workload.tenants
        },
        "shed_by_priority": {
            str(p): sum(1 for r in records if r.status == "shed" and r.spec.priority == p)
            for p in workload.priorities
        },
        "shed_by_tenant": {
            t: sum(1 for r in records if r.status == "shed" and r.spec.tenant == t)
            for t in workload.tenants
        },
        "offered_by_tenant": {
            t: sum(1 for r in records if r.spec.tenant == t) for t in workload.tenants
        },
    }
    if bound_s is not None:
        result["aging_bound_ms"] = round(bound_s * 1000, 1)
    if provider_stats is not None:
        result["provider"] = dict(provider_stats)
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
