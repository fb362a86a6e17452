"""Per-run overrides from ctx.data: validation, ceilings, and their effect on tool calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stageflow_plus import (
    ConcurrencyLimiter,
    ConfigError,
    ManualClock,
    QueueFull,
    Rate,
    TokenBucketRateLimiter,
    ToolCallChain,
    WaitTimeout,
)
from stageflow_plus.stageflow import (
    OVERRIDE_KEYS,
    CallScope,
    Ceilings,
    LimitedToolRegistry,
    OverrideError,
    call_scope,
    read_overrides,
)
from stageflow_plus.testing import ConcurrencyProbe, SimpleAction, drive, settle

pytestmark = pytest.mark.anyio


def test_every_key_is_read_validated_and_clamped() -> None:
    ceilings = Ceilings(max_priority=3, tenant_max_priority={"gold": 8}, max_concurrency=4,
                        max_rates={"requests": 10}, max_wait_ms=1000,
                        tenants_by_org={"org-1": frozenset({"gold"})})
    data: dict[str, Any] = {"_priority": 9, "_tenant": "gold", "_concurrency": 10,
                            "_rates": {"requests": 50, "tokens": 100}, "_max_queue": 0,
                            "_max_wait_ms": 5000, "_cost": {"tokens": 250}}
    assert set(data) == set(OVERRIDE_KEYS)
    got = read_overrides(data, ceilings, org="org-1")  # org-1 is granted tenant gold
    assert got.priority == 8 and got.tenant == "gold"  # gold may go up to 8, not 9
    assert got.concurrency == 4 and got.rates == {"requests": 10, "tokens": 100}
    assert got.max_queue == 0 and got.max_wait == 1.0 and got.cost == {"tokens": 250}
    assert set(got.clamped) == {"_priority", "_concurrency", "_rates.requests", "_max_wait_ms"}
    assert dict(got.limits()) == {"concurrency": 4, "rates": {"requests": 10, "tokens": 100},
                                  "max_queue": 0}
    plain = read_overrides({"_priority": 9}, ceilings, org="org-1")
    assert plain.priority == 3 and plain.tenant == "org-1" and plain.limits() == {}
    assert read_overrides({}, Ceilings(default_priority=1, max_priority=5)).priority == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"_priority": "high"}, r"ctx.data\['_priority'\] must be an int"),
        ({"_priority": True}, r"ctx.data\['_priority'\] must be an int"),
        ({"_tenant": ""}, r"ctx.data\['_tenant'\] must be a non-empty str"),
        ({"_tenant": "evil"}, r"'evil': a run of org 'a' may not claim that tenant"),
        ({"_tenant": None}, r"ctx.data\['_tenant'\] must be a non-empty str, got None"),
        ({"_priority": -(2**40)}, r"ctx.data\['_priority'\] must be >= -2147483648"),
        ({"_rates": None}, r"ctx.data\['_rates'\] must be a mapping"),
        ({"_cost": {"tokens": 10**400}}, r"\['_cost'\]\['tokens'\] must be a finite number"),
        ({"_concurrency": 0}, r"ctx.data\['_concurrency'\] must be >= 1"),
        ({"_rates": [5]}, r"ctx.data\['_rates'\] must be a mapping"),
        ({"_rates": {"requests": 0}}, r"\['_rates'\]\['requests'\] must be a finite number > 0"),
        ({"_max_queue": -1}, r"ctx.data\['_max_queue'\] must be >= 0"),
        ({"_max_wait_ms": float("nan")}, r"ctx.data\['_max_wait_ms'\] must be a number"),
        ({"_cost": {"tokens": -5}}, r"\['_cost'\]\['tokens'\] must be a finite number >= 0"),
    ],
)
def test_bad_values_are_refused_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        read_overrides(data, Ceilings(tenants=frozenset({"a", "b", "c"}),
                                      tenants_by_org={"a": frozenset({"c"})}), org="a")


def test_tenants_bound_every_run_and_grants_stay_within_them() -> None:
    ceilings = Ceilings(tenants=frozenset({"a", "b"}))
    with pytest.raises(OverrideError, match=r"the run's org_id = 'z' is not a configured "
                                            r"tenant \(known: a, b\)"):
        read_overrides({}, ceilings, org="z")
    with pytest.raises(ConfigError, match=r"Ceilings.tenants_by_org\['a'\] grants 'c', which "
                                          r"is not in Ceilings.tenants"):
        Ceilings(tenants=frozenset({"a", "b"}), tenants_by_org={"a": frozenset({"c"})})
    with pytest.raises(ConfigError, match=r"Ceilings.tenants must be a list of names, got 'ab'"):
        Ceilings(tenants="ab")  # type: ignore[arg-type]


def test_error_mode_refuses_instead_of_clamping() -> None:
    with pytest.raises(OverrideError, match=r"'_priority'\] = 9 exceeds the operator's ceil"):
        read_overrides({"_priority": 9}, Ceilings(max_priority=2, on_excess="error"))


class Echo:
    name = "echo"
    description = "echo"
    action_type = "ECHO"

    def __init__(self, clock: ManualClock, probe: ConcurrencyProbe, seconds: float) -> None:
        self.clock, self.probe, self.seconds = clock, probe, seconds

    async def execute(self, input: Any, ctx: dict[str, Any]) -> Any:
        from stageflow.tools.base import ToolOutput

        from stageflow_plus.testing import clock_sleep

        async def work() -> Any:
            if self.seconds:
                await clock_sleep(self.clock, self.seconds)
            return ToolOutput(success=True, data={"t": self.clock.now()})

        return await self.probe.run("ECHO", work)


def registry_on(chain: ToolCallChain, clock: ManualClock, seconds: float = 1.0) -> tuple[
        LimitedToolRegistry, ConcurrencyProbe]:
    from stageflow.tools import ToolRegistry

    probe = ConcurrencyProbe()
    tools = ToolRegistry()
    tools.register(Echo(clock, probe, seconds))
    return LimitedToolRegistry(chain, tools), probe


async def test_run_rates_cost_queue_bound_and_max_wait_reach_the_limiters() -> None:
    clock = ManualClock()
    rate = TokenBucketRateLimiter(Rate(100, per=1, burst=100))
    chain = ToolCallChain([rate, ConcurrencyLimiter(100)], clock=clock)
    registry, _probe = registry_on(chain, clock, seconds=0.0)
    # per-run rate of 2 requests/s: 6 calls take 2.5 s although the operator allows 100/s
    times: list[float] = []
    with call_scope(CallScope(run_id="slow-run", limits={"rates": {"requests": 2.0}})):
        tasks = [asyncio.ensure_future(registry.execute(SimpleAction("ECHO"), {}))
                 for _ in range(6)]
    await drive(clock, tasks)
    outputs = [t.result() for t in tasks]
    times = [o.data["t"] for o in outputs if o is not None and o.data is not None]
    assert times == pytest.approx([0, 0, 0.5, 1.0, 1.5, 2.0])
    other = await registry.execute(SimpleAction("ECHO"), {})  # other runs are not slowed
    assert other is not None and other.data is not None
    assert other.data["t"] == pytest.approx(2.0)


async def test_run_queue_bound_and_max_wait() -> None:
    clock = ManualClock()
    chain = ToolCallChain([ConcurrencyLimiter(1)], clock=clock)
    registry, probe = registry_on(chain, clock, seconds=1.0)
    running = asyncio.ensure_future(registry.execute(SimpleAction("ECHO"), {}))
    await settle()
    with call_scope(CallScope(run_id="r", limits={"max_queue": 1})):
        queued = asyncio.ensure_future(registry.execute(SimpleAction("ECHO"), {}))
        await settle()
        with pytest.raises(QueueFull, match="run 'r' already has 1 calls waiting"):
            await registry.execute(SimpleAction("ECHO"), {})
    with call_scope(CallScope(run_id="q", max_wait=0.5)):
        impatient = asyncio.ensure_future(registry.execute(SimpleAction("ECHO"), {}))
    await drive(clock, [running, queued, impatient])
    with pytest.raises(WaitTimeout):
        impatient.result()
    done = queued.result()
    assert done is not None and done.success and probe.max_in_flight == 1
    stats = chain.statistics()
    assert stats is not None and dict(stats.rejected) == {"queue_full": 1, "wait_timeout": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"default_priority": 3, "max_priority": 2}, r"default_priority \(3\) is above"),
        ({"default_priority": 2, "max_priority": 5, "tenant_max_priority": {"free": 1}},
         r"tenant_max_priority\['free'\] \(1\) is below Ceilings.default_priority \(2\)"),
        ({"tenant_max_priority": [("a", 1)]}, r"tenant_max_priority must be a mapping"),
        ({"max_rates": {"requests": float("inf")}}, r"max_rates\['requests'\] must be a finite"),
        ({"tenants_by_org": {"org": "acme"}}, r"tenants_by_org\['org'\] must be a list of names"),
    ],
)
def test_ceilings_refuse_inconsistent_or_mistyped_values(options: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Ceilings(**options)
