"""The cycle collector and the compiled core: no live object may ever look like garbage.

The collector finds garbage by subtracting, for every object, the references that other
objects in the generation *report* through ``tp_traverse``. A class that reports one
reference twice makes the referent's count too small, so a live object (a ``TimerHandle``
still on the loop's heap) is cleared and the loop dies at its next timer operation
(``AttributeError: 'TimerHandle' object has no attribute '_when'``). mypyc generates the
traverse of a class from the attributes of every class in its MRO, so an attribute that a
subclass re-declares (``self.x: T = ...`` in its ``__init__``) was visited once per
declaration. These tests pin the crash, the per-class visit counts and the declaration rule.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stageflow_plus import (
    Backpressure,
    ConcurrencyLimiter,
    PriorityFairQueue,
    Rate,
    TokenBucketRateLimiter,
    ToolCall,
    ToolCallChain,
    _accel,
)
from stageflow_plus.interceptors.gate import AdmissionGate
from stageflow_plus.interceptors.in_flight import InFlight
from stageflow_plus.primitives import (
    ConcurrencyPool,
    FifoOrdering,
    Lease,
    Limiter,
    LoopClock,
    PriorityFairOrdering,
    Resource,
    TokenBucket,
    Waiter,
)
from stageflow_plus.primitives.adaptive import AdaptiveLimit
from stageflow_plus.primitives.adaptive_settings import AdaptiveSettings
from stageflow_plus.primitives.dispatch import Dispatcher
from stageflow_plus.primitives.ordering import _Level, _Tenant
from stageflow_plus.primitives.queueing import Queueing
from stageflow_plus.stageflow.calls import RegistryRunner, _Fixed
from stageflow_plus.stageflow.scope import CallScope, ScopeBlock

ROOT = Path(__file__).resolve().parents[2]


# -- the crash -----------------------------------------------------------------------------
async def _drop_a_chain_with_a_pending_timer() -> None:
    chain = ToolCallChain(
        [TokenBucketRateLimiter(Rate(1, per=60, start_full=False), key="global")]
    )

    async def tool(call: ToolCall) -> str:
        return "ran"

    task = asyncio.ensure_future(chain.run(ToolCall("search"), tool))
    await asyncio.sleep(0)  # queued: the empty bucket scheduled its wake-up on the loop
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    del chain, task, tool
    gc.collect(1)  # the dropped chain is young; the loop's heap (collected below) is old
    loop = asyncio.get_running_loop()
    for handle in loop._scheduled:  # type: ignore[attr-defined]
        assert hasattr(handle, "_when"), "the collector cleared a timer the loop still holds"
    await asyncio.sleep(0.001)  # a timer push and pop on the same heap


def test_a_young_collection_never_clears_a_timer_the_loop_still_holds() -> None:
    async def main() -> None:
        gc.collect()  # everything alive so far (the loop's heap list too) becomes old
        enabled = gc.isenabled()
        gc.disable()  # no automatic pass may promote the dropped chain before ours
        try:
            await _drop_a_chain_with_a_pending_timer()
        finally:
            if enabled:
                gc.enable()

    asyncio.run(main())


# -- every compiled class visits each reference exactly as often as it holds it ------------
def _compiled_classes() -> Iterator[type]:
    """The classes defined by the modules the build compiles (protocols and enums aside)."""
    for name in _accel.COMPILED_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and value.__module__ == name
                and not getattr(value, "_is_protocol", False)
                and not issubclass(value, BaseException)
                and "Enum" not in {b.__name__ for b in value.__mro__}
            ):
                yield value


def _attribute_names(obj: object) -> list[str]:
    """The instance attributes of ``obj``: each name once, over its whole class MRO."""
    names: list[str] = []
    for cls in type(obj).__mro__:
        declared = cls.__dict__.get("__mypyc_attrs__", ()) or cls.__dict__.get("__slots__", ())
        for name in (declared,) if isinstance(declared, str) else declared:
            if name not in names and name not in ("__dict__", "__weakref__"):
                names.append(name)
    return names


def _populated(cls: type, limiter: Limiter) -> Any:
    """An instance of a base class of the limiter, holding the limiter's own values."""
    obj = cls()
    for name in _attribute_names(obj):
        with contextlib.suppress(AttributeError):  # (a slot the limiter never set)
            setattr(obj, name, getattr(limiter, name))
    return obj


def _instances() -> dict[type, Callable[[], Any]]:
    loop = asyncio.new_event_loop()
    pool = ConcurrencyPool("pool", 2)
    bucket = TokenBucket("bucket", Rate(5, dimension="tokens"), 0.0)
    limiter = Limiter(name="traverse", ordering=PriorityFairOrdering())
    waiter = Waiter(
        [(pool, 1.0), (bucket, 2.0)], 1, "acme", 1.0, 0.0, 5.0, 7, loop.create_future(), "info"
    )
    limiter._ordering.push(waiter)  # a queue with a tenant and a level in it
    ordering: Any = limiter._ordering
    gate = AdmissionGate(
        [
            Backpressure(max_queue=3),
            PriorityFairQueue(fair_cost="tokens"),
            TokenBucketRateLimiter(Rate(2)),
            ConcurrencyLimiter(2),
        ]
    )
    clock = LoopClock()
    clock.now()
    return {
        LoopClock: lambda: clock,
        Resource: lambda: Resource("resource"),
        ConcurrencyPool: lambda: pool,
        TokenBucket: lambda: bucket,
        Waiter: lambda: waiter,
        Lease: lambda: Lease(limiter, [(pool, 1.0)], 0.0, 0.0, "info"),
        FifoOrdering: FifoOrdering,
        _Tenant: lambda: next(iter(ordering._tenants.values())),
        _Level: lambda: next(iter(ordering._levels.values())),
        PriorityFairOrdering: lambda: ordering,
        Dispatcher: lambda: _populated(Dispatcher, limiter),
        Queueing: lambda: _populated(Queueing, limiter),
        Limiter: lambda: limiter,
        AdmissionGate: lambda: gate,
        CallScope: lambda: CallScope(
            "run-1", "acme", 2, 9.0, {"concurrency": 2}, "stage", 1.0, {"tokens": 5.0}, []
        ),
        ScopeBlock: lambda: ScopeBlock(CallScope(run_id="run-2")),
        _Fixed: lambda: _Fixed(3.0),
        RegistryRunner: lambda: RegistryRunner(
            gate, _Registry(), _unlimited, _unlimited_call, lambda tool, payload: None
        ),
        InFlight: lambda: InFlight("in_flight:*:tokens"),
        ToolCall: lambda: ToolCall(
            "search", {"q": "x"}, object(), "run-1", "acme", 2, {"tokens": 5.0}, 9.0,
            {"ctx": 1}, {"concurrency": 2},
        ),
        AdaptiveLimit: lambda: AdaptiveLimit(AdaptiveSettings(), 8, 0.0),
    }


class _Registry:
    """What a RegistryRunner reads of its registry: the tools."""

    def __init__(self) -> None:
        self._tools: dict[str, Any] = {}


async def _unlimited(registry: Any, action: Any, ctx: Any) -> None:
    return None


async def _unlimited_call(call: ToolCall) -> None:
    return None


def test_every_compiled_class_visits_each_reference_as_often_as_it_holds_it() -> None:
    factories = _instances()
    classes = set(_compiled_classes())
    assert classes == set(factories), "a compiled class without a factory here (or gone)"
    for cls in sorted(classes, key=lambda c: c.__qualname__):
        obj = factories[cls]()
        assert type(obj) is cls
        values = []
        for name in _attribute_names(obj):
            try:
                values.append(getattr(obj, name))
            except AttributeError:
                continue  # never set: nothing to visit
        held = {id(v): sum(1 for w in values if w is v) for v in values}
        visits: dict[int, int] = {}
        for referent in gc.get_referents(obj):
            if referent is not type(obj):  # (a heap type's instance visits its type)
                visits[id(referent)] = visits.get(id(referent), 0) + 1
        over = {
            repr(v)[:60]: (visits[id(v)], held[id(v)])
            for v in values
            if visits.get(id(v), 0) > held[id(v)]
        }
        assert not over, f"{cls.__qualname__} visits (times, held): {over}"
        assert set(visits) <= set(held), f"{cls.__qualname__} visits what it does not hold"
        missed = [n for n, v in zip(_attribute_names(obj), values, strict=False)
                  if gc.is_tracked(v) and visits.get(id(v), 0) != held[id(v)]]
        assert not missed, f"{cls.__qualname__} does not visit {missed}"


def test_no_compiled_class_declares_an_attribute_twice() -> None:
    """Compiled: mypyc's attribute table lists each name once per class hierarchy."""
    for cls in _compiled_classes():
        # (a native class lists its own and its bases' attributes, each name once)
        declared = [n for n in cls.__dict__.get("__mypyc_attrs__", ()) if n != "__dict__"]
        if _accel.status().compiled:
            assert declared, f"{cls.__qualname__} is not a native class"
        duplicated = sorted({n for n in declared if declared.count(n) > 1})
        assert not duplicated, f"{cls.__qualname__} declares {duplicated} more than once"


def _declarations(node: ast.ClassDef) -> set[str]:
    """Attribute names a class body declares: slots, annotations, ``self.x: T`` in methods."""
    names: set[str] = set()
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(item.target.id)
        if isinstance(item, ast.FunctionDef):
            for sub in ast.walk(item):
                if (
                    isinstance(sub, ast.AnnAssign)
                    and isinstance(sub.target, ast.Attribute)
                    and isinstance(sub.target.value, ast.Name)
                    and sub.target.value.id == "self"
                ):
                    names.add(sub.target.attr)
        if isinstance(item, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in item.targets
        ):
            names.update(ast.literal_eval(item.value))
    return names


def test_a_compiled_subclass_never_redeclares_an_attribute_of_its_base() -> None:
    """The rule behind the fix, checked on the sources (so it holds in either core): an
    attribute is declared (slot, annotation) in one class of a hierarchy only."""
    classes = {cls: cls for cls in _compiled_classes()}
    declared: dict[type, set[str]] = {}
    for cls in classes:
        source = ROOT.joinpath(*cls.__module__.split(".")).with_suffix(".py").read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
                declared[cls] = _declarations(node)
    for cls in classes:
        for base in cls.__mro__[1:]:
            if base in declared:
                again = sorted(declared[cls] & declared[base])
                assert not again, (
                    f"{cls.__qualname__} re-declares {again} of {base.__qualname__}: mypyc "
                    "would visit them twice in the collector's traverse"
                )
