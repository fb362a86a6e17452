"""RedisLease: the global permits held by one call.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .records import GlobalBucket

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["RedisLease"]


class RedisLease:
    """Global permits held by one call; :meth:`release` once (idempotent).

    :ivar member: the lease id in the concurrency ZSETs.
    :ivar pools: the concurrency ZSET keys (with prefix).
    :ivar buckets: the buckets drawn from, with the amounts taken.
    :ivar granted_at: the grant's time on the Redis server's clock (Unix seconds).
    :ivar waited: seconds spent in the global queue (0 for an immediate grant).
    :ivar degraded: ``True`` when Redis was unreachable and the policy let the call proceed
        without global permits (``fail_open``) or on this process's share (``degrade``).
    """

    __slots__ = ("_backend", "_local", "buckets", "degraded", "granted_at", "member", "pools",
                 "released", "waited")

    def __init__(self, backend: RedisBackend, member: str, pools: Sequence[str],
                 buckets: Sequence[GlobalBucket], *, granted_at: float = 0.0,
                 waited: float = 0.0, degraded: bool = False, local: Any = None) -> None:
        self._backend = backend
        self._local = local  # the in-process lease of a degraded call
        self.granted_at = granted_at
        self.member = member
        self.pools = tuple(pools)
        self.buckets = tuple(buckets)
        self.waited = waited
        self.degraded = degraded
        self.released = False

    async def release(self, actual: dict[str, float] | None = None) -> None:
        """Return the concurrency permits and reconcile token costs (one round trip).

        :param actual: the actual cost per dimension, e.g. ``{"tokens": 812}``; a bucket of
            that dimension is charged the difference to its estimate (refunded when lower).

        Never raises for Redis trouble: a lease that cannot be released expires after the
        TTL. Cancellation during the round trip leaves that to the TTL as well.
        """
        if self.released:
            return
        self.released = True
        if self._local is not None:  # admitted on this process's share (degrade)
            self._local.release()
            backend = self._backend
            backend._degraded.pop(self.member, None)
            if self.member in backend._held:  # counted in Redis again since it came back
                await backend._release(self, actual or {})
            return
        if not self.degraded:
            await self._backend._release(self, actual or {})

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        kind = " degraded" if self.degraded else ""
        return f"<RedisLease {self.member}{kind} {state} pools={len(self.pools)}>"
