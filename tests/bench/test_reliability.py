"""The reliability benchmark: schema, targets and that a quick run holds them."""

from __future__ import annotations

import pytest

from stageflow_plus.bench.reliability import format_reliability_table, run_reliability


def test_quick_memory_and_lag_parts_report_every_target() -> None:
    result = run_reliability(quick=True, parts=("steady", "distinct", "loop_lag"))
    for name in ("steady", "distinct"):
        run = result[name]
        assert run["admitted"] + run["refused"] == run["calls"]  # no lost call
        assert run["in_flight_after"] == 0  # no leaked permit
        assert len(run["checkpoints"]) >= 5
    # every distinct run id and tenant went away again: tables far below the calls made
    assert max(result["distinct"]["tables"].values()) < result["distinct"]["calls"] / 2
    targets = result["targets"]
    assert {"steady_rss_flat_mib", "distinct_largest_table", "memory_runs_lost_calls",
            "memory_runs_leaked_permits", "loop_drain_vs_semaphore",
            "loop_cancel_vs_semaphore"} <= set(targets)
    assert targets["memory_runs_lost_calls"] == {"measured": 0, "met": True}
    assert targets["memory_runs_leaked_permits"] == {"measured": 0, "met": True}
    assert targets["distinct_largest_table"]["met"]
    for target in targets.values():
        assert set(target) == {"measured", "met"} and isinstance(target["met"], bool)
    table = format_reliability_table(result)
    assert "loop lag" in table and "distinct" in table and "[" in table


def test_unknown_part_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown reliability part"):
        run_reliability(quick=True, parts=("steady", "soak"))
