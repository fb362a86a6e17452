"""The Redis fault runs (issue 11's reliability benchmark), a quick subset on a real server."""

from __future__ import annotations

import pytest

from stageflow_plus.bench.redis_faults import format_faults_table, run_redis_faults

pytestmark = [pytest.mark.redis]


def test_a_restart_loses_no_call_and_degrade_stays_bounded() -> None:
    result = run_redis_faults(quick=True, scenarios=("server_restarted",),
                              policies=("fail_closed", "degrade"))
    assert set(result["runs"]) == {"server_restarted/fail_closed", "server_restarted/degrade"}
    for run in result["runs"].values():
        assert run["lost"] == 0 and run["calls"] > 0
        assert run["outcomes"]["ran"] > 0
        assert run["leases_left"] == 0  # every lease released once the run is over
        assert run["live_seen"] == [2, 2]  # (both saw both before the fault)
        assert run["peak_in_flight"] <= run["bound"]
    assert result["runs"]["server_restarted/fail_closed"]["bound"] == 4
    assert result["runs"]["server_restarted/degrade"]["bound"] == 4 + 2 + 2
    closed = result["runs"]["server_restarted/fail_closed"]
    assert closed["outcomes"].get("backend_unavailable", 0) > 0  # the outage was seen
    assert result["targets"]["lost_calls"] == {"measured": 0, "met": True}
    assert "server_restarted/degrade" in format_faults_table(result)
    with pytest.raises(ValueError, match="unknown"):
        run_redis_faults(quick=True, scenarios=("meteor",))


def test_degrade_stays_within_its_documented_bound_when_redis_is_never_seen() -> None:
    """Unreachable from the start: no process knows how many share the prefix, so each takes
    the whole cap — the shares add up to 2 x cap, plus the cap during the recovery."""
    result = run_redis_faults(quick=True, scenarios=("unreachable_at_start",),
                              policies=("degrade",))
    run = result["runs"]["unreachable_at_start/degrade"]
    assert run["lost"] == 0 and run["outcomes"]["ran"] > 0
    assert run["live_seen"] == [1, 1] and run["bound"] == 3 * run["cap"]
    assert run["peak_in_flight"] <= run["bound"]
    assert result["targets"]["degrade_within_bound"]["met"]
