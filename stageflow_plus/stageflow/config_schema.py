"""The pipeline config's value checks: every key's type and range, at the config boundary.

:func:`check_sections` walks every key of every section of a loaded config and returns it
normalized (rates as ``{limit, per, ...}`` tables with ``per`` in seconds). Strict means:
``bool`` is not a number and ``"false"`` is not a bool; ``nan`` and ``inf`` are refused
wherever a finite number is meant; a string is not a list, and a list is not a table. Each
refusal is a :class:`~stageflow_plus.primitives.errors.ConfigError` that names the entry and
the value, e.g. ``stageflow_plus.backpressure.deadline_aware must be true or false, got
'false'``.

Checks for the constructors' own arguments happen here, before the constructors run, so an
error always names the config entry (the constructors keep their own checks for Python use).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..primitives.admission import Shedding
from ..primitives.dimensions import check_dimension
from ..primitives.errors import ConfigError
from ..primitives.rate import Rate, period_seconds
from .redact import show

__all__ = [
    "DEFAULT_MAX_PRIORITY",
    "MOVED",
    "RATE_KEYS",
    "SCHEMAS",
    "Check",
    "check_sections",
    "max_priority_of",
    "normalize_rates",
]

Check = Callable[[Any, str], Any]
"""Validates ``value`` found at ``where``; returns it (normalized) or raises ConfigError."""

RATE_KEYS = frozenset({"limit", "per", "burst", "dimension", "start_full"})

MOVED: dict[str, str] = {
    "priorities": "stageflow_plus.priorities was renamed stageflow_plus.interceptor_order "
                  "(Stageflow interceptor priorities, not call priorities)",
    "priority.max_priority": "the priority ceiling is one knob: "
                             "stageflow_plus.ceilings.max_priority",
}
"""Entries that moved, with where they went (0.x: no alias, but the error says it)."""


_show = show


def boolean(value: Any, where: str) -> bool:
    """``true`` / ``false`` only (not ``"false"``, not ``0``)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {_show(value)}")
    return value


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    """An int (not a bool) within ``[minimum, maximum]``."""

    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an int, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{where} must be >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{where} must be <= {maximum}, got {value!r}")
        return value

    return check


def number(minimum: float = 0.0, *, inclusive: bool = False) -> Check:
    """A finite int or float (not a bool, not ``nan``/``inf``) above ``minimum``."""
    relation = ">=" if inclusive else ">"

    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {_show(value)}")
        if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
            raise ConfigError(f"{where} must be a finite number {relation} {minimum:g}, "
                              f"got {value!r}")
        return value

    return check


def real(value: Any, where: str) -> float:
    """Any int or float, not a bool (the range is the consumer's to check)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {_show(value)}")
    return value


def url(value: Any, where: str) -> str:
    """A string (the backend checks the URL itself)."""
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string (e.g. 'redis://127.0.0.1:6379/0'), "
                          f"got {_show(value)}")
    return value


def choice(*options: str) -> Check:
    """One of ``options`` (strings)."""

    def check(value: Any, where: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, options))}, "
                              f"got {_show(value)}")
        return value

    return check


def name(value: Any, where: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string, got {_show(value)}")
    return value


def table_of(values: Check, keys: Check = name) -> Check:
    """A table (mapping) of string keys to checked values."""

    def check(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table (a mapping of names to values), "
                              f"got {_show(value)}")
        return {keys(k, f"{where} key {k!r}"): values(v, f"{where}.{k}")
                for k, v in value.items()}

    return check


def list_of(item: Check, *, nonempty: bool = False) -> Check:
    """A list (not a string) of checked items without duplicates."""

    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {_show(value)}")
        if nonempty and not value:
            raise ConfigError(f"{where} must not be empty")
        out = [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
        for index, entry in enumerate(out):
            if entry in out[:index]:
                raise ConfigError(f"{where}[{index}] = {entry!r} is listed twice")
        return out

    return check


def int_or_table(minimum: int) -> Check:
    """An int (every group) or a table of ints (only the groups it names)."""
    single = integer(minimum)
    many = table_of(single)

    def check(value: Any, where: str) -> Any:
        return many(value, where) if isinstance(value, Mapping) else single(value, where)

    return check


def aging(value: Any, where: str) -> float | bool:
    """Seconds of waiting per priority level (> 0), or ``false`` for strict priorities."""
    if value is False:
        return False
    return number()(value, where)  # type: ignore[no-any-return]


def fair_cost(value: Any, where: str) -> str:
    """``"calls"`` or a cost dimension."""
    if value == "calls":
        return "calls"
    return check_dimension(value, where)


def one_rate(value: Any, where: str) -> dict[str, Any]:
    """A rate: ``"600/minute"``, or ``{limit, per, burst, dimension, start_full}``.

    ``per`` is required with a numeric ``limit`` (``{limit = 600}`` alone is ambiguous) and
    may be seconds or a period name; ``limit`` may itself be a rate string, then without
    ``per``.
    """
    if isinstance(value, str):
        try:
            rate = Rate.parse(value)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        return {"limit": rate.limit, "per": rate.per}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a rate string such as '600/minute' or a table "
                          f"{{limit, per, ...}}, got {_show(value)}")
    unknown = sorted(set(map(str, value)) - RATE_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: "
                          f"{', '.join(sorted(RATE_KEYS))})")
    out = dict(value)
    if "limit" not in out:
        raise ConfigError(f"{where} needs a limit, e.g. {{limit = 600, per = \"minute\"}}")
    if isinstance(out["limit"], str):
        if "per" in out:
            raise ConfigError(f"{where}: limit {out['limit']!r} already says its period; "
                              f"drop per = {out['per']!r}")
        try:
            parsed = Rate.parse(out["limit"])
        except ConfigError as error:
            raise ConfigError(f"{where}.limit: {error}") from None
        out["limit"], out["per"] = parsed.limit, parsed.per
    else:
        number()(out["limit"], f"{where}.limit")
        if "per" not in out:
            raise ConfigError(
                f"{where} = {dict(value)!r} has no per: {out['limit']!r} per what? write "
                f"per = 60 (seconds) or per = \"minute\", or limit = \"{out['limit']}/minute\""
            )
        out["per"] = period_seconds(out["per"], f"{where}.per")
    if "burst" in out:
        number()(out["burst"], f"{where}.burst")
    if "start_full" in out:
        boolean(out["start_full"], f"{where}.start_full")
    if "dimension" in out:
        check_dimension(out["dimension"], f"{where}.dimension")
    try:
        Rate(**out)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return out


def rates(value: Any, where: str) -> list[dict[str, Any]]:
    """One rate or a non-empty list of them."""
    if isinstance(value, (str, Mapping)):
        return [one_rate(value, f"{where}[0]")]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a rate or a non-empty list of rates, "
                          f"got {_show(value)}")
    return [one_rate(v, f"{where}[{i}]") for i, v in enumerate(value)]


def normalize_rates(config: dict[str, Any]) -> None:
    """Rewrite ``config["rate"]["rates"]`` as tables with ``per`` in seconds (in place)."""
    table = config.get("rate")
    if isinstance(table, dict) and "rates" in table:
        table["rates"] = rates(table["rates"], "stageflow_plus.rate.rates")


_POSITIVE = number()
_DIMENSION = check_dimension

SCHEMAS: dict[str, dict[str, Check]] = {
    "concurrency": {"limit": integer(1), "per_tool": int_or_table(1), "per_run": integer(1),
                    "per_tenant": int_or_table(1)},
    "rate": {"rates": rates, "key": choice("global", "tool", "tenant"),
             "per_key_rates": table_of(rates)},
    "priority": {"aging_interval": aging, "weights": table_of(_POSITIVE),
                 "default_weight": _POSITIVE, "fair_cost": fair_cost},
    "backpressure": {"max_queue": integer(0), "max_queue_per_key": integer(0),
                     "shedding": choice(*(s.value for s in Shedding)),
                     "deadline_aware": boolean, "max_wait": _POSITIVE},
    "tool_breaker": {"failure_threshold": integer(1), "reset_timeout": _POSITIVE,
                     "half_open_calls": integer(1)},
    "circuit_breaker": {"failure_threshold": integer(1), "reset_timeout": _POSITIVE},
    "ceilings": {"default_priority": integer(), "max_priority": integer(),
                 "tenant_max_priority": table_of(integer()),
                 "max_concurrency": integer(1),
                 "max_rates": table_of(_POSITIVE, keys=_DIMENSION),
                 "max_wait_ms": _POSITIVE, "tenants": list_of(name, nonempty=True),
                 "tenants_by_org": table_of(list_of(name)),
                 "on_excess": choice("clamp", "error")},
    "interceptor_order": {"call_scope": integer(), "stage_limit": integer()},
    # types only: the backend checks its ranges (and H-redis owns its options)
    "backend": {"url": url, "prefix": url, "ttl": real, "op_timeout": real, "recheck_s": real,
                "on_unavailable": choice("fail_open", "fail_closed", "degrade"),
                "max_pause": real, "cluster": boolean},
}
"""Each section's value checks, by key (sections not listed are checked by their builder)."""

FREE_TABLES: dict[str, Check] = {
    "stage_limits": integer(1),
    "plugin_options": table_of(lambda value, where: value),
}


def check_sections(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate every value of ``config`` (whose section and key names are known) and
    return it normalized.

    :raises ConfigError: naming the entry (``stageflow_plus.<section>.<key>``) and value.
    """
    out: dict[str, Any] = {}
    for section, value in config.items():
        where = f"stageflow_plus.{section}"
        if section == "stageflow_defaults":
            out[section] = boolean(value, where)
        elif section == "plugins":
            out[section] = list_of(name)(value, where)
        elif section in FREE_TABLES:
            checked = table_of(FREE_TABLES[section])(value, where)
            out[section] = checked
        elif section in SCHEMAS:
            keys = SCHEMAS[section]
            out[section] = {
                key: keys[key](item, f"{where}.{key}") if key in keys else item
                for key, item in value.items()
            }
        else:
            out[section] = value
    _check_priorities(out)
    _check_unreachable(out)
    return out


def _check_unreachable(config: Mapping[str, Any]) -> None:
    """Refuse entries no call could ever reach (they would be silently ignored)."""
    rate = config.get("rate", {})
    if rate.get("per_key_rates") and rate.get("key", "global") == "global":
        raise ConfigError(
            "stageflow_plus.rate.per_key_rates: with key = 'global' every call shares one "
            "set of buckets, so no per-key rate would ever apply; set key = 'tool' or "
            "'tenant', or put the rates in stageflow_plus.rate.rates"
        )
    tenants = config.get("ceilings", {}).get("tenants")
    if tenants is None:
        return
    for where, table in (("ceilings.tenant_max_priority",
                          config.get("ceilings", {}).get("tenant_max_priority", {})),
                         ("priority.weights", config.get("priority", {}).get("weights", {}))):
        for tenant in table:
            if tenant not in tenants:
                raise ConfigError(
                    f"stageflow_plus.{where}.{tenant}: tenant {tenant!r} is not in "
                    f"stageflow_plus.ceilings.tenants ({', '.join(tenants)}), so no run can "
                    "have it"
                )


DEFAULT_MAX_PRIORITY = 9
"""The run priority ceiling when a config orders calls by priority and sets none (0..9)."""


def max_priority_of(config: Mapping[str, Any]) -> int:
    """The effective ``ceilings.max_priority``: as configured; else
    :data:`DEFAULT_MAX_PRIORITY` when a fair queue (``[priority]``) or a stage limiter
    (``[stage_limits]``, ordered by priority) is configured; else 0 (FIFO: priorities
    change nothing, and a run asking for one is told so by the clamp warning)."""
    ceilings = config.get("ceilings", {})
    if "max_priority" in ceilings:
        return int(ceilings["max_priority"])
    if "priority" in config or "stage_limits" in config:
        return DEFAULT_MAX_PRIORITY
    return 0


def _check_priorities(config: Mapping[str, Any]) -> None:
    ceilings = config.get("ceilings", {})
    top = max_priority_of(config)
    default = ceilings.get("default_priority", 0)
    where = "stageflow_plus.ceilings"
    if default > top:
        raise ConfigError(f"{where}.default_priority = {default!r} is above "
                          f"{where}.max_priority = {top!r}"
                          f"{'' if 'max_priority' in ceilings else ' (its default here)'}: "
                          "a run that asks nothing would have a priority no run may ask for")
    for tenant, ceiling in ceilings.get("tenant_max_priority", {}).items():
        if default > ceiling:
            raise ConfigError(f"{where}.tenant_max_priority.{tenant} = {ceiling!r} is below "
                              f"{where}.default_priority = {default!r}")
    tenants = ceilings.get("tenants")
    if tenants is not None:
        for org, allowed in ceilings.get("tenants_by_org", {}).items():
            for tenant in allowed:
                if tenant not in tenants:
                    raise ConfigError(
                        f"{where}.tenants_by_org.{org} names tenant {tenant!r}, which is not "
                        f"in {where}.tenants ({', '.join(tenants)})"
                    )
