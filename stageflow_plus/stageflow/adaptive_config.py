"""The ``[stageflow_plus.adaptive]`` config section and its environment variables.

::

    [stageflow_plus.concurrency]
    per_tool = 8                 # where every tool's limit starts

    [stageflow_plus.adaptive]
    partition = "tool"           # "tool" (default), "global" or "tenant"
    keys = ["llm"]               # optional: adapt only these groups
    min_limit = 2                # and any AdaptiveSettings field: max_limit, window,
    max_limit = 64               #   window_rtts, min_samples, max_window, percentile,
                                 #   tolerance, headroom, cut_above, smoothing, drop_backoff,
                                 #   max_decrease, growth (a list), probe_interval,
                                 #   probe_fraction

Environment (applied over the file): ``STAGEFLOW_PLUS_ADAPTIVE`` — a partition name turns
adaptation on (``0`` / ``off`` / ``false`` turns a configured section off),
``STAGEFLOW_PLUS_ADAPTIVE_MIN_LIMIT`` and ``STAGEFLOW_PLUS_ADAPTIVE_MAX_LIMIT`` (ints).

The section needs the partition's starting limit in ``[stageflow_plus.concurrency]``
(``per_tool`` for ``"tool"``, ``limit`` for ``"global"``, ``per_tenant`` for ``"tenant"``),
and the in-memory backend (a Redis-held limit is shared by processes; adapting it per process
is not supported yet). Every entry is validated: a ``ConfigError`` names it.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..interceptors.adaptive import AdaptiveConcurrency
from ..primitives.adaptive import AdaptiveSettings
from ..primitives.errors import ConfigError

__all__ = ["ADAPTIVE_ENV_VARS", "ADAPTIVE_KEYS", "adaptive_from_config", "apply_adaptive_env"]

ADAPTIVE_ENV_VARS = (
    "STAGEFLOW_PLUS_ADAPTIVE",
    "STAGEFLOW_PLUS_ADAPTIVE_MIN_LIMIT",
    "STAGEFLOW_PLUS_ADAPTIVE_MAX_LIMIT",
)
"""The variables :func:`apply_adaptive_env` reads (listed in ``stageflow.env.ENV_VARS``)."""

ADAPTIVE_KEYS = frozenset({"partition", "keys"}) | AdaptiveSettings.names()
"""The keys ``[stageflow_plus.adaptive]`` may hold."""

_STARTS = {"tool": "per_tool", "global": "limit", "tenant": "per_tenant"}
_OFF = frozenset({"0", "off", "false", "no"})
_WHERE = "stageflow_plus.adaptive"


def apply_adaptive_env(config: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Apply ``STAGEFLOW_PLUS_ADAPTIVE*`` over ``config`` (``ConfigError`` on a bad value)."""
    switch = environ.get("STAGEFLOW_PLUS_ADAPTIVE", "").strip()
    if switch.lower() in _OFF:
        config.pop("adaptive", None)
    elif switch:
        if switch not in _STARTS:
            raise ConfigError(
                f"environment variable STAGEFLOW_PLUS_ADAPTIVE must be a partition "
                f"({', '.join(sorted(_STARTS))}) or 0/off, got {switch!r}"
            )
        section = config.setdefault("adaptive", {})
        if isinstance(section, dict):
            section["partition"] = switch
    for name in ("MIN_LIMIT", "MAX_LIMIT"):
        raw = environ.get(f"STAGEFLOW_PLUS_ADAPTIVE_{name}", "")
        if raw == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"environment variable STAGEFLOW_PLUS_ADAPTIVE_{name} must be an int, got {raw!r}"
            ) from None
        section = config.setdefault("adaptive", {})
        if isinstance(section, dict):
            section[name.lower()] = value


def _settings(section: Mapping[str, Any]) -> AdaptiveSettings:
    options = {k: v for k, v in section.items() if k not in ("partition", "keys")}
    growth = options.get("growth")
    if growth is not None:
        if not isinstance(growth, list | tuple):
            raise ConfigError(f"{_WHERE}.growth must be a list of numbers, got {growth!r}")
        options["growth"] = tuple(growth)
    try:
        return AdaptiveSettings(**options)
    except ConfigError as error:
        field = next((k for k in sorted(options, key=len, reverse=True) if k in str(error)), "")
        raise ConfigError(f"{_WHERE}{'.' + field if field else ''}: {error}") from error


def adaptive_from_config(
    cfg: Mapping[str, Any], *, memory_backend: bool = True
) -> list[AdaptiveConcurrency]:
    """The :class:`AdaptiveConcurrency` step the config asks for (none without the section)."""
    section = cfg.get("adaptive")
    if section is None:
        return []
    if not isinstance(section, Mapping):
        raise ConfigError(f"{_WHERE} must be a table, got {section!r}")
    if not memory_backend:
        raise ConfigError(
            f"{_WHERE}: not supported with a Redis backend (stageflow_plus.backend.url): the "
            "limit is shared by every process; adapt it with the in-memory backend"
        )
    partition = section.get("partition", "tool")
    if not isinstance(partition, str) or partition not in _STARTS:
        raise ConfigError(
            f"{_WHERE}.partition must be one of {', '.join(sorted(_STARTS))}, got {partition!r}"
        )
    keys = section.get("keys")
    if keys is not None and (
        not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
    ):
        raise ConfigError(f"{_WHERE}.keys must be a list of names, got {keys!r}")
    concurrency = cfg.get("concurrency", {})
    start = concurrency.get(_STARTS[partition]) if isinstance(concurrency, Mapping) else None
    covered = isinstance(start, int) or (
        isinstance(start, Mapping) and keys is not None and all(k in start for k in keys)
    )
    if not covered:
        raise ConfigError(
            f"{_WHERE}: partition {partition!r} needs a starting limit: set "
            f"stageflow_plus.concurrency.{_STARTS[partition]} (an int, or a table naming "
            f"every entry of {_WHERE}.keys)"
        )
    return [AdaptiveConcurrency(partition, settings=_settings(section), keys=keys)]
