"""The compiled core: which modules run, the staleness guard, and the wheel that carries them."""

from __future__ import annotations

import importlib.machinery
import inspect
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import stageflow_plus
from stageflow_plus import _accel

ROOT = Path(__file__).resolve().parents[1]
EXT = importlib.machinery.EXTENSION_SUFFIXES[0]
MODULES = ("pkg.alpha", "pkg.sub.beta")


def _loaded_from(module: str) -> str:
    return str(sys.modules[module].__file__)


def test_the_core_in_use_is_the_one_asked_for() -> None:
    for module in _accel.COMPILED_MODULES:
        __import__(module)
    files = [_loaded_from(m) for m in _accel.COMPILED_MODULES]
    state = _accel.status()
    if os.environ.get("STAGEFLOW_PLUS_REQUIRE_COMPILED"):  # scripts/test.sh, first pass
        assert state.compiled, state.reason
    if os.environ.get(_accel.PURE_ENV):  # scripts/test.sh, second pass
        assert not state.compiled and _accel.PURE_ENV in state.reason
    if state.compiled:
        assert all(f.endswith(EXT) for f in files), files
    else:
        assert all(f.endswith(".py") for f in files), files
        assert state.reason  # always says why


def test_compiled_classes_keep_their_documentation() -> None:
    from stageflow_plus.interceptors.gate import AdmissionGate
    from stageflow_plus.primitives import Lease, Limiter, LoopClock, TokenBucket

    for cls in (AdmissionGate, Lease, Limiter, LoopClock, TokenBucket):
        assert inspect.getdoc(cls) and "mypyc" not in (cls.__doc__ or ""), cls


def test_the_build_hook_compiles_exactly_the_listed_modules() -> None:
    hatch_build = _hook_module()
    assert tuple(hatch_build.compiled_modules(ROOT)) == _accel.COMPILED_MODULES
    assert f"{hatch_build.GROUP}__mypyc" == _accel.SHARED_LIBRARY
    for module in _accel.COMPILED_MODULES:
        assert ROOT.joinpath(*module.split(".")).with_suffix(".py").exists(), module


# -- select(): the decision, on a package laid out in a temporary directory -------------
def _package(tmp_path: Path, *, built: tuple[str, ...] = MODULES, stale: str | None = None) -> Path:
    root = tmp_path / "pkg"
    records = {}
    for module in MODULES:
        source = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"X = {module!r}\n")
        records[module] = {"sha256": _accel.source_digest(source), "classes": {}}
        if module in built:
            source.with_name(source.stem + EXT).write_bytes(b"")
        if module == stale:
            source.write_text("X = 'edited since the build'\n")
    (root / _accel.BUILD_INFO).write_text(json.dumps({"mypyc": "9.9", "modules": records}))
    (tmp_path / f"{_accel.SHARED_LIBRARY}{EXT}").write_bytes(b"")
    return root


def test_select_uses_compiled_modules_built_from_the_current_sources(tmp_path: Path) -> None:
    state, info = _accel.select(_package(tmp_path), MODULES, {})
    assert state.compiled and "9.9" in state.reason
    assert set(info["modules"]) == set(MODULES)


def test_select_never_uses_a_module_compiled_from_an_older_source(tmp_path: Path) -> None:
    state, _ = _accel.select(_package(tmp_path, stale="pkg.sub.beta"), MODULES, {})
    assert not state.compiled
    assert "older than their sources (pkg.sub.beta)" in state.reason
    assert "pip install -e ." in state.reason


def test_select_trusts_a_build_shipped_without_its_sources(tmp_path: Path) -> None:
    root = _package(tmp_path)
    (root / "alpha.py").unlink()
    state, _ = _accel.select(root, MODULES, {})
    assert state.compiled


def test_select_runs_the_sources_when_asked_or_when_nothing_or_part_was_built(
    tmp_path: Path,
) -> None:
    asked, _ = _accel.select(_package(tmp_path / "a"), MODULES, {_accel.PURE_ENV: "1"})
    assert not asked.compiled and _accel.PURE_ENV in asked.reason
    zero, _ = _accel.select(_package(tmp_path / "b"), MODULES, {_accel.PURE_ENV: "0"})
    assert zero.compiled  # "0" means not set
    nothing, _ = _accel.select(_package(tmp_path / "c", built=()), MODULES, {})
    assert not nothing.compiled and "pure-Python install" in nothing.reason
    part, _ = _accel.select(_package(tmp_path / "d", built=("pkg.alpha",)), MODULES, {})
    assert not part.compiled and "missing: pkg.sub.beta" in part.reason


def test_select_needs_the_shared_library_beside_the_package(tmp_path: Path) -> None:
    root = _package(tmp_path)
    (tmp_path / f"{_accel.SHARED_LIBRARY}{EXT}").unlink()
    state, _ = _accel.select(root, MODULES, {})
    assert not state.compiled and f"{_accel.SHARED_LIBRARY} is missing" in state.reason


def test_select_refuses_an_unreadable_build_record(tmp_path: Path) -> None:
    root = _package(tmp_path)
    (root / _accel.BUILD_INFO).write_text("{not json")
    state, _ = _accel.select(root, MODULES, {})
    assert not state.compiled and _accel.BUILD_INFO in state.reason


def test_pure_mode_imports_every_listed_module_from_its_source() -> None:
    code = (
        "import stageflow_plus, sys\n"
        "from stageflow_plus import _accel\n"
        "print(_accel.status().compiled)\n"
        "for m in _accel.COMPILED_MODULES:\n"
        "    __import__(m); print(sys.modules[m].__file__)\n"
    )
    env = {**os.environ, _accel.PURE_ENV: "1"}
    env.pop("STAGEFLOW_PLUS_REQUIRE_COMPILED", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out[0] == "False"
    assert len(out) == 1 + len(_accel.COMPILED_MODULES)
    assert all(path.endswith(".py") for path in out[1:]), out


def test_a_wheel_carries_the_compiled_modules_and_their_record(tmp_path: Path) -> None:
    # the compile is cached by source hash (build/accel/): this reuses the install's build
    env = {**os.environ, "STAGEFLOW_PLUS_REQUIRE_COMPILED": "1"}
    env.pop(_accel.PURE_ENV, None)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path),
         str(ROOT)],
        env=env, check=True, capture_output=True, timeout=600,
    )
    (wheel,) = tmp_path.glob("*.whl")
    assert "py3-none-any" not in wheel.name  # a platform wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in _accel.COMPILED_MODULES:
        stem = "/".join(module.split("."))
        assert f"{stem}{EXT}" in names and f"{stem}.py" in names, module
    assert f"stageflow_plus__mypyc{EXT}" in names
    record = json.loads(zipfile.ZipFile(wheel).read("stageflow_plus/_accel_build.json"))
    assert set(record["modules"]) == set(_accel.COMPILED_MODULES)
    assert stageflow_plus.__version__ in wheel.name


def test_the_documented_extension_points_can_be_subclassed_in_either_core() -> None:
    from stageflow_plus.interceptors import LimitPart
    from stageflow_plus.primitives import (
        ConcurrencyPool,
        FifoOrdering,
        LoopClock,
        PriorityFairOrdering,
        Resource,
        TokenBucket,
    )

    for base in (Resource, ConcurrencyPool, TokenBucket, FifoOrdering, PriorityFairOrdering,
                 LoopClock, LimitPart):
        sub: type = type(f"My{base.__name__}", (base,), {"extra": 1})
        assert issubclass(sub, base) and getattr(sub, "extra", None) == 1


@pytest.mark.anyio
async def test_a_python_subclass_of_a_compiled_resource_is_used_by_the_compiled_limiter() -> None:
    from stageflow_plus.primitives import ConcurrencyPool, Limiter

    taken: list[float] = []

    class CountingPool(ConcurrencyPool):
        def try_take(self, amount: float, now: float) -> bool:
            taken.append(amount)
            return super().try_take(amount, now)

    limiter = Limiter()
    lease = limiter.try_acquire([(CountingPool("p", 1), 1.0)])
    assert lease and taken == [1.0]
    lease.release()


@pytest.mark.anyio
async def test_compiled_code_sees_a_python_subclass_s_own_unit() -> None:
    import asyncio

    from stageflow_plus.primitives import Limiter, Resource

    class Slots(Resource):
        unit = 1.0  # whole units: a demand below 1 needs none

        def __init__(self, key: str, cap: int) -> None:
            super().__init__(key)
            self.cap, self.used = cap, 0.0

        def max_amount(self) -> float:
            return float(self.cap)

        def available(self, amount: float, now: float) -> bool:
            return self.used + amount <= self.cap

        def take(self, amount: float, now: float) -> None:
            self.used += amount

        def ready_at(self, amount: float, now: float) -> float:
            return float("inf")

        def release(self, amount: float, now: float, held_for: float) -> None:
            self.used -= amount

        def refund(self, amount: float, now: float) -> None:
            self.used -= amount

        def estimate_wait(self, amount: float, now: float) -> float:
            return 0.0

    slots = Slots("s", 1)
    limiter = Limiter()
    held = await limiter.acquire([(slots, 1.0)])
    blocked = asyncio.create_task(limiter.acquire([(slots, 1.0)]))
    await asyncio.sleep(0)
    half = asyncio.create_task(limiter.acquire([(slots, 0.5)]))  # needs no whole unit
    await asyncio.sleep(0)
    assert half.done() and len(limiter) == 1, "the subclass's unit was not honoured"
    (await half).release()
    blocked.cancel()
    await asyncio.gather(blocked, return_exceptions=True)
    held.release()


def test_wrong_priority_or_tenant_types_fail_at_once_in_either_core() -> None:
    from stageflow_plus import ConfigError, ToolCall

    with pytest.raises(ConfigError, match="priority of tool 't' must be an int"):
        ToolCall("t", priority=2.5)
    with pytest.raises(ConfigError, match="priority of tool 't' must be an int"):
        ToolCall("t", priority=True)
    with pytest.raises(ConfigError, match="tenant of tool 't' must be a str"):
        ToolCall("t", tenant=7)
    assert ToolCall("t", priority=3, tenant="a").priority == 3


def test_a_listener_s_immediate_events_may_be_any_truthy_value() -> None:
    from stageflow_plus import ConcurrencyLimiter, StructlogListener, ToolCallChain

    for value in (1, 0, None, "yes"):
        listener = StructlogListener()
        listener.immediate_events = value  # type: ignore[assignment]
        chain = ToolCallChain([ConcurrencyLimiter(4)], listener=listener)
        assert chain.gate is not None


def _hook_module() -> Any:
    sys.path.insert(0, str(ROOT))
    try:
        import hatch_build
    finally:
        sys.path.remove(str(ROOT))
    return hatch_build


def _pure_build_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The build hook over a package in ``tmp_path`` (its ``_accel.py`` only), with
    ``STAGEFLOW_PLUS_PURE=1`` set."""
    hatch_build = _hook_module()
    (tmp_path / "stageflow_plus").mkdir()
    (tmp_path / "stageflow_plus" / "_accel.py").write_text((ROOT / "stageflow_plus" /
                                                            "_accel.py").read_text())
    monkeypatch.setenv("STAGEFLOW_PLUS_PURE", "1")
    monkeypatch.delenv("STAGEFLOW_PLUS_REQUIRE_COMPILED", raising=False)
    return hatch_build.AccelBuildHook(str(tmp_path), {}, None, None, str(tmp_path / "out"),
                                      "wheel")


def test_a_pure_editable_build_takes_an_earlier_build_out_of_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = _pure_build_hook(tmp_path, monkeypatch)
    leftovers = [tmp_path / f"{_accel.SHARED_LIBRARY}{EXT}",
                 tmp_path / "stageflow_plus" / _accel.BUILD_INFO]
    for module in _accel.COMPILED_MODULES:
        leftovers.append(tmp_path.joinpath(*module.split(".")).with_suffix(EXT))
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    hook.initialize("editable", {})
    assert [p for p in leftovers if p.exists()] == []

    monkeypatch.setenv("STAGEFLOW_PLUS_REQUIRE_COMPILED", "1")
    with pytest.raises(RuntimeError, match="REQUIRE_COMPILED is set, but STAGEFLOW_PLUS_PURE"):
        hook.initialize("standard", {})


def test_an_editable_build_takes_out_the_extension_of_a_module_no_longer_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an extension beside a source shadows it: one from a build that compiled more modules
    # would be imported instead of the .py and fail against the new shared library
    hook = _pure_build_hook(tmp_path, monkeypatch)
    package = tmp_path / "stageflow_plus"
    (package / "backends").mkdir()
    (package / "backends" / "resp.py").write_text("")
    stale = package / "backends" / f"resp{EXT}"
    stale.write_bytes(b"")
    unrelated = package / "backends" / f"vendored{EXT}"  # no source beside it: not ours
    unrelated.write_bytes(b"")
    hook.initialize("editable", {})
    assert not stale.exists()
    assert unrelated.exists()
