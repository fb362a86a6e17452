"""The LLM benchmark's quick variant runs the real clients end to end and reports targets."""

from __future__ import annotations

from stageflow_plus.bench.llm_bench import LLM_TARGETS, format_llm_table, run_llm_bench


def test_quick_llm_bench_reports_every_run_and_target() -> None:
    wanted = {"learned_limits/openai", "tpm_reconciled/never_refund",
              "exact_limits/llm_defaults", "exact_limits/hand_made_exact"}
    result = run_llm_bench(quick=True, names=lambda name: name in wanted)
    assert set(result["runs"]) == wanted
    for run in result["runs"].values():
        assert run["calls"] == run["ok"] + run["lost"] + run["cut_at_time_limit"]
    exact = result["runs"]["exact_limits/llm_defaults"]
    assert exact["lost"] == 0 and exact["cut_at_time_limit"] == 0  # retry + pause: none lost
    never = result["runs"]["tpm_reconciled/never_refund"]
    assert 0 < never["tpm_utilisation_after"] < 0.5  # max_tokens held, 20 % used
    assert set(result["targets"]) <= set(LLM_TARGETS)
    assert all(isinstance(t["met"], bool) for t in result["targets"].values())
    assert "learned_limits/openai" in format_llm_table(result)
