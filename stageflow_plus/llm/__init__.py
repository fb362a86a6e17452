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

__all__ = [
    "RETRYABLE_STATUSES",
    "LimitState",
    "ProviderAnswer",
    "RateLimitHeaders",
    "default_retry_after",
    "parse_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "parse_rfc3339",
    "read_answer",
]
