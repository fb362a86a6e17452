"""The ``STAGEFLOW_PLUS_*`` environment variables: the one list of them, and how they merge.

Every variable the package (or its build and test scripts) reads is in :data:`ENV_VARS`;
:func:`~stageflow_plus.load_config` refuses any other ``STAGEFLOW_PLUS_*`` name, so a typo
(``STAGEFLOW_PLUS_RMP``) is an error, not a limit silently left out. A feature that reads a
new variable adds it here.

The config variables merge into the file/dict config entry by entry, never replacing a
table: ``STAGEFLOW_PLUS_RPM`` replaces the per-minute ``requests`` rate of ``[rate]`` (or
adds one) and keeps every other rate, e.g. the TPM bucket. An empty value counts as unset.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._accel import PURE_ENV
from ..primitives.errors import ConfigError
from .redact import show

__all__ = [
    "ENV_PREFIX",
    "ENV_VARS",
    "EnvVar",
    "apply_env",
    "check_env_names",
]

ENV_PREFIX = "STAGEFLOW_PLUS_"


@dataclass(frozen=True)
class EnvVar:
    """One environment variable.

    :ivar meaning: what it does (shown in errors, the README and ``config show``).
    :ivar entry: the config entry it sets (``None``: read at build or test time, not config).
    """

    meaning: str
    entry: str | None = None


ENV_VARS: dict[str, EnvVar] = {
    "STAGEFLOW_PLUS_CONFIG": EnvVar("a TOML file read when build()/load_config() get none"),
    "STAGEFLOW_PLUS_MAX_CONCURRENT": EnvVar("global tool-call concurrency", "concurrency.limit"),
    "STAGEFLOW_PLUS_MAX_QUEUE": EnvVar("most tool calls waiting", "backpressure.max_queue"),
    "STAGEFLOW_PLUS_RPM": EnvVar("requests per minute (merged into [rate])", "rate.rates"),
    "STAGEFLOW_PLUS_TPM": EnvVar("tokens per minute (merged into [rate])", "rate.rates"),
    "STAGEFLOW_PLUS_MAX_PRIORITY": EnvVar("the run priority ceiling", "ceilings.max_priority"),
    "STAGEFLOW_PLUS_BACKEND": EnvVar("the backend URL (memory://, redis://…)", "backend.url"),
    "STAGEFLOW_PLUS_ADAPTIVE": EnvVar("adaptive concurrency on a partition (tool, global, "
                                      "tenant) or 0/off", "adaptive.partition"),
    "STAGEFLOW_PLUS_ADAPTIVE_MIN_LIMIT": EnvVar("the adaptive limit's floor",
                                                "adaptive.min_limit"),
    "STAGEFLOW_PLUS_ADAPTIVE_MAX_LIMIT": EnvVar("the adaptive limit's ceiling",
                                                "adaptive.max_limit"),
    PURE_ENV: EnvVar("=1 runs the pure-Python core instead of the compiled one"),
    "STAGEFLOW_PLUS_REQUIRE_COMPILED": EnvVar("=1 makes the install fail unless it compiles"),
    "STAGEFLOW_PLUS_VENV": EnvVar("the virtualenv scripts/test.sh and .ci/run use"),
}
"""Every ``STAGEFLOW_PLUS_*`` variable, by name (the one list; add new ones here)."""


def check_env_names(environ: Mapping[str, str]) -> None:
    """Refuse ``STAGEFLOW_PLUS_*`` variables that nothing reads (likely typos).

    :raises ConfigError: naming the variable and listing the known ones.
    """
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in ENV_VARS:
            raise ConfigError(
                f"environment variable {name} is not one stageflow-plus reads (a typo?); "
                f"known: {', '.join(sorted(ENV_VARS))}"
            )


def _int_var(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    entry = ENV_VARS[name].entry
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(
            f"environment variable {name}={raw!r} must be an int >= {minimum} "
            f"(it sets stageflow_plus.{entry})"
        )
    return value


def _table(config: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    table = config.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(
            f"environment variable {name} sets stageflow_plus.{section}, but the config's "
            f"stageflow_plus.{section} is not a table: {show(table)}"
        )
    return table


def _merge_rate(config: dict[str, Any], name: str, value: int, dimension: str) -> None:
    """Replace the per-minute rate of ``dimension`` in ``[rate]`` (or add one)."""
    table = _table(config, "rate", name)
    rates = table.get("rates", [])
    if isinstance(rates, (Mapping, str)):
        rates = [rates]
    if not isinstance(rates, list):
        raise ConfigError(
            f"environment variable {name} merges into stageflow_plus.rate.rates, which must "
            f"be a list of rates, got {show(rates)}"
        )
    merged: list[Any] = []
    replaced = False
    for rate in rates:
        if (isinstance(rate, Mapping) and rate.get("dimension", "requests") == dimension
                and rate.get("per") == 60):
            merged.append({**rate, "limit": value})
            replaced = True
        else:
            merged.append(rate)
    if not replaced:
        entry: dict[str, Any] = {"limit": value, "per": 60}
        if dimension != "requests":
            entry["dimension"] = dimension
        merged.append(entry)
    table["rates"] = merged


_INTS: tuple[tuple[str, str, str, int], ...] = (
    ("STAGEFLOW_PLUS_MAX_CONCURRENT", "concurrency", "limit", 1),
    ("STAGEFLOW_PLUS_MAX_QUEUE", "backpressure", "max_queue", 0),
    ("STAGEFLOW_PLUS_MAX_PRIORITY", "ceilings", "max_priority", 0),
)


def apply_env(
    config: dict[str, Any],
    environ: Mapping[str, str],
    normalize_rates: Callable[[dict[str, Any]], None] | None = None,
) -> list[str]:
    """Merge the config variables of ``environ`` into ``config``; the names applied.

    :param normalize_rates: called on the config before a rate variable merges, so rates
        written as ``"600/minute"`` are tables with ``per`` in seconds.
    :raises ConfigError: a value of the wrong type or range, naming the variable.
    """
    check_env_names(environ)
    applied: list[str] = []
    for name, section, key, minimum in _INTS:
        if (number := _int_var(environ, name, minimum)) is not None:
            _table(config, section, name)[key] = number
            applied.append(name)
    if url := environ.get("STAGEFLOW_PLUS_BACKEND"):
        _table(config, "backend", "STAGEFLOW_PLUS_BACKEND")["url"] = url
        applied.append("STAGEFLOW_PLUS_BACKEND")
    for name, dimension in (("STAGEFLOW_PLUS_RPM", "requests"),
                            ("STAGEFLOW_PLUS_TPM", "tokens")):
        if (number := _int_var(environ, name, 1)) is not None:
            if normalize_rates is not None and "rate" in config:
                normalize_rates(config)
            _merge_rate(config, name, number, dimension)
            applied.append(name)
    return applied
