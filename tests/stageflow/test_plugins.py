"""The ``stageflow.interceptors`` entry-point group with a real, built and installed package."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from stageflow.pipeline.interceptors import BaseInterceptor

import stageflow_plus.stageflow as sfp
from stageflow_plus import ConfigError

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "acme-audit"
version = "1.0.0"

[project.entry-points."stageflow.interceptors"]
acme_audit = "acme_audit:AuditInterceptor"
acme_broken = "acme_audit:not_an_interceptor"

[tool.hatch.build.targets.wheel]
packages = ["acme_audit"]
"""

MODULE = '''
from typing import Any

from stageflow.pipeline.interceptors import BaseInterceptor


class AuditInterceptor(BaseInterceptor):
    name = "acme_audit"
    priority = 30

    def __init__(self, label: str = "audit") -> None:
        self.label = label
        self.seen: list[str] = []

    async def before(self, stage_name: str, ctx: Any) -> None:
        self.seen.append(f"{self.label}:{stage_name}")

    async def after(self, stage_name: str, result: Any, ctx: Any) -> None:
        pass


def not_an_interceptor() -> object:
    return object()
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build ``acme-audit`` with pip (hatchling, no network) and install it into a target dir."""
    root = tmp_path_factory.mktemp("acme")
    source = root / "src"
    (source / "acme_audit").mkdir(parents=True)
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "acme_audit" / "__init__.py").write_text(textwrap.dedent(MODULE))
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )
    assert (target / "acme_audit-1.0.0.dist-info" / "entry_points.txt").exists()
    return target


def test_a_third_party_package_adds_an_interceptor(
    installed_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(sfp.UnknownInterceptor, match=r"'acme_audit'.*available: stageflow_plus"):
        sfp.load_interceptor("acme_audit")
    monkeypatch.syspath_prepend(str(installed_plugin))
    importlib.invalidate_caches()
    assert "acme_audit" in sfp.available_interceptors()
    audit = sfp.load_interceptor("acme_audit", {"label": "L"})
    assert isinstance(audit, BaseInterceptor) and type(audit).__name__ == "AuditInterceptor"
    plus = sfp.build({"plugins": ["acme_audit"], "plugin_options": {"acme_audit": {"label": "x"}}},
                     env={})
    found = [i for i in plus.interceptors if i.name == "acme_audit"]
    assert len(found) == 1 and getattr(found[0], "label", None) == "x"
    priorities = [i.priority for i in plus.interceptors]
    assert priorities == sorted(priorities)
    with pytest.raises(ConfigError, match="returned object, not a stageflow BaseInterceptor"):
        sfp.load_interceptor("acme_broken")
    with pytest.raises(ConfigError, match="'acme_audit' rejects its options"):
        sfp.load_interceptor("acme_audit", {"colour": "red"})


def test_options_that_are_not_a_table_are_refused_naming_the_plugin() -> None:
    with pytest.raises(ConfigError, match=r"the options of interceptor "
                                          r"'stageflow_plus.call_scope' must be a table"):
        sfp.load_interceptor("stageflow_plus.call_scope", [1, 2])  # type: ignore[arg-type]
