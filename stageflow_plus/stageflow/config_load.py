"""Reading a config: the sections and their keys, TOML and mappings, environment variables.

:func:`load_config` is the public entry (re-exported by :mod:`.config`); ``load_checked``
also says which environment variables were merged (``config show`` prints them).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..primitives.errors import ConfigError
from .adaptive_config import (
    ADAPTIVE_ENV_VARS,
    ADAPTIVE_KEYS,
    adaptive_from_config,
    apply_adaptive_env,
)
from .config_schema import MOVED, check_sections, normalize_rates
from .env import ENV_PREFIX, apply_env
from .llm_config import LLM_KEYS, llm_steps
from .redact import redact_error, show

__all__ = ["COST_SECTIONS", "SECTIONS", "load_checked", "load_config"]

SECTIONS: dict[str, frozenset[str]] = {
    "stageflow_defaults": frozenset(),
    "plugins": frozenset(),
    "concurrency": frozenset({"limit", "per_tool", "per_run", "per_tenant"}),
    "rate": frozenset({"rates", "key", "per_key_rates"}),
    "priority": frozenset({"aging_interval", "weights", "default_weight", "fair_cost"}),
    "backpressure": frozenset(
        {"max_queue", "max_queue_per_key", "shedding", "deadline_aware", "max_wait"}
    ),
    "tool_breaker": frozenset({"failure_threshold", "reset_timeout", "half_open_calls"}),
    "circuit_breaker": frozenset({"failure_threshold", "reset_timeout"}),
    "stage_limits": frozenset(),  # free keys: stage names
    "ceilings": frozenset(
        {
            "default_priority",
            "max_priority",
            "tenant_max_priority",
            "max_concurrency",
            "max_rates",
            "max_wait_ms",
            "tenants",
            "tenants_by_org",
            "on_excess",
        }
    ),
    "interceptor_order": frozenset({"call_scope", "stage_limit"}),
    "plugin_options": frozenset(),  # free keys: plugin names
    "backend": frozenset(
        {"url", "prefix", "ttl", "on_unavailable", "op_timeout", "recheck_s", "max_pause",
         "cluster"}
    ),
    "llm": LLM_KEYS,  # schema and steps: stageflow_plus.stageflow.llm_config
    "adaptive": ADAPTIVE_KEYS,  # schema and step: stageflow_plus.stageflow.adaptive_config
}
"""Every section and its keys (an empty set: free keys, or not a table)."""

COST_SECTIONS: dict[str, Callable[[Mapping[str, Any]], Iterable[str]]] = {
    # [llm] estimates and reconciles token costs (its own rate limiter charges them)
    "llm": lambda section: ("tokens", "input_tokens", "output_tokens"),
}
"""Sections that declare costs, and the dimensions each one charges. When a config holds one
of them, a rate whose dimension none of them (nor ``requests``) charges is refused at build;
otherwise such a bucket is watched and warned about at run time."""

def load_config(
    source: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Read and validate a config: a mapping, a TOML file path, or (``None``) the environment.

    A TOML file's ``[stageflow_plus]`` table is used (or the whole file if it has none).
    Environment variables merge on top (``env`` defaults to ``os.environ``); an unknown
    ``STAGEFLOW_PLUS_*`` variable is refused. Rates come back as tables with ``per`` in
    seconds (``"600/minute"`` → ``{"limit": 600, "per": 60.0}``).

    :raises ConfigError: unreadable file, unknown section, key or variable, wrong type or
        range — naming the entry and the value (URL credentials hidden).
    """
    return load_checked(source, env)[0]


def load_checked(
    source: Mapping[str, Any] | str | os.PathLike[str] | None, env: Mapping[str, str] | None
) -> tuple[dict[str, Any], list[str]]:
    """The checked config and the names of the environment variables merged into it."""
    try:
        return _load_unredacted(source, env)
    except ConfigError as error:
        redact_error(error)
        raise


def _load_unredacted(
    source: Mapping[str, Any] | str | os.PathLike[str] | None, env: Mapping[str, str] | None
) -> tuple[dict[str, Any], list[str]]:
    environ = os.environ if env is None else env
    if not isinstance(environ, Mapping):
        raise ConfigError("env must be a mapping of variable names to strings, "
                          f"got {type(environ).__name__}")
    if source is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        source = environ[f"{ENV_PREFIX}CONFIG"]
    if source is None:
        config: Any = {}
    elif isinstance(source, Mapping):
        config = _deep_copy(source.get("stageflow_plus", source))
        where = "the config's stageflow_plus" if "stageflow_plus" in source else "the config"
        if not isinstance(config, dict):
            raise ConfigError(f"{where} must be a table, got {show(config)}")
    elif isinstance(source, (str, os.PathLike)):
        config = _read_toml(Path(source))
    else:
        raise ConfigError(
            f"a config is a mapping, a TOML file path or None, got {type(source).__name__}"
        )
    _check_keys(config)
    config = check_sections(config)
    applied = apply_env(config, environ, normalize_rates)
    adaptive_env = [name for name in ADAPTIVE_ENV_VARS if environ.get(name, "") != ""]
    apply_adaptive_env(config, environ)
    applied += adaptive_env
    try:
        if applied:
            _check_keys(config)
            config = check_sections(config)
        # sections with their own schema: checked here too, so a loaded config is a valid one
        if "llm" in config:
            llm_steps(config["llm"], config, None)
        if "adaptive" in config:
            adaptive_from_config(config)
    except ConfigError as error:
        if not applied:
            raise
        raise ConfigError(f"{error} (with the environment variables {', '.join(applied)} "
                          "merged into the config)") from error
    return config, applied


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from error
    config = _deep_copy(raw.get("stageflow_plus", raw))
    if not isinstance(config, dict):
        raise ConfigError(f"stageflow_plus in {str(path)!r} must be a table, got {show(config)}")
    return config


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value


def _check_keys(config: Mapping[str, Any]) -> None:
    for section, value in config.items():
        if not isinstance(section, str):
            raise ConfigError(f"stageflow_plus: section names are strings, got {show(section)}")
        known = SECTIONS.get(section)
        if known is None:
            if section in MOVED:
                raise ConfigError(f"stageflow_plus.{section}: {MOVED[section]}")
            raise ConfigError(
                f"stageflow_plus.{section}: unknown section (known: {', '.join(sorted(SECTIONS))})"
            )
        if section in ("stageflow_defaults", "plugins"):
            continue  # not tables: check_sections checks their values
        if not isinstance(value, Mapping):
            raise ConfigError(f"stageflow_plus.{section} must be a table, got {show(value)}")
        if known:
            for key in value:
                if key not in known:
                    moved = MOVED.get(f"{section}.{key}")
                    raise ConfigError(
                        f"stageflow_plus.{section}.{key}: "
                        + (moved if moved else
                           f"unknown key (known: {', '.join(sorted(known))})")
                    )
