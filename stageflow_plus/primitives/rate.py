"""Rate limits as configuration: how many units per period, and the burst.

Kept apart from :mod:`~stageflow_plus.primitives.resources` (which holds the buckets), so it
stays plain Python in the compiled build: its checks give :class:`ConfigError` for any bad
value, whatever its type.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["Rate"]


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit: ``limit`` units per ``per`` seconds, bursting up to ``burst``.

    :ivar limit: units admitted per period (e.g. 600 requests, 90 000 tokens).
    :ivar per: the period in seconds (60 for "per minute").
    :ivar burst: bucket capacity; defaults to ``limit`` (one full period may pass at once).
    :ivar dimension: what a unit is: ``"requests"`` (1 per call) or a cost name such as
        ``"tokens"`` (the call's estimated cost under that name).
    :ivar start_full: whether a new bucket starts full (burst available at once) or empty.
    """

    limit: float
    per: float = 1.0
    burst: float | None = None
    dimension: str = "requests"
    start_full: bool = True

    def __post_init__(self) -> None:
        for field_name in ("limit", "per"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"Rate.{field_name} must be a number, got {value!r}")
            if not value > 0 or math.isinf(value):
                raise ConfigError(f"Rate.{field_name} must be a finite number > 0, got {value!r}")
        if self.burst is not None and (
            isinstance(self.burst, bool)
            or not isinstance(self.burst, (int, float))
            or not self.burst > 0
        ):
            raise ConfigError(f"Rate.burst must be a number > 0, got {self.burst!r}")
        if not isinstance(self.dimension, str) or not self.dimension:
            raise ConfigError(f"Rate.dimension must be a non-empty string, got {self.dimension!r}")

    @property
    def rate(self) -> float:
        """Units per second."""
        return self.limit / self.per

    @property
    def capacity(self) -> float:
        """The bucket capacity (``burst``, or ``limit`` when no burst was given)."""
        return float(self.burst if self.burst is not None else self.limit)
