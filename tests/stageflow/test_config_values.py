"""Every config value is checked at the boundary: a ConfigError naming the entry and the value,
never a silent acceptance, a bare TypeError/AttributeError, or a value that is then ignored."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest

import stageflow_plus as sfp
from stageflow_plus import (
    ConfigError,
    ManualClock,
    PriorityFairQueue,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
)
from stageflow_plus.stageflow import Ceilings, read_overrides

pytestmark = pytest.mark.anyio

NAN, INF = math.nan, math.inf


# -- issue 11 item 5: each reported case ------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rate": {"rates": [{"limit": 1000, "per": 1, "burst": INF}]}},
         r"stageflow_plus\.rate\.rates\[0\]\.burst must be a finite number > 0, got inf"),
        ({"rate": {"rates": [{"limit": 1e308, "per": 1e-10}]}},
         r"stageflow_plus\.rate\.rates\[0\]: Rate 1e\+308 per 1e-10 s is inf per second"),
        ({"backpressure": {"deadline_aware": "false"}},
         r"stageflow_plus\.backpressure\.deadline_aware must be true or false, got 'false'"),
        ({"ceilings": {"tenants": "acme"}},
         r"stageflow_plus\.ceilings\.tenants must be a list, got 'acme'"),
        ({"ceilings": {"default_priority": 5, "max_priority": 2}},
         r"stageflow_plus\.ceilings\.default_priority = 5 is above "
         r"stageflow_plus\.ceilings\.max_priority = 2"),
        ({"priority": {"weights": [["acme", 2]]}},
         r"stageflow_plus\.priority\.weights must be a table .*got \[\['acme', 2\]\]"),
        ({"ceilings": {"tenant_max_priority": [1, 2]}},
         r"stageflow_plus\.ceilings\.tenant_max_priority must be a table"),
        ({"rate": {"rates": [{"limit": 10, "per": 1, "start_full": "no"}]}},
         r"stageflow_plus\.rate\.rates\[0\]\.start_full must be true or false, got 'no'"),
    ],
)
def test_reported_silent_or_unclear_configs_are_refused(config: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sfp.build(config, env={})


def test_an_env_value_error_names_the_variable_and_the_entry() -> None:
    with pytest.raises(ConfigError, match=r"STAGEFLOW_PLUS_RPM='six hundred' must be an int "
                                          r">= 1 \(it sets stageflow_plus\.rate\.rates\)"):
        sfp.build(None, env={"STAGEFLOW_PLUS_RPM": "six hundred"})
    with pytest.raises(ConfigError, match=r"STAGEFLOW_PLUS_MAX_CONCURRENT='0' must be an int "
                                          r">= 1 \(it sets stageflow_plus\.concurrency\.limit"):
        sfp.build(None, env={"STAGEFLOW_PLUS_MAX_CONCURRENT": "0"})
    with pytest.raises(ConfigError, match=r"STAGEFLOW_PLUS_BACKEND='ftp://x': "
                                          r"stageflow_plus\.backend: unknown backend scheme"):
        sfp.build(None, env={"STAGEFLOW_PLUS_BACKEND": "ftp://x"})


def test_env_rates_merge_into_the_rate_table_keeping_the_tpm_bucket() -> None:
    config = {"rate": {"rates": ["600/minute", {"limit": "90000/minute",
                                                "dimension": "tokens"}]}}
    merged = sfp.load_config(config, env={"STAGEFLOW_PLUS_RPM": "300"})
    assert merged["rate"]["rates"] == [
        {"limit": 300, "per": 60.0},
        {"limit": 90000, "per": 60.0, "dimension": "tokens"},
    ]
    both = sfp.load_config(config, env={"STAGEFLOW_PLUS_TPM": "1000",
                                        "STAGEFLOW_PLUS_RPM": "5"})
    assert [r["limit"] for r in both["rate"]["rates"]] == [5, 1000]
    # a per-second rate is not the per-minute one: RPM adds its own bucket beside it
    per_second = sfp.load_config({"rate": {"rates": ["10/s"]}},
                                 env={"STAGEFLOW_PLUS_RPM": "300"})
    assert per_second["rate"]["rates"] == [{"limit": 10, "per": 1.0},
                                           {"limit": 300, "per": 60}]
    plus = sfp.build(config, env={"STAGEFLOW_PLUS_RPM": "300"})
    rate = plus.chain.interceptors[-2]
    assert isinstance(rate, TokenBucketRateLimiter)
    assert [(b.dimension, b.rate) for b in rate.buckets_for("*", 0.0)] == [
        ("requests", 5.0), ("tokens", 1500.0)]


def test_unknown_stageflow_plus_variables_are_refused_with_the_known_list() -> None:
    with pytest.raises(ConfigError, match=r"STAGEFLOW_PLUS_RMP is not one stageflow-plus "
                                          r"reads.*known: .*STAGEFLOW_PLUS_RPM"):
        sfp.build(None, env={"STAGEFLOW_PLUS_RMP": "600"})
    build_time = {name: "1" for name in ("STAGEFLOW_PLUS_PURE",
                                         "STAGEFLOW_PLUS_REQUIRE_COMPILED")}
    assert sfp.build(None, env={**build_time, "STAGEFLOW_PLUS_VENV": "/x", "OTHER": "y"})
    from stageflow_plus.stageflow.env import ENV_VARS

    assert {"STAGEFLOW_PLUS_CONFIG", "STAGEFLOW_PLUS_BACKEND"} <= set(ENV_VARS)


# -- issue 15 item 1 ---------------------------------------------------------------------------
def test_a_rate_without_its_period_is_refused_and_strings_say_it() -> None:
    with pytest.raises(ConfigError, match=r"stageflow_plus\.rate\.rates\[0\] = \{'limit': 600\} "
                                          r"has no per: 600 per what\?"):
        sfp.build({"rate": {"rates": [{"limit": 600}]}}, env={})
    with pytest.raises(ConfigError, match=r"rates\[0\]: limit '600/minute' already says its "
                                          r"period; drop per = 60"):
        sfp.build({"rate": {"rates": [{"limit": "600/minute", "per": 60}]}}, env={})
    plus = sfp.build({"rate": {"rates": ["600/minute", {"limit": 90000, "per": "minute",
                                                        "dimension": "tokens", "burst": 9000}],
                               "key": "tool", "per_key_rates": {"search": "10/s"}}}, env={})
    assert plus.config["rate"]["rates"] == [
        {"limit": 600, "per": 60.0},
        {"limit": 90000, "per": 60.0, "dimension": "tokens", "burst": 9000},
    ]
    rate = next(s for s in plus.chain.interceptors if isinstance(s, TokenBucketRateLimiter))
    assert [b.rate for b in rate.buckets_for("search", 0.0)] == [10.0]  # its own rate
    assert [b.rate for b in rate.buckets_for("fetch", 0.0)] == [10.0, 1500.0]


async def test_rate_without_key_is_one_global_bucket_whatever_the_tool() -> None:
    clock = ManualClock()
    for limiter in (TokenBucketRateLimiter(Rate(2, per=60)),
                    next(s for s in sfp.build({"rate": {"rates": ["2/minute"]}}, env={},
                                              clock=clock).chain.interceptors
                         if isinstance(s, TokenBucketRateLimiter))):
        assert limiter.key_of(ToolCall("search")) == limiter.key_of(ToolCall("fetch")) == "*"
    chain = sfp.build({"rate": {"rates": ["2/minute"]}, "backpressure": {"max_queue": 0}},
                      env={}, clock=clock).chain

    async def tool(call: ToolCall) -> str:
        return call.tool

    assert await chain.run(ToolCall("search"), tool) == "search"
    assert await chain.run(ToolCall("fetch"), tool) == "fetch"
    with pytest.raises(sfp.QueueFull):  # a third tool shares the same 2/minute
        await chain.run(ToolCall("other"), tool)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rate": {"rates": [{"limit": 10, "per": 1, "dimension": "token"}]}},
         r"rates\[0\]\.dimension = 'token' is not a known cost dimension; did you mean "
         r"'tokens'\?"),
        ({"rate": {"rates": [{"limit": 10, "per": 1, "dimension": "request"}]}},
         r"did you mean 'requests'\?"),
        ({"priority": {"fair_cost": "Tokens"}}, r"fair_cost = 'Tokens'.*did you mean 'tokens'"),
        ({"ceilings": {"max_rates": {"token": 5}}}, r"max_rates key 'token'.*'tokens'"),
    ],
)
def test_dimension_typos_are_refused_with_a_suggestion(config: dict[str, Any],
                                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sfp.build(config, env={})


def test_a_run_override_with_a_dimension_typo_is_refused() -> None:
    with pytest.raises(sfp.OverrideError, match=r"did you mean 'tokens'"):
        read_overrides({"_rates": {"tokns": 5}}, Ceilings())


def test_a_bucket_no_declared_cost_charges_is_refused_at_build(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from stageflow_plus.stageflow import config as config_module

    monkeypatch.setitem(config_module.SECTIONS, "costs_for_test", frozenset())
    monkeypatch.setitem(config_module.COST_SECTIONS, "costs_for_test",
                        lambda section: {"tokens"})
    declared: dict[str, Any] = {"costs_for_test": {}}
    ok = {"rate": {"rates": ["10/s", {"limit": "100/s", "dimension": "tokens"}]}}
    assert sfp.build({**ok, **declared}, env={})
    with pytest.raises(ConfigError, match=r"rates\[1\]\.dimension = 'gpu_seconds': no declared "
                                          r"cost charges it \(charged: requests, tokens"):
        sfp.build({"rate": {"rates": ["10/s", {"limit": "5/s", "dimension": "gpu_seconds"}]},
                   **declared}, env={})


async def test_a_bucket_nothing_charges_is_warned_about_once_at_run_time(
        caplog: pytest.LogCaptureFixture) -> None:
    from stageflow_plus.interceptors.dimensions import UnchargedDimensionWatch

    plus = sfp.build({"rate": {"rates": ["10/s", {"limit": "100/s",
                                                   "dimension": "gpu_seconds"}]}}, env={})
    watch = next(s for s in plus.chain.interceptors if isinstance(s, UnchargedDimensionWatch))

    async def tool(call: ToolCall) -> None:
        return None

    with caplog.at_level(logging.WARNING, logger="stageflow_plus"):
        await plus.chain.run(ToolCall("a", cost={"gpu_seconds": 1}), tool)
        assert watch.pending == ("gpu_seconds",) and not caplog.records
        for _ in range(3):
            await plus.chain.run(ToolCall("b"), tool)
    warned = [r for r in caplog.records if r.name == "stageflow_plus"]
    assert len(warned) == 1 and "'gpu_seconds'" in warned[0].getMessage()
    assert "rates[1].dimension" in warned[0].getMessage()
    assert not watch.pending
    assert not any(isinstance(s, UnchargedDimensionWatch) for s in
                   sfp.build({"rate": {"rates": ["10/s"]}}, env={}).chain.interceptors)


def test_one_priority_ceiling_knob_and_a_fair_queue_makes_priorities_work() -> None:
    queued = sfp.build({"priority": {"aging_interval": 1.0}}, env={})
    scope = next(i for i in queued.interceptors if isinstance(i, sfp.CallScopeInterceptor))
    assert read_overrides({"_priority": 7}, scope.ceilings).priority == 7
    assert read_overrides({"_priority": 50}, scope.ceilings).priority == 9  # levels 0..9
    queue = next(s for s in queued.chain.interceptors if isinstance(s, PriorityFairQueue))
    assert queue.max_priority == 9
    lowered = sfp.build({"priority": {}, "ceilings": {"max_priority": 2,
                                                      "tenant_max_priority": {"gold": 5}}},
                        env={})
    scope = next(i for i in lowered.interceptors if isinstance(i, sfp.CallScopeInterceptor))
    assert read_overrides({"_priority": 7}, scope.ceilings).priority == 2
    queue = next(s for s in lowered.chain.interceptors if isinstance(s, PriorityFairQueue))
    assert queue.max_priority == 5
    fifo = sfp.build({}, env={})
    scope = next(i for i in fifo.interceptors if isinstance(i, sfp.CallScopeInterceptor))
    assert scope.ceilings.max_priority == 0  # no queue orders by priority: nothing to raise
    with pytest.raises(ConfigError, match=r"stageflow_plus\.priority\.max_priority: the "
                                          r"priority ceiling is one knob: "
                                          r"stageflow_plus\.ceilings\.max_priority"):
        sfp.build({"priority": {"max_priority": 3}}, env={})
    with pytest.raises(ConfigError, match=r"default_priority = 10 is above "
                                          r"stageflow_plus\.ceilings\.max_priority = 9 \(its "
                                          r"default here\)"):
        sfp.build({"priority": {}, "ceilings": {"default_priority": 10}}, env={})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rate": {"rates": ["10/s"], "per_key_rates": {"search": "1/s"}}},
         r"stageflow_plus\.rate\.per_key_rates: with key = 'global' every call shares one "
         r"set of buckets"),
        ({"ceilings": {"tenants": ["a"], "tenant_max_priority": {"b": 3}}},
         r"stageflow_plus\.ceilings\.tenant_max_priority\.b: tenant 'b' is not in "
         r"stageflow_plus\.ceilings\.tenants \(a\)"),
        ({"priority": {"weights": {"b": 2}}, "ceilings": {"tenants": ["a"]}},
         r"stageflow_plus\.priority\.weights\.b: tenant 'b' is not in"),
    ],
)
def test_entries_no_call_can_reach_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sfp.build(config, env={})


def test_the_interceptor_priorities_section_is_renamed_with_a_guiding_error() -> None:
    with pytest.raises(ConfigError, match=r"stageflow_plus\.priorities: stageflow_plus\."
                                          r"priorities was renamed stageflow_plus\."
                                          r"interceptor_order"):
        sfp.build({"priorities": {"call_scope": 9}}, env={})
    plus = sfp.build({"interceptor_order": {"call_scope": 9}}, env={})
    assert next(i for i in plus.interceptors
                if isinstance(i, sfp.CallScopeInterceptor)).priority == 9


# -- walking every key of every section ---------------------------------------------------------
GOOD: dict[str, dict[str, Any]] = {
    "concurrency": {"limit": 4, "per_tool": {"search": 2}, "per_run": 2, "per_tenant": 3},
    "rate": {"rates": ["10/s"], "key": "tenant", "per_key_rates": {"acme": ["5/s"]}},
    "priority": {"aging_interval": 0.5, "weights": {"a": 2}, "default_weight": 1,
                 "fair_cost": "tokens"},
    "backpressure": {"max_queue": 10, "max_queue_per_key": 5, "shedding": "evict_oldest",
                     "deadline_aware": False, "max_wait": 2.5},
    "tool_breaker": {"failure_threshold": 3, "reset_timeout": 10, "half_open_calls": 2},
    "circuit_breaker": {"failure_threshold": 3, "reset_timeout": 10},
    "ceilings": {"default_priority": 1, "max_priority": 3, "tenant_max_priority": {"a": 4},
                 "max_concurrency": 3, "max_rates": {"requests": 5}, "max_wait_ms": 100,
                 "tenants": ["a", "b"], "tenants_by_org": {"org": ["a"]},
                 "on_excess": "error"},
    "interceptor_order": {"call_scope": 9},
    "backend": {"url": "memory://"},
}
BAD_VALUES: list[Any] = [None, True, "3", -1, 0, NAN, INF, -INF, 1e400, [1], {"x": 1}, 2.5,
                         10**30, ""]


def _accepted(section: str, key: str, value: Any) -> bool:
    """Whether ``value`` is a valid value for ``section.key`` by the documented rules."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_num = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value))
    ints_ge = {("concurrency", "limit"): 1, ("concurrency", "per_run"): 1,
               ("concurrency", "per_tool"): 1, ("concurrency", "per_tenant"): 1,
               ("backpressure", "max_queue"): 0, ("backpressure", "max_queue_per_key"): 0,
               ("tool_breaker", "failure_threshold"): 1, ("tool_breaker", "half_open_calls"): 1,
               ("circuit_breaker", "failure_threshold"): 1, ("ceilings", "max_concurrency"): 1}
    tables_of_numbers = {("concurrency", "per_tool"), ("concurrency", "per_tenant"),
                         ("ceilings", "max_rates")}  # (weights name tenants: 'x' is unknown)
    if (section, key) in tables_of_numbers and value == {"x": 1}:
        return True
    if (section, key) in ints_ge:
        return is_int and value >= ints_ge[section, key]
    if (section, key) == ("ceilings", "default_priority"):
        return is_int and value <= 3  # at most max_priority (3) and tenant ceilings (4)
    if (section, key) == ("ceilings", "max_priority"):
        return is_int and value >= 1  # at least default_priority (1)
    if (section, key) == ("interceptor_order", "call_scope"):
        return is_int and value > 5  # after Stageflow's TimeoutInterceptor (5)
    if key in {"reset_timeout", "max_wait", "max_wait_ms", "default_weight", "aging_interval"}:
        return is_num and value > 0
    if (section, key) == ("backpressure", "deadline_aware"):
        return value is True
    if (section, key) == ("priority", "fair_cost"):
        return bool(value == "3")  # a custom dimension name (not close to a known one)
    return False  # every other key takes a string, list or table: none of BAD_VALUES fits


@pytest.mark.parametrize(("section", "key"),
                         [(s, k) for s, keys in GOOD.items() for k in keys])
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_every_key_is_strict(section: str, key: str, value: Any) -> None:
    from stageflow_plus.stageflow.config_schema import SCHEMAS

    assert key in SCHEMAS[section]
    config = {**GOOD, section: {**GOOD[section], key: value}}
    if _accepted(section, key, value):
        plus = sfp.build(config, env={})
        assert plus.config[section][key] == value  # kept as written, never dropped
        return
    with pytest.raises(ConfigError) as raised:
        sfp.build(config, env={})
    message = str(raised.value)
    assert f"stageflow_plus.{section}.{key}" in message, message


@pytest.mark.parametrize("bad", [None, 3, "x", [1], [["a", 1]]])
def test_a_non_table_where_a_table_is_expected_names_the_entry(bad: Any) -> None:
    for section in GOOD:
        with pytest.raises(ConfigError, match=rf"stageflow_plus\.{section}"):
            sfp.build({section: bad}, env={})
    with pytest.raises(ConfigError, match=r"stageflow_plus\.plugins must be a list"):
        sfp.build({"plugins": "acme"}, env={})
    with pytest.raises(ConfigError, match=r"stageflow_plus\.stageflow_defaults must be true or "
                                          r"false, got 'yes'"):
        sfp.build({"stageflow_defaults": "yes"}, env={})


def test_a_good_config_builds_the_limits_it_says(tmp_path: Path) -> None:
    plus = sfp.build(GOOD, env={})
    assert plus.config["backpressure"]["deadline_aware"] is False
    gate = plus.chain.gate
    assert gate is not None and gate.admission.deadline_aware is False
    assert gate.admission.max_queue == 10 and gate.admission.max_wait == 2.5
    assert TokenBucketRateLimiter in {type(s) for s in plus.chain.interceptors}
    strict = sfp.build({"priority": {"aging_interval": False}}, env={})
    queue = next(s for s in strict.chain.interceptors if isinstance(s, PriorityFairQueue))
    assert repr(queue).startswith("PriorityFairQueue(aging_interval=None")


def test_a_chain_built_by_hand_keeps_working() -> None:
    chain = ToolCallChain([TokenBucketRateLimiter(Rate.per_minute(60))])
    assert chain.gate is not None


@pytest.mark.parametrize(
    ("config", "env"),
    [
        ({"concurrency": {"limit": "redis://:hunter2@127.0.0.1/0"}}, {}),
        ({"concurrency": {"redis://u:hunter2@h/0": 1}}, {}),
        ({"backend": {"url": "ftp://u:hunter2@h/0"}}, {}),
        ({}, {"STAGEFLOW_PLUS_BACKEND": "ftp://:hunter2@h/0"}),
        ({}, {"STAGEFLOW_PLUS_BACKEND": "redis://:hunter2@h:99999/0"}),
    ],
)
def test_config_errors_never_echo_a_url_password(config: dict[str, Any],
                                                  env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as raised:
        sfp.build(config, env=env)
    error: BaseException | None = raised.value
    assert "***" in str(error)
    while error is not None:
        assert "hunter2" not in str(error), str(error)
        error = error.__cause__ or error.__context__


def test_an_excessive_per_run_rate_names_its_ctx_data_entry() -> None:
    with pytest.raises(sfp.OverrideError, match=r"ctx.data\['_rates'\]\['requests'\] = 2\.0 "
                                                r"exceeds the operator's ceiling 1\.0"):
        read_overrides({"_rates": {"requests": 2.0}},
                       Ceilings(max_rates={"requests": 1.0}, on_excess="error"))


def test_env_mappings_with_non_strings_or_huge_values_are_refused_clearly() -> None:
    with pytest.raises(ConfigError, match=r"STAGEFLOW_PLUS_RPM: values are strings, got 100"):
        sfp.load_config({}, env={"STAGEFLOW_PLUS_RPM": 100})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"variable names are strings, got 5"):
        sfp.load_config({}, env={5: "x"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError) as info:
        sfp.load_config({}, env={"STAGEFLOW_PLUS_RPM": "9" * 5000 + "x"})
    assert "STAGEFLOW_PLUS_RPM" in str(info.value) and len(str(info.value)) < 300


def test_an_error_that_only_the_environment_caused_says_so() -> None:
    with pytest.raises(ConfigError, match=r"default_priority = 3 is above .*max_priority = 1.*"
                                          r"STAGEFLOW_PLUS_MAX_PRIORITY merged"):
        sfp.load_config({"priority": {}, "ceilings": {"default_priority": 3}},
                        env={"STAGEFLOW_PLUS_MAX_PRIORITY": "1"})


@pytest.mark.parametrize("env", [{}, {"STAGEFLOW_PLUS_BACKEND": "redis://127.0.0.1:1/0"}])
async def test_a_config_with_no_limits_still_has_a_concurrency_limiter_for_runs(
        env: dict[str, str]) -> None:
    """Whatever the backend, a run's ``_concurrency`` has a step that enforces it (the
    Redis backend built an empty chain for an empty config)."""
    plus = sfp.build({}, env=env)
    try:
        assert [type(s).__name__ for s in plus.chain.interceptors] == ["ConcurrencyLimiter"]
    finally:
        await plus.aclose()
