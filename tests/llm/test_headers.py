"""Provider headers and answers: every documented shape, and hostile input never raises."""

from __future__ import annotations

import email.utils
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stageflow_plus.llm import (
    default_retry_after,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    parse_rfc3339,
    read_answer,
)
from stageflow_plus.llm.headers import MAX_COUNT, MAX_SECONDS

NOW = 1_800_000_000.0  # a fixed wall clock


def test_go_durations() -> None:
    assert parse_duration("1s") == 1.0
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("12ms") == pytest.approx(0.012)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("0.5") == 0.5
    for junk in ("", "soon", "1x", "s1", "-1s", "nan", "inf", "1s junk", "1" * 500):
        assert parse_duration(junk) is None, junk
    assert parse_duration("99999999999h") == MAX_SECONDS


def test_retry_after_seconds_milliseconds_and_http_date() -> None:
    assert parse_retry_after({"retry-after": "2"}, NOW) == (2.0, [])
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}, NOW) == (1.5, [])
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    seconds, invalid = parse_retry_after({"retry-after": date}, NOW)
    assert seconds == pytest.approx(30.0) and not invalid
    past = email.utils.formatdate(NOW - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}, NOW)[0] == 0.0
    for junk in ("nan", "inf", "-3", "soon", "Tue, 99 Foo"):
        seconds, invalid = parse_retry_after({"retry-after": junk}, NOW)
        assert seconds is None and invalid == [f"retry-after: {junk}"]
    assert parse_retry_after({"retry-after": "1e12"}, NOW)[0] == MAX_SECONDS  # clamped


def test_openai_headers() -> None:
    info = parse_rate_limit_headers({
        "X-RateLimit-Limit-Requests": "600", "x-ratelimit-remaining-requests": "599",
        "x-ratelimit-reset-requests": "100ms", "x-ratelimit-limit-tokens": "120000",
        "x-ratelimit-remaining-tokens": "119700", "x-ratelimit-reset-tokens": "150ms",
        "retry-after-ms": "20",
    }, NOW)
    assert info.source == "openai" and info.retry_after == pytest.approx(0.02)
    assert info.dimensions["requests"].limit == 600
    assert info.dimensions["requests"].remaining == 599
    assert info.dimensions["tokens"].reset == pytest.approx(0.15)


def test_anthropic_headers_with_rfc3339_resets() -> None:
    info = parse_rate_limit_headers({
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:01Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7000",
        "anthropic-ratelimit-output-tokens-reset": "2027-01-15T08:00:07.500+00:00",
        "anthropic-ratelimit-tokens-limit": "48000",
        "retry-after": "3",
    }, 1_800_000_000.0)
    assert info.source == "anthropic" and info.retry_after == 3.0
    assert set(info.dimensions) == {"requests", "input_tokens", "output_tokens", "tokens"}
    assert info.dimensions["output_tokens"].remaining == 7000
    moment = parse_rfc3339("2027-01-15T08:00:07.500Z", 1_800_000_000.0)
    assert moment is not None and moment > 0
    assert parse_rfc3339("2027-01-15T08:00:07", NOW) is None  # no offset: no guessing
    assert parse_rfc3339("2000-01-01T00:00:00Z", NOW) == 0.0  # in the past


def test_ietf_ratelimit_fields_both_drafts() -> None:
    new = parse_rate_limit_headers({"RateLimit-Policy": '"default";q=100;w=60',
                                    "RateLimit": '"default";r=50;t=30'}, NOW)
    assert new.source == "ietf"
    state = new.dimensions["requests"]
    assert (state.limit, state.remaining, state.reset, state.period) == (100, 50, 30, 60)
    old = parse_rate_limit_headers({"RateLimit": "limit=10, remaining=5, reset=7"}, NOW)
    assert old.dimensions["requests"].limit == 10 and old.dimensions["requests"].reset == 7
    split = parse_rate_limit_headers({"RateLimit-Limit": "20", "RateLimit-Remaining": "0",
                                      "RateLimit-Reset": "2"}, NOW)
    assert split.dimensions["requests"].remaining == 0


class _Response:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers


class _SdkError(Exception):  # what openai/anthropic raise: .status_code and .response
    def __init__(self, response: _Response) -> None:
        super().__init__("rate limited")
        self.response = response
        self.status_code = response.status_code


class _AiohttpError(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None) -> None:
        super().__init__("boom")
        self.status = status
        self.headers = headers


def test_answers_in_every_shape() -> None:
    assert default_retry_after(_SdkError(_Response(429, {"retry-after-ms": "1500"}))) == 1.5
    assert default_retry_after(_AiohttpError(429, {"Retry-After": "2"})) == 2.0
    assert default_retry_after(_AiohttpError(503, None)) is None
    wrapped = RuntimeError("tool failed")
    wrapped.__cause__ = _SdkError(_Response(429, {"retry-after": "4"}))
    assert default_retry_after(wrapped) == 4.0
    assert default_retry_after({"retry_after_ms": 250}) == 0.25
    assert default_retry_after({"status": 200, "headers": {"retry-after": "3"}}) is None
    answer = read_answer({"status": 429, "retry_after": "nan"})
    assert answer is not None and answer.retry_after is None and answer.invalid
    assert read_answer(object()) is None and read_answer(None) is None and read_answer(3) is None
    ok = read_answer(_Response(200, {"x-should-retry": "false"}))
    assert ok is not None and ok.should_retry is False and not ok.rate_limited


_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["nan", "inf", "-inf", "-1", "1e400", "1e12", "0", "  7 ", "1_000", "0x10",
                     "6m0s", "12ms", "Tue, 15 Nov 1994 08:12:31 GMT", "2027-01-15T08:00:01Z",
                     '"d";r=1;t=2', "q=abc;w=-1", "\x00", "9" * 400]),
)
_names = st.sampled_from([
    "retry-after", "retry-after-ms", "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests",
    "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-output-tokens-reset",
    "anthropic-ratelimit-input-tokens-remaining", "ratelimit", "ratelimit-policy",
    "ratelimit-reset", "X-Should-Retry",
])


def _finite_nonnegative(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and value >= 0)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_names, _text, max_size=8), st.floats(0, 4e9))
def test_parsers_never_raise_and_give_finite_values(headers: dict[str, str], now: float) -> None:
    info = parse_rate_limit_headers(headers, now)
    assert _finite_nonnegative(info.retry_after)
    assert info.retry_after is None or info.retry_after <= MAX_SECONDS
    for state in info.dimensions.values():
        for value in (state.limit, state.remaining, state.reset):
            assert _finite_nonnegative(value)
        assert state.limit is None or state.limit <= MAX_COUNT
    for text in headers.values():
        assert _finite_nonnegative(parse_duration(text))
        assert _finite_nonnegative(parse_rfc3339(text, now))
    answer = read_answer({"status": 429, "headers": headers})
    assert answer is not None and _finite_nonnegative(answer.retry_after)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                 st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=12), st.one_of(
                     st.none(), st.floats(), st.text(max_size=12), st.integers()), max_size=4)))
def test_read_answer_takes_anything(value: Any) -> None:
    answer = read_answer(value)
    assert answer is None or _finite_nonnegative(answer.retry_after)
    seconds = default_retry_after({"retry_after": value, "status": 429})
    assert _finite_nonnegative(seconds)


_keys = st.sampled_from(["status", "status_code", "headers", "retry_after", "retry_after_ms",
                         "response", "sent_at", "text"])
_values = st.one_of(st.none(), st.integers(-5, 700), st.floats(), st.text(max_size=12),
                    st.dictionaries(_names, _text, max_size=3),
                    st.builds(_Response, st.sampled_from([200, 429, 503]),
                              st.dictionaries(_names, _text, max_size=3)))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5), st.booleans())
def test_headerless_answers_carry_no_limits(data: dict[str, Any], wrapped: bool) -> None:
    # the learner's fast path: an outcome _headerless calls so has no limits to read
    from stageflow.tools.base import ToolOutput

    import stageflow_plus.stageflow.tools  # noqa: F401  (registers ToolOutput as data-only)
    from stageflow_plus.llm.answers import _headerless

    outcome: Any = ToolOutput(success=True, data=data) if wrapped else data
    if _headerless(outcome):
        answer = read_answer(outcome)
        assert answer is None or not answer.limits.dimensions
    assert _headerless(ToolOutput(success=True, data=None))
    assert not _headerless(_Response(200, {"x-ratelimit-limit-requests": "10"}))
    if "headers" in data or "response" in data:
        assert not _headerless(outcome)
