"""The benchmark's headline numbers, its targets, and the table for people.

Headline per strategy (``result["strategies"][name]``): ``calls``, ``completed`` and
``http_429`` summed over the workloads; ``efficiency``, wait percentiles and the lowest
priority's longest wait from the ``overload`` workload; ``jain_fairness`` from the
``fairness`` workload (10:1 offered load, equal weights).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "evaluate_targets", "format_table", "headline", "write_json"]

TARGETS = {
    "zero_429": "no 429 from the provider",
    "efficiency": "efficiency >= 0.95 (overload)",
    "priority_isolation": "highest priority p99 wait <= 10% of lowest's (overload)",
    "aging_bound": "lowest priority's longest wait within PriorityFairQueue's bound",
    "fairness": "Jain >= 0.98 with 10:1 offered load",
    "overhead": "overhead per call <= 2x the semaphore strategy's (same run, registry path)",
}
"""What stageflow-plus aims at (measured and reported, never asserted by tests)."""

PLUS = "stageflow-plus"


def headline(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Combine the workloads into one row per strategy (see the module docstring)."""
    workloads = result["workloads"]
    names: list[str] = []
    for entry in workloads.values():
        names += [n for n in entry["strategies"] if n not in names]
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        per = {w: e["strategies"][name] for w, e in workloads.items() if name in e["strategies"]}
        main = per.get("overload") or next(iter(per.values()))
        fair = per.get("fairness")
        rows[name] = {
            "calls": sum(s["calls"] for s in per.values()),
            "completed": sum(s["completed"] for s in per.values()),
            "shed": sum(s["by_status"].get("shed", 0) for s in per.values()),
            "http_429": sum(s["http_429"] for s in per.values()),
            "efficiency": main["efficiency"],
            "efficiency_burst_aware": main["efficiency_burst_aware"],
            "efficiency_fairness_workload": fair["efficiency"] if fair else None,
            "wait_p99_ms_by_priority": main["wait_p99_ms_by_priority"],
            "p99_ratio_highest_to_lowest": main["p99_ratio_highest_to_lowest"],
            "max_wait_ms_lowest_priority": main["max_wait_ms_lowest_priority"],
            "aging_bound_ms": main.get("aging_bound_ms"),
            "jain_fairness": fair["jain_fairness"] if fair else main["jain_fairness"],
            "overhead_us_per_call": result.get("overhead_us_by_strategy", {}).get(name),
        }
    return rows


def evaluate_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target for stageflow-plus: the measured value and whether it is met."""
    row = result.get("strategies", {}).get(PLUS)
    if row is None:
        return {}
    ratio = row["p99_ratio_highest_to_lowest"]
    bound = row["aging_bound_ms"]
    jain = row["jain_fairness"]
    checks: dict[str, tuple[Any, bool | None]] = {
        "zero_429": (row["http_429"], row["http_429"] == 0),
        "efficiency": (row["efficiency"], row["efficiency"] >= 0.95),
        "priority_isolation": (ratio, None if ratio is None else ratio <= 0.10),
        "aging_bound": (
            {"max_wait_ms": row["max_wait_ms_lowest_priority"], "bound_ms": bound},
            None if bound is None else row["max_wait_ms_lowest_priority"] <= bound,
        ),
        "fairness": (jain, None if jain is None else jain >= 0.98),
        "overhead": _overhead_check(result),
    }
    return {k: {"target": TARGETS[k], "measured": v, "met": ok} for k, (v, ok) in checks.items()}


def _overhead_check(result: dict[str, Any]) -> tuple[Any, bool | None]:
    """stageflow-plus's overhead per call against the semaphore strategy's (same run)."""
    overhead = result.get("overhead_us_by_strategy", {})
    ours, base = overhead.get(PLUS), overhead.get("semaphore")
    if ours is None or base is None:
        return None, None
    ratio = ours / base if base > 0 else math.inf
    return ({"us_per_call": ours, "semaphore_us_per_call": base, "ratio": round(ratio, 2)},
            ratio <= 2.0)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def format_table(result: dict[str, Any]) -> str:
    """The human table: one row per strategy and workload, then the targets."""
    lines: list[str] = []
    limits = result.get("provider", {})
    if "core" in result:
        lines.append(f"stageflow-plus core: {result['core']}")
    if limits:
        lines.append(
            f"provider: {limits['rpm']:g} RPM, {limits['tpm']:g} TPM, {limits['max_concurrent']} "
            f"concurrent, {limits['latency_ms']:g}±{limits['latency_jitter_ms']:g} ms"
        )
    header = (f"{'workload':<9} {'strategy':<16} {'calls':>5} {'done':>5} {'shed':>4} "
              f"{'429s':>5} {'eff':>5} {'eff*':>5}  {'p99 wait ms P3/P2/P1/P0':<27} "
              f"{'max low ms':>10} {'Jain':>6} {'µs/call':>7}")
    overhead = result.get("overhead_us_by_strategy", {})
    for wname, entry in result["workloads"].items():
        lines.append("")
        lines.append(f"{wname}: {entry['description']} ({entry['calls']} calls)")
        lines.append(header)
        lines.append("-" * len(header))
        for name, s in entry["strategies"].items():
            p99 = s["wait_p99_ms_by_priority"]
            waits = "/".join(f"{p99[k]:.0f}" for k in sorted(p99, key=int, reverse=True))
            lowest = s["max_wait_ms_lowest_priority"]
            lines.append(
                f"{wname:<9} {name:<16} {s['calls']:>5} {s['completed']:>5} "
                f"{s['by_status'].get('shed', 0):>4} {s['http_429']:>5} "
                f"{s['efficiency']:>5.2f} {s['efficiency_burst_aware']:>5.2f}  "
                f"{waits:<27} {lowest:>10.0f} "
                f"{_fmt(s['jain_fairness'], '.3f'):>6} {_fmt(overhead.get(name), '.1f'):>7}"
            )
    lines.append("")
    lines.append("eff = throughput / provider's sustainable max; eff* = completed / most the "
                 "provider could complete in the span incl. its initial burst (<= 1)")
    if "llm" in result:
        from .llm_bench import format_llm_table

        lines.append(format_llm_table(result["llm"]))
    targets = result.get("targets") or {}
    if targets:
        lines.append("")
        lines.append("stageflow-plus targets:")
        if result.get("quick") or result.get("demo"):
            lines.append("  (a short run: the provider's initial burst and the ramp-up weigh "
                         "heavily; `stageflow-plus bench` measures the targets on longer runs)")
        for item in targets.values():
            mark = {True: "met", False: "MISSED", None: "n/a"}[item["met"]]
            note = f" ({item['note']})" if item.get("note") else ""
            lines.append(f"  [{mark:>6}] {item['target']}: {item['measured']}{note}")
    return "\n".join(lines)


def write_json(result: Any, path: str | Path, *,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write a benchmark's ``result`` to ``path`` as sorted, indented JSON (its folder made
    if need be) and say so on stderr; ``default`` as for :func:`json.dumps`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2, sort_keys=True, default=default) + "\n")
    print(f"wrote {target}", file=sys.stderr)
    return target
