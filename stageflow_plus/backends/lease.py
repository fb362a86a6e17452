"""RedisLease: the global permits held by one call.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .redis import RedisBackend
    from .scripts import Plan

__all__ = ["RedisLease"]


class RedisLease:
    """Global permits held by one call; :meth:`release` or :meth:`release_nowait` once
    (idempotent).

    :ivar member: the lease id in the concurrency ZSETs.
    :ivar plan: what the call needed (pools, buckets, pauses), ``None`` for ``fail_open``.
    :ivar amounts: the units taken from each bucket of the plan (as sent).
    :ivar granted_at: the grant's time on the Redis server's clock (Unix seconds).
    :ivar waited: seconds spent in the global queue (0 for an immediate grant).
    :ivar via_mailbox: the grant was pushed to this process's mailbox (it waited).
    :ivar degraded: ``True`` when Redis was unreachable and the policy let the call proceed
        without global permits (``fail_open``) or on this process's share (``degrade``).
    """

    __slots__ = ("_backend", "_local", "amounts", "degraded", "granted_at", "member", "plan",
                 "released", "via_mailbox", "waited")

    def __init__(self, backend: RedisBackend, member: str, plan: Plan | None, *,
                 amounts: Sequence[str] = (), granted_at: float = 0.0, waited: float = 0.0,
                 via_mailbox: bool = False, degraded: bool = False, local: Any = None) -> None:
        self._backend = backend
        self._local = local  # the in-process lease of a degraded call
        self.member = member
        self.plan = plan
        self.amounts = tuple(amounts)
        self.granted_at = granted_at
        self.waited = waited
        self.via_mailbox = via_mailbox
        self.degraded = degraded
        self.released = False

    @property
    def pools(self) -> tuple[str, ...]:
        """The concurrency ZSET keys (with prefix)."""
        return () if self.plan is None else self.plan.pool_keys

    def release_nowait(self, actual: dict[str, float] | None = None) -> None:
        """Give the permits back without waiting: the release is written at the next turn
        of the loop, before any later command of this process (pipelined), so a later
        acquire of this process sees it. Its answer is handled in the background; a
        release that fails is retried until Redis answers (the TTL is the last resort).

        :param actual: the actual cost per dimension, e.g. ``{"tokens": 812}``; a bucket of
            that dimension is charged the difference to its estimate (refunded when lower).
        """
        if self._begin(actual):
            self._backend._permits.release_nowait(self, actual or {})

    async def release(self, actual: dict[str, float] | None = None) -> None:
        """Give the permits back and wait until Redis has them (one round trip). Never
        raises for Redis trouble: a release that fails is retried in the background.
        Cancellation while waiting leaves the release on its way."""
        if self._begin(actual):
            await self._backend._permits.release(self, actual or {})

    def _begin(self, actual: dict[str, float] | None) -> bool:
        """Mark released; ``True`` if Redis must be told."""
        if self.released:
            return False
        self.released = True
        backend = self._backend
        if self._local is not None:  # admitted on this process's share (degrade)
            self._local.release()
            backend._outage.degraded.pop(self.member, None)
            return self.member in backend._held  # counted in Redis again since it came back
        return not self.degraded

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        kind = " degraded" if self.degraded else ""
        return f"<RedisLease {self.member}{kind} {state} pools={len(self.pools)}>"
