"""Fuzz: hostile call fields and cost callbacks never hang, leak, crash or slip through.

Hypothesis draws tool calls whose fields (tool, tenant, run id, priority, cost mapping,
deadline) and whose cost callbacks' returns (``cost_of`` in ``build_call``, a per-run cost
default, ``actual_cost``) range over hostile values — NaN, infinities, negatives, huge
numbers, strings, ``bool``, ``None``, non-mappings, raising callbacks — mixed with valid
ones, and runs them, with one well-formed witness call, through a full chain on a manual
clock. The property, for every call:

* it is refused at construction with a :class:`StageflowPlusError` whose message names the
  offending field (or ``cost_of``'s own exception propagates, as documented), or
* it runs and returns the tool's result (a failing ``actual_cost`` keeps it), or
* it is refused with a typed :class:`Rejected` and the tool never ran;

and for the whole schedule: it ends within a bounded number of clock steps (no timer
re-armed for "now" forever), no permit or holder is left, every bucket stays finite and
within its burst, and the witness call behind the hostile ones is admitted.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ManualClock,
    PriorityFairQueue,
    Rate,
    Rejected,
    StageflowPlusError,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
    call_scope,
)
from stageflow_plus.primitives import TokenBucket
from stageflow_plus.stageflow.tools import build_call
from stageflow_plus.testing import SimpleAction, drive

BURST = 1_000.0
TIMER_BUDGET = 2_000  # timers one schedule may arm; a spinning limiter arms without end
MISSING = object()  # "leave the field at its default"


class TimerSpin(AssertionError):
    """The limiter armed more timers than any schedule here can need."""


class BudgetClock(ManualClock):
    """A manual clock that refuses to arm more than ``TIMER_BUDGET`` timers."""

    __slots__ = ("armed",)

    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        self.armed += 1
        if self.armed > TIMER_BUDGET:
            raise TimerSpin(f"{self.armed} timers armed; the last for {when} at {self.now()}")
        return super().call_at(when, callback)


class CallbackBroke(Exception):
    """A cost callback that raises."""


# -- hostile and valid values --------------------------------------------------------------
hostile_numbers = st.sampled_from(
    [math.nan, math.inf, -math.inf, -1, -0.5, -1e-300, 10**400, -(10**400)]
)
hostile_objects = st.one_of(
    st.sampled_from([None, True, False, "12", "", b"5", [1], (1,), {"a": 1}, object()]),
    st.text(max_size=5),
)
valid_costs = st.one_of(
    st.integers(0, 2_000), st.floats(0, 2_000, allow_nan=False), st.just(1e300)
)
cost_values = st.one_of(valid_costs, valid_costs, hostile_numbers, hostile_objects)
cost_mappings = st.one_of(
    st.dictionaries(st.sampled_from(["tokens", "dollars"]), cost_values, max_size=2),
    st.dictionaries(st.integers(0, 3), valid_costs, min_size=1, max_size=1),  # odd names
    hostile_objects.filter(lambda v: not isinstance(v, Mapping)),
)
priorities = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([2**31, -(2**31), 2**31 + 1, 10**30, 1.5, math.nan, True, "1", None]),
)
tenants = st.one_of(st.text(max_size=4), hostile_objects.filter(lambda v: not isinstance(v, str)),
                    hostile_numbers)
deadlines = st.one_of(
    st.none(),
    st.sampled_from([0.5, 5.0, 100.0, -1.0, math.inf, -math.inf, math.nan]),  # offsets
    st.sampled_from(["soon", [1.0]]),
)
returns = st.one_of(  # what a cost callback returns, or "raise"
    st.none(), cost_mappings, st.just("raise"),
)


@dataclass
class Spec:
    """One call to make: through ``ToolCall`` directly or through ``build_call``."""

    via_build: bool
    tool: Any
    tenant: Any
    run_id: Any
    priority: Any
    cost: Any
    deadline: Any  # an offset from now, or a hostile non-number
    estimate: Any  # cost_of's return (build_call only)
    scope_cost: Any  # the per-run default cost (build_call only)
    actual: Any  # actual_cost's return
    outcome: str = "new"  # built -> ran | rejected | refused | callback
    error: BaseException | None = None
    ran: int = 0
    result: Any = None
    hostile: set[str] = field(default_factory=set)


specs = st.builds(
    Spec,
    via_build=st.booleans(),
    tool=st.one_of(st.sampled_from(["search", "llm"]), st.just(MISSING), hostile_objects),
    tenant=st.one_of(st.just(MISSING), tenants),
    run_id=st.one_of(st.just(MISSING), st.none(), st.text(max_size=3), st.sampled_from([5, b"r"])),
    priority=st.one_of(st.just(MISSING), priorities),
    cost=st.one_of(st.just(MISSING), cost_mappings),
    deadline=st.one_of(st.just(MISSING), deadlines),
    estimate=returns,
    scope_cost=st.one_of(st.just(MISSING), cost_mappings),
    actual=returns,
)


def _valid_cost(value: Any) -> bool:
    if not isinstance(value, Mapping):
        return False
    return all(
        isinstance(k, str)
        and not isinstance(v, bool)
        and isinstance(v, (int, float))
        and 0 <= v <= 1.7976931348623157e308
        for k, v in value.items()
    )


def expected_field_names(spec: Spec) -> set[str]:
    """The names a refusal of ``spec`` may give (one per hostile input)."""
    names: set[str] = set()
    if spec.via_build:
        if spec.estimate is not None and spec.estimate != "raise" and not _valid_cost(
            spec.estimate
        ):
            names.add("cost_of()")
        if spec.scope_cost is not MISSING and not _valid_cost(spec.scope_cost):
            names.add("CallScope.cost")
        if isinstance(spec.priority, bool) or (
            spec.priority is not MISSING and spec.priority is not None and not (
                isinstance(spec.priority, int) and abs(spec.priority) <= 2**31
            )
        ):
            names.add("ToolCall.priority")
            names.add("CallScope.priority")  # call_scope() checks its fields too
    else:
        checks: dict[str, Callable[[Any], bool]] = {
            "tool": lambda v: isinstance(v, str),
            "tenant": lambda v: isinstance(v, str),
            "run_id": lambda v: v is None or isinstance(v, str),
            "priority": lambda v: type(v) is int and abs(v) <= 2**31,
            "cost": _valid_cost,
        }
        for name, valid in checks.items():
            value = getattr(spec, name)
            if value is not MISSING and not valid(value):
                names.add(f"ToolCall.{name}")
    if spec.deadline is not MISSING and spec.deadline is not None and (
        not isinstance(spec.deadline, (int, float)) or math.isnan(spec.deadline)
    ):
        names.add("ToolCall.deadline")
        if spec.via_build:
            names.add("CallScope.deadline")  # refused by call_scope() before any call
    return names


def make_call(spec: Spec, now: float) -> ToolCall:
    deadline = spec.deadline
    if isinstance(deadline, (int, float)) and not isinstance(deadline, bool):
        deadline = now + deadline
    if not spec.via_build:
        fields: dict[str, Any] = {
            name: value
            for name, value in (
                ("tenant", spec.tenant), ("run_id", spec.run_id), ("priority", spec.priority),
                ("cost", spec.cost), ("deadline", deadline),
            )
            if value is not MISSING
        }
        return ToolCall("llm" if spec.tool is MISSING else spec.tool, **fields)

    def cost_of(tool: str, payload: Mapping[str, Any]) -> Any:
        if spec.estimate == "raise":
            raise CallbackBroke("cost_of broke")
        return spec.estimate

    scope: dict[str, Any] = {"run_id": "run-1", "tenant": "acme"}
    if spec.priority is not MISSING:
        scope["priority"] = spec.priority
    if spec.deadline is not MISSING:
        scope["deadline"] = deadline
    if spec.scope_cost is not MISSING:
        scope["cost"] = spec.scope_cost
    with call_scope(**scope):
        return build_call(SimpleAction("llm", {"prompt": "p"}), {}, cost_of=cost_of, now=now)


def actual_cost_for(specs_by_call: dict[int, Spec]) -> Callable[[Any], Any]:
    def actual_cost(result: Any) -> Any:
        spec = specs_by_call.get(result["call_id"])
        if spec is None or spec.actual == "raise":
            raise CallbackBroke("actual_cost broke")
        return spec.actual

    return actual_cost


async def scenario(schedule: list[Spec]) -> None:
    clock = BudgetClock()
    by_call: dict[int, Spec] = {}
    rate = TokenBucketRateLimiter(
        [Rate(50, per=1), Rate(BURST, per=1, dimension="tokens")],
        key="tenant",
        actual_cost=actual_cost_for(by_call),
    )
    concurrency = ConcurrencyLimiter(2, per_tenant=1)
    chain = ToolCallChain(
        [Backpressure(max_queue=20), PriorityFairQueue(fair_cost="tokens"), rate, concurrency],
        clock=clock,
    )
    tasks: list[asyncio.Task[None]] = []

    async def run(spec: Spec, call: ToolCall) -> None:
        async def tool(c: ToolCall) -> dict[str, Any]:
            spec.ran += 1
            await asyncio.sleep(0)
            return {"call_id": c.call_id}

        try:
            spec.result = await chain.run(call, tool)
            spec.outcome = "ran"
        except Rejected as error:
            spec.outcome, spec.error = "rejected", error

    for spec in schedule:
        try:
            call = make_call(spec, clock.now())
        except CallbackBroke as error:  # cost_of's own exception propagates (documented)
            spec.outcome, spec.error = "callback", error
            continue
        except StageflowPlusError as error:
            spec.outcome, spec.error = "refused", error
            continue
        by_call[call.call_id] = spec
        tasks.append(asyncio.ensure_future(run(spec, call)))
    witness = Spec(False, "search", "witness", None, 0, {"tokens": 1}, None, None, MISSING, None)
    by_call_witness = ToolCall("search", tenant="witness", cost={"tokens": 1})
    by_call[by_call_witness.call_id] = witness
    tasks.append(asyncio.ensure_future(run(witness, by_call_witness)))
    await drive(clock, tasks, max_steps=500)  # a lost wake-up or a spin fails here
    await asyncio.gather(*tasks)  # any other exception (a bare one) fails the test

    for spec in schedule:
        names = expected_field_names(spec)
        if spec.outcome == "refused":
            assert any(name in str(spec.error) for name in names), (str(spec.error), names)
            assert spec.ran == 0
        elif spec.outcome != "callback":
            assert not names, f"accepted a hostile {names}: {spec}"  # never slips through
        elif spec.outcome == "callback":
            assert spec.via_build and spec.estimate == "raise" and spec.ran == 0
        elif spec.outcome == "rejected":
            assert spec.ran == 0, spec
        else:
            assert spec.outcome == "ran" and spec.ran == 1, spec
            assert isinstance(spec.result, dict)  # the result, even if actual_cost failed
    assert witness.outcome == "ran" and witness.ran == 1
    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.tasks_waiting == 0
    assert all(p.in_use == 0 and p.waiting == 0 for p in stats.pools)
    assert gate_resources_idle(chain)
    for bucket in stats.buckets:  # (a valid actual cost may leave a finite debt)
        assert math.isfinite(bucket.available) and bucket.available <= bucket.burst + 1e-6
    assert clock.armed <= TIMER_BUDGET


def gate_resources_idle(chain: ToolCallChain) -> bool:
    gate = chain.gate
    assert gate is not None
    for part in gate.parts:
        if isinstance(part, TokenBucketRateLimiter):
            for buckets in part._buckets.values():
                assert all(isinstance(b, TokenBucket) and b.holders == 0 for b in buckets)
        if isinstance(part, ConcurrencyLimiter):
            for group in part._groups:
                assert all(p.holders == 0 for p in group.pools.values())
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=st.lists(specs, min_size=1, max_size=5))
def test_hostile_calls_are_admitted_refused_or_rejected_never_lost(schedule: list[Spec]) -> None:
    asyncio.run(scenario(schedule))


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(cost_values, hostile_objects))
def test_every_single_cost_value_is_either_kept_or_refused_by_name(value: Any) -> None:
    try:
        call = ToolCall("llm", cost={"tokens": value})
    except StageflowPlusError as error:
        assert "ToolCall.cost['tokens'] of tool 'llm'" in str(error)
        assert not _valid_cost({"tokens": value})
    else:
        assert _valid_cost({"tokens": value}) and call.cost["tokens"] is value
