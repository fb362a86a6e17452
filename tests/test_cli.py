"""The ``stageflow-plus`` command: argument errors say what is wrong (the runs themselves are
exercised by the benchmark tests and the README's demo command)."""

from __future__ import annotations

import pytest

from stageflow_plus.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--backend", "redis://127.0.0.1:6379/0"], "--backend needs --processes N"),
        (["bench", "--processes", "0"], "--processes must be >= 1"),
    ],
)
def test_bad_bench_arguments_are_refused_with_a_reason(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        main(argv)


def test_core_and_processes_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--core", "--processes", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "usage: stageflow-plus" in capsys.readouterr().err
