"""What LLM providers say and charge: headers, answers, token estimates and usage.

No Stageflow import and no client-library import: the official ``openai`` and ``anthropic``
clients, ``httpx`` and ``aiohttp`` are recognised by duck typing.

.. versionadded:: 0.2.0
"""

from .answers import RETRYABLE_STATUSES, ProviderAnswer, default_retry_after, read_answer
from .headers import (
    LimitState,
    RateLimitHeaders,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    parse_rfc3339,
)
from .usage import (
    anthropic_usage,
    chars_per_token,
    estimate_tokens,
    find_usage,
    openai_usage,
    tiktoken_counter,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "LimitState",
    "ProviderAnswer",
    "RateLimitHeaders",
    "anthropic_usage",
    "chars_per_token",
    "default_retry_after",
    "estimate_tokens",
    "find_usage",
    "openai_usage",
    "parse_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "parse_rfc3339",
    "read_answer",
    "tiktoken_counter",
]
