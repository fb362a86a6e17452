"""Issue 11.7: what build() returns shows no password in its repr (it holds the config)."""

from __future__ import annotations

import pytest

from stageflow_plus import build

SECRET = "hunter2-Pa55"

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("url", [
    f"redis://:{SECRET}@127.0.0.1:6399/0",
    f"redis://alice:{SECRET}@127.0.0.1:6399/0",
    f"redis://127.0.0.1:6399/0?password={SECRET}",
])
async def test_repr_of_a_built_config_hides_the_backend_password(url: str) -> None:
    plus = build({"backend": {"url": url}, "concurrency": {"limit": 2}}, env={})
    try:
        for text in (repr(plus), str(plus)):
            assert SECRET not in text
            assert "StageflowPlus(" in text and "***" in text
        assert plus.config["backend"]["url"] == url  # the config itself is the caller's
    finally:
        await plus.aclose()
