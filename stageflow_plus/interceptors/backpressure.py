"""Backpressure: bounded queues, deadline-aware admission and load shedding.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from ..primitives.admission import AdmissionPolicy, Shedding
from .gate import AdmissionGate, LimitPart

__all__ = ["Backpressure"]


class Backpressure(LimitPart):
    """Bounds the queue and refuses early, with typed errors, instead of piling up.

    :param max_queue: most calls waiting in total; beyond it the ``shedding`` policy applies.
    :param max_queue_per_key: most calls waiting on one limit key (a tool, a run, a bucket).
    :param shedding: ``"reject_new"`` (default; the newcomer gets ``QueueFull``),
        ``"evict_lowest_priority"`` (the least urgent waiter gets ``Evicted`` when the
        newcomer is more urgent) or ``"evict_oldest"``.
    :param deadline_aware: refuse at once with ``DeadlineUnmeetable`` when the estimated
        wait exceeds the call's remaining deadline (``call.deadline``).
    :param max_wait: longest any call may queue (seconds) before ``WaitTimeout``.

    The wait estimate is conservative: it assumes every call already queued on the same
    limits goes first (rate buckets: queued cost over the refill rate; concurrency: rounds of
    the moving-average service time).
    """

    __slots__ = ("policy",)

    def __init__(
        self,
        *,
        max_queue: int | None = None,
        max_queue_per_key: int | None = None,
        shedding: Shedding | str = Shedding.REJECT_NEW,
        deadline_aware: bool = True,
        max_wait: float | None = None,
    ) -> None:
        super().__init__()
        self.policy = AdmissionPolicy(
            max_queue=max_queue,
            max_queue_per_key=max_queue_per_key,
            shedding=shedding,  # type: ignore[arg-type]  # validated and converted
            deadline_aware=deadline_aware,
            max_wait=max_wait,
        )

    def configure(self, gate: AdmissionGate) -> None:
        gate.admission = self.policy

    def __repr__(self) -> str:
        p = self.policy
        return (
            f"Backpressure(max_queue={p.max_queue}, max_queue_per_key={p.max_queue_per_key}, "
            f"shedding={p.shedding.value!r}, max_wait={p.max_wait})"
        )
