"""RetryBudget: at most a fraction of extra calls for retries, per sliding window.

Google's SRE book: retries should add at most ~10 % to the calls a client makes, or a
service that is struggling gets up to (1 + retries)× its load from its clients. The budget
counts first attempts and retries over the last ``window`` seconds (in ten slices) and allows
a retry while ``retries < ratio · first_attempts + min_retries``; ``min_retries`` lets a
client with little traffic still retry a few calls.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..primitives.errors import ConfigError

__all__ = ["RetryBudget", "RetryBudgetStatistics"]

_SLICES = 10


@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    """A snapshot of a :class:`RetryBudget`.

    :ivar first_attempts: first attempts counted in the current window.
    :ivar retries: retries spent in the current window.
    :ivar refused: retries refused since the budget was made.
    """

    first_attempts: int
    retries: int
    refused: int


class RetryBudget:
    """Allows retries up to ``ratio`` of first attempts (+ ``min_retries``) per ``window`` s.

    :param ratio: retries allowed per first attempt (default 0.1: 10 % extra calls).
    :param window: the sliding window, in seconds (default 10).
    :param min_retries: retries always allowed per window (default 3).
    :param clock: ``() -> seconds`` (monotonic); every method also takes ``now``.
    """

    __slots__ = ("_calls", "_clock", "_retries", "_slice", "_start", "min_retries", "ratio",
                 "refused", "window")

    def __init__(self, ratio: float = 0.1, *, window: float = 10.0, min_retries: int = 3,
                 clock: Callable[[], float] | None = None) -> None:
        for name, value in (("ratio", ratio), ("window", window)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 <= value < math.inf
            ) or (name == "window" and value == 0):
                raise ConfigError(f"RetryBudget {name} must be a finite number "
                                  f"{'> 0' if name == 'window' else '>= 0'}, got {value!r}")
        if isinstance(min_retries, bool) or not isinstance(min_retries, int) or min_retries < 0:
            raise ConfigError(f"RetryBudget min_retries must be an int >= 0, got {min_retries!r}")
        self.ratio = float(ratio)
        self.window = float(window)
        self.min_retries = min_retries
        self.refused = 0
        self._clock = clock
        self._slice = self.window / _SLICES
        self._start = 0  # index of the slice _calls[0] / _retries[0] stand for
        self._calls = [0] * _SLICES  # ring: first attempts per slice
        self._retries = [0] * _SLICES

    def _advance(self, now: float) -> int:
        index = math.floor(now / self._slice)
        if index - self._start >= _SLICES:
            if index - self._start >= 2 * _SLICES:
                self._calls = [0] * _SLICES
                self._retries = [0] * _SLICES
            else:
                for i in range(self._start + _SLICES, index + 1):
                    self._calls[i % _SLICES] = 0
                    self._retries[i % _SLICES] = 0
            self._start = index - _SLICES + 1
        return index % _SLICES

    def _now(self, now: float | None) -> float:
        if now is not None:
            return now
        if self._clock is None:
            raise ConfigError("RetryBudget: pass now= or give the budget a clock")
        return self._clock()

    def record_call(self, now: float | None = None) -> None:
        """Count a first attempt."""
        self._calls[self._advance(self._now(now))] += 1

    def try_spend(self, now: float | None = None) -> bool:
        """Spend one retry if the budget allows it; ``False`` (counted) otherwise."""
        slot = self._advance(self._now(now))
        if sum(self._retries) < self.ratio * sum(self._calls) + self.min_retries:
            self._retries[slot] += 1
            return True
        self.refused += 1
        return False

    def statistics(self, now: float | None = None) -> RetryBudgetStatistics:
        """The counts of the current window."""
        self._advance(self._now(now))
        return RetryBudgetStatistics(sum(self._calls), sum(self._retries), self.refused)

    def __repr__(self) -> str:
        return (f"RetryBudget(ratio={self.ratio:g}, window={self.window:g}, "
                f"min_retries={self.min_retries})")
