"""Pipeline configuration: one builder for the tool-call chain and the stage interceptors.

The config is a mapping (from a dict, a TOML file's ``[stageflow_plus]`` table, or
environment variables) with these sections, every key optional::

    [stageflow_plus]
    stageflow_defaults = true          # include Stageflow's default interceptors
    plugins = ["acme_audit"]           # more interceptors, by entry-point name

    [stageflow_plus.concurrency]       # ConcurrencyLimiter: limit, per_tool, per_run, per_tenant
    [stageflow_plus.rate]              # TokenBucketRateLimiter: rates = ["600/minute",
                                       #   {limit, per, burst, dimension, start_full}],
                                       #   key ("global" by default), per_key_rates
    [stageflow_plus.priority]          # PriorityFairQueue: aging_interval, weights, ...
    [stageflow_plus.backpressure]      # Backpressure: max_queue, shedding, max_wait, ...
    [stageflow_plus.tool_breaker]      # ToolCircuitBreaker: failure_threshold, reset_timeout
    [stageflow_plus.circuit_breaker]   # the stage breaker: failure_threshold, reset_timeout
    [stageflow_plus.stage_limits]      # stage name = most concurrent runs
    [stageflow_plus.ceilings]          # what runs may ask in ctx.data: max_priority (the one
                                       #   priority ceiling), tenants_by_org, ...
    [stageflow_plus.interceptor_order] # call_scope = 8, stage_limit = 12 (Stageflow
                                       #   interceptor priorities, not call priorities)
    [stageflow_plus.plugin_options.acme_audit]   # keyword options of a plugin
    [stageflow_plus.backend]           # url = "memory://" (default) or "redis://host:6379/0";
                                       #   prefix, ttl, on_unavailable, op_timeout, recheck_s,
                                       #   max_pause, cluster
    [stageflow_plus.adaptive]          # AdaptiveConcurrency: partition, keys, min_limit, ...
                                       #   (see stageflow_plus.stageflow.adaptive_config)

Every value is checked by :mod:`~stageflow_plus.stageflow.config_schema` (types, ranges,
``nan``/``inf``, bools), every rate must say its period, and a rate's dimension that no cost
can charge is refused at build (with declared costs) or warned about once at run time.

With a Redis backend the ``concurrency`` (``limit``, ``per_tool``, ``per_tenant``) and
``rate`` (``rates``, ``key``) limits hold across every process sharing the URL and prefix,
in one global wait queue ordered like ``[priority]`` says (``aging_interval``, ``weights``,
``fair_cost``): :class:`~stageflow_plus.backends.limits.RedisLimits` after an in-process
:class:`ConcurrencyLimiter` that keeps only ``per_run`` (queue bounds and backpressure stay
per process too).
``per_key_rates`` has no Redis form yet and is refused with a Redis backend.

Environment variables (see :mod:`~stageflow_plus.stageflow.env`, the one list of them)
merge over the file/dict entry by entry; an unknown ``STAGEFLOW_PLUS_*`` name is refused.

Every unknown key, wrong type and order that breaks coordination with Stageflow's
``TimeoutInterceptor`` (the scope must run after it, to see the stage timeout) or
``CircuitBreakerInterceptor`` (the stage limiter must run inside it, so an open breaker
queues nothing) is a :class:`~stageflow_plus.primitives.errors.ConfigError` naming the entry.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stageflow.pipeline.interceptors import (
    BaseInterceptor,
    CircuitBreakerInterceptor,
    get_default_interceptors,
)

from ..backends.base import LimitsBackend, MemoryBackend, backend_from_url
from ..interceptors.backpressure import Backpressure
from ..interceptors.breaker import ToolCircuitBreaker
from ..interceptors.chain import ToolCallChain
from ..interceptors.concurrency import ConcurrencyLimiter
from ..interceptors.priority import PriorityFairQueue
from ..interceptors.rate import TokenBucketRateLimiter
from ..primitives.clock import Clock
from ..primitives.errors import ConfigError
from ..primitives.resources import Rate
from .adapters import CallScopeInterceptor, LimitAwareCircuitBreaker, StageLimitInterceptor
from .adaptive_config import (
    ADAPTIVE_ENV_VARS,
    ADAPTIVE_KEYS,
    adaptive_from_config,
    apply_adaptive_env,
)
from .config_schema import MOVED, check_sections, max_priority_of, normalize_rates
from .dimensions import dimension_watch
from .env import ENV_PREFIX, apply_env
from .llm_config import LLM_KEYS, llm_steps, with_llm_steps
from .order import check_order
from .overrides import Ceilings
from .plugins import load_interceptor
from .redact import redact_error, redact_url, show
from .tools import CostEstimator, LimitedAdvancedToolExecutor, LimitedToolRegistry

__all__ = [
    "COST_SECTIONS",
    "SECTIONS",
    "StageflowPlus",
    "build",
    "check_order",
    "load_config",
]

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
    return _load(source, env)[0]


def _load(
    source: Mapping[str, Any] | str | os.PathLike[str] | None, env: Mapping[str, str] | None
) -> tuple[dict[str, Any], list[str]]:
    """The checked config and the environment variables merged into it."""
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
    if applied:
        _check_keys(config)
        config = check_sections(config)
    # sections with their own schema: checked here too, so a loaded config is a valid one
    if "llm" in config:
        llm_steps(config["llm"], config, None)
    if "adaptive" in config:
        adaptive_from_config(config)
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


def _rates(items: list[dict[str, Any]]) -> list[Rate]:
    """The checked rate tables (see config_schema.one_rate) as Rate objects."""
    return [Rate(**item) for item in items]


def _make(where: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> Any:
    try:
        return factory(**options)
    except ConfigError as error:
        raise ConfigError(f"stageflow_plus.{where}: {error}") from error
    except TypeError as error:
        raise ConfigError(f"stageflow_plus.{where}: {error}") from error


@dataclass(frozen=True)
class StageflowPlus:
    """What :func:`build` returns: the tool-call chain and the stage interceptor list.

    :ivar chain: the tool-call chain every wrapper shares (one set of limits).
    :ivar interceptors: the complete stage interceptor list, sorted by priority — Stageflow's
        defaults (with the breaker replaced) plus ours and the plugins'; pass it to
        ``Pipeline.build(interceptors=...)``.
    :ivar config: the validated config it was built from.
    :ivar backend: where the limits live (:class:`MemoryBackend` unless
        ``[stageflow_plus.backend] url`` names Redis); close it with :meth:`aclose`.
    """

    chain: ToolCallChain
    interceptors: list[BaseInterceptor]
    config: Mapping[str, Any]
    backend: LimitsBackend = field(default_factory=MemoryBackend)

    async def aclose(self) -> None:
        """Close the backend's connections (held Redis leases then expire by TTL)."""
        await self.backend.aclose()

    def registry(
        self, registry: Any = None, *, cost_of: CostEstimator | None = None
    ) -> LimitedToolRegistry:
        """A :class:`LimitedToolRegistry` over ``registry`` (default: Stageflow's global one)."""
        return LimitedToolRegistry(self.chain, registry, cost_of=cost_of)

    def advanced_executor(
        self, *args: Any, cost_of: CostEstimator | None = None, **kwargs: Any
    ) -> LimitedAdvancedToolExecutor:
        """A :class:`LimitedAdvancedToolExecutor` on this chain."""
        return LimitedAdvancedToolExecutor(self.chain, *args, cost_of=cost_of, **kwargs)


def build(
    config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    clock: Clock | Callable[[], float] | None = None,
    extra: Sequence[BaseInterceptor] = (),
) -> StageflowPlus:
    """Build the chain and the ordered stage interceptor list from a config.

    :param config: a mapping, a TOML path, or ``None`` (environment only).
    :param clock: for every limiter and deadline (default: the loop's clock).
    :param extra: more stage interceptors to include as they are.
    :raises ConfigError: invalid config or an order that breaks coordination (URL
        credentials hidden in the message).
    """
    try:
        return _build(config, env, clock, extra)
    except ConfigError as error:
        redact_error(error)
        raise


def _build(
    config: Mapping[str, Any] | str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    clock: Clock | Callable[[], float] | None,
    extra: Sequence[BaseInterceptor],
) -> StageflowPlus:
    cfg, from_env = _load(config, env)
    ceilings = _ceilings(cfg)
    steps: list[Any] = []
    if "tool_breaker" in cfg:
        options = {**cfg["tool_breaker"], "clock": clock}
        steps.append(_make("tool_breaker", ToolCircuitBreaker, options))
    if "backpressure" in cfg:
        steps.append(_make("backpressure", Backpressure, cfg["backpressure"]))
    if "priority" in cfg:
        queue = dict(cfg["priority"])
        if queue.get("aging_interval") is False:
            queue["aging_interval"] = None  # strict priorities
        # the queue's levels are the runs' ceilings (the one knob: ceilings.max_priority)
        queue["max_priority"] = max([ceilings.max_priority,
                                     *ceilings.tenant_max_priority.values()])
        steps.append(_make("priority", PriorityFairQueue, queue))
    watch = dimension_watch(cfg, COST_SECTIONS)
    if watch is not None:
        steps.append(watch)
    try:
        backend = _backend(cfg.get("backend", {}))
    except ConfigError as error:
        if "STAGEFLOW_PLUS_BACKEND" not in from_env:
            raise
        url = redact_url(cfg["backend"]["url"])
        raise ConfigError(
            f"environment variable STAGEFLOW_PLUS_BACKEND={url!r}: {error}"
        ) from error
    if isinstance(backend, MemoryBackend):
        steps.extend(_memory_limits(cfg))
    else:
        adaptive_from_config(cfg, memory_backend=False)  # refuses the section with Redis
        steps.extend(_global_limits(cfg, backend, clock))
    steps = with_llm_steps(cfg, steps, clock)  # [stageflow_plus.llm], if any
    chain = ToolCallChain(steps, clock=clock)

    scope = CallScopeInterceptor(ceilings=ceilings, clock=clock)
    ours: dict[str, BaseInterceptor] = {"call_scope": scope}
    if "stage_limits" in cfg:
        ours["stage_limit"] = _make("stage_limits", lambda **kw: StageLimitInterceptor(
            kw, ceilings=ceilings, clock=clock), cfg["stage_limits"])
    for name, value in cfg.get("interceptor_order", {}).items():
        if name not in ours:
            raise ConfigError(
                f"stageflow_plus.interceptor_order.{name}: no such interceptor in this config "
                "(stage_limit needs a [stageflow_plus.stage_limits] table)"
            )
        ours[name].priority = value
    breaker = _make("circuit_breaker", LimitAwareCircuitBreaker,
                    {**cfg.get("circuit_breaker", {}), "clock": clock})
    stack: list[BaseInterceptor] = []
    if cfg.get("stageflow_defaults", True):
        for default in get_default_interceptors():
            stack.append(breaker if isinstance(default, CircuitBreakerInterceptor) else default)
    else:
        stack.append(breaker)
    stack.extend(ours.values())
    plugin_options_by_name = cfg.get("plugin_options", {})
    for name in cfg.get("plugins", []):
        plugin_options = plugin_options_by_name.get(name, {})
        if not isinstance(plugin_options, Mapping):
            raise ConfigError(f"stageflow_plus.plugin_options.{name} must be a table, "
                              f"got {show(plugin_options)}")
        stack.append(load_interceptor(name, plugin_options))
    unused = set(plugin_options_by_name) - set(cfg.get("plugins", []))
    if unused:
        raise ConfigError(
            f"stageflow_plus.plugin_options.{sorted(unused)[0]}: options for a plugin that is "
            "not listed in stageflow_plus.plugins"
        )
    stack.extend(extra)
    stack.sort(key=lambda i: i.priority)
    try:
        check_order(stack)
    except ConfigError as error:
        for name, value in cfg.get("interceptor_order", {}).items():
            if repr(ours[name].name) in str(error):
                raise ConfigError(
                    f"stageflow_plus.interceptor_order.{name} = {value!r}: {error}"
                ) from error
        raise
    return StageflowPlus(chain, stack, cfg, backend)


def _rate_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    rate = dict(cfg["rate"])
    if "rates" not in rate:
        raise ConfigError("stageflow_plus.rate.rates is required (one or more rates, e.g. "
                          "rates = [\"600/minute\"])")
    rate["rates"] = _rates(rate["rates"])
    rate.setdefault("key", "global")  # what a provider's quota is: one for every tool
    if "per_key_rates" in rate:
        rate["per_key_rates"] = {k: _rates(v) for k, v in rate["per_key_rates"].items()}
    return rate


def _memory_limits(cfg: Mapping[str, Any]) -> list[Any]:
    steps: list[Any] = []
    if "rate" in cfg:
        steps.append(_make("rate", TokenBucketRateLimiter, _rate_options(cfg)))
    # always a ConcurrencyLimiter (uncapped without a [concurrency] table), so a run's
    # ctx.data["_concurrency"] applies whatever the operator configured, as with Redis
    steps.append(_make("concurrency", ConcurrencyLimiter, cfg.get("concurrency", {})))
    steps.extend(adaptive_from_config(cfg))
    return steps


def _backend(section: Mapping[str, Any]) -> LimitsBackend:
    options = dict(section)
    url = options.pop("url", "memory://")
    if "://" not in url:
        raise ConfigError(f"stageflow_plus.backend.url must look like 'memory://' or "
                          f"'redis://host:6379/0', got {redact_url(url)!r}")
    try:
        return backend_from_url(url, **options)
    except ConfigError as error:
        raise ConfigError(f"stageflow_plus.backend: {error}") from error


def _global_limits(
    cfg: Mapping[str, Any], backend: LimitsBackend, clock: Clock | Callable[[], float] | None
) -> list[Any]:
    """Per-run caps in this process, then the limits held in the backend's global queue."""
    from ..backends.redis import RedisBackend

    assert isinstance(backend, RedisBackend)
    priority = cfg.get("priority", {})
    queue_order = {k: priority[k] for k in ("aging_interval", "weights") if k in priority}
    _make("priority", backend.configure_queue, queue_order)
    concurrency = dict(cfg.get("concurrency", {}))
    if "rate" not in cfg and not concurrency:
        return []
    options: dict[str, Any] = {
        "concurrency": concurrency.pop("limit", None), **concurrency, "clock": clock
    }
    if "fair_cost" in priority:
        options["fair_cost"] = priority["fair_cost"]
    if "rate" in cfg:
        rate = _rate_options(cfg)
        if "per_key_rates" in rate:
            raise ConfigError(
                "stageflow_plus.rate.per_key_rates: not supported with a Redis backend "
                "(stageflow_plus.backend.url); give the rates in stageflow_plus.rate.rates"
            )
        options["rates"] = rate["rates"]
        options["rate_key"] = rate["key"]
    return list(_make("backend", backend.limits, options))


def _ceilings(cfg: Mapping[str, Any]) -> Ceilings:
    options = dict(cfg.get("ceilings", {}))
    options["max_priority"] = max_priority_of(cfg)
    if "tenants" in options:
        options["tenants"] = frozenset(options["tenants"])
    if "tenants_by_org" in options:
        options["tenants_by_org"] = {
            org: frozenset(tenants) for org, tenants in options["tenants_by_org"].items()
        }
    return _make("ceilings", Ceilings, options)  # type: ignore[no-any-return]
