"""Issue 11.5 / 15.1 in Python: a hand-built chain refuses what the config refuses.

The pipeline config checks every entry (tests/stageflow/test_config_values.py); the same
values given to the constructors directly must be a ``ConfigError`` naming the parameter,
never a bare ``TypeError`` or a silently truthy string.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ConfigError,
    PriorityFairQueue,
    Rate,
    TokenBucketRateLimiter,
    register_dimension,
)
from stageflow_plus.primitives.dimensions import KNOWN_DIMENSIONS


def _bad(value: Any) -> Any:
    """A value of the wrong type, as a hostile or careless caller passes it."""
    return value


@pytest.mark.parametrize(("build", "message"), [
    (lambda: Backpressure(deadline_aware=_bad("false")), r"deadline_aware must be True or False"),
    (lambda: Backpressure(deadline_aware=_bad(1)), r"deadline_aware must be True or False"),
    (lambda: ConcurrencyLimiter(4, per_tool=_bad([1])), r"per_tool must be an int or a mapping"),
    (lambda: ConcurrencyLimiter(4, per_tenant=_bad("acme")),
     r"per_tenant must be an int or a mapping"),
    (lambda: TokenBucketRateLimiter(Rate(1, per=1), key="tool", per_key_rates=_bad({"a": 5})),
     r"per_key_rates\['a'\] must be one or more Rate objects, got int"),
    (lambda: TokenBucketRateLimiter(Rate(1, per=1), key="tool",
                                    per_key_rates=_bad([Rate(1, per=1)])),
     r"per_key_rates must be a mapping"),
    (lambda: TokenBucketRateLimiter(_bad("600/minute")),
     r"must be one or more Rate objects, got str"),
    (lambda: PriorityFairQueue(weights={"a": math.inf}), r"weight of tenant 'a' must be finite"),
    (lambda: PriorityFairQueue(weights=_bad([("a", 1)])), r"weights must be a mapping"),
    (lambda: PriorityFairQueue(fair_cost="token"), r"did you mean 'tokens'"),
    (lambda: Rate(10, per=60, dimension="token"), r"Rate\.dimension = 'token'.*did you mean "
                                                   r"'tokens'"),
    (lambda: Rate(10, per=60, dimension="Requests"), r"did you mean 'requests'"),
])
def test_constructors_refuse_what_the_config_refuses(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_a_registered_dimension_is_no_typo() -> None:
    assert Rate(10, per=60, dimension="gpu_seconds").dimension == "gpu_seconds"  # not close
    with pytest.raises(ConfigError, match="did you mean"):
        Rate(10, per=60, dimension="input_token")
    register_dimension("input_token", "a deliberate name in a test")
    try:
        assert Rate(10, per=60, dimension="input_token").dimension == "input_token"
        assert PriorityFairQueue(fair_cost="input_token") is not None
    finally:
        del KNOWN_DIMENSIONS["input_token"]
