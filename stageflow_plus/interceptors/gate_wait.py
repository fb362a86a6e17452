"""A queued call's wait, in a plain Python frame (this module is never compiled).

:class:`~stageflow_plus.interceptors.gate.AdmissionGate` runs a call that finds others
already queued through :func:`admit_then_run` instead of its compiled coroutine. Both do
the same thing; they differ in what a *cancelled* waiter costs. An exception leaving a
mypyc-compiled frame gets a synthetic frame, a function and a traceback entry per compiled
line it passes (and a caught-and-re-raised one passes two), all objects the cycle collector
tracks; 50 000 waiters cancelled at once then allocate enough to set off collections over
the whole (large) heap, and the loop stalls. A Python frame adds one frame and one entry,
as ``asyncio.Semaphore``'s own frames do. The decisions (admission, observers, release)
stay in compiled code; only the waiting and the unwinding happen here.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from asyncio import CancelledError
from typing import TYPE_CHECKING, Any

from ..primitives.waiter import Waiter

if TYPE_CHECKING:
    from ..primitives.lease import Lease
    from .call import Proceed, ToolCall
    from .gate import AdmissionGate

__all__ = ["admit_then_run"]


async def admit_then_run(gate: AdmissionGate, call: ToolCall, proceed: Proceed) -> Any:
    """``gate(call, proceed)`` for a call that will most likely queue (see the module)."""
    # admission happens in this coroutine's first step, never when it is created: a
    # coroutine that is never run (a task cancelled before it started) holds nothing
    admitted = gate._admit(call)
    if type(admitted) is Waiter:
        try:
            lease: Lease = await admitted.future
        except CancelledError:
            gate.limiter.abandon(admitted)  # leaves the queue or gives the grant back
            raise
    else:
        lease = admitted  # type: ignore[assignment]  # (a Lease: admitted at once)
    try:
        result = await proceed(call)
    except Exception as error:
        gate._settle(call, lease, error, True)
        raise  # the tool's own error, whatever an observer did
    except BaseException:
        lease.release()  # cancelled while running: permits come back
        raise
    gate._settle(call, lease, result, False)
    return result
