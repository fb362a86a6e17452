"""Rate limits as configuration: how many units per period, and the burst.

Kept apart from :mod:`~stageflow_plus.primitives.resources` (which holds the buckets), so it
stays plain Python in the compiled build: its checks give :class:`ConfigError` for any bad
value, whatever its type.

Three ways to write the same limit::

    Rate(600, per=60)                 # units per period in seconds
    Rate.per_minute(600)              # also per_second() and per_hour()
    Rate.parse("600/minute")          # "10/s", "90000/min", "5000/hour", "100/10s"

``per`` defaults to one second in the constructor (``Rate(10)`` is 10 per second); the
pipeline config has no such default: a rate there must say its period.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .dimensions import check_dimension
from .errors import ConfigError

__all__ = ["PERIODS", "Rate"]

PERIODS: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}
"""Period names a rate string or a config ``per`` may use, in seconds."""

_RATE = re.compile(
    r"^\s*(?P<limit>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*/\s*"
    r"(?P<count>[0-9]+(?:\.[0-9]*)?)?\s*(?P<unit>[A-Za-z]+)\s*$"
)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def period_seconds(value: object, where: str = "Rate.per") -> float:
    """Seconds of a period given as a number of seconds or a name (``"minute"``, ``"10s"``).

    :raises ConfigError: not a finite number > 0 nor a known period name.
    """
    if _is_number(value):
        seconds = float(value)  # type: ignore[arg-type]
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ConfigError(f"{where} must be a finite number of seconds > 0, got {value!r}")
        return seconds
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)?\s*([A-Za-z]+)\s*", value)
        unit = PERIODS.get(match.group(2).lower()) if match else None
        if match and unit is not None:
            count = float(match.group(1)) if match.group(1) else 1.0
            if count > 0 and math.isfinite(count * unit):
                return count * unit
    raise ConfigError(
        f"{where} must be seconds (a number > 0) or a period such as 'second', 'minute', "
        f"'hour', '10s'; got {value!r}"
    )


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit: ``limit`` units per ``per`` seconds, bursting up to ``burst``.

    :ivar limit: units admitted per period (e.g. 600 requests, 90 000 tokens).
    :ivar per: the period in seconds (60 for "per minute"; default 1 s, see the module
        docstring: prefer :meth:`per_minute` / :meth:`parse`, which say it).
    :ivar burst: bucket capacity; defaults to ``limit`` (one full period may pass at once).
    :ivar dimension: what a unit is: ``"requests"`` (1 per call) or a cost name such as
        ``"tokens"`` (the call's estimated cost under that name).
    :ivar start_full: whether a new bucket starts full (burst available at once) or empty.

    :raises ConfigError: a value of the wrong type (``bool`` is not a number), not finite
        (``nan``, ``inf``), not above 0, or a rate per second that is not a finite number
        above 0 (e.g. ``Rate(1e308, per=1e-10)``).
    """

    limit: float
    per: float = 1.0
    burst: float | None = None
    dimension: str = "requests"
    start_full: bool = True

    def __post_init__(self) -> None:
        for field_name in ("limit", "per"):
            value = getattr(self, field_name)
            if not _is_number(value):
                raise ConfigError(f"Rate.{field_name} must be a number, got {value!r}")
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"Rate.{field_name} must be a finite number > 0, got {value!r}")
        if self.burst is not None and (
            not _is_number(self.burst) or not (self.burst > 0 and math.isfinite(self.burst))
        ):
            raise ConfigError(f"Rate.burst must be a finite number > 0, got {self.burst!r}")
        rate = self.limit / self.per
        if not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(
                f"Rate {self.limit!r} per {self.per!r} s is {rate!r} per second; it must be "
                "a finite number > 0"
            )
        if not isinstance(self.dimension, str) or not self.dimension.strip():
            raise ConfigError(f"Rate.dimension must be a non-empty string, got {self.dimension!r}")
        check_dimension(self.dimension, "Rate.dimension")  # a typo of 'tokens' limits nothing
        if not isinstance(self.start_full, bool):
            raise ConfigError(f"Rate.start_full must be True or False, got {self.start_full!r}")

    @property
    def rate(self) -> float:
        """Units per second."""
        return self.limit / self.per

    @property
    def capacity(self) -> float:
        """The bucket capacity (``burst``, or ``limit`` when no burst was given)."""
        return float(self.burst if self.burst is not None else self.limit)

    # -- named constructors ----------------------------------------------------------------
    @classmethod
    def per_second(cls, limit: float, **options: Any) -> Rate:
        """``limit`` units per second (``options``: ``burst``, ``dimension``, ``start_full``).

        .. versionadded:: 0.1.0
        """
        return cls(limit, 1.0, **options)

    @classmethod
    def per_minute(cls, limit: float, **options: Any) -> Rate:
        """``limit`` units per minute, e.g. ``Rate.per_minute(600)`` for 600 RPM.

        .. versionadded:: 0.1.0
        """
        return cls(limit, 60.0, **options)

    @classmethod
    def per_hour(cls, limit: float, **options: Any) -> Rate:
        """``limit`` units per hour.

        .. versionadded:: 0.1.0
        """
        return cls(limit, 3600.0, **options)

    @classmethod
    def parse(cls, text: str, **options: Any) -> Rate:
        """A rate from text: ``"600/minute"``, ``"10/s"``, ``"90000/min"``, ``"100/10s"``.

        The period names are those of :data:`PERIODS` (singular, plural or abbreviated).

        :raises ConfigError: text that does not read ``<number>/<period>``.

        .. versionadded:: 0.1.0
        """
        if not isinstance(text, str):
            raise ConfigError(f"a rate string must be a str, got {text!r}")
        match = _RATE.match(text)
        if match is None or match.group("unit").lower() not in PERIODS:
            raise ConfigError(
                f"rate {text!r} must read '<number>/<period>', e.g. '600/minute', '10/s', "
                f"'90000/min' (periods: {', '.join(sorted(set(PERIODS)))})"
            )
        count = float(match.group("count")) if match.group("count") else 1.0
        per = count * PERIODS[match.group("unit").lower()]
        limit = float(match.group("limit"))
        try:
            return cls(int(limit) if limit.is_integer() and limit < 2**53 else limit, per,
                       **options)
        except ConfigError as error:
            raise ConfigError(f"rate {text!r}: {error}") from None

    def __str__(self) -> str:
        """``"600/60s requests"`` style, for messages and ``config show``."""
        return f"{self.limit:g}/{self.per:g}s {self.dimension}"
