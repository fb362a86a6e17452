"""RateLimitHeaderLearner: a rate limiter kept in step with the provider's own headers.

It reads every answer's rate-limit headers — OpenAI's ``x-ratelimit-*``, Anthropic's
``anthropic-ratelimit-*``, the IETF ``RateLimit`` fields (see
:mod:`~stageflow_plus.llm.headers`), from results *and* exceptions (a 429 carries them too) —
and re-sets a :class:`~stageflow_plus.interceptors.rate.TokenBucketRateLimiter`'s rates of
the call's key when the published limits change (a plan upgrade, a new model):

* rate = ``limit / 60 · safety`` per second (limits are per minute; IETF: per its window);
* burst = the provider's bucket size times ``safety``, measured from the first answer as
  ``remaining + reset · rate`` (the reset being the time until the bucket is full again),
  or ``burst_s`` seconds of rate when the answer has no reset.

**Learning from nothing** (``probe=True``): with no numbers configured, each key starts with
*one call in flight* until the first answer with rate-limit headers arrives — no burst can
hit an unknown limit — then runs at the learned rates, its buckets set to what the provider
says remains. A key whose answers carry no rate-limit headers stays at one call in flight
(logged after ``probe_answers`` answers): the tool must return the headers (an SDK's
``with_raw_response``, see the README).

``remaining-requests: 0`` pauses the key until one request refills (``pause_on_empty``).
Only calls of ``tools`` are looked at (default: every call).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ..llm.answers import _headerless, read_answer
from ..llm.headers import LimitState, RateLimitHeaders, parse_rate_limit_headers
from ..primitives.errors import ConfigError, Rejected
from ..primitives.lease import Lease
from ..primitives.resources import ConcurrencyPool, Rate, Resource
from .call import ToolCall
from .in_flight import InFlight
from .part import LimitPart
from .rate import TokenBucketRateLimiter

__all__ = ["RateLimitHeaderLearner", "default_headers_of"]

logger = logging.getLogger("stageflow_plus")

_OPEN = 1_000_000_000  # a probe pool's capacity once its key is learned


def default_headers_of(outcome: Any) -> Mapping[str, str] | None:
    """Headers of a tool outcome (as :func:`~stageflow_plus.llm.answers.read_answer` finds
    them: a response, an SDK error's ``.response``, a ``ToolOutput``'s ``data["headers"]``)."""
    answer = read_answer(outcome)
    return dict(answer.headers) if answer is not None and answer.headers else None


class RateLimitHeaderLearner(LimitPart):
    """Learns a rate limiter's rates from the provider's headers (a limiter interceptor).

    :param limiter: the rate limiter to keep current (same chain).
    :param safety: fraction of the published limits to use (``0 < safety <= 1``).
    :param burst_s: bucket size in seconds of rate when an answer publishes no reset.
    :param headers_of: finds the headers in an outcome (default: the provider's answer).
    :param pause_on_empty: pause the key when ``remaining-requests`` reaches 0.
    :param probe: one call in flight per key until its first headers (learning from nothing).
    :param probe_answers: answers without headers after which a probing key logs a warning.
    :param tools: the tools whose answers are learned from (default: all).
    :param wall_clock: POSIX seconds, for RFC 3339 resets (default ``time.time``).
    """

    __slots__ = ("_burst_s", "_headers_of", "_in_flight", "_limiter", "_pause_on_empty",
                 "_probe", "_probe_answers", "_probes", "_published", "_safety", "_tools",
                 "_unheard", "_wall", "updates")

    contributes_demands = True
    observes_results = True

    def __init__(
        self,
        limiter: TokenBucketRateLimiter,
        *,
        safety: float = 0.9,
        burst_s: float = 1.0,
        headers_of: Callable[[Any], Mapping[str, str] | None] | None = None,
        pause_on_empty: bool = True,
        probe: bool = False,
        probe_answers: int = 5,
        tools: Collection[str] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        if not isinstance(limiter, TokenBucketRateLimiter):
            raise ConfigError(f"RateLimitHeaderLearner needs a TokenBucketRateLimiter, got "
                              f"{limiter!r}")
        if isinstance(safety, bool) or not isinstance(safety, (int, float)) or not (
            0 < safety <= 1
        ):
            raise ConfigError(f"RateLimitHeaderLearner: safety must be in (0, 1], got {safety!r}")
        if isinstance(burst_s, bool) or not isinstance(burst_s, (int, float)) or not (
            0 < burst_s < math.inf
        ):
            raise ConfigError(f"RateLimitHeaderLearner: burst_s must be a finite number > 0, "
                              f"got {burst_s!r}")
        for name, flag in (("pause_on_empty", pause_on_empty), ("probe", probe)):
            if not isinstance(flag, bool):
                raise ConfigError(f"RateLimitHeaderLearner: {name} must be True or False, "
                                  f"got {flag!r}")
        if isinstance(probe_answers, bool) or not isinstance(probe_answers, int) or (
            probe_answers < 1
        ):
            raise ConfigError(f"RateLimitHeaderLearner: probe_answers must be an int >= 1, "
                              f"got {probe_answers!r}")
        if tools is not None and (isinstance(tools, str) or not all(
            isinstance(t, str) for t in tools
        )):
            raise ConfigError(f"RateLimitHeaderLearner: tools must be a list of tool names, "
                              f"got {tools!r}")
        self._limiter = limiter
        self._safety = float(safety)
        self._burst_s = float(burst_s)
        self._headers_of = headers_of
        self._pause_on_empty = pause_on_empty
        self._probe = probe
        self._probe_answers = probe_answers
        self._tools = frozenset(tools) if tools is not None else None
        self._wall = wall_clock
        self._published: dict[str, dict[str, float]] = {}  # key -> dimension -> limit/min
        self._probes: dict[str, ConcurrencyPool] = {}  # keys still probing
        self._unheard: dict[str, int] = {}  # key -> answers without headers while probing
        self._in_flight: dict[str, dict[str, InFlight]] = {}  # key -> dimension -> charged
        #: how many times rates were re-set (for tests and statistics)
        self.updates = 0

    def learned(self, key: str) -> dict[str, float]:
        """The published per-minute limits learned for ``key`` (empty: nothing yet)."""
        return dict(self._published.get(key, {}))

    # the gate's hooks -------------------------------------------------------------------
    def demand_template(self) -> tuple[tuple[Resource, str | None], ...] | None:
        """The global key's in-flight counters once they exist (a rate limiter keyed
        ``"global"``, every tool learned from, no probe pending): ``requests`` counting 1,
        every other dimension the call's estimate — what :meth:`add_demands` appends."""
        if type(self).add_demands is not RateLimitHeaderLearner.add_demands or (
            self._tools is not None or self._limiter.demand_template() is None
        ):
            return None  # (the rate limiter has a template: its key is global, "*")
        taps = self._in_flight.get("*")
        if taps is None or (self._probe and "*" not in self._published):
            return None  # made by the first call; a probing key also needs its probe pool
        return tuple((tap, None if dimension == "requests" else dimension)
                     for dimension, tap in taps.items())

    def add_demands(self, call: ToolCall, now: float, out: list[tuple[Resource, float]]) -> None:
        if self._tools is not None and call.tool not in self._tools:
            return
        key = self._limiter.key_of(call)
        taps = self._in_flight.get(key)
        if taps is None:
            taps = self._in_flight[key] = {
                b.dimension: InFlight(f"in_flight:{key}:{b.dimension}")
                for b in self._limiter.buckets_for(key, now)
            }
            self.demands_changed()  # the global key's counters: a template from now on
        cost = call.cost
        for dimension, tap in taps.items():
            out.append((tap, 1.0 if dimension == "requests" else float(cost.get(dimension, 0.0))))
        if not self._probe or key in self._published:
            return
        pool = self._probes.get(key)
        if pool is None:
            pool = self._probes[key] = ConcurrencyPool(f"probe:{key}", 1)
        out.append((pool, 1.0))

    def reads_quiet_results(self) -> bool:
        """Only with ``headers_of`` or ``probe``: otherwise a quiet result (see
        :meth:`LimitPart.reads_quiet_results`) holds no headers to learn from."""
        return self._headers_of is not None or self._probe

    def after_result(self, call: ToolCall, lease: Lease, result: Any) -> None:
        if result is None or (
            self._headers_of is None and not self._probes and _headerless(result)
        ):
            return  # no headers, and no probing key counting answers without them
        self._look(call, result, lease)

    def after_error(self, call: ToolCall, lease: Lease, error: Exception) -> None:
        if not isinstance(error, Rejected):
            self._look(call, error, lease)

    def _look(self, call: ToolCall, outcome: Any, lease: Lease) -> None:
        if self._tools is not None and call.tool not in self._tools:
            return
        key = self._limiter.key_of(call)
        if self._headers_of is not None:
            headers = self._headers_of(outcome)
            info = parse_rate_limit_headers(headers, self._wall()) if headers else None
        elif _headerless(outcome):  # most answers: no headers, nothing to build
            info = None
        else:
            answer = read_answer(outcome, now=self._wall())
            info = answer.limits if answer is not None else None
        if info is not None and info.dimensions:
            self.learn(info, key=key)
            self._sync(info, key, lease)
        elif key in self._probes:
            unheard = self._unheard[key] = self._unheard.get(key, 0) + 1
            if unheard == self._probe_answers:
                logger.warning(
                    "stageflow_plus: %d answers for key %r carried no rate-limit headers; it "
                    "stays at one call in flight until one does (return the response headers "
                    "from the tool, e.g. data['headers'], or configure the limits)",
                    unheard, key)

    # learning ---------------------------------------------------------------------------
    def observe(self, headers: Mapping[str, str], *, key: str | None = None) -> None:
        """Learn from one answer's headers (any case).

        :param key: the rate limiter's key the answer belongs to; ``None`` changes the
            default rates of every key.
        """
        self.learn(parse_rate_limit_headers(headers, self._wall()), key=key)

    def learn(self, info: RateLimitHeaders, *, key: str | None = None) -> None:
        """Learn from parsed headers (see :func:`~stageflow_plus.llm.headers.
        parse_rate_limit_headers`)."""
        slot = key if key is not None else ""
        known = self._published.get(slot)
        published = dict(known or {})
        for dimension, state in info.dimensions.items():
            if state.limit is not None and state.limit > 0:
                published[dimension] = state.limit * 60.0 / state.period
        first = known is None and bool(published)
        if published and published != known:
            self._published[slot] = published
            self._set_rates(info, published, key)
            if first and key is not None:
                self._sync_levels(info, key)
        if key is not None:
            if first or key in self._probes:
                self._open_probe(key)
            if self._pause_on_empty:
                self._pause_if_empty(info.dimensions.get("requests"), published, key)

    def _set_rates(self, info: RateLimitHeaders, published: Mapping[str, float],
                   key: str | None) -> None:
        gate = self._limiter.gate
        now = gate.limiter.clock.now()
        if key is None:  # the defaults of every key
            current = [(r.dimension, r) for r in self._limiter._rates]
        else:
            current = [(b.dimension, Rate(b.rate * 60.0, per=60.0, burst=b.burst,
                                          dimension=b.dimension))
                       for b in self._limiter.buckets_for(key, now)]
        rates = []
        for dimension, rate in current:
            per_minute = published.get(dimension)
            rates.append(rate if per_minute is None else  # not published: unchanged
                         self._rate(dimension, per_minute, info.dimensions.get(dimension)))
        if not rates:
            return
        try:
            self._limiter.set_rates(rates, key=key)
        except ConfigError as error:  # dimensions changing while calls wait: next time
            logger.warning("stageflow_plus: learned rates for key %r not applied yet: %s",
                           key, error)
            return
        self.updates += 1

    def _rate(self, dimension: str, per_minute: float, state: LimitState | None) -> Rate:
        per_second = per_minute / 60.0
        capacity = per_second * self._burst_s
        if state is not None and state.remaining is not None and state.reset is not None:
            capacity = state.remaining + state.reset * per_second
        capacity = min(max(capacity, per_second * 0.1), per_minute)
        burst = capacity * self._safety
        if dimension == "requests":
            burst = max(1.0, burst)
        return Rate(per_minute * self._safety, per=60.0, burst=burst, dimension=dimension)

    def _sync_levels(self, info: RateLimitHeaders, key: str) -> None:
        """On first learning, the buckets hold no more than the provider says remains."""
        self._sync(info, key, None)

    def _sync(self, info: RateLimitHeaders, key: str, lease: Lease | None) -> None:
        """Hold no more than the provider has left: what it said remains, less what the
        other calls in flight were charged (it may not have seen them yet). Anthropic's
        figures come at the end of a call, after the calls in flight arrived: taken as is.

        This is what keeps a late first burst (connection set-up) from being followed by a
        second burst the provider's bucket cannot hold: our bucket refilled while the
        provider's was still spending."""
        now = self._limiter.gate.limiter.clock.now()
        taps = self._in_flight.get(key, {})
        own = {r.key: a for r, a in lease.demands} if lease is not None else {}
        for bucket in self._limiter.buckets_for(key, now):
            state = info.dimensions.get(bucket.dimension)
            if state is None or state.remaining is None:
                continue
            left = state.remaining
            tap = taps.get(bucket.dimension)
            if tap is not None and info.source != "anthropic":
                left -= max(0.0, tap.amount - own.get(tap.key, 0.0))
            excess = bucket.level(now) - left
            if excess > 0:
                bucket.charge(excess, now)

    def _open_probe(self, key: str) -> None:
        pool = self._probes.pop(key, None)
        self._unheard.pop(key, None)
        if pool is not None:
            pool.capacity = _OPEN  # calls already queued on it go at the learned rates
            self.demands_changed()  # new calls need no probe pool (a template, if global)
            self._limiter.gate.limiter.dispatch()

    def _pause_if_empty(self, state: LimitState | None, published: Mapping[str, float],
                        key: str) -> None:
        if state is None or state.remaining is None or state.remaining >= 1:
            return
        limit = published.get("requests")
        one = 60.0 / limit if limit else None
        candidates = [x for x in (state.reset, one) if x is not None and x > 0]
        if candidates:
            self._limiter.pause(key, min(candidates))

    def __repr__(self) -> str:
        return f"RateLimitHeaderLearner({self._limiter!r}, safety={self._safety})"
