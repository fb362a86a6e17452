"""The adaptive concurrency policy: calls' round trips and drops in, a concurrency limit out.

Pure arithmetic with no Stageflow import, no clock and no I/O: the caller passes the time
with every sample (plain numbers in, a limit out), so it is tested with plain numbers and
run on any clock. :class:`~stageflow_plus.interceptors.adaptive.AdaptiveConcurrency` feeds
it from the admission gate and applies its limit to a ``ConcurrencyLimiter`` partition.

Per call, :meth:`AdaptiveLimit.sample` adds to running sums and one fixed ring of the
window's round trips (no state grows); once per *window* (at least ``window`` seconds and
``window_rtts`` no-load round trips, one more round trip after a change, at least
``min_samples`` samples) it decides. With ``R0`` the no-load round trip (the lowest window
median since the last probe), ``rtt`` the window's median round trip (a stall that delays a
few calls moves it little), ``inflight`` the mean calls in flight at completions and ``L``
the limit:

* **capacity** ``Ĉ = inflight · R0 / rtt`` — the throughput (``inflight / rtt``, Little's
  law) times the no-load latency: how many calls in flight the provider serves without
  queueing. ``q = 1 − R0 / rtt`` is the share of the round trip spent queueing (the
  gradient is ``R0 / rtt``).
* **drop** (429, 503, a timeout, a ``Retry-After``) decides at once: ``L ← min(L ·
  drop_backoff, Ĉ · (1 + headroom))``, at least one call less; no growth for two windows.
* **queueing** (``q`` at or above the tolerance, which widens with the measured
  window-to-window noise; the limit at least half used): ``L`` moves to ``Ĉ · (1 +
  headroom)`` — at once when ``q ≥ cut_above``, else by ``smoothing`` of the way, at least
  one call, never below ``L · (1 − max_decrease)`` — once a second window confirms it,
  unless our own growth just made the provider queue a lot; within a small dead band above
  that aim the limit holds (the knee).
* **growth** (no queueing, or the last growth added calls without raising the round trip —
  *room* —, the limit used: calls in flight reached it): ``L ← L · (1 + growth[k])`` for the
  ``k``-th window in a row, by at least one call; only the smallest step near the last knee
  or when only room justifies it. An unused limit never grows.
* **recall**: a large cut remembers the capacity seen before it (throughput × ``R0``); a
  second growth window in a row with no queueing at all goes straight back there.
* **probe**: when cuts lowered in-flight by 20 % but the round trip did not follow (the
  provider, or the caller's machine, got slower: ``R0`` is stale) or every
  ``probe_interval`` seconds, the limit is pinned to ``probe_fraction`` of the estimated
  capacity for one window and ``R0`` is re-learned from it; the limit then returns.
* Samples of calls admitted before the last limit change (and drops among them) are left
  out: they measure the old limit. The limit stays in ``[min_limit, max_limit]``.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math

from .adaptive_settings import REASONS, AdaptiveSettings, AdaptiveStatistics, LimitPolicy

__all__ = ["REASONS", "AdaptiveLimit", "AdaptiveSettings", "AdaptiveStatistics", "LimitPolicy"]

# a cut that lowered in-flight this much but not the round trip means "not queueing"
_STALE_INFLIGHT = 0.8
# no cut while the limit is within this share above its aim (a dead band against noise)
_DEADBAND = 0.03
# the noise estimate: an average of the round trip's relative change between two windows at
# the same limit (each change counted up to 3x the estimate, at least _NOISE_FLOOR);
# tolerance and dead band widen with it
_NOISE_GAIN = 0.2
_NOISE_FLOOR = 0.05
# a growth that added calls in flight while the round trip rose less than this share of it
# found room (most added calls did not queue)
_ROOM = 0.4
# throughput is remembered over this many windows (the capacity to grow back to)
_XMAX_WINDOWS = 8
# round trips kept per window for its percentile (the last ones when there are more)
_KEPT = 128


class AdaptiveLimit:
    """The gradient / drop / throughput controller of one key (see the module docstring).

    :param settings: how it learns.
    :param limit: the starting limit (clamped into the bounds).
    :param now: the current time (the first window starts here).
    """

    __slots__ = (
        "_cap",
        "_capacity",
        "_changes",
        "_cut_inflight",
        "_cut_rtt",
        "_done",
        "_drops",
        "_drops_total",
        "_end",
        "_fresh_after",
        "_grew",
        "_grow_after",
        "_held",
        "_inflight",
        "_knee",
        "_last_drops",
        "_last_inflight",
        "_last_n",
        "_last_rtt",
        "_limit",
        "_n",
        "_next_probe",
        "_noise",
        "_peak",
        "_probe_saved",
        "_probing",
        "_recall",
        "_recall_base",
        "_rtt0",
        "_rtts",
        "_start",
        "_streak",
        "_suspect",
        "_throughput",
        "_windows",
        "_xmax",
        "reason",
        "settings",
    )

    def __init__(self, settings: AdaptiveSettings, limit: int, now: float) -> None:
        self.settings = settings
        self._limit = float(min(max(limit, settings.min_limit), settings.max_limit))
        self._cap = int(self._limit)  # invariant: the limit applied, in the bounds
        self.reason = "bounds" if self._cap != limit else ""  # (the start was clamped)
        self._rtt0 = 0.0  # no-load round trip; 0 until the first window
        self._fresh_after = -math.inf  # samples of calls admitted before this are stale
        self._grow_after = -math.inf  # no growth before this (after a drop)
        self._next_probe = (
            now + settings.probe_interval if settings.probe_interval > 0 else math.inf
        )
        self._probing = False
        self._probe_saved = 0.0
        self._streak = 0  # windows in a row that grew
        self._cut_inflight = 0.0  # in-flight and rtt before the first of the latest cuts
        self._cut_rtt = 0.0
        self._xmax = [0.0] * _XMAX_WINDOWS  # throughput of the last windows (a ring)
        self._rtts = [0.0] * _KEPT  # the window's round trips (a ring of fixed size)
        self._recall = 0.0  # where to grow back to after a large cut (0: nowhere)
        self._recall_base = 0.0  # the limit that large cut set
        self._knee = 0.0  # the capacity estimated when queueing was last seen
        self._grew = False  # the last window grew the limit
        self._suspect = False  # queueing seen once without growth: confirm before cutting
        self._noise = 0.0  # how much the round trip moves between windows by itself
        self._held = False  # the last window left the limit where it was
        self._windows = self._changes = self._drops_total = 0
        self._last_rtt = self._last_inflight = self._capacity = self._throughput = 0.0
        self._last_n = self._last_drops = 0
        # the window: running sums only (see _open)
        self._start = self._end = now
        self._n = self._drops = self._peak = self._done = 0
        self._inflight = 0.0
        self._open(now)

    # the hot path --------------------------------------------------------------------------
    def sample(self, now: float, started: float, inflight: int, dropped: bool) -> int:
        """Record one completed call; returns the limit to apply (decides once per window)."""
        if not dropped:
            self._done += 1  # throughput counts every answer, stale or not
        if started >= self._fresh_after:
            if dropped:
                self._drops += 1
            else:
                index = self._n
                self._n = index + 1
                self._rtts[index % _KEPT] = now - started  # a ring: the last _KEPT of the window
                self._inflight += inflight
                if inflight > self._peak:
                    self._peak = inflight
            if dropped or now >= self._end:  # a drop is a hard signal: decide at once
                self._decide(now)
        return self._cap

    # once per window ---------------------------------------------------------------------
    def _open(self, now: float) -> None:
        self._start = now
        self._end = now + max(self.settings.window, self.settings.window_rtts * self._rtt0)
        if self._fresh_after == now:
            self._end += self._rtt0  # calls admitted from now on answer one round trip later
        self._n = self._drops = self._peak = self._done = 0
        self._inflight = 0.0

    def _decide(self, now: float) -> None:
        s = self.settings
        n, drops = self._n, self._drops
        if drops == 0 and n < s.min_samples:
            if now - self._start >= s.max_window:
                self._open(now)  # too few calls to learn from: nothing changes
            return
        self._windows += 1
        self._drops_total += drops
        self._last_n, self._last_drops = n, drops
        rtt = self._percentile(n)
        if not (rtt >= 0.0 and math.isfinite(rtt)):  # a clock that ran backwards
            rtt = 0.0
        inflight = self._inflight / n if n else 0.0
        if self._held and n >= s.min_samples and self._last_rtt > 0.0 and rtt > 0.0:
            # two windows in a row at the same limit: how much the round trip moves by itself
            # (a jump far above the usual, e.g. the capacity changing, counts as little more
            # than usual: the estimate follows noise, not events)
            change = min(abs(rtt - self._last_rtt) / self._last_rtt,
                         max(_NOISE_FLOOR, 3.0 * self._noise))
            self._noise += _NOISE_GAIN * (change - self._noise)
        tolerance = max(s.tolerance, 2.0 * self._noise)
        room = self._room(n, rtt, inflight)
        cap_before = self._cap
        if n:
            self._last_rtt, self._last_inflight = rtt, inflight
            self._throughput = self._done / max(now - self._start, 1e-9)
        if self._probing:
            target, reason = self._end_probe(n, drops, rtt)
        else:
            if n >= s.min_samples and rtt > 0.0 and (self._rtt0 <= 0.0 or rtt < self._rtt0):
                self._rtt0 = rtt
            rtt0 = self._rtt0
            queueing = max(0.0, 1.0 - rtt0 / rtt) if rtt > 0.0 and rtt0 > 0.0 else 0.0
            capacity = inflight * (1.0 - queueing)
            if n:
                self._capacity = capacity
            if now >= self._next_probe:
                self._start_probe(now, capacity if n else self._limit)
                return
            if drops:
                target, reason = self._on_drop(now, n, queueing, capacity)
            elif (queueing >= tolerance and not (room and queueing < s.cut_above)
                  and 2 * self._peak >= self._cap):  # (a limit far from used is not the cause)
                if self._stale_baseline(rtt, inflight):
                    self._start_probe(now, capacity)
                    return
                target, reason = self._on_queueing(queueing, capacity, inflight, rtt)
            elif self._peak >= self._cap and now >= self._grow_after:
                if queueing >= tolerance:
                    self._streak = 0  # room, but some queueing: no larger steps
                target, reason = self._grow(queueing < s.tolerance / 2)
            else:
                target, reason = self._limit, ""
                self._streak = 0
            if reason in ("grow", "drop") or queueing < tolerance:
                self._cut_inflight = 0.0  # (holds between cuts keep the streak of cuts)
            if drops or queueing < tolerance:
                self._suspect = False
            self._grew = reason == "grow"
            if n >= s.min_samples:
                self._xmax[self._windows % _XMAX_WINDOWS] = self._throughput
        self._set(target, reason, now)
        self._held = not self._probing and self._cap == cap_before
        self._open(now)

    def _room(self, n: int, rtt: float, inflight: float) -> bool:
        """The last growth added calls in flight and the round trip barely moved: whatever
        the baseline says, the provider had room for them (throughput rose with in-flight)."""
        if not (self._grew and n >= self.settings.min_samples and rtt > 0.0
                and self._last_rtt > 0.0 and self._last_inflight > 0.0):
            return False
        added = inflight / self._last_inflight - 1.0
        return added > 0.0 and rtt / self._last_rtt - 1.0 < _ROOM * added

    def _percentile(self, n: int) -> float:
        """The window's round trip at the settings' percentile (0 without samples)."""
        if n <= 0:
            return 0.0
        kept = sorted(self._rtts[: min(n, _KEPT)])
        return kept[min(len(kept) - 1, int(self.settings.percentile * len(kept)))]

    def _on_drop(self, now: float, n: int, queueing: float, capacity: float) -> tuple[float, str]:
        s = self.settings
        limit = self._limit
        target = limit * s.drop_backoff
        if n >= s.min_samples and queueing >= s.tolerance:
            target = min(target, capacity * (1.0 + s.headroom))
            self._knee = capacity
        self._streak = 0
        # no growth for two windows: a Retry-After pause empties the provider, and the first
        # calls after it would look like room
        self._grow_after = now + 2.0 * (self._end - self._start)
        target = max(target, limit * (1.0 - s.max_decrease))
        if int(target + 0.5) >= self._cap:
            target = self._cap - 1.0  # a drop always takes at least one call off
        return self._remember(target), "drop"

    def _on_queueing(
        self, queueing: float, capacity: float, inflight: float, rtt: float
    ) -> tuple[float, str]:
        s = self.settings
        limit = float(self._cap)  # (the limit applied, not the unrounded one)
        self._streak = 0
        aim = capacity * (1.0 + s.headroom)
        if limit <= aim * (1.0 + max(_DEADBAND, self._noise)):
            self._suspect = False
            self._knee = capacity
            self._cut_inflight = 0.0  # (a streak of cuts ends at the knee)
            return self._limit, ""  # at the knee, as intended
        if not self._suspect and not (self._grew and queueing >= s.cut_above):
            # confirm over a second window (noise? a stall?) — unless our own growth just
            # made the provider queue a lot
            self._suspect = True
            return self._limit, ""
        self._suspect = False
        self._knee = capacity
        if self._recall > 0.0 and limit > 1.2 * self._recall_base:
            self._recall = 0.0  # grown back toward it and queueing: capacity did not return
        step = 1.0 if queueing >= s.cut_above else s.smoothing
        if self._cut_inflight <= 0.0:  # the first cut of a streak: what it started from
            self._cut_inflight, self._cut_rtt = inflight, rtt
        target = max(limit + step * (aim - limit), limit * (1.0 - s.max_decrease))
        if int(target + 0.5) >= self._cap:
            target = limit - 1.0  # a cut that rounds to nothing still takes one call off
        return self._remember(target), "rtt"

    def _remember(self, target: float) -> float:
        """On a large cut, keep the capacity seen before: if it comes back, grow back there."""
        known = max(self._xmax) * self._rtt0  # throughput × no-load latency: capacity
        if target < 0.75 * known:
            self._recall, self._recall_base = max(self._recall, known), target
            for i in range(_XMAX_WINDOWS):
                self._xmax[i] = 0.0  # throughput from now on measures the new capacity
        return target

    def _grow(self, clear: bool) -> tuple[float, str]:
        s = self.settings
        limit = self._limit
        if self._recall > 0.0:
            if limit >= 0.9 * self._recall:
                self._recall = 0.0
            elif self._streak >= 1 and clear:
                # a second window in a row with room and no queueing at all (half the
                # configured tolerance, however noisy): capacity is back
                target = max(self._recall, limit + 1.0)
                self._knee, self._recall, self._streak = self._recall, 0.0, 0
                return target, "grow"
        if 0.95 * self._knee <= limit <= 1.15 * self._knee:
            self._streak = 0  # where queueing began last time: the smallest step
        step = s.growth[min(self._streak, len(s.growth) - 1)]
        self._streak += 1
        return max(limit * (1.0 + step), limit + 1.0), "grow"

    def _stale_baseline(self, rtt: float, inflight: float) -> bool:
        """Cuts (one large or several small) lowered in-flight by 20 % or more but the round
        trip fell by less than half of what queueing predicts (``max(R0, rtt ·
        inflight_after / inflight_before)``): the calls were not queueing — the provider, or
        the caller's own machine, got slower; ``R0`` is stale."""
        if self._cut_inflight > 0.0 and rtt > self._cut_rtt:
            self._cut_inflight, self._cut_rtt = inflight, rtt  # worse: measure from here
            return False
        if self._cut_inflight <= 0.0 or inflight > self._cut_inflight * _STALE_INFLIGHT:
            return False
        expected = max(self._rtt0, self._cut_rtt * inflight / self._cut_inflight)
        return rtt >= expected + 0.5 * (self._cut_rtt - expected)

    def _start_probe(self, now: float, capacity: float) -> None:
        s = self.settings
        self._probing = True
        self._probe_saved = self._limit
        self._cut_inflight = 0.0
        self._streak = 0
        self._fresh_after = now  # the probe measures only calls admitted under it
        self._next_probe = now + s.probe_interval if s.probe_interval > 0 else math.inf
        base = min(self._limit, capacity) if capacity > 0.0 else self._limit
        self._set(base * s.probe_fraction, "probe", now)
        self._open(now)

    def _end_probe(self, n: int, drops: int, rtt: float) -> tuple[float, str]:
        s = self.settings
        self._probing = False
        if n >= s.min_samples and rtt > 0.0:
            self._rtt0 = rtt  # re-learned at a low load
        target = max(self._probe_saved, self._limit)
        if drops:
            return target * s.drop_backoff, "drop"
        return target, "probe_done"

    def _set(self, target: float, reason: str, now: float) -> None:
        s = self.settings
        if not math.isfinite(target):
            target = self._limit
        target = min(max(target, float(s.min_limit)), float(s.max_limit))
        self._limit = target
        cap = int(target + 0.5)
        cap = min(max(cap, s.min_limit), s.max_limit)
        if cap != self._cap:
            self._cap = cap
            self._changes += 1
            self.reason = reason or "bounds"
            self._fresh_after = now  # calls admitted from now on measure the new limit

    # introspection ------------------------------------------------------------------------
    @property
    def limit(self) -> int:
        """The limit to apply now."""
        return self._cap

    @property
    def rtt_noload(self) -> float:
        """The estimated no-load round trip, seconds (0 until learned)."""
        return self._rtt0

    @property
    def probing(self) -> bool:
        """Whether the current window is a probe of the no-load latency."""
        return self._probing

    def statistics(self, key: str) -> AdaptiveStatistics:
        """A snapshot for ``key`` (the group this policy limits)."""
        rtt = self._last_rtt
        return AdaptiveStatistics(
            key=key,
            limit=self._cap,
            rtt_noload=self._rtt0,
            rtt=rtt,
            gradient=self._rtt0 / rtt if rtt > 0.0 and self._rtt0 > 0.0 else 1.0,
            capacity=self._capacity,
            in_flight=self._last_inflight,
            throughput=self._throughput,
            samples_in_window=self._last_n,
            drops_in_window=self._last_drops,
            windows=self._windows,
            changes=self._changes,
            drops=self._drops_total,
            last_reason=self.reason,
            probing=self._probing,
        )

    def __repr__(self) -> str:
        return (f"<AdaptiveLimit limit={self._cap} rtt_noload={self._rtt0 * 1000:.1f}ms "
                f"reason={self.reason!r}>")
