"""Hatchling build hook: compile the limiter's hot path with mypyc.

The modules listed in ``stageflow_plus/_accel.py`` (``COMPILED_MODULES``) are compiled to C
extension modules by mypyc and shipped beside their ``.py`` sources, with
``stageflow_plus/_accel_build.json`` recording each source's SHA-256 (the package imports a
compiled module only when its source is unchanged) and the class docstrings mypyc drops.

* ``pip install .`` / ``python -m build``: the extensions go into a platform wheel.
* ``pip install -e .``: they are written in place, beside the sources (git-ignored).
* ``STAGEFLOW_PLUS_PURE=1`` at build time: nothing is compiled (a pure-Python wheel).
* No C compiler, or mypyc fails: the build goes on pure and says why on stderr; with
  ``STAGEFLOW_PLUS_REQUIRE_COMPILED=1`` it fails instead (CI sets it).

Builds are cached under ``build/accel/`` by source hash, so reinstalling is quick.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE = "stageflow_plus"
GROUP = "stageflow_plus"  # mypyc's shared library: stageflow_plus__mypyc.<ext>

_COMPILE = """
import sys
from mypyc.build import mypycify
from setuptools import setup
GROUP = sys.argv.pop(1)
setup(
    name="stageflow-plus-accel",
    packages=[],
    ext_modules=mypycify(sys.argv[1:], group_name=GROUP, opt_level="3"),
    script_args=["build_ext", "--inplace", "--parallel", "2"],
)
"""


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def compiled_modules(root: Path) -> list[str]:
    """``COMPILED_MODULES`` read from ``_accel.py`` without importing the package."""
    tree = ast.parse((root / PACKAGE / "_accel.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "COMPILED_MODULES":
            assert node.value is not None
            return [str(v) for v in ast.literal_eval(node.value)]
    raise RuntimeError("stageflow_plus/_accel.py defines no COMPILED_MODULES")


def _source(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _class_docs(path: Path) -> dict[str, str]:
    docs: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                docs[node.name] = doc
    return docs


class AccelBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Compiles ``COMPILED_MODULES`` for the wheel (standard and editable)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        modules = compiled_modules(root)
        required = _flag("STAGEFLOW_PLUS_REQUIRE_COMPILED")
        why_not = None
        if _flag("STAGEFLOW_PLUS_PURE"):
            why_not = "STAGEFLOW_PLUS_PURE is set"
        elif platform.python_implementation() != "CPython":
            why_not = f"mypyc needs CPython, this is {platform.python_implementation()}"
        if why_not is None:
            try:
                outputs, info_file = self._compile(root, modules)
            except Exception as error:  # no compiler, no mypyc, a mypyc error: build pure
                if required:
                    raise
                why_not = f"could not compile the hot path ({error})"
        if why_not is not None:
            if required:
                raise RuntimeError(f"STAGEFLOW_PLUS_REQUIRE_COMPILED is set, but {why_not}")
            self._say(f"{why_not}: building pure Python")
            if version == "editable":  # an earlier build's extensions must not stay in use
                self._clear_tree(root, modules)
            return
        if version == "editable":
            self._clear_tree(root, modules)
            for source, target in outputs:
                shutil.copy2(source, root / target)
            shutil.copy2(info_file, root / PACKAGE / "_accel_build.json")
        else:
            force = build_data.setdefault("force_include", {})
            for source, target in outputs:
                force[str(source)] = target
            force[str(info_file)] = f"{PACKAGE}/_accel_build.json"
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
        self._say(f"compiled {len(modules)} hot-path modules with mypyc")

    # -- steps ---------------------------------------------------------------------------
    def _compile(self, root: Path, modules: list[str]) -> tuple[list[tuple[Path, str]], Path]:
        """Compile (or reuse the cached build); the outputs and the build record's path."""
        import mypy.version  # the build requirement; ImportError means a pure build

        digests = {m: hashlib.sha256(_source(root, m).read_bytes()).hexdigest() for m in modules}
        package_sources = sorted((root / PACKAGE).rglob("*.py"))
        key = hashlib.sha256()
        for path in package_sources:
            key.update(str(path.relative_to(root)).encode())
            key.update(path.read_bytes())
        key.update(f"{sys.version}|{mypy.version.__version__}".encode())
        cache = root / "build" / "accel" / key.hexdigest()[:20]
        src = cache / "src"
        ext = importlib.machinery.EXTENSION_SUFFIXES[0]
        if not (cache / "done").exists():
            shutil.rmtree(cache, ignore_errors=True)
            for path in package_sources:
                target = src / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            # our own mypy settings: mypy would otherwise find the project's pyproject.toml
            # (strict, for development) and demand Stageflow, not installed yet at build time
            (cache / "mypy.ini").write_text(
                "[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n"
            )
            paths = [f"--config-file={cache / 'mypy.ini'}",
                     *(str(_source(Path(), m)) for m in modules)]
            self._say(f"compiling {len(modules)} modules with mypyc "
                      f"{mypy.version.__version__} (about a minute)")
            log = cache / "build.log"
            with log.open("w") as out:
                done = subprocess.run([sys.executable, "-c", _COMPILE, GROUP, *paths], cwd=src,
                                      stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                tail = log.read_text().strip().splitlines()[-5:]
                raise RuntimeError(f"mypyc failed (exit {done.returncode}): {' | '.join(tail)}")
            (cache / "done").write_text("ok\n")
        outputs: list[tuple[Path, str]] = []
        for module in modules:
            built = src.joinpath(*module.split(".")).with_name(module.rsplit(".", 1)[1] + ext)
            if not built.exists():
                raise RuntimeError(f"mypyc produced no {built.name}")
            outputs.append((built, str(built.relative_to(src))))
        group = src / f"{GROUP}__mypyc{ext}"
        if not group.exists():
            raise RuntimeError(f"mypyc produced no {group.name}")
        outputs.append((group, group.name))
        info = {
            "mypyc": mypy.version.__version__,
            "python": sys.version.split()[0],
            "modules": {
                m: {"sha256": digests[m], "classes": _class_docs(_source(root, m))}
                for m in modules
            },
        }
        info_file = cache / "_accel_build.json"
        info_file.write_text(json.dumps(info, indent=1))
        return outputs, info_file

    @staticmethod
    def _clear_tree(root: Path, modules: list[str]) -> None:
        """Remove in-place extensions and the build record (any Python, any build).

        Every extension module beside a ``.py`` source goes, listed in ``modules`` or not:
        one left from a build that compiled a module no longer listed would shadow its
        source (Python imports an extension before a ``.py``) and fail to load from the
        new shared library."""
        for module in modules:
            base = _source(root, module)
            for old in base.parent.glob(base.stem + ".*.so"):
                old.unlink()
        for old in (root / PACKAGE).rglob("*.so"):
            if old.with_name(old.name.split(".", 1)[0] + ".py").exists():
                old.unlink()
        for old in root.glob(f"{GROUP}__mypyc.*.so"):
            old.unlink()
        (root / PACKAGE / "_accel_build.json").unlink(missing_ok=True)

    def _say(self, message: str) -> None:
        print(f"stageflow-plus build: {message}", file=sys.stderr)
