"""call_scope: fields merge into the enclosing scope; an explicit CallScope replaces it."""

from __future__ import annotations

from typing import Any

import pytest

from stageflow_plus import ConfigError
from stageflow_plus.stageflow import CallScope, call_scope, current_scope


def test_nested_fields_merge_into_the_outer_scope() -> None:
    with call_scope(tenant="acme", run_id="r1"):
        with call_scope(priority=2) as inner:
            assert (inner.tenant, inner.run_id, inner.priority) == ("acme", "r1", 2)
            assert current_scope() is inner
            with call_scope(tenant="other") as innermost:
                assert (innermost.tenant, innermost.priority) == ("other", 2)
        outer = current_scope()
        assert outer is not None and (outer.tenant, outer.priority) == ("acme", None)
    assert current_scope() is None


def test_an_explicit_scope_replaces_and_fields_apply_over_it() -> None:
    with call_scope(tenant="acme", priority=1):
        with call_scope(CallScope(run_id="r2")) as replaced:
            assert (replaced.tenant, replaced.priority, replaced.run_id) == (None, None, "r2")
        with call_scope(CallScope(run_id="r3"), priority=4) as both:
            assert (both.tenant, both.priority, both.run_id) == (None, 4, "r3")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tenent": "acme"}, r"call_scope: unknown field 'tenent'"),
        ({"priority": "high"}, r"CallScope.priority must be an int or None, got 'high'"),
        ({"priority": True}, r"CallScope.priority must be an int"),
        ({"tenant": ""}, r"CallScope.tenant must be a non-empty str"),
        ({"max_wait": 0}, r"CallScope.max_wait must be a number > 0"),
        ({"deadline": float("nan")}, r"CallScope.deadline must be a number"),
        ({"limits": [1]}, r"CallScope.limits must be a mapping"),
    ],
)
def test_bad_fields_are_config_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message), call_scope(**fields):
        pass


class _Name(str):
    pass


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_wait": float("inf")}, r"CallScope.max_wait must be a number > 0"),
        ({"max_wait": True}, r"CallScope.max_wait must be a number"),
        ({"deadline": False}, r"CallScope.deadline must be a number"),
        ({"cost": "tokens"}, r"CallScope.cost must be a mapping"),
        ({"run_id": _Name("")}, r"CallScope.run_id must be a non-empty str"),
    ],
)
def test_the_constructor_checks_every_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CallScope(**fields)


def test_subclasses_and_other_mappings_pass_the_checks() -> None:
    from types import MappingProxyType

    scope = CallScope(run_id=_Name("r"), deadline=5, limits=MappingProxyType({"concurrency": 1}),
                      cost=MappingProxyType({"tokens": 2.0}), max_wait=0.5)
    assert (scope.run_id, scope.deadline, dict(scope.limits)) == ("r", 5, {"concurrency": 1})
    with pytest.raises(AttributeError):
        scope.tenant = "x"  # type: ignore[misc]


def test_a_block_restores_the_previous_scope_on_error_and_enters_once() -> None:
    block = call_scope(tenant="acme")
    with pytest.raises(ValueError), block:
        assert current_scope() == CallScope(tenant="acme")
        raise ValueError("boom")
    assert current_scope() is None
    with pytest.raises(RuntimeError, match="entered only once"), block:
        pass


def test_call_scope_takes_every_field_of_a_scope_by_keyword() -> None:
    from stageflow_plus.stageflow.scope import _FIELDS

    fields: dict[str, Any] = {"run_id": "r", "tenant": "t", "priority": 3, "deadline": 9.0,
                              "limits": {"concurrency": 2}, "stage": "s", "max_wait": 1.5,
                              "cost": {"tokens": 4.0}, "completed": []}
    assert set(fields) == _FIELDS  # (a field added to CallScope needs its parameter here)
    with call_scope(**fields) as scope:
        assert {name: getattr(scope, name) for name in fields} == fields
        with call_scope() as same, call_scope(run_id=None) as cleared:
            assert same is scope and cleared.run_id is None and cleared.tenant == "t"
    with call_scope() as empty:
        assert empty == CallScope()
