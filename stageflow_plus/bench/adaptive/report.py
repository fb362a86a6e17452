"""Metrics, targets and the table of the adaptive benchmark.

Definitions (``W`` = one window = three no-load round trips; latency = the provider round
trip of an admitted call, from sending to its answer; the *no-load latency* is the latency of
the ``noload`` run in the same process):

* ``adaptive_step`` — for each capacity change, ``settle_windows``: windows from the change
  until the limit is first within ±10 % of the new capacity; ``swing``: the largest
  ``|limit − capacity| / capacity`` from 3 windows after the change to the next change.
  Met when every change settles within 3 windows with a swing ≤ 15 %.
* ``adaptive_overload`` — over the 10x phase from its 4th window on (the first three are the
  convergence budget of ``adaptive_step``): goodput (answered calls per second over what the
  capacity serves) ≥ 0.95, p99 latency ≤ 1.5x the no-load p99 latency (the same percentile
  through the same client: the machine's own jitter is in both; the ratio to the no-load
  median is reported beside it), and no 429 after the phase's first window. Whole-phase
  figures are reported too.
* ``priority_spike`` — critical calls arriving during the spike: success ≥ 99.9 %; and no
  idle provider: all answered calls from the spike's 4th window on ≥ 0.95 of what the
  capacity serves (the low class gets what the critical class leaves; the whole spike is
  reported too).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .run import OUTCOMES, Run
from .workloads import AdaptiveBenchConfig, AdaptiveWorkload

__all__ = ["evaluate", "format_adaptive_table", "summarize_run"]

SETTLE_WINDOWS = 3
STEP_BAND = 0.10
STEADY_SWING = 0.15
GOODPUT = 0.95
P99_RATIO = 1.5
CRITICAL_SUCCESS = 0.999
UTILIZATION = 0.95


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def _r(value: float, digits: int = 3) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def _latencies(calls: Sequence[Sequence[Any]], start: float, end: float) -> list[float]:
    return [c[3] - c[2] for c in calls if c[5] == "ok" and start <= c[2] < end]


def _answered(calls: Sequence[Sequence[Any]], start: float, end: float,
              cls: int | None = None) -> int:
    return sum(1 for c in calls
               if c[5] == "ok" and start <= c[4] < end and (cls is None or c[0] == cls))


def _count(calls: Sequence[Sequence[Any]], outcome: str, start: float = -math.inf,
           end: float = math.inf) -> int:
    return sum(1 for c in calls if c[5] == outcome and start <= c[4] < end)


def _step(run: Run, workload: AdaptiveWorkload, cfg: AdaptiveBenchConfig) -> dict[str, Any]:
    w = cfg.window
    changes = [("half", workload.marks["half"]), ("double", workload.marks["double"])]
    bounds = [t for _, t in changes[1:]] + [workload.duration]
    out: dict[str, Any] = {}
    for (name, at), until in zip(changes, bounds, strict=True):
        capacity = workload.profile.phase_at(at).capacity
        after = [(t, limit) for t, limit, _ in run.timeline if at <= t < until]
        entered = next((t for t, limit in after
                        if abs(limit - capacity) <= STEP_BAND * capacity), math.nan)
        steady = [limit for t, limit in after if t >= at + SETTLE_WINDOWS * w]
        swing = max((abs(x - capacity) / capacity for x in steady), default=math.nan)
        out[name] = {
            "capacity": capacity,
            "settle_windows": _r((entered - at) / w, 2),
            "swing": _r(swing),
            "limit_range": [min(steady), max(steady)] if steady else None,
        }
    first = [limit for t, limit, _ in run.timeline if t < workload.marks["half"]]
    out["initial"] = {"from": cfg.initial_limit, "final": first[-1] if first else None}
    return out


def summarize_run(run: Run, workload: AdaptiveWorkload, cfg: AdaptiveBenchConfig,
                  noload_p50: float, noload_p99: float) -> dict[str, Any]:
    """Every figure of one (workload, strategy) run, JSON-ready."""
    calls = run.calls
    w, x = cfg.window, cfg.throughput
    lat = _latencies(calls, 0.0, math.inf)
    summary: dict[str, Any] = {
        "calls": len(calls),
        "outcomes": {o: _count(calls, o) for o in OUTCOMES},
        "latency_ms": {"p50": _r(_percentile(lat, 0.5) * 1000, 1),
                       "p99": _r(_percentile(lat, 0.99) * 1000, 1)},
        "goodput": _r(_answered(calls, 0.0, workload.duration) / workload.duration / x),
        "provider": run.provider,
        "adaptive": run.adaptive,
    }
    if workload.name == "step":
        summary["step"] = _step(run, workload, cfg)
    elif workload.name == "overload":
        start, end = workload.marks["overload"], workload.duration
        steady = start + SETTLE_WINDOWS * w
        p99 = _percentile(_latencies(calls, steady, end), 0.99)
        whole = _percentile(_latencies(calls, start, end), 0.99)
        summary["overload"] = {
            "goodput": _r(_answered(calls, steady, end) / (end - steady) / x),
            "p99_ms": _r(p99 * 1000, 1),
            "p99_ratio": _r(p99 / noload_p99),
            "p99_over_noload_p50": _r(p99 / noload_p50),
            "http_429_after_first_window": _count(calls, "http_429", start + w),
            "whole_phase": {"goodput": _r(_answered(calls, start, end) / (end - start) / x),
                            "p99_ratio": _r(whole / noload_p99),
                            "http_429": _count(calls, "http_429", start)},
        }
    elif workload.name == "spike":
        start, end = workload.marks["spike"], workload.marks["spike_end"]
        critical = [c for c in calls if c[0] == 0 and start <= c[1] < end]
        ok = sum(1 for c in critical if c[5] == "ok")
        duration = end - start
        summary["spike"] = {
            "critical_calls": len(critical),
            "critical_success": _r(ok / len(critical) if critical else math.nan, 4),
            "critical_p99_ms": _r(_percentile(
                [c[3] - c[2] for c in critical if c[5] == "ok"], 0.99) * 1000, 1),
            "utilization": _r(_answered(calls, start + SETTLE_WINDOWS * w, end)
                              / (duration - SETTLE_WINDOWS * w) / x),
            "utilization_whole_spike": _r(_answered(calls, start, end) / duration / x),
            "low_goodput": _r(_answered(calls, start, end, 1) / duration / x),
            "critical_goodput": _r(_answered(calls, start, end, 0) / duration / x),
        }
    return summary


def evaluate(result: Mapping[str, Any]) -> dict[str, Any]:
    """The three targets for the ``adaptive`` strategy: value, goal, met."""
    w = result["workloads"]
    step = w["step"]["strategies"]["adaptive"]["step"]
    over = w["overload"]["strategies"]["adaptive"]["overload"]
    spike = w["spike"]["strategies"]["adaptive"]["spike"]
    settle = [step[k]["settle_windows"] for k in ("half", "double")]
    swing = [step[k]["swing"] for k in ("half", "double")]
    step_met = all(s is not None and s <= SETTLE_WINDOWS for s in settle) and all(
        s is not None and s <= STEADY_SWING for s in swing)
    over_met = (over["goodput"] is not None and over["goodput"] >= GOODPUT
                and over["p99_ratio"] is not None and over["p99_ratio"] <= P99_RATIO
                and over["http_429_after_first_window"] == 0)
    spike_met = (spike["critical_success"] is not None
                 and spike["critical_success"] >= CRITICAL_SUCCESS
                 and spike["utilization"] is not None and spike["utilization"] >= UTILIZATION)
    return {
        "adaptive_step": {
            "target": f"after each capacity change the limit is within ±{STEP_BAND:.0%} of the "
                      f"capacity within {SETTLE_WINDOWS} windows, swings <= ±{STEADY_SWING:.0%}",
            "measured": {"settle_windows": settle, "swing": swing}, "met": step_met},
        "adaptive_overload": {
            "target": f"10x offered: goodput >= {GOODPUT}, admitted p99 <= {P99_RATIO}x the "
                      "no-load p99, 0 x 429 after the first window",
            "measured": {"goodput": over["goodput"], "p99_ratio": over["p99_ratio"],
                         "http_429_after_first_window": over["http_429_after_first_window"]},
            "met": over_met},
        "priority_spike": {
            "target": f"critical success >= {CRITICAL_SUCCESS:.1%} during a 12x low-priority "
                      f"spike, provider utilization >= {UTILIZATION}",
            "measured": {"critical_success": spike["critical_success"],
                         "utilization": spike["utilization"]},
            "met": spike_met},
    }


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def format_adaptive_table(result: Mapping[str, Any]) -> str:
    """A plain-text table per workload plus the targets."""
    lines = [f"adaptive concurrency — capacity {result['config']['capacity']}, latency "
             f"{result['config']['latency_ms']:g} ms, window {result['window_s']:.2f} s; "
             f"no-load latency p50 {result['noload_ms']['p50']} ms, "
             f"p99 {result['noload_ms']['p99']} ms"]
    for name, entry in result["workloads"].items():
        if name == "noload":
            continue
        lines += ["", f"{name}: {entry['description']}"]
        header = ["strategy", "goodput", "p50 ms", "p99 ms", "429", "503", "shed"]
        extra: list[str] = {"step": ["settle ½", "swing ½", "settle 2x", "swing 2x"],
                            "overload": ["goodput*", "p99/no-load*", "429 after W1"],
                            "spike": ["critical ok", "utilization", "low goodput"]}[name]
        rows = [header + extra]
        for strategy, s in entry["strategies"].items():
            row = [strategy, _cell(s["goodput"]), _cell(s["latency_ms"]["p50"]),
                   _cell(s["latency_ms"]["p99"]), _cell(s["outcomes"]["http_429"]),
                   _cell(s["outcomes"]["http_503"]), _cell(s["outcomes"]["shed"])]
            if name == "step":
                st = s["step"]
                row += [_cell(st["half"]["settle_windows"]), _cell(st["half"]["swing"]),
                        _cell(st["double"]["settle_windows"]), _cell(st["double"]["swing"])]
            elif name == "overload":
                o = s["overload"]
                row += [_cell(o["goodput"]), _cell(o["p99_ratio"]),
                        _cell(o["http_429_after_first_window"])]
            else:
                sp = s["spike"]
                row += [_cell(sp["critical_success"]), _cell(sp["utilization"]),
                        _cell(sp["low_goodput"])]
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)) for r in rows]
    cost = result.get("cost_per_call")
    if cost:
        lines += ["", f"per call ({cost['core']}): policy bookkeeping {cost['sample_us']} µs, "
                      f"drop check {cost['is_drop_us']} µs, whole hook in the chain "
                      f"{cost['chain_delta_us']} µs"]
    lines += ["", "targets (adaptive strategy):"]
    for name, target in result.get("targets", {}).items():
        lines.append(f"  {name:18s} {'met' if target['met'] else 'NOT met':8s} "
                     f"{target['measured']}")
        lines.append(f"  {'':18s} goal: {target['target']}")
    return "\n".join(lines)
