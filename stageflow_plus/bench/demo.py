"""The demo's workloads, and which targets a run of that size can measure at all.

``stageflow-plus demo`` must finish in about a minute, so its workloads are short. A short
run cannot measure every target, and saying "MISSED" for a target the run could not have met
whatever the limiter did is not honest. :func:`judge_targets` therefore marks a target
"n/a" with the reason when the run is too small for it:

* **priority isolation** (top priority's p99 wait ≤ 10 % of the lowest's): the lowest
  priority can only wait as long as the backlog lasts, about ``(load − 1) · duration``
  seconds; if that is less than 10 × the top priority's p99, no scheduler could reach 10 %.
* **fairness** (Jain ≥ 0.98 at 10:1 offered load): Jain is counted over the admissions made
  while both tenants had a call waiting; with ``n`` of them, an imbalance of two calls
  (one at each edge of the contended span) already costs ``1 − 1/(1 + (4/n)²)``, so fewer
  than :data:`MIN_CONTENDED` cannot resolve 0.98.

The demo's workloads are sized so that both targets are measurable on most runs (3.5 s of
2x overload, 3 s of 10:1 fairness, about 55 s for the five strategies); a run that falls
short of a criterion says so. (A provider twice as fast gives more calls in the same time,
but on a loaded 2-core machine the loopback HTTP traffic then costs throughput.)

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
from typing import Any

from .provider import ProviderLimits
from .workloads import Workload, fairness, overload

__all__ = ["MIN_CONTENDED", "demo_workloads", "judge_targets"]

MIN_CONTENDED = math.ceil(4 / math.sqrt(1 / 0.98 - 1))  # = 28
"""Fewest contended admissions over which Jain ≥ 0.98 can be judged (see the docstring)."""

OVERLOAD_S = 3.5
FAIRNESS_S = 3.0


def demo_workloads(limits: ProviderLimits) -> list[Workload]:
    """The demo's two workloads: 2x overload for 3.5 s (priorities 0-3) and 10:1 fairness
    for 3 s, seeded."""
    return [overload(limits, duration=OVERLOAD_S, seed=11),
            fairness(limits, duration=FAIRNESS_S, seed=12)]


def judge_targets(result: dict[str, Any], workloads: list[Workload]) -> None:
    """Mark the targets of ``result`` that ``workloads`` are too small to measure as
    ``met = None`` with a ``note`` saying why (in place)."""
    targets = result.get("targets") or {}
    row = result.get("strategies", {}).get("stageflow-plus")
    if not targets or row is None:
        return
    by_name = {w.name: w for w in workloads}
    main = by_name.get("overload")
    p99 = row.get("wait_p99_ms_by_priority") or {}
    if main is not None and p99 and "priority_isolation" in targets:
        top = p99[max(p99, key=int)]
        backlog_ms = (main.offered_load - 1.0) * _duration(main) * 1000
        if backlog_ms < 10 * top:
            _unmeasurable(targets["priority_isolation"],
                          f"a {_duration(main):g} s overload can delay the lowest priority by "
                          f"~{backlog_ms / 1000:.1f} s, less than 10x the top's p99 "
                          f"({top:.0f} ms)")
    fair = result.get("workloads", {}).get("fairness", {}).get("strategies", {}).get(
        "stageflow-plus")
    if fair is not None and "fairness" in targets:
        contended = fair.get("jain_contended_admissions") or 0
        if contended < MIN_CONTENDED:
            _unmeasurable(targets["fairness"],
                          f"only {contended} admissions while both tenants waited (needs "
                          f"{MIN_CONTENDED})")


def _duration(workload: Workload) -> float:
    return max((c.at for c in workload.calls), default=0.0)


def _unmeasurable(target: dict[str, Any], why: str) -> None:
    target["met"] = None
    target["note"] = f"not measurable in this run: {why}"
