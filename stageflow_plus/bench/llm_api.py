"""The two LLM APIs the simulator speaks: request and response shapes, headers, 429 bodies.

Pure functions, no server: :mod:`~stageflow_plus.bench.provider` calls them.

* **OpenAI chat completions** (``POST /v1/chat/completions``): request ``model``,
  ``messages``, ``max_tokens`` / ``max_completion_tokens``, ``n``; answer
  ``{"object": "chat.completion", "choices": [...], "usage": {"prompt_tokens",
  "completion_tokens", "total_tokens"}}``; headers ``x-ratelimit-{limit,remaining,reset}-
  {requests,tokens}`` (resets as Go durations); a 429 has ``retry-after`` (whole seconds),
  ``retry-after-ms`` and ``{"error": {"message", "type", "param", "code":
  "rate_limit_exceeded"}}``.
* **Anthropic messages** (``POST /v1/messages``): request ``model``, ``system``,
  ``messages``, ``max_tokens``; answer ``{"type": "message", "content": [...],
  "stop_reason", "usage": {"input_tokens", "output_tokens", "cache_creation_input_tokens",
  "cache_read_input_tokens"}}``; headers ``anthropic-ratelimit-{requests,input-tokens,
  output-tokens}-{limit,remaining,reset}`` (resets as RFC 3339 times); a 429 has
  ``retry-after`` (whole seconds) and ``{"type": "error", "error": {"type":
  "rate_limit_error", "message"}}``.

The simulator's tokenizer counts ``ceil(characters / 4)`` of every text in the prompt.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "LlmRequest",
    "anthropic_error",
    "anthropic_message",
    "count_text",
    "openai_completion",
    "openai_error",
    "parse_anthropic",
    "parse_openai",
    "rfc3339_in",
]

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """What the simulator needs from a request.

    :ivar model: the model asked for.
    :ivar prompt_tokens: ``ceil(characters / 4)`` of the prompt.
    :ivar max_tokens: the output budget asked for (× ``n`` for OpenAI).
    :ivar cache_read_tokens: prompt tokens served from the cache (Anthropic; not charged to
        the input-token limit).
    """

    model: str
    prompt_tokens: int
    max_tokens: int
    cache_read_tokens: int = 0


def count_text(value: Any) -> int:
    """Characters of every string in a (nested) prompt structure."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(count_text(v) for k, v in value.items() if k not in ("role", "type"))
    if isinstance(value, list):
        return sum(count_text(v) for v in value)
    return 0


def _int(body: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def parse_openai(body: Any) -> LlmRequest:
    """An OpenAI chat-completions request; ``ValueError`` when malformed."""
    if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
        raise ValueError("messages must be a list")
    chars = count_text(body["messages"])
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _int(body, name, 0) if body.get(name) is not None else 0
    n = _int(body, "n", 1) if body.get("n") is not None else 1
    return LlmRequest(str(body.get("model", "")), math.ceil(chars / 4), max_tokens * max(n, 1))


def parse_anthropic(body: Any) -> LlmRequest:
    """An Anthropic messages request; ``ValueError`` when malformed (``max_tokens`` is
    required, as in the real API). Text blocks marked ``cache_control`` count as cache
    reads."""
    if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
        raise ValueError("messages must be a list")
    chars = count_text(body["messages"]) + count_text(body.get("system", ""))
    cached = 0
    system = body.get("system")
    if isinstance(system, list):
        cached = sum(count_text(b) for b in system
                     if isinstance(b, Mapping) and b.get("cache_control"))
    return LlmRequest(str(body.get("model", "")), math.ceil((chars - cached) / 4),
                      _int(body, "max_tokens"), math.ceil(cached / 4))


def openai_completion(request: LlmRequest, output_tokens: int, created: int) -> dict[str, Any]:
    """A ``chat.completion`` answer with its ``usage``."""
    return {
        "id": f"chatcmpl-sim{next(_ids)}",
        "object": "chat.completion",
        "created": created,
        "model": request.model or "sim",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "ok", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop" if output_tokens < request.max_tokens else "length",
        }],
        "usage": {
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": request.prompt_tokens + output_tokens,
        },
    }


def anthropic_message(request: LlmRequest, output_tokens: int) -> dict[str, Any]:
    """A ``message`` answer with its ``usage`` (cache counts included)."""
    return {
        "id": f"msg_sim{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": request.model or "sim",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn" if output_tokens < request.max_tokens else "max_tokens",
        "stop_sequence": None,
        "usage": {
            "input_tokens": request.prompt_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": request.cache_read_tokens,
        },
    }


def openai_error(reason: str, limit: float, wait: float) -> dict[str, Any]:
    """OpenAI's 429 body: which limit, and when to try again."""
    what = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)",
            "concurrency": "concurrent requests"}.get(reason, reason)
    return {"error": {
        "message": f"Rate limit reached for sim on {what}: Limit {limit:g}. "
                   f"Please try again in {math.ceil(wait * 1000)}ms.",
        "type": reason,
        "param": None,
        "code": "rate_limit_exceeded",
    }}


def anthropic_error(reason: str, *, overloaded: bool = False) -> dict[str, Any]:
    """Anthropic's 429 (or 529 ``overloaded_error``) body."""
    if overloaded:
        return {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    return {"type": "error", "error": {
        "type": "rate_limit_error",
        "message": f"This request would exceed your organization's rate limit of {reason}.",
    }}


def rfc3339_in(seconds: float, wall_now: float) -> str:
    """The RFC 3339 time ``seconds`` from the wall clock ``wall_now``, in UTC, milliseconds."""
    moment = datetime.fromtimestamp(wall_now + max(0.0, seconds), UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
