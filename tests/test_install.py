"""A light install: runtime code imports only the declared runtime dependencies."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent

# the package, its Stageflow integration, logging and metrics core (not the extras' modules)
PROBE = """
import json, sys
import stageflow, stageflow.tools, stageflow.events, stageflow.pipeline.interceptors
before = set(sys.modules)  # Stageflow's own imports (it uses OpenTelemetry if present)
import stageflow_plus, stageflow_plus.stageflow, stageflow_plus.metrics, stageflow_plus.cli
from stageflow_plus import ToolCallChain, ConcurrencyLimiter
ToolCallChain([ConcurrencyLimiter(1)])
print(json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - before})))
"""

EXTRAS_ONLY = {"structlog", "prometheus_client", "opentelemetry", "redis", "httpx", "aiohttp",
               "aiolimiter", "anyio", "matplotlib", "numpy", "PIL"}


def test_importing_the_package_pulls_no_optional_library() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, check=True)
    imported = set(json.loads(done.stdout))
    assert imported & EXTRAS_ONLY == set(), sorted(imported & EXTRAS_ONLY)
    assert {"stageflow_plus", "mypy_extensions"} <= imported


def test_the_runtime_dependencies_are_exactly_what_runtime_code_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip()
             for dep in project["dependencies"]}
    assert names == {"stageflow-core", "mypy-extensions"}
    extras = project["optional-dependencies"]
    assert not any(dep.startswith("matplotlib") for dep in extras["bench"])
    assert any(dep.startswith("matplotlib") for dep in extras["plot"])
    for extra in ("prometheus", "otel", "structlog", "redis"):
        assert extras[extra], extra
    classifiers = set(project["classifiers"])
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers


def test_the_demo_does_not_import_plotting_libraries() -> None:
    probe = ("import sys; import stageflow_plus.bench.run; "
             "print(sorted(m for m in ('matplotlib', 'numpy', 'PIL') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
