"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed).

* ``waits_<workload>.png`` — queue wait against time, one panel per strategy, coloured by
  priority.
* ``throughput_<workload>.png`` — completed calls per second against time for every
  strategy, with the provider's sustainable limit as a line.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .metrics import CallRecord
from .provider import ProviderLimits

__all__ = ["write_plots"]

_COLOURS = {0: "tab:red", 1: "tab:orange", 2: "tab:blue", 3: "tab:green"}


def write_plots(
    records: Mapping[str, Mapping[str, Sequence[CallRecord]]],
    result: Mapping[str, Any],
    limits: ProviderLimits,
    directory: str,
) -> list[Path]:
    """Write the plots of every workload into ``directory``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for workload, by_strategy in records.items():
        written.append(_waits(workload, by_strategy, out))
        mean_tokens = float(result["workloads"][workload]["mean_tokens"])
        written.append(_throughput(workload, by_strategy, limits, mean_tokens, out))
    return written


def _waits(workload: str, by_strategy: Mapping[str, Sequence[CallRecord]], out: Path) -> Path:
    import matplotlib.pyplot as plt

    names = list(by_strategy)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.2 * len(names)), sharex=True,
                             squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        for priority in sorted({r.spec.priority for r in by_strategy[name]}):
            points = [(r.made, r.wait * 1000) for r in by_strategy[name]
                      if r.status == "ok" and r.spec.priority == priority and r.wait is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, s=4, color=_COLOURS.get(priority, "grey"),
                           label=f"P{priority}")
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_ylabel("wait ms")
        ax.legend(fontsize=7, loc="upper left", markerscale=2)
    axes[-1, 0].set_xlabel("call made at (s)")
    fig.suptitle(f"{workload}: queue wait of completed calls by priority")
    fig.tight_layout()
    path = out / f"waits_{workload}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput(
    workload: str,
    by_strategy: Mapping[str, Sequence[CallRecord]],
    limits: ProviderLimits,
    mean_tokens: float,
    out: Path,
) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    bin_s = 0.5
    horizon = 0.0
    for name, recs in by_strategy.items():
        ends = [r.done for r in recs if r.status == "ok" and r.done is not None]
        if not ends:
            continue
        horizon = max(horizon, max(ends))
        bins = [0] * (math.ceil(max(ends) / bin_s) + 1)
        for end in ends:
            bins[int(end / bin_s)] += 1
        ax.plot([i * bin_s for i in range(len(bins))], [n / bin_s for n in bins], label=name,
                drawstyle="steps-post", linewidth=1.2)
    limit = limits.max_calls_per_second(mean_tokens)
    ax.axhline(limit, color="black", linestyle="--", linewidth=1,
               label=f"provider limit {limit:.1f}/s")
    ax.set_xlim(0, horizon + bin_s)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("completed calls / s")
    ax.set_title(f"{workload}: throughput against the provider's limit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"throughput_{workload}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
