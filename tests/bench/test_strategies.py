"""Every strategy runs a tiny workload through a real pipeline and provider; the schema holds."""

from __future__ import annotations

from typing import Any

import pytest

from stageflow_plus.bench.metrics import CallRecord, jain_index, summarize
from stageflow_plus.bench.provider import ProviderLimits
from stageflow_plus.bench.report import evaluate_targets, format_table, headline
from stageflow_plus.bench.run import measure_overhead, run_strategy
from stageflow_plus.bench.strategies import STRATEGIES
from stageflow_plus.bench.workloads import CallSpec, Workload, fairness, overload

pytestmark = pytest.mark.anyio

FAST = ProviderLimits(rpm=12_000, tpm=12_000_000, max_concurrent=4, latency_ms=10,
                      latency_jitter_ms=2)
HEADLINE_KEYS = {"calls", "completed", "http_429", "efficiency", "wait_p99_ms_by_priority",
                 "max_wait_ms_lowest_priority", "jain_fairness"}


async def test_every_strategy_produces_the_schema() -> None:
    workloads = [overload(FAST, duration=0.25), fairness(FAST, duration=0.25)]
    result: dict[str, Any] = {"workloads": {}}
    for workload in workloads:
        entry: dict[str, Any] = {"description": workload.description,
                                    "calls": len(workload.calls), "strategies": {}}
        for name, factory in STRATEGIES.items():
            strategy = factory(FAST, workload)
            records, stats = await run_strategy(strategy, workload, FAST)
            assert len(records) == len(workload.calls)
            assert all(r.status in {"ok", "http_429", "shed", "error"} for r in records)
            assert stats["requests"] == sum(r.attempts for r in records)
            summary = summarize(records, workload, FAST, provider_stats=stats)
            assert summary["calls"] == len(workload.calls)
            assert set(summary["wait_p99_ms_by_priority"]) == {
                str(p) for p in workload.priorities}
            entry["strategies"][name] = summary
        result["workloads"][workload.name] = entry
    plus = result["workloads"]["overload"]["strategies"]["stageflow-plus"]
    assert plus["provider"]["max_concurrent_observed"] <= FAST.max_concurrent
    result["overhead_us_by_strategy"] = await measure_overhead(workloads[0], calls=50,
                                                                  repeats=2)
    result["strategies"] = headline(result)
    rows = result["strategies"]
    assert set(rows) == set(STRATEGIES)
    for row in rows.values():
        assert set(row) >= HEADLINE_KEYS
    result["targets"] = evaluate_targets(result)
    assert set(result["targets"]) == {
        "zero_429", "efficiency", "priority_isolation", "aging_bound", "fairness", "overhead"}
    table = format_table(result)
    assert all(name in table for name in STRATEGIES)


def test_jain_index() -> None:
    assert jain_index([5.0, 5.0]) == pytest.approx(1.0)
    assert jain_index([10.0, 1.0]) == pytest.approx(121 / 202)
    assert jain_index([1.0, 0.0]) == pytest.approx(0.5)
    assert jain_index([]) is None


def _record(index: int, tenant: str, made: float, sent: float) -> CallRecord:
    spec = CallSpec(index, made, index, 10, tenant, 0)
    return CallRecord(spec, made=made, sent=sent, done=sent + 0.01, status="ok", attempts=1)


def test_fairness_counts_only_admissions_while_both_tenants_wait() -> None:
    # both tenants queue at t=0; admissions alternate a, b, a, b ... then "a" runs alone
    records = [_record(i, "ab"[i % 2], 0.0, 0.1 * (i + 1)) for i in range(20)]
    records += [_record(20 + i, "a", 3.0, 3.0 + 0.1 * i) for i in range(30)]
    workload = Workload("w", "test", tuple(r.spec for r in records), time_limit=10.0,
                        offered_load=1.0, weights={"a": 1.0, "b": 1.0})
    summary = summarize(records, workload, FAST)
    assert summary["jain_fairness"] == pytest.approx(1.0, abs=0.01)
    # FIFO-like: "b" waits from t=0 but is served only after ten of "a"
    unfair = [_record(i, "a", 0.0, 0.1 * (i + 1)) for i in range(10)]
    unfair += [_record(10 + i, "b", 0.0, 1.1 + 0.1 * i) for i in range(2)]
    workload = Workload("w", "test", tuple(r.spec for r in unfair), time_limit=10.0,
                        offered_load=1.0)
    assert summarize(unfair, workload, FAST)["jain_fairness"] < 0.7
