"""The ``stageflow-plus`` command: argument errors say what is wrong (the runs themselves are
exercised by the benchmark tests and the README's demo command)."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import stageflow_plus

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"stageflow-plus {stageflow_plus.__version__}"


EXAMPLE = Path(__file__).parent.parent / "examples" / "limits.toml"


def test_config_check_accepts_the_example_with_one_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    assert main(["config", "check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"{EXAMPLE}: ok — chain: Backpressure")
    assert "'tokens' need a cost_of estimator" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[stageflow_plus.rate]\nrates = [{limit = 600}]\n",
         "stageflow_plus.rate.rates[0] = {'limit': 600} has no per"),
        ("[stageflow_plus.backpressure]\ndeadline_aware = \"false\"\n",
         "stageflow_plus.backpressure.deadline_aware must be true or false, got 'false'"),
        ("[stageflow_plus.priorities]\ncall_scope = 9\n",
         "renamed stageflow_plus.interceptor_order"),
        ("[stageflow_plus\n", "is not valid TOML"),
    ],
)
def test_config_check_refuses_naming_the_entry(
        text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["config", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and str(path) in captured.err
    monkeypatch.setenv("STAGEFLOW_PLUS_RMP", "600")  # the environment counts too
    assert main(["config", "check", str(EXAMPLE)]) == 1
    assert "STAGEFLOW_PLUS_RMP is not one stageflow-plus reads" in capsys.readouterr().err


def test_config_show_is_the_effective_config_redacted_and_readable_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    import stageflow_plus

    _clean_env(monkeypatch)
    monkeypatch.setenv("STAGEFLOW_PLUS_RPM", "100")
    monkeypatch.setenv("STAGEFLOW_PLUS_BACKEND", "redis://user:hunter2@127.0.0.1:6390/0")
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.read_text().replace(
        "stageflow_defaults = true", 'stageflow_defaults = true\nplugins = ["audit"]')
        + '\n[stageflow_plus.plugin_options.audit]\napi_key = "sk-live-123"\nmax_tokens = 5\n')
    # no plugin "audit" is installed here: the config is shown, then refused like `check` does
    assert main(["config", "show", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "unknown interceptor 'audit'" in err and "hunter2" not in err
    assert "hunter2" not in out and "sk-live-123" not in out
    assert "redis://user:***@127.0.0.1:6390/0" in out and 'api_key = "***"' in out
    assert "merged from the environment: STAGEFLOW_PLUS_BACKEND, STAGEFLOW_PLUS_RPM" in out
    shown = tomllib.loads(out)["stageflow_plus"]
    effective = stageflow_plus.load_config(path)
    assert shown["rate"] == effective["rate"] and shown["rate"]["rates"][0]["limit"] == 100
    assert shown["plugin_options"] == {"audit": {"api_key": "***", "max_tokens": 5}}
    assert {k: v for k, v in shown.items() if k not in {"backend", "plugin_options"}} == {
        k: v for k, v in effective.items() if k not in {"backend", "plugin_options"}}


def test_config_show_without_a_file_reads_the_environment(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("STAGEFLOW_PLUS_MAX_CONCURRENT", "7")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "(environment only)" in out and "[stageflow_plus.concurrency]\nlimit = 7" in out
    monkeypatch.setenv("STAGEFLOW_PLUS_MAX_CONCURRENT", "many")
    assert main(["config", "show"]) == 1
    assert "STAGEFLOW_PLUS_MAX_CONCURRENT='many' must be an int" in capsys.readouterr().err


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the build-time variables of the test run itself stay."""
    for name in os.environ:
        if name.startswith("STAGEFLOW_PLUS_") and name not in {
                "STAGEFLOW_PLUS_PURE", "STAGEFLOW_PLUS_REQUIRE_COMPILED", "STAGEFLOW_PLUS_VENV"}:
            monkeypatch.delenv(name)


def test_config_show_refuses_what_config_check_refuses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    path = tmp_path / "c.toml"
    path.write_text("[stageflow_plus.plugin_options.acme]\napi_key = \"sk-live-123\"\n"
                    "[stageflow_plus.concurrency]\nlimit = 2\n")
    assert main(["config", "check", str(path)]) == 1
    check_err = capsys.readouterr().err
    assert main(["config", "show", str(path)]) == 1
    shown = capsys.readouterr()
    assert "limit = 2" in shown.out and "sk-live-123" not in shown.out + shown.err
    assert "plugin that is not listed in stageflow_plus.plugins" in shown.err
    assert "plugin that is not listed in stageflow_plus.plugins" in check_err


def test_config_check_and_show_hide_a_password_given_as_a_query_value(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    path = tmp_path / "c.toml"
    path.write_text('[stageflow_plus.backend]\nurl = "redis://127.0.0.1:6399/0?password=hunter2"\n'
                    "[stageflow_plus.concurrency]\nlimit = 2\n")
    assert main(["config", "check", str(path)]) == 0
    assert main(["config", "show", str(path)]) == 0
    shown = capsys.readouterr()
    assert "hunter2" not in shown.out + shown.err
    assert "backend redis://127.0.0.1:6399/0?password=***" in shown.out
    assert 'url = "redis://127.0.0.1:6399/0?password=***"' in shown.out
