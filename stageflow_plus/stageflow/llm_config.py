"""The ``[stageflow_plus.llm]`` config section: LLM limits, costs, pauses and retries.

::

    [stageflow_plus.llm]
    provider = "openai"            # or "anthropic" (required)
    tools = ["LLM_CALL"]           # the action types that call the provider (required)
    # no numbers: limits are learned from the provider's headers (one call in flight until
    # the first answer), then kept current; or give them (per minute):
    rpm = 600                      # requests
    tpm = 120000                   # tokens (OpenAI; Anthropic: prompt + output)
    input_tpm = 40000              # Anthropic input tokens
    output_tpm = 8000              # Anthropic output tokens
    safety = 0.9                   # fraction of the limits used (default 0.9 given, 0.97 learned)
    burst_s = 1.0                  # bucket size in seconds of rate
    learn = true                   # learn / keep limits current from headers
    key = "provider"               # "provider": one set of buckets; "tool": one per tool
    pause_key = "provider"         # what a Retry-After pauses: provider, tool, global, tenant
    max_pause = 60                 # longest provider pause (s)
    estimator = "chars"            # "chars" (characters / 4), "tiktoken" (extra), "none"
    default_max_tokens = 0         # output budget of a request that names none
    reconcile = "refund"           # from usage: refund (Anthropic default), charge (OpenAI
                                   #   default: it does not refund unused max_tokens), off
    retry = true                   # or a table: max_attempts, base, cap, max_pause,
                                   #   budget_ratio, budget_window, min_retries

:func:`llm_steps` turns it into chain steps: a :class:`~stageflow_plus.interceptors.retry.
ToolCallRetry` and a :class:`~stageflow_plus.interceptors.llm_cost.TokenEstimate` before the
limits, then a :class:`~stageflow_plus.interceptors.rate.TokenBucketRateLimiter`, a
:class:`~stageflow_plus.interceptors.usage_reconciler.UsageReconciler` (the provider's usage
reader), a :class:`~stageflow_plus.interceptors.learner.RateLimitHeaderLearner` and a
:class:`~stageflow_plus.interceptors.pause.ProviderPause`.
Tools not listed in ``tools`` are neither estimated nor limited by the LLM limits (their
buckets are unlimited) and are paused by their own key. It cannot be combined with a
``[stageflow_plus.rate]`` table (one rate limiter per chain) or a Redis backend (not yet).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..interceptors.call import ToolCall
from ..interceptors.learner import RateLimitHeaderLearner
from ..interceptors.llm_cost import TokenEstimate
from ..interceptors.pause import ProviderPause
from ..interceptors.rate import TokenBucketRateLimiter
from ..interceptors.retry import ToolCallRetry
from ..interceptors.retry_budget import RetryBudget
from ..interceptors.usage_reconciler import UsageReconciler
from ..llm.usage import anthropic_usage, chars_per_token, openai_usage, tiktoken_counter
from ..primitives.clock import Clock
from ..primitives.errors import ConfigError
from ..primitives.resources import Rate

__all__ = ["LLM_KEYS", "PROVIDERS", "llm_steps", "with_llm_steps"]

LLM_KEYS = frozenset({
    "provider", "tools", "rpm", "tpm", "input_tpm", "output_tpm", "safety", "burst_s", "learn",
    "key", "pause_key", "max_pause", "estimator", "default_max_tokens", "reconcile", "retry",
})
RETRY_KEYS = frozenset({"max_attempts", "base", "cap", "max_pause", "budget_ratio",
                        "budget_window", "min_retries"})
PROVIDERS: dict[str, dict[str, Any]] = {
    "openai": {"dimensions": ("requests", "tokens"), "numbers": ("rpm", "tpm"),
               "usage": openai_usage, "reconcile": "charge"},
    "anthropic": {"dimensions": ("requests", "input_tokens", "output_tokens"),
                  "numbers": ("rpm", "tpm", "input_tpm", "output_tpm"),
                  "usage": anthropic_usage, "reconcile": "refund"},
}
"""What each provider publishes and how it bills (see the module docstring)."""

_UNLIMITED = Rate(1e12, per=1.0)  # the buckets of tools that are not LLM calls
_PLACEHOLDER = 1e12  # a learned dimension before its first answer (the probe limits calls)
_DIMENSION_OF = {"rpm": "requests", "tpm": "tokens", "input_tpm": "input_tokens",
                 "output_tpm": "output_tokens"}
W = "stageflow_plus.llm"


def _number(section: Mapping[str, Any], name: str, *, low: float = 0.0, high: float = math.inf,
            default: float | None = None, inclusive_high: bool = True) -> float | None:
    if name in section and section[name] is None:  # TOML has no null: say, don't default
        raise ConfigError(f"{W}.{name} must be a number, got None (leave it out for the default)")
    value = section.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{W}.{name} must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number) or math.isinf(number) or not (
        low < number and (number <= high if inclusive_high else number < high)
    ):
        raise ConfigError(f"{W}.{name} must be a finite number in ({low:g}, {high:g}], got "
                          f"{value!r}")
    return number


def _choice(section: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = section.get(name, default)
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{W}.{name} must be one of {', '.join(map(repr, choices))}, got "
                          f"{value!r}")
    return value


def _flag(section: Mapping[str, Any], name: str, default: bool) -> bool:
    value = section.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{W}.{name} must be true or false, got {value!r}")
    return value


def _retry(value: Any, clock: Clock | Callable[[], float] | None) -> ToolCallRetry | None:
    if value is False:
        return None
    if value is True:
        return ToolCallRetry(clock=clock)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{W}.retry must be true, false or a table, got {value!r}")
    unknown = set(value) - RETRY_KEYS
    if unknown:
        raise ConfigError(f"{W}.retry.{sorted(unknown)[0]}: unknown key (known: "
                          f"{', '.join(sorted(RETRY_KEYS))})")
    options = {k: value[k] for k in ("max_attempts", "base", "cap", "max_pause") if k in value}
    budget = {k[len("budget_"):] if k.startswith("budget_") else k: value[k]
              for k in ("budget_ratio", "budget_window", "min_retries") if k in value}
    try:  # (the retry passes its clock's time to its budget)
        return ToolCallRetry(**options, budget=RetryBudget(**budget) if budget else True,
                             clock=clock)
    except ConfigError as error:
        raise ConfigError(f"{W}.retry: {error}") from error


def llm_steps(section: Mapping[str, Any], cfg: Mapping[str, Any],
              clock: Clock | Callable[[], float] | None) -> tuple[list[Any], list[Any]]:
    """The steps of a validated ``[stageflow_plus.llm]`` table: ``(before, limits)`` — the
    steps to stand before the limiters, and the limiter interceptors to add.

    :raises ConfigError: any invalid or unknown entry, naming it and its value.
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"{W} must be a table, got {section!r}")
    if "rate" in cfg:
        raise ConfigError(f"{W}: cannot be combined with stageflow_plus.rate (one rate limiter "
                          "per chain): give the LLM limits as llm.rpm / llm.tpm")
    backend = cfg.get("backend", {})
    url = backend.get("url", "memory://") if isinstance(backend, Mapping) else "memory://"
    if url != "memory://":
        raise ConfigError(f"{W}: not supported with a Redis backend yet "
                          "(stageflow_plus.backend.url)")
    unknown = set(section) - LLM_KEYS
    if unknown:
        raise ConfigError(f"{W}.{sorted(unknown)[0]}: unknown key (known: "
                          f"{', '.join(sorted(LLM_KEYS))})")
    if "provider" not in section:
        raise ConfigError(f"{W}.provider is required (one of {', '.join(sorted(PROVIDERS))})")
    provider = _choice(section, "provider", tuple(sorted(PROVIDERS)), "openai")
    profile = PROVIDERS[provider]
    tools = section.get("tools")
    if not isinstance(tools, list) or not tools or not all(
        isinstance(t, str) and t for t in tools
    ):
        raise ConfigError(f"{W}.tools must be a non-empty list of tool names (the action types "
                          f"that call the provider), got {tools!r}")
    numbers = {}
    for name in ("rpm", "tpm", "input_tpm", "output_tpm"):
        value = _number(section, name, high=1e12)
        if value is not None:
            if name not in profile["numbers"]:
                raise ConfigError(f"{W}.{name}: {provider} publishes no such limit (known: "
                                  f"{', '.join(profile['numbers'])})")
            numbers[_DIMENSION_OF[name]] = value
    learn = _flag(section, "learn", True)
    if not numbers and not learn:
        raise ConfigError(f"{W}: give limits (rpm, tpm, ...) or learn = true")
    safety = _number(section, "safety", high=1.0, default=0.9 if numbers else 0.97)
    burst_s = _number(section, "burst_s", high=3600.0, default=1.0)
    max_pause = _number(section, "max_pause", high=3600.0, default=60.0)
    assert safety is not None and burst_s is not None and max_pause is not None
    key_kind = _choice(section, "key", ("provider", "tool"), "provider")
    pause_kind = _choice(section, "pause_key", ("provider", "tool", "global", "tenant"), key_kind)
    estimator = _choice(section, "estimator", ("chars", "tiktoken", "none"), "chars")
    reconcile = _choice(section, "reconcile", ("refund", "charge", "off"), profile["reconcile"])
    default_max = section.get("default_max_tokens", 0)
    if isinstance(default_max, bool) or not isinstance(default_max, int) or default_max < 0:
        raise ConfigError(f"{W}.default_max_tokens must be an int >= 0, got {default_max!r}")

    listed = frozenset(tools)
    llm_key = f"llm:{provider}"

    def key_of(call: ToolCall) -> str:
        if call.tool in listed:
            return llm_key if key_kind == "provider" else call.tool
        return call.tool

    def pause_key_of(call: ToolCall) -> str:
        if pause_kind == "global":
            return "*"
        if pause_kind == "tenant":
            return call.tenant
        return key_of(call) if pause_kind == "provider" else call.tool

    dims = list(profile["dimensions"])
    if "tokens" in numbers and "tokens" not in dims:
        dims.append("tokens")
    rates = [_llm_rate(d, numbers.get(d), safety, burst_s) for d in dims]
    per_key = {k: rates for k in ([llm_key] if key_kind == "provider" else sorted(listed))}
    try:
        rate = TokenBucketRateLimiter(_UNLIMITED, key=key_of, per_key_rates=per_key,
                                      max_pause=max_pause)
    except ConfigError as error:
        raise ConfigError(f"{W}: {error}") from error
    limits: list[Any] = [rate]
    if reconcile != "off":
        limits.append(UsageReconciler(profile["usage"], refund=reconcile == "refund",
                                      tools=tools))
    if learn:
        limits.append(RateLimitHeaderLearner(rate, safety=safety, burst_s=burst_s,
                                             probe=not numbers, tools=tools))
    limits.append(ProviderPause(key=pause_key_of, max_pause=max_pause))
    before: list[Any] = []
    retry = _retry(section.get("retry", True), clock)
    if retry is not None:
        before.append(retry)
    if estimator != "none":
        try:
            counter = tiktoken_counter() if estimator == "tiktoken" else chars_per_token
        except ConfigError as error:
            raise ConfigError(f"stageflow_plus.llm.estimator = 'tiktoken': {error}") from error
        before.append(TokenEstimate(tools=tools, counter=counter, default_max_tokens=default_max))
    return before, limits


def with_llm_steps(cfg: Mapping[str, Any], steps: list[Any],
                   clock: Clock | Callable[[], float] | None) -> list[Any]:
    """``steps`` with the ``[stageflow_plus.llm]`` steps added (unchanged without one): the
    retry and the estimate first, the LLM limiters after the others (the chain fuses and
    orders every limiter interceptor into one admission step)."""
    if "llm" not in cfg:
        return steps
    before, limits = llm_steps(cfg["llm"], cfg, clock)
    return before + steps + limits


def _llm_rate(dimension: str, per_minute: float | None, safety: float, burst_s: float) -> Rate:
    if per_minute is None:  # learned: a placeholder until the first answer
        return Rate(_PLACEHOLDER, per=60.0, dimension=dimension)
    burst = per_minute / 60.0 * burst_s * safety
    if dimension == "requests":
        burst = max(1.0, burst)
    return Rate(per_minute * safety, per=60.0, burst=burst, dimension=dimension)
