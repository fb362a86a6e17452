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
Reading and checking live in :mod:`~stageflow_plus.stageflow.config_load`; this module builds.

Every unknown key, wrong type and order that breaks coordination with Stageflow's
``TimeoutInterceptor`` (the scope must run after it, to see the stage timeout) or
``CircuitBreakerInterceptor`` (the stage limiter must run inside it, so an open breaker
queues nothing) is a :class:`~stageflow_plus.primitives.errors.ConfigError` naming the entry.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
from .adaptive_config import adaptive_from_config
from .config_load import COST_SECTIONS, SECTIONS, load_checked, load_config
from .config_schema import max_priority_of
from .dimensions import dimension_watch
from .llm_config import with_llm_steps
from .order import check_order
from .overrides import Ceilings
from .plugins import load_interceptor
from .redact import redact_error, redact_text, redact_url, show
from .tools import CostEstimator, LimitedAdvancedToolExecutor, LimitedToolRegistry

__all__ = [
    "COST_SECTIONS",
    "SECTIONS",
    "StageflowPlus",
    "build",
    "check_order",
    "load_config",
]

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

    def __repr__(self) -> str:
        """The fields, with every URL's credentials hidden (the config holds the backend URL)."""
        return redact_text(f"StageflowPlus(chain={self.chain!r}, "
                           f"interceptors={self.interceptors!r}, config={self.config!r}, "
                           f"backend={self.backend!r})")

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
    cfg, from_env = load_checked(config, env)
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
        # nothing global to hold: an uncapped in-process limiter, so a run's
        # ctx.data["_concurrency"] applies, as with the memory backend
        return [_make("concurrency", ConcurrencyLimiter, {})]
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
