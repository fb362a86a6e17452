"""The demo's first screen: a target a short run cannot measure is 'n/a' with the reason."""

from __future__ import annotations

import copy
from typing import Any

from stageflow_plus.bench.demo import MIN_CONTENDED, demo_workloads, judge_targets
from stageflow_plus.bench.metrics import jain_index
from stageflow_plus.bench.report import evaluate_targets, format_table
from stageflow_plus.bench.workloads import bench_limits


def result_with(top_p99: float, low_p99: float, contended: int, jain: float) -> dict[str, Any]:
    row = {"http_429": 0, "efficiency": 1.0, "p99_ratio_highest_to_lowest": top_p99 / low_p99,
           "aging_bound_ms": 30_000.0, "max_wait_ms_lowest_priority": low_p99,
           "jain_fairness": jain, "wait_p99_ms_by_priority": {"3": top_p99, "0": low_p99}}
    result: dict[str, Any] = {
        "strategies": {"stageflow-plus": row},
        "workloads": {"fairness": {"strategies": {"stageflow-plus": {
            "jain_contended_admissions": contended}}}},
    }
    result["targets"] = evaluate_targets(result)
    return result


def test_the_demo_workloads_can_measure_both_targets() -> None:
    overload, fairness = demo_workloads(bench_limits())
    duration = max(c.at for c in overload.calls)
    assert (overload.offered_load - 1) * duration >= 3.0  # room for 10x a ~300 ms top p99
    small = sum(1 for c in fairness.calls if c.tenant == "small")
    assert 2 * small >= MIN_CONTENDED  # each small call can pair with a big one


def test_a_run_too_short_for_priority_isolation_says_so() -> None:
    workloads = demo_workloads(bench_limits())
    result = result_with(top_p99=400.0, low_p99=3_900.0, contended=60, jain=0.99)
    assert result["targets"]["priority_isolation"]["met"] is False  # 0.103 > 0.10
    judge_targets(result, workloads)
    item = result["targets"]["priority_isolation"]
    assert item["met"] is None and "not measurable in this run" in item["note"]
    assert "less than 10x the top's p99 (400 ms)" in item["note"]
    assert "[   n/a] highest priority p99 wait" in format_table(
        {**result, "workloads": {}, "demo": True})


def test_a_measurable_miss_stays_missed() -> None:
    workloads = demo_workloads(bench_limits())
    result = result_with(top_p99=300.0, low_p99=2_000.0, contended=60, jain=0.95)
    before = copy.deepcopy(result["targets"])
    judge_targets(result, workloads)
    assert result["targets"] == before  # 10 x 300 ms fits in the backlog: a real MISSED
    assert result["targets"]["priority_isolation"]["met"] is False
    assert result["targets"]["fairness"]["met"] is False


def test_too_few_contended_admissions_make_jain_not_measurable() -> None:
    workloads = demo_workloads(bench_limits())
    result = result_with(top_p99=200.0, low_p99=4_000.0, contended=MIN_CONTENDED - 1,
                         jain=0.97)
    judge_targets(result, workloads)
    item = result["targets"]["fairness"]
    assert item["met"] is None and f"only {MIN_CONTENDED - 1} admissions" in item["note"]


def test_min_contended_is_where_an_imbalance_of_two_still_meets_the_target() -> None:
    n = MIN_CONTENDED
    at_min = jain_index([n / 2 + 2, n / 2 - 2])
    below = jain_index([(n - 2) / 2 + 2, (n - 2) / 2 - 2])
    assert at_min is not None and at_min >= 0.98 - 1e-9
    assert below is not None and below < 0.98
