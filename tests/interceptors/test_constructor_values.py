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


def test_a_part_failing_to_configure_leaves_no_half_built_gate_behind() -> None:
    """A compiled gate whose construction a part aborted crashed the interpreter when its
    repr was taken (compiled code reads attributes __init__ always sets unchecked)."""
    from stageflow_plus.interceptors import LimitPart, ToolCallChain

    seen: list[Any] = []

    class Failing(LimitPart):
        def configure(self, gate: Any) -> None:
            seen.append(gate)
            raise RuntimeError("boom")

    part, concurrency = Failing(), ConcurrencyLimiter(2)
    with pytest.raises(RuntimeError, match="boom"):
        ToolCallChain([part, concurrency])
    assert "AdmissionGate" in repr(seen[0])  # no crash
    assert concurrency._gate is None  # free to join another chain
    assert ToolCallChain([concurrency]).gate is not None


@pytest.mark.parametrize(("limits", "message"), [
    ({"concurrency": math.nan}, r"\['concurrency'\] must be an int >= 1"),
    ({"concurrency": 0}, r"\['concurrency'\] must be an int >= 1"),
    ({"concurrency": "2"}, r"\['concurrency'\] must be an int >= 1"),
    ({"concurrency": True}, r"\['concurrency'\] must be an int >= 1"),
    ({"max_queue": -1}, r"\['max_queue'\] must be an int >= 0"),
    ({"max_queue": math.nan}, r"\['max_queue'\] must be an int >= 0"),
    ({"rates": "x"}, r"\['rates'\] must be a mapping"),
    ({"rates": {"requests": math.inf}}, r"\['rates'\]\['requests'\] must be a finite number"),
    ({"rates": {"requests": 0}}, r"\['rates'\]\['requests'\] must be a finite number"),
    ({"rates": {"token": 5}}, r"did you mean 'tokens'"),
    ({"bogus": 1}, r"unknown limit 'bogus'"),
    ([("concurrency", 1)], r"must be a mapping"),
])
def test_per_run_limits_on_a_call_or_a_scope_are_checked(limits: Any, message: str) -> None:
    from stageflow_plus import ToolCall, call_scope

    with pytest.raises(ConfigError, match=r"ToolCall\.limits of tool 't'.*" + message):
        ToolCall("t", run_id="r", limits=limits)
    with pytest.raises(ConfigError, match=r"CallScope\.limits.*" + message):
        call_scope(limits=limits)


def test_valid_per_run_limits_pass() -> None:
    from stageflow_plus import ToolCall

    limits = {"concurrency": 2, "max_queue": 0, "rates": {"requests": 1.5, "tokens": 100}}
    assert ToolCall("t", run_id="r", limits=limits).limits == limits
