"""The adaptive benchmark section: run everything, summarize, print, write JSON and plots.

``stageflow-plus bench --adaptive [--quick] [--json PATH] [--plot DIR]`` calls
:func:`run_adaptive_bench`; the full ``stageflow-plus bench`` includes it.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ... import _accel
from ..report import write_json
from .cost import measure_cost
from .report import evaluate, format_adaptive_table, summarize_run
from .run import STRATEGIES, run_all
from .workloads import AdaptiveBenchConfig, workloads

__all__ = ["run_adaptive_bench", "summarize"]


def summarize(runs: dict[str, dict[str, Any]], cfg: AdaptiveBenchConfig, *,
              quick: bool) -> dict[str, Any]:
    """The JSON result of :func:`~stageflow_plus.bench.adaptive.run.run_all`'s runs."""
    noload = runs["noload"]["fixed_high"]
    latencies = sorted(c[3] - c[2] for c in noload.calls if c[5] == "ok")
    if not latencies:
        raise RuntimeError("the no-load run answered no call: is the provider reachable?")
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)]
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "window_s": cfg.window,
        "quick": quick,
        "core": str(_accel.status()),
        "noload_ms": {"p50": round(p50 * 1000, 1), "p99": round(p99 * 1000, 1)},
        "workloads": {},
    }
    for workload in workloads(cfg, quick=quick):
        if workload.name not in runs:
            continue
        result["workloads"][workload.name] = {
            "description": workload.description,
            "duration_s": round(workload.duration, 2),
            "marks_s": {k: round(v, 2) for k, v in workload.marks.items()},
            "strategies": {name: summarize_run(run, workload, cfg, p50, p99)
                           for name, run in runs[workload.name].items()},
        }
    if {"step", "overload", "spike"} <= set(result["workloads"]) and all(
        "adaptive" in result["workloads"][w]["strategies"] for w in ("step", "overload", "spike")
    ):
        result["targets"] = evaluate(result)
    return result


def run_adaptive_bench(*, quick: bool = False, json_path: str | None = None,
                       plot_dir: str | None = None,
                       strategies: Sequence[str] | None = None) -> dict[str, Any]:
    """Every adaptive workload through every strategy; prints the table, writes JSON/plots.

    :param quick: a small fast provider and half-length workloads (about 15 s in all).
    :param strategies: a subset of :data:`~stageflow_plus.bench.adaptive.run.STRATEGIES`
        (``adaptive`` is needed for the targets).
    """
    unknown = set(strategies or ()) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)} (known: {', '.join(STRATEGIES)})")
    cfg = AdaptiveBenchConfig.quick() if quick else AdaptiveBenchConfig()
    runs = asyncio.run(run_all(cfg, strategies, quick=quick))
    result = summarize(runs, cfg, quick=quick)
    result["cost_per_call"] = measure_cost(quick=quick)
    print(format_adaptive_table(result))
    if json_path is not None:
        write_json(result, json_path)
    if plot_dir is not None:
        from .plots import write_adaptive_plots

        for path in write_adaptive_plots(runs, result["noload_ms"]["p50"],
                                         result["noload_ms"]["p99"], plot_dir):
            print(f"wrote {path}", file=sys.stderr)
    return result
