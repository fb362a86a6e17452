"""The adaptive concurrency benchmark: workloads, baselines, the provider process, report.

.. versionadded:: 0.2.0
"""

from .suite import run_adaptive_bench

__all__ = ["run_adaptive_bench"]
