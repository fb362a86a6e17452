"""The compiled core: which hot-path modules run as mypyc-compiled code, and why (not).

Installing the package (``pip install .`` or ``pip install -e .``) compiles the limiter's
hot path — :data:`COMPILED_MODULES`, all in :mod:`stageflow_plus.primitives` — with `mypyc
<https://mypyc.readthedocs.io>`_ when a C compiler is at hand (see ``hatch_build.py``). The
compiled extension modules sit beside their ``.py`` sources and behave the same; they are
about twice as fast. This module decides, once at import, which of the two is used:

* the compiled modules, when they exist and were built from exactly the sources beside them
  (a SHA-256 per module, recorded at build time in ``_accel_build.json``);
* the ``.py`` sources, when ``STAGEFLOW_PLUS_PURE=1`` is set, when nothing was compiled, or
  when a source changed since the build — then a :class:`RuntimeWarning` says so (re-run
  ``pip install -e .`` to rebuild). A stale extension is never imported.

:func:`status` tells which happened and why; ``stageflow-plus demo`` and the benchmarks
print it. Nothing here imports the modules it governs.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.abc import MetaPathFinder
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "BUILD_INFO",
    "COMPILED_MODULES",
    "PURE_ENV",
    "SHARED_LIBRARY",
    "CoreStatus",
    "restore_docs",
    "select",
    "source_digest",
    "status",
]

COMPILED_MODULES: tuple[str, ...] = (
    "stageflow_plus.primitives.adaptive",
    "stageflow_plus.primitives.loop_clock",
    "stageflow_plus.primitives.resources",
    "stageflow_plus.primitives.waiter",
    "stageflow_plus.primitives.lease",
    "stageflow_plus.primitives.ordering",
    "stageflow_plus.primitives.dispatch",
    "stageflow_plus.primitives.queueing",
    "stageflow_plus.primitives.limiter",
    "stageflow_plus.interceptors.call",
    "stageflow_plus.interceptors.gate",
    "stageflow_plus.interceptors.in_flight",
    "stageflow_plus.stageflow.scope",
    "stageflow_plus.stageflow.calls",
)
"""The modules the build compiles (the limiter's hot path)."""

BUILD_INFO = "_accel_build.json"
"""Written by the build next to this module: the source hash and class docs of each module."""

SHARED_LIBRARY = "stageflow_plus__mypyc"
"""The extension all compiled modules load their code from; it sits beside the package."""

PURE_ENV = "STAGEFLOW_PLUS_PURE"
"""Set to ``1`` to run the ``.py`` sources even where compiled modules exist."""


@dataclass(frozen=True, slots=True)
class CoreStatus:
    """Which core runs.

    :ivar compiled: the compiled modules are the ones imported.
    :ivar reason: one line a person can act on, e.g. why the sources run instead.
    """

    compiled: bool
    reason: str

    def __str__(self) -> str:
        return f"{'compiled (mypyc)' if self.compiled else 'pure Python'}: {self.reason}"


def source_digest(path: Path) -> str:
    """The SHA-256 of a source file, as recorded by the build."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_of(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def _extension_of(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split(".")[1:])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.exists():
            return candidate
    return None


def select(
    root: Path, modules: Sequence[str], environ: Mapping[str, str]
) -> tuple[CoreStatus, dict[str, Any]]:
    """Decide which core runs for the package at ``root`` (pure; no import, no warning).

    Returns the status and the build info (empty when the sources run).
    """
    built = [m for m in modules if _extension_of(root, m) is not None]
    if not built:
        return CoreStatus(False, "no compiled modules were built (pure-Python install)"), {}
    if environ.get(PURE_ENV, "") not in ("", "0"):
        return CoreStatus(False, f"{PURE_ENV} is set"), {}
    missing = [m for m in modules if m not in built]
    if missing:
        return CoreStatus(False, f"compiled modules missing: {', '.join(missing)}"), {}
    if not any((root.parent / (SHARED_LIBRARY + suffix)).exists()
               for suffix in importlib.machinery.EXTENSION_SUFFIXES):
        # (without it the modules would load another build's library found on sys.path)
        return CoreStatus(False, f"{SHARED_LIBRARY} is missing beside the package"), {}
    try:
        info = json.loads((root / BUILD_INFO).read_text())
        recorded = info["modules"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return CoreStatus(False, f"unreadable {BUILD_INFO} ({error})"), {}
    stale = [  # (a module shipped without its source cannot be older than it)
        m for m in modules
        if _source_of(root, m).exists()
        and recorded.get(m, {}).get("sha256") != source_digest(_source_of(root, m))
    ]
    if stale:
        return CoreStatus(
            False,
            f"compiled modules are older than their sources ({', '.join(stale)}); "
            "re-run `pip install -e .` to rebuild",
        ), {}
    return CoreStatus(True, f"{len(modules)} hot-path modules compiled by mypyc "
                            f"{info.get('mypyc', '?')}"), info


class _SourceFinder(MetaPathFinder):
    """Loads the listed modules from their ``.py`` files even where an extension exists."""

    def __init__(self, root: Path, modules: Sequence[str]) -> None:
        self._paths = {m: _source_of(root, m) for m in modules}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self._paths.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _restore_docs(info: Mapping[str, Any]) -> None:
    """Give compiled classes back the docstrings of their sources (mypyc drops them)."""
    for module_name, entry in info.get("modules", {}).items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for qualname, doc in entry.get("classes", {}).items():
            cls = getattr(module, qualname, None)
            if isinstance(cls, type):
                with contextlib.suppress(AttributeError, TypeError):  # an immutable type
                    cls.__doc__ = doc


_ROOT = Path(__file__).resolve().parent
_STATUS, _INFO = select(_ROOT, COMPILED_MODULES, os.environ)
if not _STATUS.compiled and any(_extension_of(_ROOT, m) for m in COMPILED_MODULES):
    sys.meta_path.insert(0, _SourceFinder(_ROOT, COMPILED_MODULES))
    if PURE_ENV not in os.environ or os.environ[PURE_ENV] in ("", "0"):
        warnings.warn(f"stageflow-plus runs its pure-Python core: {_STATUS.reason}",
                      RuntimeWarning, stacklevel=2)


def status() -> CoreStatus:
    """Which core this process runs, and why."""
    return _STATUS


def restore_docs() -> None:
    """Called once the compiled modules are imported (by :mod:`stageflow_plus.primitives`)."""
    if _STATUS.compiled:
        _restore_docs(_INFO)
