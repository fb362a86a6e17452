"""Leases (proof of admission) and the listener protocol of the limiter.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError, Rejected
from .resources import TokenBucket
from .waiter import Demand

if TYPE_CHECKING:
    from .limiter import Limiter

__all__ = ["Lease", "LimiterListener"]

_MAX_FLOAT = sys.float_info.max


def _of(info: Any) -> str:
    """`` of tool 'x'`` when ``info`` is a call with a tool name, else nothing."""
    tool = getattr(info, "tool", None)
    return f" of tool {tool!r}" if isinstance(tool, str) else ""


class LimiterListener(Protocol):
    """Receives the limiter's life events (all synchronous; keep them cheap).

    ``info`` is whatever the caller passed to ``acquire(info=...)`` (e.g. a ToolCall).

    A listener may set an attribute ``immediate_events = False`` (absent means ``True``):
    the limiter then skips :meth:`on_admitted` for calls admitted without waiting and
    :meth:`on_released` for their leases — the hot path pays for no event nobody reads.

    Optional methods, looked up when needed: ``on_paused(key, retry_after)`` (a provider
    paused a rate key) and ``on_observer_error(info, hook, error)`` (an interceptor's
    ``after_result`` / ``after_error`` hook raised, e.g. a failing ``actual_cost``; the
    tool's outcome was kept, ``hook`` names the interceptor and the hook).
    """

    def on_queued(self, info: Any, depth: int) -> None: ...
    def on_admitted(self, info: Any, wait: float) -> None: ...
    def on_rejected(self, info: Any, error: Rejected) -> None: ...
    def on_released(self, info: Any, held: float) -> None: ...


class Lease:
    """Proof of admission; give it back with :meth:`release` (idempotent).

    A refused ``try_acquire`` returns a lease that is falsy (``granted`` is ``False``) and
    carries ``retry_after`` and the ``error`` that explains the refusal.

    :ivar granted: whether the demands were granted.
    :ivar waited: seconds spent in the queue.
    :ivar queued: whether the call waited in the queue (even for 0 s) before its grant.
    :ivar retry_after: for a refusal, seconds after which retrying may succeed.
    :ivar error: for a refusal, the :class:`Rejected` describing it.
    """

    __slots__ = (
        "_limiter",
        "acquired_at",
        "demands",
        "error",
        "granted",
        "info",
        "queued",
        "released",
        "retry_after",
        "waited",
    )

    def __init__(
        self,
        limiter: Limiter,
        demands: Sequence[Demand],
        acquired_at: float,
        waited: float,
        info: Any = None,
        *,
        error: Rejected | None = None,
    ) -> None:
        self._limiter = limiter
        self.demands = demands  # never mutated here: adjust() replaces it
        self.acquired_at = acquired_at
        self.waited = waited
        self.info = info
        self.error = error
        self.granted = error is None
        self.retry_after = error.retry_after if error is not None else None
        self.released = not self.granted
        self.queued = False  # granted through the queue (set by the limiter)

    def __bool__(self) -> bool:
        return self.granted

    def release(self) -> None:
        """Return the permits (tokens stay spent). Safe to call more than once."""
        if not self.released:
            self.released = True
            self._limiter._release(self, False)

    def release_unused(self) -> None:
        """Return permits *and* refund tokens: the call never reached the downstream."""
        if not self.released:
            self.released = True
            self._limiter._release(self, True)

    def adjust(self, actual: Mapping[str, float]) -> None:
        """Reconcile estimated with actual cost, per dimension (e.g. ``{"tokens": 812}``).

        Buckets of that dimension are charged the difference (refunded when the actual cost
        is lower), so the next admissions see it. Dimensions no bucket of the lease uses are
        ignored. A value that is not a finite number >= 0 (NaN, an infinity, a negative, a
        string, a ``bool``), or ``actual`` not a mapping, raises :class:`ConfigError` naming
        the entry, and nothing is charged (the estimate stays). An actual cost above the
        estimate may put a bucket into debt (even beyond its burst): the next admissions
        wait until it is repaid. Adjust before releasing the lease: an idle bucket may be
        dropped.
        """
        given: Any = actual  # (untyped: compiled code would trust the declared float values)
        if not isinstance(given, Mapping):
            raise ConfigError(
                f"actual cost{_of(self.info)} must be a mapping of cost names to numbers, "
                f"got {type(given).__name__}"
            )
        for name, value in given.items():
            kind = type(value)
            if (kind is not float and kind is not int) or not 0.0 <= value <= _MAX_FLOAT:
                raise ConfigError(
                    f"actual cost {name!r}{_of(self.info)} must be a finite number >= 0, got "
                    f"{kind.__name__} {repr(value)[:60]}"
                )
        demands = list(self.demands)
        charges: list[tuple[int, TokenBucket, float]] = []
        for i, (resource, _) in enumerate(demands):
            if isinstance(resource, TokenBucket) and resource.dimension in given:
                charges.append((i, resource, float(given[resource.dimension])))
        now = self._limiter.clock.now()
        for i, bucket, new_amount in charges:
            bucket.charge(new_amount - demands[i][1], now)
            demands[i] = (bucket, new_amount)
        if charges:
            self.demands = demands
            self._limiter._dispatch()  # a charge or refund changes no capacity

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        if not self.granted:
            return f"<Lease refused retry_after={self.retry_after!r}>"
        state = "released" if self.released else "held"
        return f"<Lease {state} demands={len(self.demands)} waited={self.waited:.6f}s>"
