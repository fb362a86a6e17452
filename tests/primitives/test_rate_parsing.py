"""Rate: strict validation (nan, inf, bools, overflowing rates) and the ways to write one."""

from __future__ import annotations

import math
from typing import Any

import pytest

from stageflow_plus import ConfigError, Rate


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 10, "per": 1, "burst": math.inf}, r"Rate\.burst must be a finite number"),
        ({"limit": 10, "per": 1, "burst": math.nan}, r"Rate\.burst must be a finite number"),
        ({"limit": 10, "per": 1, "burst": True}, r"Rate\.burst must be a finite number"),
        ({"limit": 1e308, "per": 1e-10}, r"is inf per second"),
        ({"limit": 1e-300, "per": 1e300}, r"is 0\.0 per second"),
        ({"limit": math.nan, "per": 1}, r"Rate\.limit must be a finite number > 0, got nan"),
        ({"limit": 10, "per": math.inf}, r"Rate\.per must be a finite number > 0, got inf"),
        ({"limit": 10, "per": 1, "start_full": "no"},
         r"Rate\.start_full must be True or False, got 'no'"),
        ({"limit": 10, "per": 1, "start_full": 0}, r"Rate\.start_full must be True or False"),
        ({"limit": 10, "per": 1, "dimension": "  "}, r"Rate\.dimension must be a non-empty"),
        ({"limit": 10, "per": 1, "dimension": 3}, r"Rate\.dimension must be a non-empty"),
    ],
)
def test_bad_rates_are_config_errors_naming_the_field(kwargs: dict[str, Any],
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Rate(**kwargs)


@pytest.mark.parametrize(
    ("text", "limit", "per"),
    [
        ("600/minute", 600, 60.0),
        ("10/s", 10, 1.0),
        ("90000/min", 90000, 60.0),
        ("5000 / hour", 5000, 3600.0),
        ("100/10s", 100, 10.0),
        ("2.5/second", 2.5, 1.0),
        ("1e6/day", 1_000_000, 86400.0),
        ("3/Minutes", 3, 60.0),
    ],
)
def test_rate_strings(text: str, limit: float, per: float) -> None:
    rate = Rate.parse(text, dimension="tokens", burst=7)
    assert (rate.limit, rate.per, rate.dimension, rate.burst) == (limit, per, "tokens", 7)


@pytest.mark.parametrize("text", ["600", "600/fortnight", "/minute", "ten/s", "600/minute/2",
                                  "-5/s", "0/s", "5/0s", "1e400/s", ""])
def test_bad_rate_strings_say_what_a_rate_string_looks_like(text: str) -> None:
    with pytest.raises(ConfigError, match=r"rate .*"):
        Rate.parse(text)


def test_named_constructors_say_the_period() -> None:
    assert Rate.per_minute(600) == Rate(600, per=60)
    assert Rate.per_second(10, burst=2) == Rate(10, per=1, burst=2)
    assert Rate.per_hour(3600, dimension="tokens").rate == 1.0
    assert str(Rate.per_minute(600)) == "600/60s requests"


def test_periods_by_name_or_seconds() -> None:
    from stageflow_plus.primitives.rate import period_seconds

    assert period_seconds("minute") == 60 and period_seconds(60) == 60
    assert period_seconds("10s") == 10 and period_seconds("2 hours") == 7200
    for bad in (0, -1, math.nan, math.inf, True, "fortnight", "", None):
        with pytest.raises(ConfigError, match=r"Rate\.per must be"):
            period_seconds(bad)
