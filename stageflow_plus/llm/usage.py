"""Token costs of LLM calls: an estimate before the call, the provider's usage after it.

**Before** (what admission charges): :func:`estimate_tokens` reads a call's payload in either
provider's request shape — ``messages`` (and ``system``, ``prompt``, ``input``, ``tools``),
``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``, ``n`` — and counts the
prompt as characters / 4 (or with a tokenizer such as tiktoken's), plus the output budget,
which is what OpenAI charges at admission::

    {"tokens": prompt + max_tokens·n, "input_tokens": prompt, "output_tokens": max_tokens·n}

**After** (what the provider billed): :func:`openai_usage` and :func:`anthropic_usage` read
the ``usage`` of an answer — an SDK response object, its ``model_dump()``, a dict, or a
``ToolOutput`` whose ``data`` holds either (``data["usage"]`` or ``data["response"]``) —
in the same dimensions, so a :class:`~stageflow_plus.interceptors.rate.
TokenBucketRateLimiter` ``actual_cost`` charges or refunds the difference:

* OpenAI: ``tokens = prompt_tokens + completion_tokens``.
* Anthropic: ``input_tokens`` as its input-token limit counts them — ``input_tokens`` plus
  ``cache_creation_input_tokens``, cache reads excluded (they do not count towards the limit
  on most models) — ``output_tokens``, and ``tokens`` their sum.

tiktoken is optional (``pip install 'stageflow-plus[tiktoken]'``): :func:`tiktoken_counter`
loads an encoding when asked; it may download its BPE file on first use.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..primitives.errors import ConfigError

__all__ = [
    "TokenCounter",
    "anthropic_usage",
    "chars_per_token",
    "estimate_tokens",
    "find_usage",
    "openai_usage",
    "tiktoken_counter",
]

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text."""

_PROMPT_KEYS = ("system", "messages", "prompt", "input", "tools", "instructions")
_BUDGET_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_MAX_TOKENS = 10**9  # a budget above this is refused as a mistake, not charged


def chars_per_token(text: str) -> int:
    """The default counter: ``ceil(len(text) / 4)`` (English averages ~4 characters/token)."""
    return -(-len(text) // 4)


def _texts(value: Any, out: list[str], depth: int = 0) -> None:
    if depth > 32:
        return
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key in ("role", "type", "cache_control"):
                continue
            if key in ("parameters", "input_schema") and isinstance(item, Mapping):
                out.append(json.dumps(item, separators=(",", ":"), default=str))
            else:
                _texts(item, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _texts(item, out, depth + 1)


def _count(name: str, value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_TOKENS:
        raise ConfigError(f"{where}: {name} must be an int in [0, {_MAX_TOKENS}], got {value!r}")
    return value


def estimate_tokens(
    payload: Mapping[str, Any],
    *,
    counter: TokenCounter = chars_per_token,
    default_max_tokens: int = 0,
    where: str = "estimate_tokens",
) -> dict[str, float]:
    """The tokens admission charges for a call with this request ``payload``.

    :param counter: counts the tokens of the prompt's text (default: characters / 4).
    :param default_max_tokens: the output budget of a request that names none.
    :raises ConfigError: a budget or ``n`` that is not an int in range (naming ``where``).
    """
    if not isinstance(payload, Mapping):
        raise ConfigError(f"{where}: the call's payload must be a mapping, got "
                          f"{type(payload).__name__}")
    texts: list[str] = []
    for key in _PROMPT_KEYS:
        if key in payload:
            _texts(payload[key], texts)
    prompt = sum(max(0, int(counter(t))) for t in texts)
    budget = next((payload[k] for k in _BUDGET_KEYS if payload.get(k) is not None), None)
    output = _count("max_tokens", budget, where) if budget is not None else default_max_tokens
    n = _count("n", payload.get("n"), where) or 1
    output *= n
    return {"tokens": float(prompt + output), "input_tokens": float(prompt),
            "output_tokens": float(output)}


def tiktoken_counter(model: str | None = None, *, encoding: str = "o200k_base") -> TokenCounter:
    """A counter from tiktoken (exact for OpenAI encodings). Optional dependency.

    :raises ConfigError: tiktoken is not installed (``pip install 'stageflow-plus[tiktoken]'``)
        or the encoding cannot be loaded.
    """
    try:
        import tiktoken
    except ImportError:
        raise ConfigError("the tiktoken estimator needs tiktoken: pip install "
                          "'stageflow-plus[tiktoken]'") from None
    try:
        enc = tiktoken.encoding_for_model(model) if model else tiktoken.get_encoding(encoding)
    except Exception as error:  # unknown model, no network for the BPE file, ...
        raise ConfigError(f"tiktoken cannot load {model or encoding!r}: {error}") from error

    def count(text: str) -> int:
        return len(enc.encode(text, disallowed_special=()))

    return count


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def find_usage(outcome: Any) -> Any:
    """The ``usage`` of an answer (an SDK response, a dict, a ``ToolOutput``), or ``None``."""
    for candidate in (outcome, _field(outcome, "data")):
        if candidate is None:
            continue
        usage = _field(candidate, "usage")
        if usage is not None:
            return usage
        response = _field(candidate, "response")
        if response is not None and not isinstance(response, (str, bytes)):
            usage = _field(response, "usage")
            if usage is not None:
                return usage
    return None


def _number(usage: Any, name: str) -> float | None:
    value = _field(usage, name)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if 0 <= number < math.inf else None


def openai_usage(outcome: Any) -> dict[str, float] | None:
    """``{"tokens": prompt_tokens + completion_tokens}`` from an OpenAI answer, or ``None``
    when the answer carries no usable usage (then the estimate stands)."""
    usage = find_usage(outcome)
    if usage is None:
        return None
    prompt, completion = _number(usage, "prompt_tokens"), _number(usage, "completion_tokens")
    if prompt is None or completion is None:
        return None
    return {"tokens": prompt + completion, "input_tokens": prompt, "output_tokens": completion}


def anthropic_usage(outcome: Any) -> dict[str, float] | None:
    """``input_tokens`` (+ cache creation, cache reads excluded), ``output_tokens`` and their
    sum ``tokens`` from an Anthropic answer, or ``None`` without usable usage."""
    usage = find_usage(outcome)
    if usage is None:
        return None
    fresh = _number(usage, "input_tokens")
    created = _number(usage, "cache_creation_input_tokens")
    output = _number(usage, "output_tokens")
    if fresh is None or created is None or output is None:
        return None
    return {"tokens": fresh + created + output, "input_tokens": fresh + created,
            "output_tokens": output}
