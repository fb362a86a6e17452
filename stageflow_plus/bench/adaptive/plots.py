"""PNG plots of the adaptive benchmark (matplotlib, Agg backend: no display needed).

``adaptive_<workload>.png`` — top: every strategy's concurrency limit over time with the
provider's capacity; bottom: the p99 latency of admitted calls per half-second against the
no-load median and 1.5x the no-load p99 (the ``adaptive_overload`` bound).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from .run import Run

__all__ = ["write_adaptive_plots"]

_COLOURS = {"adaptive": "tab:green", "fixed_low": "tab:grey", "fixed_high": "tab:red",
            "aimd": "tab:orange", "vegas": "tab:blue"}
_BIN = 0.5


def _p99_by_bin(run: Run) -> tuple[list[float], list[float]]:
    bins: dict[int, list[float]] = {}
    for call in run.calls:
        if call[5] == "ok" and not math.isnan(call[2]):
            bins.setdefault(int(call[2] / _BIN), []).append((call[3] - call[2]) * 1000)
    xs, ys = [], []
    for key in sorted(bins):
        values = sorted(bins[key])
        xs.append((key + 0.5) * _BIN)
        ys.append(values[max(0, math.ceil(0.99 * len(values)) - 1)])
    return xs, ys


def write_adaptive_plots(runs: Mapping[str, Mapping[str, Run]], noload_ms: float,
                         noload_p99_ms: float, directory: str) -> list[Path]:
    """Write one PNG per workload (``noload`` excluded); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for workload, by_strategy in runs.items():
        if workload == "noload":
            continue
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        capacity_drawn = False
        for strategy, run in by_strategy.items():
            ts = [t for t, _, _ in run.timeline]
            top.step(ts, [limit for _, limit, _ in run.timeline], where="post",
                     color=_COLOURS.get(strategy), label=strategy, linewidth=1.2)
            if not capacity_drawn:
                top.step(ts, [cap for _, _, cap in run.timeline], where="post",
                         color="black", linestyle="--", label="capacity", linewidth=1.5)
                capacity_drawn = True
            xs, ys = _p99_by_bin(run)
            bottom.plot(xs, ys, color=_COLOURS.get(strategy), label=strategy, linewidth=1.0)
        bottom.axhline(noload_ms, color="black", linestyle="--", linewidth=1.0,
                       label="no-load p50")
        bottom.axhline(1.5 * noload_p99_ms, color="black", linestyle=":", linewidth=1.0,
                       label="1.5x no-load p99")
        top.set_ylabel("concurrency limit")
        top.set_title(f"{workload}: limit and latency over time", fontsize=10, loc="left")
        top.legend(fontsize=7, ncol=3, loc="upper right")
        bottom.set_ylabel("p99 latency, ms (per 0.5 s)")
        bottom.set_xlabel("seconds")
        bottom.set_yscale("log")
        bottom.legend(fontsize=7, ncol=3, loc="upper right")
        fig.tight_layout()
        path = out / f"adaptive_{workload}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
