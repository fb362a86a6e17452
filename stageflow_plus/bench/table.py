"""The human table of the core benchmark (:mod:`stageflow_plus.bench.core`).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["TARGETS", "UNCONTENDED_ROWS", "evaluate_targets", "format_core_table"]

TARGETS: Mapping[str, tuple[str, float]] = {
    "uncontended_chain_vs_aiolimiter": ("uncontended chain, fresh call / aiolimiter", 1.5),
    "uncontended_chain_vs_semaphore": ("uncontended chain / async-with Semaphore", 3.0),
    "registry_limited_vs_aiolimiter": ("registry path: LimitedToolRegistry / aiolimiter",
                                       1.5),
    "contended_chain_vs_semaphore": ("contended chain / Semaphore per task", 1.3),
    "waiters_growth_limiter": ("Limiter per-waiter time, large N / small N", 1.3),
    "waiters_growth_chain": ("chain per-waiter time, large N / small N", 1.3),
    "waiter_bytes_limiter": ("Limiter bytes per waiter beyond the task", 600.0),
    "lag_drain_vs_semaphore": ("loop lag, 50k waiters: drain time / Semaphore", 1.5),
    "lag_stall_vs_semaphore": ("loop lag, 50k waiters: longest loop stall / Semaphore", 1.5),
    "lag_cancel_vs_semaphore": ("loop lag, 50k waiters: mass cancellation / Semaphore", 1.5),
    "lag_cancel_stall_vs_semaphore": ("loop lag, 50k waiters: cancellation stall / Semaphore", 1.5),
}
"""name → (description, upper bound); measured and reported, never asserted by tests."""

UNCONTENDED_ROWS: Mapping[str, str] = {
    "bare": "await tool(call)",
    "semaphore": "async with Semaphore",
    "aiolimiter": "async with aiolimiter.AsyncLimiter",
    "chain": "ToolCallChain, 4 interceptors",
    "chain_reuse": "  the same, one ToolCall reused",
    "backpressure": "  Backpressure alone",
    "priority_fair_queue": "  PriorityFairQueue alone",
    "token_bucket": "  TokenBucketRateLimiter alone",
    "concurrency": "  ConcurrencyLimiter alone",
    "limiter_acquire_release": "Limiter.acquire + release",
}
"""Result key → row label of the uncontended section, in display order."""

_WAITER_ROWS = {"semaphore": "asyncio.Semaphore", "limiter": "Limiter (FIFO)",
                "chain": "ToolCallChain (PFQ+BP+CL)"}


def evaluate_targets(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's measured value, bound and whether it was met."""
    waiters = result["waiters"]
    lag = result["loop_lag"]["ratios"]
    values = {
        "uncontended_chain_vs_aiolimiter": result["uncontended"]["chain_vs_aiolimiter"],
        "uncontended_chain_vs_semaphore": result["uncontended"]["chain_vs_semaphore"],
        "registry_limited_vs_aiolimiter": result["registry"]["limited_vs_aiolimiter"],
        "contended_chain_vs_semaphore": result["contended"]["chain_vs_semaphore"],
        "waiters_growth_limiter": waiters["limiter"]["growth"],
        "waiters_growth_chain": waiters["chain"]["growth"],
        "waiter_bytes_limiter": waiters["limiter"]["bytes_per_waiter"],
        "lag_drain_vs_semaphore": lag["drain"],
        "lag_stall_vs_semaphore": lag["stall"],
        "lag_cancel_vs_semaphore": lag["cancel"],
        "lag_cancel_stall_vs_semaphore": lag["cancel_stall"],
    }
    return {
        name: {"description": TARGETS[name][0], "value": value, "target": TARGETS[name][1],
               "met": bool(value <= TARGETS[name][1])}
        for name, value in values.items()
    }


def _registry_lines(reg: Mapping[str, Any]) -> list[str]:
    from .core_registry import REGISTRY_ROWS

    lines = [f"(d) registry path, {reg['calls']} calls (fresh action + ctx per call; "
             "4-interceptor chain)",
             _row("", "µs/call", "overhead µs")]
    for key, label in REGISTRY_ROWS.items():
        over = reg["overhead_us"].get(key)
        lines.append(_row(label, f"{reg['us_per_call'][key]:.2f}",
                          "" if over is None else f"{over:.2f}"))
    lines.append(_row("limited / aiolimiter (paired)", "",
                      f"{reg['limited_vs_aiolimiter']:.2f}"))
    lines.append("")
    return lines


def _lag_lines(lag: Mapping[str, Any]) -> list[str]:
    lines = [f"(e) event-loop lag: {lag['waiters']} waiters behind a cap of {lag['cap']}, "
             f"{lag['hold_ms']:g} ms holds, medians of {lag['repeats']}",
             _row("", "drain s", "stall ms", "cancel s", "cancel stall")]
    for key, label in (("semaphore", "asyncio.Semaphore"),
                       ("chain", "ToolCallChain (BP+PFQ+CL)")):
        e = lag[key]
        lines.append(_row(label, f"{e['drain_s']:.3f}", f"{e['drain_lag_max_ms']:.1f}",
                          f"{e['cancel_s']:.3f}", f"{e['cancel_lag_max_ms']:.1f}"))
    r = lag["ratios"]
    lines.append(_row("chain / semaphore", f"{r['drain']:.2f}", f"{r['stall']:.2f}",
                      f"{r['cancel']:.2f}", f"{r['cancel_stall']:.2f}"))
    lines.append("")
    return lines


def _row(label: str, *cells: str, width: int = 34) -> str:
    return f"  {label:<{width}}" + "".join(f"{c:>15}" for c in cells)


def format_core_table(result: Mapping[str, Any]) -> str:
    """Render :func:`~stageflow_plus.bench.core.run_core_bench`'s result for people."""
    settings = result.get("settings", {})
    machine = result.get("machine", {})
    lines = [
        f"stageflow-plus core benchmark — medians of {settings.get('repeats', '?')} repeats, "
        f"Python {machine.get('python', '?')}, {machine.get('cpus', '?')} CPUs, "
        f"load {machine.get('loadavg', '?')}",
        f"core: {machine.get('core', '?')}",
        "",
    ]
    unc = result["uncontended"]
    lines.append(f"(a) uncontended, {unc['calls']} calls")
    lines.append(_row("", "µs/call", "× semaphore"))
    sem = unc["us_per_call"]["semaphore"]
    for key, label in UNCONTENDED_ROWS.items():
        us = unc["us_per_call"][key]
        lines.append(_row(label, f"{us:.2f}", f"{us / sem:.2f}"))
    lines.append(_row("chain / aiolimiter (paired)", "", f"{unc['chain_vs_aiolimiter']:.2f}"))
    lines.append(_row("chain / semaphore (paired)", "", f"{unc['chain_vs_semaphore']:.2f}"))
    lines.append(_row("chain / bare (paired)", "", f"{unc['chain_vs_bare']:.2f}"))
    lines.append("")

    con = result["contended"]
    lines.append(f"(b) contended, {con['tasks']} tasks through a limit of {con['limit']}"
                 + (f", medians of {con['repeats']} repeats" if "repeats" in con else ""))
    lines.append(_row("", "µs/task", "× semaphore"))
    csem = con["us_per_task"]["semaphore"]
    for key, label in (("bare", "no limit (tasks + tool only)"),
                       ("semaphore", "asyncio.Semaphore"),
                       ("chain", "ToolCallChain (CL+PFQ+BP)")):
        us = con["us_per_task"][key]
        lines.append(_row(label, f"{us:.2f}", f"{us / csem:.2f}"))
    lines.append(_row("chain / semaphore (paired)", "", f"{con['chain_vs_semaphore']:.2f}"))
    lines.append("")

    wai = result["waiters"]
    small, large = wai["n_small"], wai["n_large"]
    lines.append(f"(c) waiters behind a held limit of 1: N = {small} vs {large}; memory at "
                 f"N = {wai['memory_n']} beyond a task awaiting a future "
                 f"({wai['future_task_bytes']:.0f} B)")
    lines.append(_row("", f"µs/w N={small}", f"µs/w N={large}", "growth", "B/waiter"))
    for key, label in _WAITER_ROWS.items():
        entry = wai[key]
        lines.append(_row(label, f"{entry[f'n{small}']['us_per_waiter']:.2f}",
                          f"{entry[f'n{large}']['us_per_waiter']:.2f}",
                          f"{entry['growth']:.2f}", f"{entry['bytes_per_waiter']:.0f}"))
    for key, label in _WAITER_ROWS.items():
        for n in (small, large):
            e = wai[key][f"n{n}"]
            lines.append(_row(f"  {label} N={n}", f"enq {e['enqueue_us']:.2f}",
                              f"disp {e['dispatch_us']:.2f}"))
    lines.append("")

    lines.extend(_registry_lines(result["registry"]))
    lines.extend(_lag_lines(result["loop_lag"]))
    lines.append("targets")
    for name, t in result.get("targets", {}).items():
        mark = "met" if t["met"] else "MISSED"
        lines.append(_row(t.get("description", name), f"{t['value']:.2f}",
                          f"≤ {t['target']:g}", mark, width=46))
    return "\n".join(lines)
