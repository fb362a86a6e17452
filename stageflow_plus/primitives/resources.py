"""The two kinds of capacity a call can need: concurrency permits and rate tokens.

A :class:`ConcurrencyPool` holds permits that come back when the call ends. A
:class:`TokenBucket` holds tokens that refill at a rate and are spent for good. Both are
plain state plus arithmetic; the waiting is done by :class:`~stageflow_plus.primitives.
limiter.Limiter`, which asks them ``available`` / ``take`` / ``ready_at``.

Token bucket guarantee: with capacity ``burst`` and refill ``rate``, in any interval of
length ``t`` a bucket admits at most ``burst + rate * t`` units (the bucket never holds more
than ``burst``, and refunds never lift it above ``burst``).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from typing import ClassVar

from mypy_extensions import mypyc_attr

from .rate import Rate

__all__ = ["ConcurrencyPool", "Rate", "Resource", "TokenBucket"]

# Float slack so that a bucket refilled to exactly ``amount`` at ``ready_at`` is available.
_EPSILON = 1e-9


@mypyc_attr(allow_interpreted_subclasses=True)
class Resource:
    """What a :class:`~stageflow_plus.primitives.limiter.Limiter` needs from a capacity.

    The limiter keeps ``queued`` (waiters needing this resource), ``queued_amount`` (their
    total demand) and ``holders`` (granted leases not yet released that include it) up to
    date; subclasses implement the arithmetic. A resource with no holder and nobody queued
    is idle: its owner may drop it (see :mod:`~stageflow_plus.primitives.idle`).
    """

    __slots__ = ("holders", "key", "queued", "queued_amount")

    #: the smallest amount a waiter can need: a resource that cannot grant it grants nobody
    unit: ClassVar[float] = 1e-9  # (a ClassVar: compiled code then sees subclasses' values)

    def __init__(self, key: str) -> None:
        self.key = key
        self.queued = 0  # invariant: number of queued waiters whose demands include self
        self.queued_amount = 0.0  # invariant: sum of those waiters' amounts on self
        self.holders = 0  # invariant: granted, unreleased leases whose demands include self

    def max_amount(self) -> float:
        """The largest amount this resource can ever grant at once."""
        raise NotImplementedError

    def available(self, amount: float, now: float) -> bool:
        """Whether ``amount`` can be taken now."""
        raise NotImplementedError

    def take(self, amount: float, now: float) -> None:
        """Take ``amount``; the caller checked :meth:`available` first."""
        raise NotImplementedError

    def try_take(self, amount: float, now: float) -> bool:
        """Take ``amount`` if available (one call on the hot path); undo with :meth:`refund`."""
        if self.available(amount, now):
            self.take(amount, now)
            return True
        return False

    def ready_at(self, amount: float, now: float) -> float:
        """Earliest time ``amount`` may be available; ``inf`` if only a release can free it."""
        raise NotImplementedError

    def release(self, amount: float, now: float, held_for: float) -> None:
        """The call that took ``amount`` ended after ``held_for`` seconds."""
        raise NotImplementedError

    def refund(self, amount: float, now: float) -> None:
        """Give back ``amount`` that was taken for a call that never ran."""
        raise NotImplementedError

    def estimate_wait(self, amount: float, now: float) -> float:
        """Seconds a newcomer asking ``amount`` may wait, assuming all queued go first."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class ConcurrencyPool(Resource):
    """Permits for calls in flight; a permit returns when its call ends.

    ``capacity`` may be changed at any time: raising it lets waiters in at the next dispatch;
    lowering it lets current holders finish normally and admits nobody until ``in_use`` is
    below the new capacity.
    """

    __slots__ = ("_capacity", "_observed", "in_use", "service_time")

    unit = 1.0  # permits are whole: a demand below 1 needs none (and is dropped when queued)

    def __init__(self, key: str, capacity: int, *, service_time: float = 0.0) -> None:
        super().__init__(key)
        self._capacity = _check_capacity(capacity, key)
        self.in_use = 0  # invariant: 0 <= in_use; in_use <= capacity except after a decrease
        self.service_time = service_time  # moving average of how long a permit is held
        self._observed = service_time > 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = _check_capacity(value, self.key)

    def max_amount(self) -> float:
        return float(self._capacity)

    def available(self, amount: float, now: float) -> bool:
        return self.in_use + amount <= self._capacity

    def take(self, amount: float, now: float) -> None:
        self.in_use += int(amount)

    def try_take(self, amount: float, now: float) -> bool:
        if self.in_use + amount <= self._capacity:
            self.in_use += int(amount)
            return True
        return False

    def ready_at(self, amount: float, now: float) -> float:
        return math.inf

    def release(self, amount: float, now: float, held_for: float) -> None:
        self.in_use -= int(amount)
        assert self.in_use >= 0, f"{self.key}: released more permits than taken"
        # exponential moving average, weight 1/8 for the newest observation; the first
        # observation seeds it (an average starting from 0 would underestimate for long)
        if self._observed:
            self.service_time += (held_for - self.service_time) * 0.125
        else:
            self.service_time = held_for
            self._observed = True

    def refund(self, amount: float, now: float) -> None:
        self.in_use -= int(amount)
        assert self.in_use >= 0, f"{self.key}: refunded more permits than taken"

    def estimate_wait(self, amount: float, now: float) -> float:
        excess = self.in_use + self.queued_amount + amount - self._capacity
        if excess <= 0:
            return 0.0
        return math.ceil(excess / self._capacity) * self.service_time

    def __repr__(self) -> str:
        return f"<ConcurrencyPool {self.key} {self.in_use}/{self._capacity}, {self.queued} waiting>"


@mypyc_attr(allow_interpreted_subclasses=True)
class TokenBucket(Resource):
    """A token bucket: ``rate`` tokens per second up to ``burst``; may go into debt.

    Debt (negative tokens) arises when a call's actual cost, reported after the call through
    :meth:`charge`, exceeds its estimate: the next admissions then wait until it is repaid.
    :meth:`pause` stops the bucket for everybody until a time (a provider's ``Retry-After``).
    """

    __slots__ = ("burst", "dimension", "paused_until", "rate", "tokens", "updated")

    def __init__(self, key: str, rate: Rate, now: float) -> None:
        super().__init__(key)
        self.rate = rate.rate
        self.burst = rate.capacity
        self.dimension = rate.dimension
        self.tokens = self.burst if rate.start_full else 0.0  # invariant: tokens <= burst
        self.updated = now
        self.paused_until = -math.inf

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (negative while in debt)."""
        self._refill(now)
        return self.tokens

    def max_amount(self) -> float:
        return self.burst

    def available(self, amount: float, now: float) -> bool:
        if now < self.paused_until:
            return False
        if now > self.updated:  # _refill, inlined: the hot path
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        return self.tokens + _EPSILON >= amount

    def take(self, amount: float, now: float) -> None:
        if now > self.updated:
            self._refill(now)
        self.tokens -= amount

    def try_take(self, amount: float, now: float) -> bool:
        if now < self.paused_until:
            return False
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens + _EPSILON >= amount:
            self.tokens -= amount
            return True
        return False

    def ready_at(self, amount: float, now: float) -> float:
        self._refill(now)
        deficit = amount - self.tokens
        if deficit <= _EPSILON:  # available() takes it now (with the same tolerance)
            return max(now, self.paused_until)
        # When available() first says yes, to within rounding — not the exact refill, which
        # it admits _EPSILON earlier: a timer armed for the exact one could fire after a
        # dispatch that already admits (a lost wake-up, found by the chain's properties).
        # Aimed a few ulps of tokens past that instant, so its rounding cannot fall short.
        margin = 4.0 * math.ulp(max(self.burst, amount))
        refill_at = now + (deficit - _EPSILON + margin) / self.rate
        for _ in range(4):
            # rounding ``now + ...`` at a large clock value can still land short of it (at
            # 1e5 s and 1000/s, 0.5 tokens come 5e-9 short), and a tiny deficit then gives
            # ``now`` itself: the limiter's timer would fire, find the bucket still short,
            # and re-arm for the same instant — forever on a virtual clock. The next
            # representable time after that is always enough.
            if self._admits_at(amount, refill_at):
                break
            refill_at = math.nextafter(refill_at, math.inf)
        return max(refill_at, self.paused_until)

    def _admits_at(self, amount: float, at: float) -> bool:
        """What :meth:`available` would answer at ``at`` (later than the last refill, no
        pause), computed without refilling."""
        return min(self.burst, self.tokens + (at - self.updated) * self.rate) + _EPSILON >= amount

    def release(self, amount: float, now: float, held_for: float) -> None:
        """Tokens are spent: nothing returns when a call ends."""

    def refund(self, amount: float, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.burst, self.tokens + amount)

    def charge(self, delta: float, now: float) -> None:
        """Correct an estimate after the fact: ``delta > 0`` takes more, ``< 0`` refunds."""
        if delta >= 0:
            self.take(delta, now)
        else:
            self.refund(-delta, now)

    def pause(self, until: float) -> None:
        """Admit nothing from this bucket before ``until`` (keeps the later of two pauses)."""
        self.paused_until = max(self.paused_until, until)

    def set_rate(self, rate: Rate, now: float) -> None:
        """Change rate and burst in place; current tokens are clipped to the new burst."""
        self._refill(now)
        self.rate = rate.rate
        self.burst = rate.capacity
        self.tokens = min(self.tokens, self.burst)

    def estimate_wait(self, amount: float, now: float) -> float:
        return max(0.0, self.ready_at(self.queued_amount + amount, now) - now)

    def __repr__(self) -> str:
        return (
            f"<TokenBucket {self.key} {self.tokens:.3g}/{self.burst:.3g} at {self.rate:.3g}/s, "
            f"{self.queued} waiting>"
        )


def _check_capacity(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"capacity of {key!r} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"capacity of {key!r} must be >= 1, got {value}")
    return value
