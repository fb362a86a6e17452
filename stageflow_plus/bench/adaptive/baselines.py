"""The published adaptive-limit rules the benchmark compares against (AIMD, Vegas).

Both implement :class:`~stageflow_plus.primitives.adaptive.LimitPolicy`, so they run inside
the same :class:`~stageflow_plus.interceptors.adaptive.AdaptiveConcurrency` as our
controller — same measurements, same drop classifier, only the rule differs:

* :class:`AimdLimit` — Netflix concurrency-limits' ``AIMDLimit``: per sample, ``+1`` when
  the limit is in use (``inflight · 2 >= limit``), ``× backoff`` (0.9) on a drop. As in TCP,
  a drop of a call admitted before the last cut does not cut again (one cut per round trip).
* :class:`VegasLimit` — Netflix's ``VegasLimit`` on windowed samples: queue estimate
  ``q = L · (1 − rtt_noload / rtt)`` with ``rtt`` the window's mean and ``rtt_noload`` the
  lowest window mean; ``+β`` when ``q <= log10 L``, ``+log10 L`` when ``q < α``, ``−log10 L``
  when ``q > β`` or on a drop (``α = 3·log10 L``, ``β = 6·log10 L``); nothing when the limit
  is not in use; ``rtt_noload`` re-learned every ``30 · L`` samples.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math

from ...primitives.adaptive import AdaptiveSettings, AdaptiveStatistics

__all__ = ["AimdLimit", "VegasLimit"]


class _Base:
    """Bounds, the applied limit and a statistics snapshot shared by the baselines."""

    def __init__(self, settings: AdaptiveSettings, limit: int, now: float) -> None:
        self.settings = settings
        self._limit = float(min(max(limit, settings.min_limit), settings.max_limit))
        self._cap = int(self._limit)
        self.reason = ""
        self._changes = 0
        self._drops = 0
        self._rtt0 = 0.0
        self._rtt = 0.0
        self._fresh_after = -math.inf

    @property
    def limit(self) -> int:
        """The limit to apply now."""
        return self._cap

    def _set(self, value: float, reason: str, now: float) -> None:
        s = self.settings
        self._limit = min(max(value, float(s.min_limit)), float(s.max_limit))
        cap = int(self._limit)
        if cap != self._cap:
            self._cap = cap
            self._changes += 1
            self.reason = reason
            if reason == "drop":
                self._fresh_after = now

    def statistics(self, key: str) -> AdaptiveStatistics:
        """A snapshot (the fields a baseline does not track are 0)."""
        gradient = self._rtt0 / self._rtt if self._rtt > 0 and self._rtt0 > 0 else 1.0
        return AdaptiveStatistics(key, self._cap, self._rtt0, self._rtt, gradient, 0.0, 0.0,
                                  0.0, 0, 0, 0, self._changes, self._drops, self.reason, False)


class AimdLimit(_Base):
    """Netflix's AIMD rule (see the module docstring): ``(settings, limit, now)``."""

    BACKOFF = 0.9

    def sample(self, now: float, started: float, inflight: int, dropped: bool) -> int:
        """One completed call; returns the limit."""
        if dropped:
            if started >= self._fresh_after:
                self._drops += 1
                self._set(self._limit * self.BACKOFF, "drop", now)
        elif inflight * 2 >= self._cap:
            self._rtt = now - started
            self._set(self._limit + 1.0, "grow", now)
        return self._cap


class VegasLimit(_Base):
    """Netflix's Vegas rule on windowed samples (see the module docstring)."""

    PROBE_MULTIPLIER = 30

    def __init__(self, settings: AdaptiveSettings, limit: int, now: float) -> None:
        super().__init__(settings, limit, now)
        self._start = now
        self._n = self._window_drops = self._peak = 0
        self._sum = 0.0
        self._since_probe = 0

    def sample(self, now: float, started: float, inflight: int, dropped: bool) -> int:
        """One completed call; returns the limit (decides once per window)."""
        if dropped:
            self._window_drops += 1
        else:
            self._n += 1
            self._sum += now - started
            self._peak = max(self._peak, inflight)
        s = self.settings
        length = max(s.window, s.window_rtts * self._rtt0)
        if now - self._start >= length and (self._n >= s.min_samples or self._window_drops):
            self._decide(now)
        return self._cap

    def _decide(self, now: float) -> None:
        n, drops, peak = self._n, self._window_drops, self._peak
        self._start, self._n, self._window_drops, self._peak, total = now, 0, 0, 0, self._sum
        self._sum = 0.0
        self._drops += drops
        self._since_probe += n
        limit = self._limit
        if n:
            rtt = total / n
            self._rtt = rtt
            if self._since_probe >= self.PROBE_MULTIPLIER * limit:
                self._since_probe = 0
                self._rtt0 = rtt  # the probe: forget the no-load latency
                return
            if self._rtt0 <= 0.0 or rtt < self._rtt0:
                self._rtt0 = rtt
                return
        log = math.log10(max(limit, 1.0))
        if drops:
            self._set(limit - max(log, 1.0), "drop", now)
            return
        if not n or peak * 2 < self._cap:
            return  # not in use
        queue = math.ceil(limit * (1.0 - self._rtt0 / self._rtt))
        if queue <= log:
            self._set(limit + 6.0 * log, "grow", now)
        elif queue < 3.0 * log:
            self._set(limit + log, "grow", now)
        elif queue > 6.0 * log:
            self._set(limit - log, "rtt", now)
