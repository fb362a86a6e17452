"""TokenBucketRateLimiter: request and cost-weighted buckets per key, provider pauses.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..llm.answers import default_retry_after
from ..primitives.errors import ConfigError, Rejected
from ..primitives.idle import sweep_idle
from ..primitives.lease import Lease
from ..primitives.resources import Rate, Resource, TokenBucket
from ..primitives.stats import BucketStatistics
from .call import ToolCall, check_cost
from .gate import LimitPart
from .pause import DEFAULT_MAX_PAUSE, check_seconds

logger = logging.getLogger("stageflow_plus")

__all__ = ["TokenBucketRateLimiter", "default_retry_after"]


def _bucket_idle(bucket: TokenBucket, now: float) -> bool:
    """Re-creating ``bucket`` would change nothing: nobody holds or awaits it, it is not
    paused and it is full again."""
    return (
        not bucket.holders
        and not bucket.queued
        and bucket.paused_until <= now
        and bucket.level(now) >= bucket.burst
    )

KEYS: dict[str, Callable[[ToolCall], str]] = {
    "global": lambda call: "*",
    "tool": lambda call: call.tool,
    "tenant": lambda call: call.tenant,
}


class TokenBucketRateLimiter(LimitPart):
    """Rate limits per key: several buckets checked together (e.g. RPM and TPM).

    :param rates: the :class:`~stageflow_plus.primitives.resources.Rate` s of every key —
        a ``Rate(dimension="requests")`` costs 1 per call, a ``Rate(dimension="tokens")``
        costs ``call.cost["tokens"]`` (0 when the call gives no estimate).
    :param key: what the buckets are per: ``"global"`` (default: one set of buckets for
        every call, which is what a provider's quota is), ``"tool"``, ``"tenant"``, or a
        function of the call (e.g. the provider or model name).
    :param per_key_rates: different rates for particular keys.
    :param actual_cost: reads the actual cost from a tool result (e.g. the tokens a provider
        billed); the difference to the estimate is charged or refunded at once, so the next
        admissions reflect it. It returns a mapping of finite numbers >= 0, or ``None`` (no
        correction). When it raises or returns anything else, the tool's result is still
        returned, the estimate stays charged, and the failure is logged (logger
        ``stageflow_plus``, WARNING) and sent to the listener's ``on_observer_error``.
    :param retry_after: finds a provider's ``Retry-After`` in a result or exception (e.g.
        :func:`default_retry_after`) and pauses *this limiter's* buckets of the call's key.
        Off by default: the chain's :class:`~stageflow_plus.interceptors.pause.ProviderPause`
        pauses every caller on its own key, whatever limiters the chain holds.
    :param max_pause: the longest pause of :meth:`pause`, in seconds (default 60).

    Burst: a bucket holds at most ``burst`` units (default: one period's ``limit``) and
    starts full unless ``Rate(start_full=False)``; in any interval of length ``t`` it admits
    at most ``burst + rate * t``. A call asking more than a bucket's burst is refused at once
    with :class:`~stageflow_plus.primitives.errors.CostTooLarge`.

    Memory: buckets are made per key on first use and dropped again once idle — full,
    unpaused, no call holding or awaiting them — a few at a time as new keys arrive, so
    memory stays bounded whatever the number of distinct keys (tenants, per-run rates). With
    ``start_full=False`` every key's buckets count as made empty when this limiter made its
    first bucket and refilling since: a key first seen later (or seen again after its full
    buckets were dropped) starts with what it would hold had it existed all along, which is
    full once ``burst / rate`` seconds have passed since the start.
    """

    __slots__ = (
        "_actual_cost",
        "_buckets",
        "_key",
        "_max_pause",
        "_origin",
        "_paused_logged",
        "_per_key",
        "_rates",
        "_retry_after",
        "_run_buckets",
    )

    contributes_demands = True
    observes_results = True
    honours_limits = frozenset({"rates"})

    def __init__(
        self,
        rates: Rate | Sequence[Rate],
        *,
        key: str | Callable[[ToolCall], str] = "global",
        per_key_rates: Mapping[str, Rate | Sequence[Rate]] | None = None,
        actual_cost: Callable[[Any], Mapping[str, float] | None] | None = None,
        retry_after: Callable[[Any], float | None] | None = None,
        max_pause: float = DEFAULT_MAX_PAUSE,
    ) -> None:
        super().__init__()
        self._max_pause = check_seconds(max_pause, "TokenBucketRateLimiter max_pause",
                                        allow_zero=False)
        self._paused_logged: dict[str, float] = {}  # key -> until, for "log once per pause"
        self._rates = self._check_rates(rates, "rates")
        if isinstance(key, str):
            if key not in KEYS:
                raise ConfigError(
                    f"TokenBucketRateLimiter key must be one of {sorted(KEYS)} or a function, "
                    f"got {key!r}"
                )
            self._key = KEYS[key]
        elif callable(key):
            self._key = key
        else:
            raise ConfigError(f"TokenBucketRateLimiter key must be a str or callable, got {key!r}")
        if per_key_rates is not None and not isinstance(per_key_rates, Mapping):
            raise ConfigError(f"TokenBucketRateLimiter per_key_rates must be a mapping of key "
                              f"to Rate(s), got {type(per_key_rates).__name__}")
        self._per_key = {
            k: self._check_rates(v, f"per_key_rates[{k!r}]")
            for k, v in (per_key_rates or {}).items()
        }
        self._actual_cost = actual_cost
        self._retry_after = retry_after
        # per key / per run, dropped once idle (sweep_idle on each new key: bounded memory)
        self._buckets: OrderedDict[str, tuple[TokenBucket, ...]] = OrderedDict()
        self._run_buckets: OrderedDict[tuple[str, str, float], TokenBucket] = OrderedDict()
        self._origin: float | None = None  # when the first bucket was made (start_full=False)

    @staticmethod
    def _check_rates(rates: Rate | Sequence[Rate], where: str) -> tuple[Rate, ...]:
        if not isinstance(rates, Rate) and (isinstance(rates, (str, bytes)) or not isinstance(
                rates, Sequence)):
            raise ConfigError(f"TokenBucketRateLimiter {where} must be one or more Rate objects, "
                              f"got {type(rates).__name__}")
        items = (rates,) if isinstance(rates, Rate) else tuple(rates)
        if not items or not all(isinstance(r, Rate) for r in items):
            raise ConfigError(f"TokenBucketRateLimiter {where} must be one or more Rate objects")
        return items

    def key_of(self, call: ToolCall) -> str:
        """The bucket key of ``call``."""
        return self._key(call)

    def buckets_for(self, key: str, now: float) -> tuple[TokenBucket, ...]:
        """The buckets of ``key``, created on first use (see the class docstring for their
        level then) and dropped again once idle."""
        buckets = self._buckets.get(key)
        if buckets is None:
            if self._origin is None:
                self._origin = now
            sweep_idle(self._buckets, lambda old: all(_bucket_idle(b, now) for b in old))
            rates = self._per_key.get(key, self._rates)
            buckets = self._buckets[key] = tuple(
                self._new_bucket(f"rate:{key}:{r.dimension}:{r.limit:g}/{r.per:g}s", r, now)
                for r in rates
            )
            self.demands_changed()  # a bucket made (or an idle one swept): a new template
        return buckets

    def wants_results(self) -> bool:
        """Only with ``actual_cost`` or ``retry_after``: otherwise results say nothing here."""
        return self._actual_cost is not None or self._retry_after is not None

    def demand_template(self) -> tuple[tuple[Resource, str | None], ...] | None:
        """The global key's buckets once they exist (``key="global"``): one per rate,
        ``requests`` costing 1 and every other dimension the call's estimate."""
        if type(self).add_demands is not TokenBucketRateLimiter.add_demands or (
            self._key is not KEYS["global"]
        ):
            return None
        buckets = self._buckets.get("*")
        if buckets is None:
            return None  # made by the first call (its time is the bucket's start)
        return tuple(
            (bucket, None if bucket.dimension == "requests" else bucket.dimension)
            for bucket in buckets
        )

    def _new_bucket(self, name: str, rate: Rate, now: float) -> TokenBucket:
        bucket = TokenBucket(name, rate, now)
        if not rate.start_full and self._origin is not None:
            # empty when the limiter started, refilling since: a key first seen (or dropped
            # when full and seen again) later gets what it would hold had it existed all along
            bucket.tokens = min(bucket.burst, (now - self._origin) * bucket.rate)
        return bucket

    def add_demands(self, call: ToolCall, now: float, out: list[tuple[Resource, float]]) -> None:
        cost = call.cost
        key = self._key(call)
        buckets = self._buckets.get(key)
        if buckets is None:
            buckets = self.buckets_for(key, now)
        for bucket in buckets:
            if bucket.dimension == "requests":
                out.append((bucket, 1.0))
            else:
                out.append((bucket, float(cost.get(bucket.dimension, 0.0))))
        run_rates = call.limits.get("rates") if call.limits else None
        if run_rates and call.run_id is not None:
            self._add_run_demands(call, run_rates, now, out)

    def _add_run_demands(
        self,
        call: ToolCall,
        run_rates: Mapping[str, float],
        now: float,
        out: list[tuple[Resource, float]],
    ) -> None:
        """Per-run rates (``call.limits["rates"]``, per second): extra buckets, so a run can
        only tighten what the operator configured, never loosen it."""
        for dimension, per_second in run_rates.items():
            slot = (str(call.run_id), dimension, float(per_second))
            bucket = self._run_buckets.get(slot)
            if bucket is None:
                sweep_idle(self._run_buckets, lambda old: _bucket_idle(old, now))
                rate = Rate(per_second, per=1.0, burst=max(1.0, per_second), dimension=dimension)
                bucket = TokenBucket(f"rate:run:{call.run_id}:{dimension}:{per_second:g}/1s",
                                     rate, now)
                self._run_buckets[slot] = bucket
            amount = 1.0 if dimension == "requests" else float(call.cost.get(dimension, 0.0))
            out.append((bucket, amount))

    def pause(self, key: str, retry_after: float) -> None:
        """Stop ``key``'s buckets for every caller for ``retry_after`` seconds.

        Capped at ``max_pause`` (logged once per key and pause); a later pause never
        shortens a running one. :raises ConfigError: not a finite number ``>= 0``.
        """
        seconds = check_seconds(retry_after, "TokenBucketRateLimiter.pause retry_after")
        now = self.gate.limiter.clock.now()
        if seconds > self._max_pause:
            if self._paused_logged.get(key, -math.inf) <= now:
                logger.warning("stageflow_plus: pause of rate key %r for %.6gs capped at "
                               "max_pause=%gs", key, seconds, self._max_pause)
            seconds = self._max_pause
            if len(self._paused_logged) > 1024:  # bounded: forget pauses that ended
                self._paused_logged = {k: t for k, t in self._paused_logged.items() if t > now}
            self._paused_logged[key] = now + seconds
        for bucket in self.buckets_for(key, now):
            bucket.pause(now + seconds)
        on_paused = getattr(self.gate.limiter.listener, "on_paused", None)
        if on_paused is not None:
            on_paused(key, seconds)
        self.gate.limiter.dispatch()

    def set_rates(self, rates: Rate | Sequence[Rate], *, key: str | None = None) -> None:
        """Change rates at runtime (for one key, or the default for all keys)."""
        checked = self._check_rates(rates, "rates")
        now = self.gate.limiter.clock.now()
        if key is None:
            self._rates = checked
            targets = [k for k in self._buckets if k not in self._per_key]
        else:
            self._per_key[key] = checked
            targets = [key] if key in self._buckets else []
        for target in targets:
            old = self._buckets[target]
            if [b.dimension for b in old] == [r.dimension for r in checked]:
                for bucket, rate in zip(old, checked, strict=True):
                    bucket.set_rate(rate, now)
            elif not any(b.queued for b in old):
                del self._buckets[target]
                self.demands_changed()
            else:
                raise ConfigError(
                    f"cannot change the dimensions of key {target!r} while calls wait on it"
                )
        self.gate.limiter.dispatch()

    def after_result(self, call: ToolCall, lease: Lease, result: Any) -> None:
        failure: Exception | None = None
        if self._actual_cost is not None:
            try:
                self._charge_actual(call, lease, result)
            except Exception as error:  # the pause below must still happen; raised after it
                failure = error
        if result is not None and self._retry_after is not None:
            self._maybe_pause(call, result)
        if failure is not None:
            raise failure  # the gate reports it and keeps the result

    def _charge_actual(self, call: ToolCall, lease: Lease, result: Any) -> None:
        """Charge ``actual_cost(result)``; a value it cannot be is refused (``ConfigError``)
        before anything is charged, so the estimate stays."""
        assert self._actual_cost is not None
        actual = self._actual_cost(result)
        if actual is None:
            return
        if not isinstance(actual, Mapping):
            raise ConfigError(
                f"actual_cost of tool {call.tool!r} must return a mapping of cost names to "
                f"numbers or None, got {type(actual).__name__}"
            )
        if actual:
            lease.adjust(check_cost(actual, "actual_cost()", f" of tool {call.tool!r}"))

    def after_error(self, call: ToolCall, lease: Lease, error: Exception) -> None:
        if isinstance(error, Rejected):
            return  # a limiter further in refused (e.g. Redis down): no provider answered
        self._maybe_pause(call, error)

    def _maybe_pause(self, call: ToolCall, outcome: Any) -> None:
        if self._retry_after is None:
            return
        seconds = self._retry_after(outcome)
        if seconds is None:
            return
        try:
            self.pause(self._key(call), seconds)
        except ConfigError:  # a provider's unusable value: ignored, never raised at a caller
            logger.warning("stageflow_plus: ignored an unusable provider wait %r for rate key "
                           "%r", seconds, self._key(call))

    def bucket_statistics(self, now: float) -> tuple[BucketStatistics, ...]:
        return tuple(
            BucketStatistics(
                b.key,
                b.dimension,
                b.level(now),
                b.burst,
                b.rate,
                max(0.0, b.paused_until - now),
                b.queued,
            )
            for buckets in self._buckets.values()
            for b in buckets
        )

    def __repr__(self) -> str:
        rates = ", ".join(f"{r.limit:g} {r.dimension}/{r.per:g}s" for r in self._rates)
        return f"TokenBucketRateLimiter({rates})"
