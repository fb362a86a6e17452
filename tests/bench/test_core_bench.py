"""The core benchmark runs at tiny sizes and produces its schema (timing goals are not tested)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from stageflow_plus.bench.core import TARGETS, main, run_core_bench
from stageflow_plus.bench.core_registry import REGISTRY_ROWS
from stageflow_plus.bench.table import UNCONTENDED_ROWS, format_core_table

TINY = {"calls": 50, "tasks": 60, "limit": 4, "waiters_small": 40, "waiters_large": 80,
        "memory_n": 40, "registry_calls": 30, "lag_waiters": 200, "lag_repeats": 1}


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return run_core_bench(quick=True, repeats=2, sizes=TINY)


def _positive(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def test_schema_and_values(result: dict[str, Any]) -> None:
    assert {"uncontended", "contended", "waiters", "registry", "loop_lag", "targets", "machine",
            "settings"} <= set(result)
    unc = result["uncontended"]
    assert set(unc["us_per_call"]) == set(UNCONTENDED_ROWS)
    assert all(_positive(v) for v in unc["us_per_call"].values())
    for key in ("chain_vs_aiolimiter", "chain_vs_semaphore", "chain_vs_bare",
                "limiter_vs_semaphore"):
        assert _positive(unc[key])
    con = result["contended"]
    assert con["tasks"] == TINY["tasks"] and con["limit"] == TINY["limit"]
    assert set(con["us_per_task"]) == {"bare", "semaphore", "chain"}
    assert all(_positive(v) for v in con["us_per_task"].values())
    assert _positive(con["chain_vs_semaphore"])
    wai = result["waiters"]
    for kind in ("semaphore", "limiter", "chain"):
        for n in (TINY["waiters_small"], TINY["waiters_large"]):
            phases = wai[kind][f"n{n}"]
            assert all(_positive(phases[k]) for k in ("us_per_waiter", "enqueue_us",
                                                      "dispatch_us"))
        assert _positive(wai[kind]["growth"])
        assert math.isfinite(wai[kind]["bytes_per_waiter"])
    reg = result["registry"]
    assert set(reg["us_per_call"]) == set(REGISTRY_ROWS)
    assert all(_positive(v) for v in reg["us_per_call"].values())
    assert set(reg["overhead_us"]) == set(REGISTRY_ROWS) - {"registry"}
    assert _positive(reg["limited_vs_aiolimiter"])
    lag = result["loop_lag"]
    assert (lag["waiters"], lag["repeats"]) == (TINY["lag_waiters"], 1)
    assert all(_positive(lag["chain"][k]) for k in ("drain_s", "cancel_s"))
    assert set(lag["ratios"]) == {"drain", "stall", "cancel", "cancel_stall"}
    assert set(result["targets"]) == set(TARGETS)
    for name, target in result["targets"].items():
        assert isinstance(target["met"], bool)
        # (a lag ratio over a stall-free tiny run may be inf: the baseline's stall was 0)
        assert math.isfinite(target["value"]) or (name.startswith("lag_")
                                                  and target["value"] == math.inf)
    assert result["settings"]["repeats"] == 2
    json.dumps(result)  # JSON-able


def test_table_has_every_row(result: dict[str, Any]) -> None:
    table = format_core_table(result)
    for label in UNCONTENDED_ROWS.values():
        assert label.strip() in table
    for label in REGISTRY_ROWS.values():
        assert label.strip() in table
    for text in ("(a) uncontended", "(b) contended", "(c) waiters", "(d) registry path",
                 "(e) event-loop lag", "asyncio.Semaphore",
                 "Limiter (FIFO)", "targets", *(d for d, _ in TARGETS.values())):
        assert text in table


def test_main_writes_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    import stageflow_plus.bench.core as core

    monkeypatch.setattr(core, "QUICK_SIZES", TINY)
    out = tmp_path / "core.json"
    assert main(["--quick", "--repeats", "1", "--json", str(out)]) == 0
    assert "(a) uncontended" in capsys.readouterr().out
    assert json.loads(out.read_text())["settings"]["sizes"] == TINY
