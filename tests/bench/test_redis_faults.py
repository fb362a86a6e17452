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
    closed = result["runs"]["server_restarted/fail_closed"]
    assert closed["outcomes"].get("backend_unavailable", 0) > 0  # the outage was seen
    assert result["targets"]["lost_calls"] == {"measured": 0, "met": True}
    assert "server_restarted/degrade" in format_faults_table(result)
    with pytest.raises(ValueError, match="unknown"):
        run_redis_faults(quick=True, scenarios=("meteor",))
