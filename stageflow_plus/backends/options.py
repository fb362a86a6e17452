"""Validation of the Redis backend's options: every bad value is a ``ConfigError`` naming it.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from ..primitives.errors import ConfigError

__all__ = ["POLICIES", "Policy", "check_options", "check_order", "check_query"]

Policy = Literal["fail_open", "fail_closed", "degrade"]
POLICIES = ("fail_closed", "fail_open", "degrade")
"""The unavailability policies, the default first."""

_QUERY = frozenset({"db", "password", "username", "protocol", "client_name",
                    "health_check_interval", "socket_keepalive", "ssl_cert_reqs",
                    "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"})


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_options(*, ttl: object, on_unavailable: object, op_timeout: object,
                  recheck_s: object, max_pause: object, prefix: object) -> None:
    """Refuse a bad ``ttl``, policy, ``op_timeout``, ``recheck_s``, ``max_pause``, prefix."""
    if on_unavailable not in POLICIES:
        raise ConfigError(f"on_unavailable must be one of {', '.join(POLICIES)}, "
                          f"got {on_unavailable!r}")
    for name, value, low in (("ttl", ttl, 0.1), ("op_timeout", op_timeout, 0.001),
                             ("recheck_s", recheck_s, 0.0), ("max_pause", max_pause, 0.001)):
        if not _number(value) or not (value >= low and math.isfinite(value)):  # type: ignore[operator, arg-type]
            raise ConfigError(f"RedisBackend {name} must be a finite number >= {low}, "
                              f"got {value!r}")
    assert isinstance(op_timeout, (int, float)) and isinstance(ttl, (int, float))
    if op_timeout >= ttl / 3:
        raise ConfigError(f"RedisBackend op_timeout ({op_timeout:g} s) must be below ttl/3 "
                          f"({ttl / 3:g} s): the heartbeat extends leases every ttl/3")
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(f"RedisBackend prefix must be a non-empty string without braces, "
                          f"got {prefix!r}")


def check_order(aging_interval: object, weights: Mapping[str, float] | None) -> None:
    """Refuse a bad global-queue order: ``aging_interval`` > 0 (or ``None``), weights > 0."""
    if aging_interval is not None and (
        not _number(aging_interval)
        or not (aging_interval > 0 and math.isfinite(aging_interval))  # type: ignore[operator, arg-type]
    ):
        raise ConfigError(f"RedisBackend aging_interval must be a finite number > 0 or None, "
                          f"got {aging_interval!r}")
    if weights is not None and not isinstance(weights, Mapping):
        raise ConfigError(f"RedisBackend weights must be a mapping of tenant to weight, "
                          f"got {type(weights).__name__}")
    for tenant, weight in (weights or {}).items():
        if not _number(weight) or not (weight > 0 and math.isfinite(weight)):
            raise ConfigError(f"RedisBackend weights[{tenant!r}] must be a finite number > 0, "
                              f"got {weight!r}")


def check_query(url: str, shown: str) -> None:
    """Refuse query parameters the client would only reject at the first connection;
    ``shown`` is the printable (redacted) URL."""
    if not isinstance(url, str) or "?" not in url:
        return
    for part in url.split("?", 1)[1].split("&"):
        name = part.partition("=")[0]
        if name and name not in _QUERY:
            raise ConfigError(f"unknown query parameter {name!r} in the Redis URL {shown!r}; "
                              f"known: {', '.join(sorted(_QUERY))}")
