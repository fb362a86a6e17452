"""Pipeline configuration: one builder for the tool-call chain and the stage interceptors.

The config is a mapping (from a dict, a TOML file's ``[stageflow_plus]`` table, or
environment variables) with these sections, every key optional::

    [stageflow_plus]
    stageflow_defaults = true          # include Stageflow's default interceptors
    plugins = ["acme_audit"]           # more interceptors, by entry-point name

    [stageflow_plus.concurrency]       # ConcurrencyLimiter: limit, per_tool, per_run, per_tenant
    [stageflow_plus.rate]              # TokenBucketRateLimiter: rates = [{limit, per, burst,
                                       #   dimension, start_full}], key, per_key_rates
    [stageflow_plus.priority]          # PriorityFairQueue: aging_interval, weights, ...
    [stageflow_plus.backpressure]      # Backpressure: max_queue, shedding, max_wait, ...
    [stageflow_plus.tool_breaker]      # ToolCircuitBreaker: failure_threshold, reset_timeout
    [stageflow_plus.circuit_breaker]   # the stage breaker: failure_threshold, reset_timeout
    [stageflow_plus.stage_limits]      # stage name = most concurrent runs
    [stageflow_plus.ceilings]          # Ceilings for per-run ctx.data overrides
    [stageflow_plus.priorities]        # call_scope = 8, stage_limit = 12 (stage interceptors)
    [stageflow_plus.plugin_options.acme_audit]   # keyword options of a plugin
    [stageflow_plus.backend]           # url = "memory://" (default) or "redis://host:6379/0";
                                       #   prefix, ttl, on_unavailable, op_timeout, recheck_s
    [stageflow_plus.adaptive]          # AdaptiveConcurrency: partition, keys, min_limit, ...
                                       #   (see stageflow_plus.stageflow.adaptive_config)

With a Redis backend the ``concurrency`` (``limit``, ``per_tool``, ``per_tenant``) and
``rate`` (``rates``, ``key``) limits hold across every process sharing the URL and prefix:
a local :class:`TokenBucketRateLimiter` and :class:`ConcurrencyLimiter` with the same limits
stay as each process's waiting room (priority, fairness, queue bounds, deadlines, per-run
caps), followed by :class:`~stageflow_plus.backends.limits.RedisLimits` holding the global
permits and buckets.
``per_key_rates`` has no Redis form yet and is refused with a Redis backend.

Environment variables (applied over the file/dict): ``STAGEFLOW_PLUS_CONFIG`` (a TOML file
read when no config is given), ``STAGEFLOW_PLUS_MAX_CONCURRENT`` (global tool-call
concurrency), ``STAGEFLOW_PLUS_MAX_QUEUE``, ``STAGEFLOW_PLUS_BACKEND`` (the backend URL),
``STAGEFLOW_PLUS_RPM`` / ``STAGEFLOW_PLUS_TPM``
(requests / tokens per minute on one global key), ``STAGEFLOW_PLUS_MAX_PRIORITY``.

Every unknown key, wrong type and order that breaks coordination with Stageflow's
``TimeoutInterceptor`` (the scope must run after it, to see the stage timeout) or
``CircuitBreakerInterceptor`` (the stage limiter must run inside it, so an open breaker
queues nothing) is a :class:`~stageflow_plus.primitives.errors.ConfigError` naming the entry.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stageflow.pipeline.interceptors import (
    BaseInterceptor,
    CircuitBreakerInterceptor,
    TimeoutInterceptor,
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
from .adaptive_config import ADAPTIVE_KEYS, adaptive_from_config, apply_adaptive_env
from .overrides import Ceilings
from .plugins import load_interceptor
from .tools import CostEstimator, LimitedAdvancedToolExecutor, LimitedToolRegistry

__all__ = ["StageflowPlus", "build", "load_config"]

SECTIONS: dict[str, frozenset[str]] = {
    "stageflow_defaults": frozenset(),
    "plugins": frozenset(),
    "concurrency": frozenset({"limit", "per_tool", "per_run", "per_tenant"}),
    "rate": frozenset({"rates", "key", "per_key_rates"}),
    "priority": frozenset(
        {"aging_interval", "weights", "default_weight", "fair_cost", "max_priority"}
    ),
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
            "on_excess",
        }
    ),
    "priorities": frozenset({"call_scope", "stage_limit"}),
    "plugin_options": frozenset(),  # free keys: plugin names
    "backend": frozenset({"url", "prefix", "ttl", "on_unavailable", "op_timeout", "recheck_s"}),
    "adaptive": ADAPTIVE_KEYS,
}
RATE_KEYS = frozenset({"limit", "per", "burst", "dimension", "start_full"})
ENV_PREFIX = "STAGEFLOW_PLUS_"


def load_config(
    source: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Read and validate a config: a mapping, a TOML file path, or (``None``) the environment.

    A TOML file's ``[stageflow_plus]`` table is used (or the whole file if it has none).
    Environment variables are applied on top (``env`` defaults to ``os.environ``).

    :raises ConfigError: unreadable file, unknown key, wrong type — naming the entry.
    """
    environ = os.environ if env is None else env
    if source is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        source = environ[f"{ENV_PREFIX}CONFIG"]
    if source is None:
        config: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        config = _deep_copy(source.get("stageflow_plus", source))
    else:
        path = Path(source)
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"cannot read config file {str(path)!r}: {error}") from error
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from error
        config = _deep_copy(raw.get("stageflow_plus", raw))
    _apply_env(config, environ)
    _check_keys(config)
    return config


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {ENV_PREFIX}{name} must be an int, got {raw!r}"
        ) from None


def _apply_env(config: dict[str, Any], environ: Mapping[str, str]) -> None:
    if (value := _env_int(environ, "MAX_CONCURRENT")) is not None:
        config.setdefault("concurrency", {})["limit"] = value
    if (value := _env_int(environ, "MAX_QUEUE")) is not None:
        config.setdefault("backpressure", {})["max_queue"] = value
    if url := environ.get(f"{ENV_PREFIX}BACKEND"):
        config.setdefault("backend", {})["url"] = url
    if (value := _env_int(environ, "MAX_PRIORITY")) is not None:
        config.setdefault("ceilings", {})["max_priority"] = value
    rates: list[dict[str, Any]] = []
    if (value := _env_int(environ, "RPM")) is not None:
        rates.append({"limit": value, "per": 60})
    if (value := _env_int(environ, "TPM")) is not None:
        rates.append({"limit": value, "per": 60, "dimension": "tokens"})
    if rates:
        config["rate"] = {"rates": rates, "key": "global"}
    apply_adaptive_env(config, environ)


def _check_keys(config: Mapping[str, Any]) -> None:
    for section, value in config.items():
        known = SECTIONS.get(section)
        if known is None:
            raise ConfigError(
                f"stageflow_plus.{section}: unknown section (known: {', '.join(sorted(SECTIONS))})"
            )
        if section == "stageflow_defaults":
            if not isinstance(value, bool):
                raise ConfigError(
                    f"stageflow_plus.stageflow_defaults must be true/false, got {value!r}"
                )
            continue
        if section == "plugins":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"stageflow_plus.plugins must be a list of names, got {value!r}")
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"stageflow_plus.{section} must be a table, got {value!r}")
        if known:
            for key in value:
                if key not in known:
                    raise ConfigError(
                        f"stageflow_plus.{section}.{key}: unknown key "
                        f"(known: {', '.join(sorted(known))})"
                    )


def _rates(value: Any, where: str) -> list[Rate]:
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where} must be a table or a list of tables, got {value!r}")
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}[{index}] must be a table, got {item!r}")
        unknown = set(item) - RATE_KEYS
        if unknown:
            raise ConfigError(
                f"{where}[{index}].{sorted(unknown)[0]}: unknown key "
                f"(known: {', '.join(sorted(RATE_KEYS))})"
            )
        try:
            out.append(Rate(**item))
        except (ConfigError, TypeError) as error:
            raise ConfigError(f"{where}[{index}]: {error}") from error
    return out


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
    :raises ConfigError: invalid config or an order that breaks coordination.
    """
    cfg = load_config(config, env=env)
    steps: list[Any] = []
    if "tool_breaker" in cfg:
        options = {**cfg["tool_breaker"], "clock": clock}
        steps.append(_make("tool_breaker", ToolCircuitBreaker, options))
    if "backpressure" in cfg:
        steps.append(_make("backpressure", Backpressure, cfg["backpressure"]))
    if "priority" in cfg:
        steps.append(_make("priority", PriorityFairQueue, cfg["priority"]))
    backend = _backend(cfg.get("backend", {}))
    if isinstance(backend, MemoryBackend):
        steps.extend(_memory_limits(cfg))
    else:
        adaptive_from_config(cfg, memory_backend=False)  # refuses the section with Redis
        steps.extend(_global_limits(cfg, backend, clock))
    chain = ToolCallChain(steps, clock=clock)

    ceilings = _make("ceilings", _ceilings, cfg.get("ceilings", {}))
    priorities = cfg.get("priorities", {})
    scope = CallScopeInterceptor(ceilings=ceilings, clock=clock)
    ours: dict[str, BaseInterceptor] = {"call_scope": scope}
    if "stage_limits" in cfg:
        ours["stage_limit"] = _make("stage_limits", lambda **kw: StageLimitInterceptor(
            kw, ceilings=ceilings, clock=clock), cfg["stage_limits"])
    for name, value in priorities.items():
        if name not in ours:
            raise ConfigError(
                f"stageflow_plus.priorities.{name}: no such interceptor in this config "
                "(stage_limit needs a [stageflow_plus.stage_limits] table)"
            )
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"stageflow_plus.priorities.{name} must be an int, got {value!r}")
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
            raise ConfigError(f"stageflow_plus.plugin_options.{name} must be a table")
        stack.append(load_interceptor(name, plugin_options))
    unused = set(plugin_options_by_name) - set(cfg.get("plugins", []))
    if unused:
        raise ConfigError(
            f"stageflow_plus.plugin_options.{sorted(unused)[0]}: options for a plugin that is "
            "not listed in stageflow_plus.plugins"
        )
    stack.extend(extra)
    stack.sort(key=lambda i: i.priority)
    check_order(stack)
    return StageflowPlus(chain, stack, cfg, backend)


def _rate_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    rate = dict(cfg["rate"])
    if "rates" not in rate:
        raise ConfigError("stageflow_plus.rate.rates is required (one or more rates)")
    rate["rates"] = _rates(rate["rates"], "stageflow_plus.rate.rates")
    if "per_key_rates" in rate:
        per_key = rate["per_key_rates"]
        if not isinstance(per_key, Mapping):
            raise ConfigError("stageflow_plus.rate.per_key_rates must be a table of rates")
        rate["per_key_rates"] = {
            k: _rates(v, f"stageflow_plus.rate.per_key_rates.{k}") for k, v in per_key.items()
        }
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
    if not isinstance(url, str):
        raise ConfigError(f"stageflow_plus.backend.url must be a string, got {url!r}")
    try:
        return backend_from_url(url, **options)
    except ConfigError as error:
        raise ConfigError(f"stageflow_plus.backend: {error}") from error


def _global_limits(
    cfg: Mapping[str, Any], backend: LimitsBackend, clock: Clock | Callable[[], float] | None
) -> list[Any]:
    """The local waiting room, then the limits held in the backend (Redis)."""
    from ..backends.redis import RedisBackend

    assert isinstance(backend, RedisBackend)
    concurrency = dict(cfg.get("concurrency", {}))
    if "rate" not in cfg and not concurrency:
        return []
    options: dict[str, Any] = {
        "concurrency": concurrency.pop("limit", None), **concurrency, "clock": clock
    }
    if "rate" in cfg:
        rate = _rate_options(cfg)
        if "per_key_rates" in rate:
            raise ConfigError(
                "stageflow_plus.rate.per_key_rates: not supported with a Redis backend "
                "(stageflow_plus.backend.url); give the rates in stageflow_plus.rate.rates"
            )
        options["rates"] = rate["rates"]
        options["rate_key"] = rate.get("key", "global")
    return list(_make("backend", backend.limits, options))


def _ceilings(**options: Any) -> Ceilings:
    if "tenants" in options and options["tenants"] is not None:
        options["tenants"] = frozenset(options["tenants"])
    return Ceilings(**options)


def check_order(interceptors: Sequence[BaseInterceptor]) -> None:
    """Refuse interceptor orders that break the coordination with Stageflow's own.

    * the call scope must run after ``TimeoutInterceptor`` (it reads the stage timeout);
    * a stage limiter must run after the circuit breaker (an open breaker must short-circuit
      before anything queues) and after ``TimeoutInterceptor``;
    * a plain ``CircuitBreakerInterceptor`` counts our refusals as failures: use
      :class:`LimitAwareCircuitBreaker` with stage limiters.
    """
    def priority_of(kind: type) -> int | None:
        found = [i.priority for i in interceptors if isinstance(i, kind)]
        return min(found) if found else None

    timeout = priority_of(TimeoutInterceptor)
    breaker = priority_of(CircuitBreakerInterceptor)
    for interceptor in interceptors:
        where = f"interceptor {interceptor.name!r} (priority {interceptor.priority})"
        if isinstance(interceptor, (CallScopeInterceptor, StageLimitInterceptor)) and (
            timeout is not None and interceptor.priority <= timeout
        ):
            raise ConfigError(
                f"{where} must run after TimeoutInterceptor (priority {timeout}) to see the "
                "stage timeout; give it a higher priority"
            )
        if isinstance(interceptor, StageLimitInterceptor):
            if breaker is not None and interceptor.priority <= breaker:
                raise ConfigError(
                    f"{where} must run inside the circuit breaker (priority {breaker}) so an "
                    "open breaker queues nothing; give it a higher priority"
                )
            plain = [
                i for i in interceptors
                if isinstance(i, CircuitBreakerInterceptor)
                and not isinstance(i, LimitAwareCircuitBreaker)
            ]
            if plain:
                raise ConfigError(
                    f"{where}: Stageflow's plain CircuitBreakerInterceptor would count this "
                    "limiter's refusals as failures; use LimitAwareCircuitBreaker instead"
                )
