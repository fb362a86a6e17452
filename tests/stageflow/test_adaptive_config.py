"""``[stageflow_plus.adaptive]``: from a dict, a TOML file and the environment, strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import stageflow_plus
from stageflow_plus import AdaptiveConcurrency, ConfigError, ManualClock, ToolCall

NO_ENV: dict[str, str] = {}


def adaptive_of(plus: stageflow_plus.StageflowPlus) -> AdaptiveConcurrency:
    steps = [s for s in plus.chain.interceptors if isinstance(s, AdaptiveConcurrency)]
    assert len(steps) == 1
    return steps[0]


@pytest.mark.anyio
async def test_a_dict_config_builds_the_step_and_it_adapts() -> None:
    plus = stageflow_plus.build(
        {"concurrency": {"per_tool": 8},
         "adaptive": {"min_limit": 2, "max_limit": 64, "growth": [0.1, 0.3],
                      "window": 2.0, "probe_interval": 0}},
        env=NO_ENV, clock=ManualClock(),
    )
    adaptive = adaptive_of(plus)
    assert adaptive.partition == "tool"
    assert adaptive.settings.growth == (0.1, 0.3) and adaptive.settings.window == 2.0

    async def overloaded(call: ToolCall) -> dict[str, Any]:
        return {"status": 429, "retry_after": 1}

    await plus.chain.run(ToolCall(tool="llm"), overloaded)
    assert adaptive.limit_of("llm") == 7


def test_a_toml_file_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(
        "[stageflow_plus.concurrency]\nlimit = 20\n"
        '[stageflow_plus.adaptive]\npartition = "global"\nmax_limit = 40\n'
    )
    adaptive = adaptive_of(stageflow_plus.build(path, env=NO_ENV))
    assert adaptive.partition == "global" and adaptive.settings.max_limit == 40
    plus = stageflow_plus.build({"concurrency": {"per_tool": {"llm": 4, "db": 2}},
                                 "adaptive": {"keys": ["llm"]}}, env=NO_ENV)
    assert adaptive_of(plus)._keys == frozenset({"llm"})


def test_the_environment_turns_it_on_off_and_bounds_it() -> None:
    env = {"STAGEFLOW_PLUS_MAX_CONCURRENT": "12", "STAGEFLOW_PLUS_ADAPTIVE": "global",
           "STAGEFLOW_PLUS_ADAPTIVE_MIN_LIMIT": "3", "STAGEFLOW_PLUS_ADAPTIVE_MAX_LIMIT": "30"}
    adaptive = adaptive_of(stageflow_plus.build(None, env=env))
    assert (adaptive.partition, adaptive.settings.min_limit, adaptive.settings.max_limit) == (
        "global", 3, 30)
    plus = stageflow_plus.build({"concurrency": {"per_tool": 4}, "adaptive": {}},
                                env={"STAGEFLOW_PLUS_ADAPTIVE": "off"})
    assert not any(isinstance(s, AdaptiveConcurrency) for s in plus.chain.interceptors)


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        ({"concurrency": {"per_tool": 4}, "adaptive": {"min_limt": 2}}, {},
         r"stageflow_plus\.adaptive\.min_limt: unknown key"),
        ({"concurrency": {"per_tool": 4}, "adaptive": {"min_limit": "2"}}, {},
         r"stageflow_plus\.adaptive\.min_limit: adaptive min_limit must be an int"),
        ({"concurrency": {"per_tool": 4}, "adaptive": {"tolerance": 1.5}}, {},
         r"stageflow_plus\.adaptive\.tolerance"),
        ({"concurrency": {"per_tool": 4}, "adaptive": {"growth": 0.2}}, {},
         r"stageflow_plus\.adaptive\.growth must be a list"),
        ({"concurrency": {"per_tool": 4}, "adaptive": {"partition": "run"}}, {},
         r"stageflow_plus\.adaptive\.partition must be one of global, tenant, tool"),
        ({"concurrency": {"per_tool": 4}, "adaptive": {"keys": "llm"}}, {},
         r"stageflow_plus\.adaptive\.keys must be a list"),
        ({"concurrency": {"limit": 4}, "adaptive": {}}, {},
         r"partition 'tool' needs a starting limit: set stageflow_plus\.concurrency\.per_tool"),
        ({"concurrency": {"per_tool": {"db": 2}}, "adaptive": {"keys": ["llm"]}}, {},
         r"needs a starting limit"),
        ({"concurrency": {"per_tool": 4}, "adaptive": {},
          "backend": {"url": "redis://127.0.0.1:1/0"}}, {},
         r"stageflow_plus\.adaptive: not supported with a Redis backend"),
        ({"concurrency": {"per_tool": 4}, "adaptive": 3}, {},
         r"stageflow_plus\.adaptive must be a table"),
        ({}, {"STAGEFLOW_PLUS_ADAPTIVE": "model"},
         r"STAGEFLOW_PLUS_ADAPTIVE must be a partition"),
        ({}, {"STAGEFLOW_PLUS_ADAPTIVE_MAX_LIMIT": "lots"},
         r"STAGEFLOW_PLUS_ADAPTIVE_MAX_LIMIT must be an int"),
    ],
)
def test_every_bad_entry_is_named(config: dict[str, Any], env: dict[str, str],
                                  message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stageflow_plus.build(config, env=env)
