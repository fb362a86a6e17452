"""The public API: what ``__all__`` promises exists, is documented, and nothing else leaks."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

import stageflow_plus

PACKAGES = ["stageflow_plus", "stageflow_plus.primitives", "stageflow_plus.interceptors",
            "stageflow_plus.stageflow", "stageflow_plus.backends", "stageflow_plus.bench",
            "stageflow_plus.llm", "stageflow_plus.metrics"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_resolve_and_are_documented(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", [])
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    for attr in exported:
        value = getattr(module, attr)  # raises if missing
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name}.{attr} has no docstring"


def test_top_level_exports_every_public_name_it_imports() -> None:
    public = {
        n for n, v in vars(stageflow_plus).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(stageflow_plus.__all__) - {"__version__"}
    assert stageflow_plus.__version__ == "0.1.0"


def test_subpackage_exports_reach_the_top_level_when_they_are_user_facing() -> None:
    for name in ("ToolCallChain", "ConcurrencyLimiter", "PriorityFairQueue",
                 "TokenBucketRateLimiter", "Backpressure", "Rejected", "build", "Ceilings"):
        assert name in stageflow_plus.__all__
