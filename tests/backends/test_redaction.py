"""Issue 11.7: a password in a backend URL never shows — logs, warnings, errors, reprs,
statistics, config errors, CLI output. Every path that formats a URL is driven here."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytest

from stageflow_plus import ConfigError, ToolCall, build
from stageflow_plus.backends import BackendUnavailable, backend_from_url
from stageflow_plus.backends.limits import RedisLimits
from stageflow_plus.backends.redact import Redactor, redact_url
from stageflow_plus.backends.redis import GlobalPool, RedisBackend
from stageflow_plus.cli import main as cli_main

from .redis_helpers import RedisServer, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

SECRET = "s3cr3t-Pa55"

# every way a URL can carry a secret (the unreachable port makes every path fail)
URLS = [
    "redis://:{s}@127.0.0.1:{p}/0",
    "redis://alice:{s}@127.0.0.1:{p}/0",
    "rediss://alice:{s}@127.0.0.1:{p}/0",
    "redis://127.0.0.1:{p}/0?password={s}",
    "redis://alice@127.0.0.1:{p}/0?password={s}&db=0",
    "redis://:{s}%21@127.0.0.1:{p}/0",
    "unix://:{s}@/tmp/nowhere.sock?db=0",
]


def _urls() -> list[str]:
    port = free_port()
    return [u.format(s=SECRET, p=port) for u in URLS]


@pytest.mark.parametrize("url", URLS)
def test_redact_url_hides_every_form_of_secret(url: str) -> None:
    text = url.format(s=SECRET, p=6379)
    shown = redact_url(text)
    assert SECRET not in shown and "***" in shown
    assert shown.split("://")[0] == text.split("://")[0]  # the scheme stays readable
    assert "127.0.0.1" in shown or "unix" in shown  # and so does the host
    password = SECRET + ("!" if "%21" in text else "")
    assert SECRET not in Redactor(text)(f"failed talking to {text}: AUTH {password} refused")


def test_unknown_query_parameters_are_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="unknown query parameter 'Password'") as info:
        backend_from_url(f"redis://127.0.0.1/0?Password={SECRET}")
    assert SECRET not in str(info.value)


def test_redact_url_keeps_urls_without_secrets_and_odd_values() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("memory://") == "memory://"
    assert redact_url(6379) == "<int>"
    assert SECRET not in redact_url(f"redis://x:{SECRET}@h@other:1/0")  # an '@' too many


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open", "degrade"])
async def test_no_path_of_an_unreachable_backend_shows_the_secret(
    policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for url in _urls():
            backend = backend_from_url(url, on_unavailable=policy, op_timeout=0.2)
            assert isinstance(backend, RedisBackend)
            seen += [repr(backend), str(backend), backend.url, repr(backend.statistics())]
            chain_steps = backend.limits(concurrency=1)
            seen += [repr(step) for step in chain_steps]
            limits = chain_steps[1]
            assert isinstance(limits, RedisLimits)
            try:
                for _ in range(2):  # the failure, then the recheck pause
                    try:
                        lease = await limits.acquire(ToolCall("t"))
                        seen.append(repr(lease))
                        await lease.release()
                    except BackendUnavailable as error:
                        seen += [str(error), repr(error), repr(error.to_dict())]
                        assert error.__cause__ is None or SECRET not in str(error.__cause__)
                try:
                    await backend.pause("rate:x", 1.0)
                except BackendUnavailable as error:
                    seen.append(str(error))
                try:
                    await backend.acquire([GlobalPool("g", 1)], [], timeout=0.5)
                except BackendUnavailable as error:
                    seen.append(str(error))
                seen.append(str(await backend.ping()))
                seen.append(repr(backend.statistics()))
            finally:
                await backend.aclose()
    seen += [r.getMessage() for r in caplog.records]
    seen += [str(r.args) for r in caplog.records]
    seen += [str(w.message) for w in caught]
    assert any("unavailable" in s for s in seen)  # the paths were really taken
    leaked = [s for s in seen if SECRET in s]
    assert not leaked, leaked


def test_config_errors_about_the_url_hide_the_secret() -> None:
    bad = [
        {"url": f"redis://:{SECRET}@127.0.0.1:99999/0"},  # bad port
        {"url": f"redis://:{SECRET}@127.0.0.1/zero"},  # bad db
        {"url": f"mysql://:{SECRET}@127.0.0.1/0"},  # unknown scheme
        {"url": f"redis://:{SECRET}@127.0.0.1/0", "ttl": 0},
        {"url": f"redis://:{SECRET}@127.0.0.1/0", "on_unavailable": "maybe"},
        {"url": f"redis://:{SECRET}@127.0.0.1/0", "max_pause": float("inf")},
        {"url": f"redis://:{SECRET}@[::1/0"},  # unparsable
    ]
    for section in bad:
        with pytest.raises(ConfigError) as info:
            build({"backend": section, "concurrency": {"limit": 2}}, env={})
        assert SECRET not in str(info.value) and SECRET not in repr(info.value)
        chained = info.value.__cause__
        while chained is not None:
            assert SECRET not in str(chained)
            chained = chained.__cause__
    with pytest.raises(ConfigError) as env_info:
        build({"concurrency": {"limit": 2}},
              env={"STAGEFLOW_PLUS_BACKEND": f"redis://:{SECRET}@127.0.0.1:0/x"})
    assert SECRET not in str(env_info.value)


async def test_a_wrong_password_on_a_real_server_is_reported_without_it(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        client = RedisBackend(server.url).client
        await client.config_set("requirepass", "the-right-one")
        await client.aclose()
        caplog.set_level(logging.DEBUG)
        url = f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
        backend = RedisBackend(url, on_unavailable="fail_closed")
        with pytest.raises(BackendUnavailable) as info:
            await backend.try_acquire([GlobalPool("g", 1)], [])
        await backend.aclose()
        texts = [str(info.value), repr(info.value), *(r.getMessage() for r in caplog.records)]
        assert any("Auth" in t or "auth" in t or "password" in t.lower() for t in texts)
        assert not [t for t in texts if SECRET in t]
    finally:
        server.stop()


def test_cli_output_hides_the_secret(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/zero"
    with pytest.raises((SystemExit, ConfigError)) as info:
        cli_main(["bench", "--processes", "1", "--backend", url, "--quick"])
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err + str(info.value)


def test_redactor_of_a_url_without_secret_changes_nothing() -> None:
    redactor = Redactor("redis://127.0.0.1:6379/0")
    assert redactor("Error 111 connecting to 127.0.0.1:6379.") == (
        "Error 111 connecting to 127.0.0.1:6379.")
    assert repr(redactor) == "Redactor('redis://127.0.0.1:6379/0')"
