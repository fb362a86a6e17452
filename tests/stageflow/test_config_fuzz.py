"""Fuzzing the boundaries: configs (as dicts and as TOML files), environment values and per-run
overrides. The property everywhere: built (or read) and behaving as documented, or refused with
a StageflowPlusError whose message names the entry — within a bounded time, never a bare
exception, never a value silently accepted and then ignored."""

from __future__ import annotations

import asyncio
import datetime
import math
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import stageflow_plus as sfp
from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ConfigError,
    PriorityFairQueue,
    StageflowPlusError,
    TokenBucketRateLimiter,
)
from stageflow_plus.backends import MemoryBackend
from stageflow_plus.stageflow import (
    OVERRIDE_KEYS,
    CallScopeInterceptor,
    Ceilings,
    OverrideError,
    read_overrides,
)
from stageflow_plus.stageflow.config import SECTIONS

FUZZ = settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.too_slow])

# -- values of every kind --------------------------------------------------------------------
NUMBERS = st.one_of(
    st.integers(-3, 12), st.integers(), st.sampled_from([10**30, -(10**30), 2**63]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 2.5, 1e-300, 1e308]),
)
WORDS = st.sampled_from(["", " ", "false", "true", "3", "acme", "tokens", "token", "requests",
                         "global", "tool", "tenant", "calls", "reject_new", "evict_oldest",
                         "clamp", "error", "600/minute", "10/s", "5/0s", "minute", "memory://",
                         "redis://:pw@127.0.0.1:1/0", "ftp://x", "nan"])
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, WORDS, st.text(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(WORDS, st.text(max_size=4)), inner,
                                            max_size=3)),
    max_leaves=6,
)
RATE = st.one_of(
    WORDS,
    st.fixed_dictionaries(
        {"limit": st.one_of(NUMBERS, WORDS)},
        optional={"per": st.one_of(NUMBERS, WORDS), "burst": NUMBERS,
                  "dimension": WORDS, "start_full": st.one_of(st.booleans(), WORDS)},
    ),
)
KEYS = {section: sorted(keys) for section, keys in SECTIONS.items() if keys}
KEYS["stage_limits"] = ["answer", "fetch"]
GOOD_RATE = st.one_of(
    st.sampled_from(["600/minute", "10/s", "90000/min", "5/10s"]),
    st.fixed_dictionaries(
        {"limit": st.integers(1, 10**6), "per": st.one_of(st.integers(1, 3600),
                                                          st.sampled_from(["minute", "s"]))},
        optional={"burst": st.integers(1, 100), "dimension": st.sampled_from(["tokens",
                                                                               "requests"]),
                  "start_full": st.booleans()},
    ),
)
COUNT, SMALL = st.integers(1, 10), st.floats(0.01, 100)
NAMES = st.sampled_from(["acme", "gold", "search"])
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "limit": COUNT, "per_tool": st.one_of(COUNT, st.dictionaries(NAMES, COUNT, max_size=2)),
    "per_run": COUNT, "per_tenant": st.one_of(COUNT, st.dictionaries(NAMES, COUNT, max_size=2)),
    "rates": st.lists(GOOD_RATE, min_size=1, max_size=2),
    "key": st.sampled_from(["global", "tool", "tenant"]),
    "per_key_rates": st.dictionaries(NAMES, st.lists(GOOD_RATE, min_size=1, max_size=2),
                                     max_size=1),
    "aging_interval": st.one_of(SMALL, st.just(False)),
    "weights": st.dictionaries(NAMES, SMALL, max_size=2), "default_weight": SMALL,
    "fair_cost": st.sampled_from(["calls", "tokens"]), "max_queue": st.integers(0, 100),
    "max_queue_per_key": st.integers(0, 100),
    "shedding": st.sampled_from(["reject_new", "evict_lowest_priority", "evict_oldest"]),
    "deadline_aware": st.booleans(), "max_wait": SMALL, "failure_threshold": COUNT,
    "reset_timeout": SMALL, "half_open_calls": COUNT, "default_priority": st.integers(0, 1),
    "max_priority": st.integers(1, 9),
    "tenant_max_priority": st.dictionaries(NAMES, st.integers(1, 9), max_size=2),
    "max_concurrency": COUNT, "max_rates": st.dictionaries(st.sampled_from(["requests",
                                                                            "tokens"]), SMALL),
    "max_wait_ms": SMALL, "tenants": st.lists(NAMES, min_size=1, max_size=3, unique=True),
    "tenants_by_org": st.dictionaries(st.sampled_from(["org-1", "default"]),
                                      st.lists(NAMES, max_size=2, unique=True), max_size=2),
    "on_excess": st.sampled_from(["clamp", "error"]), "call_scope": st.integers(6, 9),
    "stage_limit": st.integers(11, 14), "answer": COUNT, "fetch": COUNT,
    "url": st.just("memory://"),
}


@st.composite
def configs(draw: st.DrawFn, plausible: bool = False) -> dict[str, Any]:
    """A config over the known sections and keys (and a few unknown ones), values of any
    kind — plausibly valid ones often enough that builds succeed too (``plausible``: only
    values of the right type and range, so most build)."""
    config: dict[str, Any] = {}
    sections = [*KEYS] if plausible else [*KEYS, *KEYS, "stageflow_defaults", "plugins",
                                           "priorities", "concurency"]
    for section in draw(st.lists(st.sampled_from(sections), max_size=4, unique=True)):
        if section == "stageflow_defaults":
            config[section] = draw(st.one_of(st.booleans(), SCALARS))
            continue
        if section == "plugins":
            config[section] = draw(st.one_of(st.just([]), VALUES))
            continue
        if section not in KEYS or (not plausible and draw(st.integers(0, 19)) == 0):
            config[section] = draw(VALUES)
            continue
        table: dict[str, Any] = {}
        keys = KEYS[section] if plausible else [*KEYS[section], "bogus"]
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
            if key in GOOD and (plausible or draw(st.integers(0, 3))):  # mostly plausible
                table[key] = draw(GOOD[key])
            elif key in {"rates", "per_key_rates"}:
                table[key] = draw(st.one_of(st.lists(RATE, max_size=3), RATE, VALUES)
                                  if key == "rates" else
                                  st.dictionaries(WORDS, st.lists(RATE, max_size=2),
                                                  max_size=2))
            elif key == "url":
                table[key] = draw(st.sampled_from(["memory://", "redis://127.0.0.1:1/0",
                                                   "ftp://x", "", 3]))
            else:
                table[key] = draw(VALUES)
        config[section] = table
    return config


def _names_an_entry(error: StageflowPlusError) -> bool:
    message = str(error)
    return any(mark in message for mark in ("stageflow_plus", "STAGEFLOW_PLUS_", "interceptor",
                                             "config file", "Ceilings.", "Rate"))


def _check_built_on_redis(plus: sfp.StageflowPlus, concurrency: ConcurrencyLimiter) -> None:
    """With Redis the global limits are one RedisLimits step; the process keeps per_run."""
    from stageflow_plus.backends.limits import RedisLimits

    cfg = plus.config
    written = cfg.get("concurrency", {})
    limits = {p.name: p.limit for p in concurrency.partitions}
    assert set(limits) == {"run"} and limits["run"] == written.get("per_run")
    held = [s for s in plus.chain.interceptors if isinstance(s, RedisLimits)]
    assert len(held) == (1 if "rate" in cfg or written else 0)


def _check_built(plus: sfp.StageflowPlus) -> None:
    """What was written is what was built (never silently dropped)."""
    cfg = plus.config
    steps = {type(s): s for s in plus.chain.interceptors}
    concurrency = steps[ConcurrencyLimiter]  # always one, so a run's _concurrency applies
    assert isinstance(concurrency, ConcurrencyLimiter)
    if not isinstance(plus.backend, MemoryBackend):
        _check_built_on_redis(plus, concurrency)
        return
    limits = {p.name: (p.limit, dict(p.overrides)) for p in concurrency.partitions}
    written = cfg.get("concurrency", {})
    if "limit" in written:
        assert limits["global"] == (written["limit"], {})
    for key, partition in (("per_tool", "tool"), ("per_tenant", "tenant")):
        if key in written:
            value = written[key]
            assert limits[partition] == ((value, {}) if isinstance(value, int)
                                         else (None, value))
    assert limits["run"][0] == written.get("per_run")
    if "rate" in cfg:
        rate = steps[TokenBucketRateLimiter]
        assert isinstance(rate, TokenBucketRateLimiter)
        probe = {"global": "*"}.get(cfg["rate"].get("key", "global"), "some-key")
        if probe not in cfg["rate"].get("per_key_rates", {}):
            buckets = rate.buckets_for(probe, 0.0)
            expected = cfg["rate"]["rates"]
            assert [b.rate for b in buckets] == pytest.approx(
                [r["limit"] / r["per"] for r in expected])
            assert [b.burst for b in buckets] == pytest.approx(
                [r.get("burst", r["limit"]) for r in expected])
            assert [b.dimension for b in buckets] == [r.get("dimension", "requests")
                                                      for r in expected]
    if "backpressure" in cfg:
        gate = plus.chain.gate
        assert gate is not None and Backpressure in steps
        for key, value in cfg["backpressure"].items():
            assert getattr(gate.admission, key) == value
    assert (PriorityFairQueue in steps) == ("priority" in cfg)
    scope = next(i for i in plus.interceptors if isinstance(i, CallScopeInterceptor))
    for key, value in cfg.get("ceilings", {}).items():
        got = getattr(scope.ceilings, key)
        if key == "tenants":
            assert got == frozenset(value)
        elif key == "tenants_by_org":
            assert got == {org: frozenset(t) for org, t in value.items()}
        else:
            assert got == value


def _build(config: Any, env: dict[str, str] | None = None) -> None:
    try:
        plus = sfp.build(config, env=env if env is not None else {})
    except StageflowPlusError as error:
        assert isinstance(error, ConfigError)
        assert _names_an_entry(error), str(error)
        event("refused")
        return
    event("built")
    try:
        _check_built(plus)
    finally:
        asyncio.run(plus.aclose())


@FUZZ
@given(st.one_of(configs(), configs(plausible=True)))
def test_dict_configs_build_as_written_or_are_refused_naming_the_entry(
        config: dict[str, Any]) -> None:
    _build(config)


@FUZZ
@given(configs(plausible=True))
def test_a_config_written_as_toml_builds_the_same(config: dict[str, Any]) -> None:
    from stageflow_plus.stageflow.config_report import effective_toml

    try:
        expected = sfp.load_config(config, env={})
    except ConfigError as error:
        assert _names_an_entry(error), str(error)
        return
    event("built")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "limits.toml"
        path.write_text(effective_toml(config))
        assert sfp.load_config(path, env={}) == expected
        _build(path)


# -- the same as TOML text written to a file ---------------------------------------------------
TOML_VALUES = st.sampled_from([
    "1", "0", "-1", "3", "600", "2.5", "nan", "inf", "-inf", "1e400", "true", "false",
    '"false"', '"acme"', '"600/minute"', '"10/s"', '"token"', '"tokens"', '"memory://"',
    '"ftp://x"', "[]", "[1, 2]", '["acme"]', '["a", "a"]', "{}", "{ acme = 2 }",
    '{ limit = 600 }', '{ limit = 600, per = 60 }', '{ limit = "90000/min", dimension = "tokens" }',
    '[{ limit = 10, per = "second", burst = 5 }]', '["600/minute", "10/s"]',
    "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z", '"\\u0000"', "0x10", "1_000",
])
LINES = st.tuples(st.sampled_from([*KEYS, "stageflow_plus", "priorities", "x"]),
                  st.sampled_from(sorted({k for ks in KEYS.values() for k in ks} | {"bogus"})),
                  TOML_VALUES)


@FUZZ
@given(st.lists(LINES, max_size=6), st.booleans())
def test_toml_files_build_or_are_refused_naming_the_entry(
        lines: list[tuple[str, str, str]], broken: bool) -> None:
    by_section: dict[str, list[str]] = {}
    for section, key, value in lines:
        by_section.setdefault(section, []).append(f"{key} = {value}")
    text = "\n".join(
        f"[{'stageflow_plus' if s == 'stageflow_plus' else 'stageflow_plus.' + s}]\n"
        + "\n".join(dict.fromkeys(body)) for s, body in by_section.items())
    if broken:
        text += "\n[stageflow_plus\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "limits.toml"
        path.write_text(text)
        _build(path)


def test_toml_dates_are_refused_not_crashing(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[stageflow_plus.backpressure]\nmax_wait = 1979-05-27\n")
    with pytest.raises(ConfigError, match=r"stageflow_plus\.backpressure\.max_wait must be a "
                                          r"number, got datetime\.date\(1979, 5, 27\)"):
        sfp.build(path, env={})
    assert isinstance(datetime.date(1979, 5, 27), datetime.date)


# -- environment values ----------------------------------------------------------------------
ENV_NAMES = st.sampled_from(["STAGEFLOW_PLUS_MAX_CONCURRENT", "STAGEFLOW_PLUS_MAX_QUEUE",
                             "STAGEFLOW_PLUS_RPM", "STAGEFLOW_PLUS_TPM",
                             "STAGEFLOW_PLUS_MAX_PRIORITY", "STAGEFLOW_PLUS_BACKEND",
                             "STAGEFLOW_PLUS_PURE", "STAGEFLOW_PLUS_RMP", "OTHER_VAR"])
ENV_VALUES = st.one_of(
    st.integers(-5, 10**20).map(str),
    st.sampled_from(["", " ", "1e400", "nan", "0x10", "1_000", " 7 ", "memory://", "ftp://x",
                     "redis://:pw@127.0.0.1:1/0", "many", "٣"]),
    st.text(string.printable, max_size=6),
)


@FUZZ
@given(st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=4), configs())
def test_env_values_apply_or_are_refused_naming_the_variable(
        env: dict[str, str], config: dict[str, Any]) -> None:
    try:
        plus = sfp.build(config, env=env)
    except StageflowPlusError as error:
        assert isinstance(error, ConfigError) and _names_an_entry(error), str(error)
        if "STAGEFLOW_PLUS_" in str(error):
            assert any(name in str(error) for name in env), str(error)
        assert "pw@" not in str(error)  # a URL's password is never echoed
        event("refused")
        return
    event("built")
    try:
        _check_built(plus)
        assert "STAGEFLOW_PLUS_RMP" not in env  # an unknown variable never passes
        cfg = plus.config
        for name, (section, key) in {"STAGEFLOW_PLUS_MAX_CONCURRENT": ("concurrency", "limit"),
                                     "STAGEFLOW_PLUS_MAX_QUEUE": ("backpressure", "max_queue"),
                                     "STAGEFLOW_PLUS_MAX_PRIORITY": ("ceilings", "max_priority"),
                                     }.items():
            if env.get(name, "") != "":
                assert cfg[section][key] == int(env[name])
        for name, dimension in (("STAGEFLOW_PLUS_RPM", "requests"), ("STAGEFLOW_PLUS_TPM",
                                                                     "tokens")):
            if env.get(name, "") != "":
                assert {"limit": int(env[name]), "per": 60} in [
                    {"limit": r["limit"], "per": r["per"]} for r in cfg["rate"]["rates"]
                    if r.get("dimension", "requests") == dimension]
    finally:
        asyncio.run(plus.aclose())


# -- per-run overrides -----------------------------------------------------------------------
CEILINGS = st.builds(
    Ceilings,
    default_priority=st.integers(-2, 1),
    max_priority=st.integers(1, 5),
    tenant_max_priority=st.dictionaries(st.sampled_from(["acme", "gold"]), st.integers(1, 9)),
    max_concurrency=st.one_of(st.none(), st.integers(1, 8)),
    max_rates=st.dictionaries(st.sampled_from(["requests", "tokens"]),
                              st.floats(0.5, 100)),
    max_wait_ms=st.one_of(st.none(), st.floats(1, 1000)),
    tenants_by_org=st.dictionaries(st.sampled_from(["org-1", "default"]),
                                   st.frozensets(st.sampled_from(["acme", "gold"]))),
    on_excess=st.sampled_from(["clamp", "error"]),
)
OVERRIDE_VALUES = st.one_of(
    VALUES,
    st.dictionaries(st.sampled_from(["requests", "tokens", "token", "gpu"]), NUMBERS,
                    max_size=2),
    st.sampled_from(["acme", "gold", "org-1", "premium"]),
)
DIMENSIONS = st.sampled_from(["requests", "tokens"])
GOOD_OVERRIDES: dict[str, st.SearchStrategy[Any]] = {
    "_priority": st.integers(-3, 12), "_tenant": st.sampled_from(["acme", "gold", "org-1"]),
    "_concurrency": st.integers(1, 10),
    "_rates": st.dictionaries(DIMENSIONS, st.floats(0.1, 200), max_size=2),
    "_max_queue": st.integers(0, 5), "_max_wait_ms": st.floats(0.5, 5000),
    "_cost": st.dictionaries(DIMENSIONS, st.floats(0, 1000), max_size=2),
}


@st.composite
def run_data(draw: st.DrawFn) -> dict[str, Any]:
    """A run's ctx.data: override keys (and others) with good or arbitrary values."""
    keys = draw(st.lists(st.sampled_from([*OVERRIDE_KEYS, "_other", "_weight"]), min_size=1,
                         max_size=4, unique=True))
    return {key: draw(GOOD_OVERRIDES[key] if key in GOOD_OVERRIDES and draw(st.booleans())
                      else OVERRIDE_VALUES) for key in keys}


@FUZZ
@given(run_data(),
       CEILINGS, st.sampled_from([None, "org-1", "org-2"]))
def test_overrides_are_applied_clamped_or_refused_naming_the_key(
        data: dict[str, Any], ceilings: Ceilings, org: str | None) -> None:
    try:
        got = read_overrides(data, ceilings, org=org)
    except OverrideError as error:
        assert any(f"ctx.data[{key!r}]" in str(error) for key in data), str(error)
        event("refused")
        return
    event(f"read ({len(data)} keys)")
    identity = org or "default"
    assert got.tenant == data.get("_tenant", identity)
    assert got.tenant == identity or got.tenant in ceilings.tenants_by_org.get(identity, ())
    ceiling = ceilings.priority_ceiling(got.tenant)
    asked = data.get("_priority", ceilings.default_priority)
    assert got.priority == min(asked, ceiling) and got.priority <= ceiling
    strict = ceilings.on_excess == "error"
    if "_concurrency" in data:
        cap = ceilings.max_concurrency
        assert got.concurrency == (data["_concurrency"] if cap is None
                                   else min(data["_concurrency"], cap))
        assert not strict or got.concurrency == data["_concurrency"]
    for dim, value in data.get("_rates", {}).items():
        assert got.rates[dim] == min(float(value), ceilings.max_rates.get(dim, math.inf))
    if "_max_wait_ms" in data:
        cap_ms = ceilings.max_wait_ms if ceilings.max_wait_ms is not None else math.inf
        assert got.max_wait == pytest.approx(min(data["_max_wait_ms"], cap_ms) / 1000)
    assert dict(got.cost) == {k: float(v) for k, v in data.get("_cost", {}).items()}
    assert got.max_queue == data.get("_max_queue")


@FUZZ
@given(st.dictionaries(st.sampled_from(OVERRIDE_KEYS), OVERRIDE_VALUES, max_size=3),
       st.sampled_from([None, "org-1"]))
def test_a_stage_with_any_ctx_data_runs_or_is_refused_as_an_invalid_override(
        data: dict[str, Any], org: str | None) -> None:
    scope = CallScopeInterceptor(ceilings=Ceilings(max_priority=3,
                                                   tenants_by_org={"org-1": frozenset({"a"})}))

    class Ctx:
        pipeline_run_id = "run-1"

        def __init__(self) -> None:
            self.data = dict(data)
            self.org_id = org

    async def main() -> None:
        ctx = Ctx()
        try:
            await scope.before("s", ctx)
        except sfp.InvalidRunOverride as error:
            assert isinstance(error, OverrideError) and "ctx.data[" in str(error)
            return
        await scope.after("s", None, ctx)

    asyncio.run(main())
