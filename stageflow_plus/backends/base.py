"""Choosing where limits live: ``memory://`` (default) or ``redis://`` — by URL.

:func:`backend_from_url` validates the URL and options and returns a backend whose
``limits(...)`` gives the interceptors to splice into a
:class:`~stageflow_plus.interceptors.chain.ToolCallChain`::

    backend = backend_from_url(os.environ.get("LIMITS_URL", "memory://"), ttl=5)
    chain = ToolCallChain([PriorityFairQueue(),
                           *backend.limits(concurrency=8, rates=[Rate(600, per=60)])])

With ``memory://`` those are the in-process :class:`ConcurrencyLimiter` and
:class:`TokenBucketRateLimiter`; with ``redis://`` a local :class:`ConcurrencyLimiter` (the
per-process waiting room) followed by :class:`~stageflow_plus.backends.limits.RedisLimits`
(the global permits). The chain reads the same either way.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from ..interceptors.call import ToolCall, ToolCallInterceptor
from ..interceptors.concurrency import ConcurrencyLimiter
from ..interceptors.rate import TokenBucketRateLimiter
from ..primitives.errors import BackendUnavailable, ConfigError
from ..primitives.resources import Rate
from .redact import redact_url

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["BackendUnavailable", "LimitsBackend", "MemoryBackend", "backend_from_url"]

RateKey = str | Callable[[ToolCall], str]



class LimitsBackend(Protocol):
    """What :func:`backend_from_url` returns: a source of limit interceptors."""

    def limits(
        self,
        *,
        concurrency: int | None = None,
        per_tool: int | Mapping[str, int] | None = None,
        per_tenant: int | Mapping[str, int] | None = None,
        rates: Rate | Sequence[Rate] = (),
        rate_key: RateKey = "global",
    ) -> list[ToolCallInterceptor]:
        """The interceptors enforcing these limits, to splice into a chain in order."""
        ...

    async def aclose(self) -> None:
        """Release connections (no-op in memory)."""
        ...


class MemoryBackend:
    """Limits in this process only: the in-memory limiter interceptors (the default)."""

    __slots__ = ()

    url = "memory://"

    def limits(
        self,
        *,
        concurrency: int | None = None,
        per_tool: int | Mapping[str, int] | None = None,
        per_tenant: int | Mapping[str, int] | None = None,
        rates: Rate | Sequence[Rate] = (),
        rate_key: RateKey = "global",
    ) -> list[ToolCallInterceptor]:
        """A :class:`ConcurrencyLimiter` and, given rates, a :class:`TokenBucketRateLimiter`."""
        parts: list[ToolCallInterceptor] = [
            ConcurrencyLimiter(concurrency, per_tool=per_tool, per_tenant=per_tenant)
        ]
        if isinstance(rates, Rate) or rates:
            parts.append(TokenBucketRateLimiter(rates, key=rate_key))
        return parts

    async def aclose(self) -> None:
        """Nothing to close."""

    def __repr__(self) -> str:
        return "MemoryBackend()"


_REDIS_OPTIONS = ("prefix", "ttl", "on_unavailable", "op_timeout", "recheck_s", "max_pause",
                  "aging_interval", "weights", "cluster")


def backend_from_url(url: str = "memory://", **options: Any) -> MemoryBackend | RedisBackend:
    """A backend from a URL: ``memory://`` or ``redis://[:password@]host[:port][/db]``.

    Also ``rediss://`` (TLS) and ``unix:///path/to/redis.sock``. Options for Redis:
    ``prefix``, ``ttl``, ``on_unavailable`` (``"fail_closed"`` / ``"fail_open"`` /
    ``"degrade"``), ``op_timeout``, ``recheck_s``, ``max_pause``, ``aging_interval``,
    ``weights``, ``cluster`` (see :class:`~stageflow_plus.backends.redis.RedisBackend`).
    Errors never show the URL's password (:mod:`~stageflow_plus.backends.redact`).

    :raises ConfigError: an unknown scheme, a malformed host, port or db, an unknown
        option, or ``redis`` not installed.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"backend URL must look like 'memory://' or 'redis://host:6379/0', "
                          f"got {redact_url(url)!r}")
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(f"malformed backend URL {shown!r}") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"memory:// takes no host, path or query, got {shown!r}")
        if options:
            raise ConfigError(f"memory:// takes no options, got {sorted(options)}")
        return MemoryBackend()
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"unknown backend scheme {parts.scheme!r} in {shown!r}; use memory://, "
                          "redis://, rediss:// or unix://")
    unknown = sorted(set(options) - set(_REDIS_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {scheme}://; known: "
                          f"{', '.join(_REDIS_OPTIONS)}")
    if scheme == "unix":
        if not parts.path:
            raise ConfigError(f"unix:// needs a socket path, got {shown!r}")
    else:
        if not parts.hostname:
            raise ConfigError(f"{scheme}:// needs a host, e.g. {scheme}://127.0.0.1:6379/0; "
                              f"got {shown!r}")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"invalid port in {shown!r}") from None
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"invalid port in {shown!r}")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(f"the database in {shown!r} must be a number, got {db!r}")
    try:
        from .redis import RedisBackend
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(f"{shown!r} needs redis-py: pip install 'stageflow-plus[redis]'") from exc
    return RedisBackend(url, **options)
