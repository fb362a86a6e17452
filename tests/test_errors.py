"""One exception root: every exception class the package exports is a StageflowPlusError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from stageflow.pipeline.interceptors import CriticalInterceptorError

import stageflow_plus
from stageflow_plus import StageflowPlusError
from stageflow_plus.stageflow import InvalidRunOverride, OverrideError

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(stageflow_plus.__path__, "stageflow_plus.")
    if not info.name.endswith("__main__")
)

STAGEFLOW_ALIASES: frozenset[str] = frozenset()
"""Exported exception names that are Stageflow's own types, documented as such (none)."""


def test_the_walk_finds_the_modules() -> None:
    assert {"stageflow_plus.primitives.errors", "stageflow_plus.stageflow.adapters",
            "stageflow_plus.stageflow.overrides"} <= set(MODULES)


@pytest.mark.parametrize("name", ["stageflow_plus", *MODULES])
def test_every_exported_exception_is_a_stageflow_plus_error(name: str) -> None:
    module = importlib.import_module(name)
    exceptions = {attr: value for attr in getattr(module, "__all__", ())
                  if inspect.isclass(value := getattr(module, attr))
                  and issubclass(value, BaseException)}
    outside = sorted(attr for attr, value in exceptions.items()
                     if not issubclass(value, StageflowPlusError)
                     and attr not in STAGEFLOW_ALIASES)
    assert outside == [], f"{name} exports exceptions outside StageflowPlusError: {outside}"
    assert all(issubclass(value, Exception) for value in exceptions.values())


def test_invalid_run_override_is_critical_for_stageflow_and_ours() -> None:
    assert issubclass(InvalidRunOverride, CriticalInterceptorError)
    assert issubclass(InvalidRunOverride, OverrideError)
    error = InvalidRunOverride("stage 's': bad", interceptor_name="stageflow_plus.call_scope")
    assert isinstance(error, stageflow_plus.ConfigError) and isinstance(error, ValueError)
    assert error.interceptor_name == "stageflow_plus.call_scope" and str(error) == "stage 's': bad"
    with pytest.raises(StageflowPlusError):
        raise error
