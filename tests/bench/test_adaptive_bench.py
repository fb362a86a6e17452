"""The adaptive benchmark end to end on a tiny, fast provider: every workload, real HTTP to a
provider process; the schema, the accounting and the plots hold."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stageflow_plus.bench.adaptive.baselines import AimdLimit, VegasLimit
from stageflow_plus.bench.adaptive.cost import measure_cost
from stageflow_plus.bench.adaptive.plots import write_adaptive_plots
from stageflow_plus.bench.adaptive.report import format_adaptive_table
from stageflow_plus.bench.adaptive.run import OUTCOMES, STRATEGIES, run_all
from stageflow_plus.bench.adaptive.suite import summarize
from stageflow_plus.bench.adaptive.workloads import AdaptiveBenchConfig, workloads
from stageflow_plus.cli import main
from stageflow_plus.primitives.adaptive import AdaptiveSettings

pytestmark = pytest.mark.anyio

TINY = AdaptiveBenchConfig(capacity=8, latency_ms=20.0, max_wait=0.1, call_timeout=2.0)


async def test_every_strategy_runs_every_workload_and_every_call_is_accounted(
    tmp_path: Path,
) -> None:
    chosen = ("adaptive", "aimd", "fixed_low")  # (vegas and fixed_high: same code paths)
    runs = await run_all(TINY, chosen, quick=True)
    assert set(runs) == {"noload", "step", "overload", "spike"}
    for workload in workloads(TINY, quick=True):
        for strategy, run in runs[workload.name].items():
            assert len(run.calls) == len(workload.arrivals(TINY.seed)) > 0
            assert {c[5] for c in run.calls} <= set(OUTCOMES)
            answered = sum(1 for c in run.calls if c[5] in ("ok", "http_429", "http_503"))
            assert answered == run.provider["requests"], (workload.name, strategy)
            assert run.timeline and all(limit >= 1 for _, limit, _ in run.timeline)
    result = summarize(runs, TINY, quick=True)
    assert set(result["targets"]) == {"adaptive_step", "adaptive_overload", "priority_spike"}
    assert all(isinstance(t["met"], bool) and t["measured"] for t in result["targets"].values())
    step = result["workloads"]["step"]["strategies"]["adaptive"]["step"]
    assert set(step) == {"half", "double", "initial"}
    spike = result["workloads"]["spike"]["strategies"]["adaptive"]["spike"]
    assert spike["critical_calls"] > 0
    json.dumps(result)  # JSON-ready
    table = format_adaptive_table(result)
    assert all(name in table for name in chosen) and "targets" in table
    assert set(STRATEGIES) >= set(chosen)
    written = write_adaptive_plots(runs, result["noload_ms"]["p50"], result["noload_ms"]["p99"],
                                   str(tmp_path))
    assert sorted(p.name for p in written) == [
        "adaptive_overload.png", "adaptive_spike.png", "adaptive_step.png"]
    assert all(p.stat().st_size > 10_000 for p in written)


def test_the_baselines_follow_their_published_rules() -> None:
    settings = AdaptiveSettings(max_limit=100, window=0.1, min_samples=2)
    aimd = AimdLimit(settings, 10, 0.0)
    assert aimd.sample(0.1, 0.0, 5, False) == 11  # in use (5·2 >= 10): +1
    assert aimd.sample(0.2, 0.1, 2, False) == 11  # not in use: unchanged
    assert aimd.sample(0.3, 0.2, 11, True) == 9  # × 0.9 (int)
    assert aimd.sample(0.31, 0.25, 11, True) == 9  # admitted before the cut: ignored
    vegas = VegasLimit(settings, 10, 0.0)
    for i in range(3):  # learns rtt_noload = 0.1
        vegas.sample(0.05 * i + 0.2, 0.05 * i + 0.1, 10, False)
    t = 0.4
    for _ in range(3):  # no queue: + 6·log10(10) = +6
        t += 0.05
        vegas.sample(t, t - 0.1, 10, False)
    assert vegas.limit == 16 and vegas.reason == "grow"
    assert vegas.statistics("k").rtt_noload == pytest.approx(0.1)


def test_the_bookkeeping_cost_is_measured() -> None:
    cost = measure_cost(quick=True)
    assert set(cost) == {"core", "sample_us", "is_drop_us", "chain_delta_us",
                         "retained_bytes_after_20000_calls"}
    assert all(math.isfinite(cost[k]) for k in ("sample_us", "is_drop_us", "chain_delta_us"))


def test_the_adaptive_flag_excludes_the_other_modes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--adaptive", "--core"])
    assert "not allowed with argument" in capsys.readouterr().err
