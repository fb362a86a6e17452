"""The [stageflow_plus.llm] section: what it builds, and every bad entry refused by name."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import stageflow_plus
from stageflow_plus import (
    ConfigError,
    ProviderPause,
    RateLimitHeaderLearner,
    TokenBucketRateLimiter,
    TokenEstimate,
    ToolCallRetry,
    UsageReconciler,
)


def _build(llm: dict[str, Any], **more: Any) -> stageflow_plus.StageflowPlus:
    return stageflow_plus.build({"llm": llm, **more}, env={})


def test_builds_estimate_retry_limits_learner_and_pause() -> None:
    plus = _build({"provider": "openai", "tools": ["LLM"], "rpm": 600, "tpm": 120_000})
    steps = plus.chain.interceptors
    assert isinstance(steps[0], ToolCallRetry) and isinstance(steps[1], TokenEstimate)
    gate = plus.chain.gate
    assert gate is not None
    kinds = {type(p) for p in gate.parts}
    assert {TokenBucketRateLimiter, UsageReconciler, RateLimitHeaderLearner,
            ProviderPause} <= kinds
    assert plus.chain.pause is not None and plus.chain.pause.max_pause == 60.0
    rate = next(p for p in gate.parts if isinstance(p, TokenBucketRateLimiter))
    buckets = {b.dimension: b for b in rate.buckets_for("llm:openai", 0.0)}
    assert buckets["requests"].rate == pytest.approx(600 * 0.9 / 60)  # the default margin
    assert buckets["tokens"].burst == pytest.approx(2000 * 0.9)
    assert rate.key_of(stageflow_plus.ToolCall("search")) == "search"  # not an LLM tool


def test_anthropic_learned_toml(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text('[stageflow_plus.llm]\nprovider = "anthropic"\ntools = ["ASK"]\n'
                    'pause_key = "global"\nmax_pause = 30\nretry = { max_attempts = 2 }\n')
    plus = stageflow_plus.build(str(path), env={})
    assert plus.chain.pause is not None and plus.chain.pause.max_pause == 30.0
    assert plus.chain.pause.key_of(stageflow_plus.ToolCall("other")) == "*"
    assert "max_attempts=2" in repr(plus.chain.interceptors[0])


@pytest.mark.parametrize(("llm", "message"), [
    ({"tools": ["X"]}, "llm.provider is required"),
    ({"provider": "gemini", "tools": ["X"]}, "llm.provider must be one of"),
    ({"provider": "openai"}, "llm.tools must be"),
    ({"provider": "openai", "tools": "X"}, "llm.tools must be"),
    ({"provider": "openai", "tools": ["X"], "rpm": float("inf")}, "llm.rpm must be"),
    ({"provider": "openai", "tools": ["X"], "rpm": -1}, "llm.rpm must be"),
    ({"provider": "openai", "tools": ["X"], "rpm": True}, "llm.rpm must be a number"),
    ({"provider": "openai", "tools": ["X"], "output_tpm": 5}, "openai publishes no such"),
    ({"provider": "openai", "tools": ["X"], "safety": 1.5}, "llm.safety"),
    ({"provider": "openai", "tools": ["X"], "learn": "false"}, "llm.learn must be true"),
    ({"provider": "openai", "tools": ["X"], "learn": False}, "give limits"),
    ({"provider": "openai", "tools": ["X"], "max_pause": float("nan")}, "llm.max_pause"),
    ({"provider": "openai", "tools": ["X"], "key": "model"}, "llm.key must be one of"),
    ({"provider": "openai", "tools": ["X"], "estimator": "bpe"}, "llm.estimator"),
    ({"provider": "openai", "tools": ["X"], "reconcile": "yes"}, "llm.reconcile"),
    ({"provider": "openai", "tools": ["X"], "default_max_tokens": 1.5}, "default_max_tokens"),
    ({"provider": "openai", "tools": ["X"], "retry": "on"}, "llm.retry must be"),
    ({"provider": "openai", "tools": ["X"], "retry": {"tries": 3}}, "llm.retry.tries"),
    ({"provider": "openai", "tools": ["X"], "retry": {"max_attempts": 0}}, "llm.retry"),
    ({"provider": "openai", "tools": ["X"], "retry": {"budget_ratio": -1}}, "llm.retry"),
    ({"provider": "openai", "tools": ["X"], "colour": 1}, "llm.colour: unknown key"),
])
def test_every_bad_entry_is_a_config_error_naming_it(llm: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        _build(llm)


def test_llm_excludes_a_rate_table_and_redis() -> None:
    llm = {"provider": "openai", "tools": ["X"]}
    with pytest.raises(ConfigError, match=r"cannot be combined with stageflow_plus\.rate"):
        _build(llm, rate={"rates": ["1/minute"]})
    with pytest.raises(ConfigError, match="Redis"):
        _build(llm, backend={"url": "redis://127.0.0.1:1/0"})


def test_a_missing_tiktoken_is_an_error_naming_the_estimator_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import fails as when not installed
    with pytest.raises(ConfigError, match=r"stageflow_plus\.llm\.estimator = 'tiktoken': .*"
                                          r"pip install 'stageflow-plus\[tiktoken\]'"):
        stageflow_plus.build({"llm": {"provider": "openai", "tools": ["LLM"],
                                      "estimator": "tiktoken"}},
                             env={})
