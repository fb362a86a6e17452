"""``stageflow-plus config check`` and ``config show``: a config's verdict and its effective form.

:func:`effective_toml` renders a checked config (after the environment) as TOML that
:func:`~stageflow_plus.build` reads back unchanged, with credentials redacted: the password
of a URL (``redis://:***@host/0``) and the value of any key named like a secret
(``password``, ``secret``, ``token``, ``api_key``, …).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..primitives.errors import ConfigError
from .env import ENV_PREFIX
from .redact import redact_url

__all__ = ["REDACTED", "check_config", "effective_toml", "redact", "show_config"]

REDACTED = "***"
_SECRET_KEY = re.compile(
    r"(^|_)(password|passwd|secret|token|api_key|apikey|access_key|private_key|credentials?)$",
    re.IGNORECASE,
)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def redact(value: Any, key: str = "") -> Any:
    """``value`` with secrets replaced: URL passwords, and values of secret-named keys."""
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if _SECRET_KEY.search(key) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) as TOML")


def effective_toml(config: Mapping[str, Any], from_env: Sequence[str] = ()) -> str:
    """``config`` (as :func:`~stageflow_plus.load_config` returns it) as redacted TOML."""
    safe = redact(config)
    lines: list[str] = []
    if from_env:
        lines.append(f"# merged from the environment: {', '.join(from_env)}")
    lines.append("[stageflow_plus]")
    lines += [f"{_key(k)} = {_value(v)}" for k, v in safe.items() if not isinstance(v, Mapping)]
    for section, table in safe.items():
        if isinstance(table, Mapping):
            lines += ["", f"[stageflow_plus.{_key(section)}]"]
            lines += [f"{_key(str(k))} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _summary(path: str) -> str:
    from ..interceptors.dimensions import UnchargedDimensionWatch
    from .config import build

    plus = build(path)
    try:
        steps = [type(s).__name__ for s in plus.chain.interceptors
                 if not isinstance(s, UnchargedDimensionWatch)]
        watched = [d for s in plus.chain.interceptors if isinstance(s, UnchargedDimensionWatch)
                   for d in s.pending]
        backend = redact_url(str(plus.config.get("backend", {}).get("url", "memory://")))
        note = (f"; buckets {', '.join(map(repr, watched))} need a cost_of estimator "
                "(warned at run time if a call has none)" if watched else "")
        return (f"{path}: ok — chain: {' → '.join(steps)}; {len(plus.interceptors)} stage "
                f"interceptors; backend {backend}{note}")
    finally:
        asyncio.run(plus.aclose())


def check_config(path: str) -> int:
    """Build the config in ``path`` (environment applied); print one line; the exit code."""
    try:
        print(_summary(path))
    except ConfigError as error:
        print(f"{path}: error: {error}", file=sys.stderr)
        return 1
    return 0


def show_config(path: str | None) -> int:
    """Print the effective config of ``path`` (or the environment's) as TOML; the exit code."""
    from .config_load import load_checked

    try:
        config, from_env = load_checked(path, None)
    except ConfigError as error:
        print(f"{path or 'environment'}: error: {error}", file=sys.stderr)
        return 1
    source = path or os.environ.get(f"{ENV_PREFIX}CONFIG") or "(environment only)"
    sys.stdout.write(f"# effective stageflow-plus config of {source}\n"
                     + effective_toml(config, from_env))
    try:  # what `config check` would refuse is refused here too (e.g. a plugin's options)
        _summary(path) if path is not None else _build_env_only()
    except ConfigError as error:
        print(f"{source}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _build_env_only() -> None:
    from .config import build

    asyncio.run(build(None).aclose())
