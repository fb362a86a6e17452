"""Conventional logging: stdlib loggers, quiet by default, per-call DEBUG, aggregated WARNINGs."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    ConfigError,
    LoggingListener,
    ManualClock,
    MultiListener,
    QueueFull,
    Rate,
    Rejected,
    StructlogListener,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
    notify_limit_changed,
)
from stageflow_plus._logging import LOGGER_NAME, OTHER_KEYS, LogDigest, stdlib_emit
from stageflow_plus.stageflow.events import StageflowEventListener
from stageflow_plus.testing import settle

pytestmark = pytest.mark.anyio


class Records(logging.Handler):
    """Keeps every record that reaches it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level]

    def messages(self, level: int | None = None) -> list[str]:
        return [r.getMessage() for r in self.records if level is None or r.levelno == level]


@pytest.fixture
def captured() -> Iterator[Records]:
    """Records of the package's loggers; the package logger at DEBUG (restored after)."""
    handler = Records()
    root = logging.getLogger(LOGGER_NAME)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def refusal(key: str = "tool:search", reason_cls: type[Rejected] = QueueFull) -> Rejected:
    return reason_cls("stageflow-plus: queue is full (1 waiting)", key=key, limiter="test",
                      queue_depth=1)


class CountingInfo:
    """An ``info`` that counts how often its log fields were built."""

    def __init__(self) -> None:
        self.built = 0

    def log_fields(self) -> dict[str, Any]:
        self.built += 1
        return {"tool": "search", "call_id": 1, "run_id": None, "tenant": "acme",
                "priority": 0, "cost": {}}


def test_the_package_logger_has_only_a_null_handler() -> None:
    handlers = logging.getLogger(LOGGER_NAME).handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent("""
        import asyncio, logging
        from stageflow_plus import (Backpressure, ConcurrencyLimiter, Rejected, ToolCall,
                                    ToolCallChain)

        async def main() -> None:
            chain = ToolCallChain([Backpressure(max_queue=2), ConcurrencyLimiter(1)])
            gate = asyncio.Event()

            async def hold(call: ToolCall) -> None:
                await gate.wait()

            tasks = [asyncio.ensure_future(chain.run(ToolCall("t"), hold)) for _ in range(50)]
            await asyncio.sleep(0.01)
            gate.set()
            out = await asyncio.gather(*tasks, return_exceptions=True)
            print("refused", sum(isinstance(o, Rejected) for o in out))
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)


def test_a_host_that_configures_nothing_sees_nothing() -> None:
    done = run_script("asyncio.run(main())\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused 47"
    assert done.stderr == ""  # no "last resort" handler output for the 47 refusals


def test_basic_config_warning_shows_one_aggregated_line_and_no_per_call_line() -> None:
    done = run_script("logging.basicConfig(level=logging.WARNING)\nasyncio.run(main())\n")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # the first refusal; the other 46 fall in its window
    assert lines[0].startswith("WARNING:stageflow_plus.limiter:") and "refused" in lines[0]


def test_basic_config_error_silences_everything() -> None:
    done = run_script("logging.basicConfig(level=logging.ERROR)\nasyncio.run(main())\n")
    assert done.returncode == 0 and done.stderr == ""


def test_debug_events_are_built_only_when_debug_is_enabled(captured: Records) -> None:
    logger = logging.getLogger("stageflow_plus.test_debug")
    listener = LoggingListener(logger=logger, clock=ManualClock())
    info = CountingInfo()
    logger.setLevel(logging.INFO)
    listener.on_queued(info, 3)
    listener.on_admitted(info, 0.25)
    listener.on_released(info, 1.0)
    assert info.built == 0 and captured.records == []
    logger.setLevel(logging.DEBUG)
    listener.on_queued(info, 3)
    listener.on_admitted(info, 0.25)
    listener.on_released(info, 1.0)
    assert info.built == 3
    assert captured.messages(logging.DEBUG) == [
        "stageflow-plus: search call #1 (run None, tenant acme, priority 0) queued (3 waiting)",
        "stageflow-plus: search call #1 (run None, tenant acme, priority 0) admitted after "
        "250.0 ms",
        "stageflow-plus: search call #1 (run None, tenant acme, priority 0) released after "
        "1000.0 ms",
    ]
    queued = captured.records[0]
    assert queued.__dict__["limiter_event"] == "tool_call.queued"
    assert queued.__dict__["tenant"] == "acme" and queued.__dict__["depth"] == 3
    logger.setLevel(logging.NOTSET)


def test_refusals_aggregate_to_one_line_per_key_per_interval(captured: Records) -> None:
    clock = ManualClock()
    listener = LoggingListener(clock=clock, interval=10.0)
    logging.getLogger("stageflow_plus.limiter").setLevel(logging.WARNING)  # no DEBUG lines
    try:
        for _ in range(500):
            listener.on_rejected(None, refusal())
        listener.on_rejected(None, refusal(key="tool:fetch"))
        assert len(captured.records) == 2  # the first on each key, at once
        first = captured.records[0]
        assert first.levelno == logging.WARNING and "refused (queue_full" in first.getMessage()
        assert first.__dict__["field_message"].startswith("stageflow-plus: queue is full")
        clock.advance(4.0)
        for _ in range(10):
            listener.on_rejected(None, refusal(reason_cls=_Timeout))
        assert len(captured.records) == 2
        clock.advance(6.0)  # the window of both keys ends: one summary for tool:search only
        assert captured.messages()[2:] == [
            "stageflow-plus: 509 more calls refused on tool:search in the last 10.0s "
            "(queue_full: 499, wait_timeout: 10)"
        ]
        summary = captured.records[2]
        assert summary.__dict__["limiter_event"] == "tool_call.refusals"
        assert summary.__dict__["count"] == 509
        clock.advance(10.0)  # a quiet window: nothing to say, the key is forgotten
        assert len(captured.records) == 3
        listener.on_rejected(None, refusal())
        assert len(captured.records) == 4 and "refused" in captured.messages()[3]
    finally:
        logging.getLogger("stageflow_plus.limiter").setLevel(logging.NOTSET)


class _Timeout(Rejected):
    reason = "wait_timeout"


def test_refusals_log_at_debug_per_call_too(captured: Records) -> None:
    listener = LoggingListener(clock=ManualClock())
    for _ in range(3):
        listener.on_rejected(None, refusal())
    assert len(captured.at(logging.DEBUG)) == 3 and len(captured.at(logging.WARNING)) == 1


def test_hostile_keys_cannot_grow_the_digest(captured: Records) -> None:
    clock = ManualClock()
    digest = LogDigest(stdlib_emit(logging.getLogger("stageflow_plus.hostile")), clock=clock,
                       max_keys=8)
    for i in range(10_000):
        digest.note(logging.WARNING, f"run:{i}", "queue_full", what="calls refused",
                    event="e", first=lambda: ("e", "first", {}))
    assert len(digest._windows) == 9  # 8 keys + "(other keys)"
    assert len(captured.records) == 9
    clock.advance(10.0)
    assert captured.messages()[-1] == (
        f"stageflow-plus: 9991 more calls refused on {OTHER_KEYS} in the last 10.0s "
        "(queue_full: 9991)"
    )


def test_digest_without_a_running_loop_ends_windows_at_the_next_note(captured: Records) -> None:
    now = [0.0]
    digest = LogDigest(stdlib_emit(logging.getLogger("stageflow_plus.noloop")),
                       clock=lambda: now[0], interval=5.0)
    for _ in range(3):
        digest.note(logging.WARNING, "k", "r", what="things", event="e",
                    first=lambda: ("e", "first", {}))
    assert captured.messages() == ["first"] and digest.pending == 2
    now[0] = 6.0
    digest.note(logging.WARNING, "k", "r", what="things", event="e",
                first=lambda: ("e", "first", {}))
    assert captured.messages()[1] == "stageflow-plus: 2 more things on k in the last 6.0s (r: 2)"
    assert digest.pending == 1
    digest.flush()
    assert captured.messages()[2].startswith("stageflow-plus: 1 more things on k")
    assert digest.pending == 0


def test_digest_validates_its_arguments() -> None:
    emit = stdlib_emit(logging.getLogger("stageflow_plus.x"))
    with pytest.raises(ConfigError, match="interval"):
        LogDigest(emit, interval=0)
    with pytest.raises(ConfigError, match="max_keys"):
        LogDigest(emit, max_keys=0)


def test_pauses_warn_and_limit_changes_inform(captured: Records) -> None:
    listener = LoggingListener(clock=ManualClock())
    multi = MultiListener([listener, StageflowEventListener()])
    multi.on_paused("global", 2.5)
    notify_limit_changed(multi, "concurrency:global", 8, 6, "aimd: 429")
    notify_limit_changed(StageflowEventListener(), "x", 1, 2, "ignored: no such method")
    assert captured.messages(logging.WARNING) == [
        "stageflow-plus: provider asked to wait 2.5s: key global paused for every caller"]
    assert captured.messages(logging.INFO) == [
        "stageflow-plus: limit concurrency:global changed from 8 to 6 (aimd: 429)"]


async def test_the_chain_logs_through_stdlib_by_default(captured: Records) -> None:
    clock = ManualClock()
    chain = ToolCallChain([Backpressure(max_queue=1), ConcurrencyLimiter(1)], clock=clock)
    assert chain.gate is not None
    assert isinstance(chain.gate.limiter.listener, LoggingListener)
    release = asyncio.Event()

    async def hold(call: ToolCall) -> None:
        await release.wait()

    tasks = [asyncio.ensure_future(chain.run(ToolCall("t", tenant="acme"), hold))
             for _ in range(4)]
    await settle()
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(o, QueueFull) for o in outcomes) == 2
    events = [r.__dict__.get("limiter_event") for r in captured.records]
    assert events.count("tool_call.queued") == 1 and events.count("tool_call.admitted") == 1
    assert [r.levelno for r in captured.records if r.levelno > logging.DEBUG] == [
        logging.WARNING]  # the two refusals: one line
    clock.advance(10.0)  # the window's timer on the chain's clock writes the summary
    assert "1 more calls refused" in captured.messages(logging.WARNING)[-1]


async def test_the_aggregation_timer_runs_on_the_loop() -> None:
    records = Records()
    logger = logging.getLogger("stageflow_plus.timer")
    logger.addHandler(records)
    logger.setLevel(logging.WARNING)
    try:
        digest = LogDigest(stdlib_emit(logger), interval=0.01)
        for _ in range(5):
            digest.note(logging.WARNING, "k", "r", what="things", event="e",
                        first=lambda: ("e", "first", {}))
        await asyncio.sleep(0.05)  # the loop's timer ends the window (no further note)
        assert records.messages()[1].startswith("stageflow-plus: 4 more things on k")
    finally:
        logger.removeHandler(records)


async def test_set_log_listener_swaps_the_log_listener_and_keeps_the_others() -> None:
    structlog = pytest.importorskip("structlog")
    from structlog.testing import capture_logs

    chain = ToolCallChain([TokenBucketRateLimiter(Rate(1, per=1, burst=1))])
    chain.add_listener(StageflowEventListener())
    chain.set_log_listener(StructlogListener())
    assert chain.gate is not None
    listener = chain.gate.limiter.listener
    assert isinstance(listener, MultiListener)
    assert [type(x) for x in listener.listeners] == [StructlogListener, StageflowEventListener]
    with capture_logs() as logs:
        listener.on_paused("global", 1.0)
        listener.on_rejected(None, refusal())
        listener.on_rejected(None, refusal())
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events == [("tool_call.paused", "warning"), ("tool_call.rejected", "debug"),
                      ("tool_call.rejected", "warning"), ("tool_call.rejected", "debug")]
    assert structlog is not None


def test_structlog_listener_without_structlog_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "structlog", None)
    with pytest.raises(ConfigError, match=r"stageflow-plus\[structlog\]"):
        StructlogListener()
