"""The ``stageflow.interceptors`` entry-point group: stage interceptors found by name.

Stageflow has no plugin discovery; this group is ours to define. Any installed distribution
can add stage interceptors to it in its ``pyproject.toml``::

    [project.entry-points."stageflow.interceptors"]
    acme_audit = "acme_audit.interceptors:AuditInterceptor"

The object an entry point names is called with the plugin's options as keyword arguments
and must return a Stageflow ``BaseInterceptor``. stageflow-plus registers its own:
``stageflow_plus.call_scope``, ``stageflow_plus.stage_limit`` and
``stageflow_plus.circuit_breaker``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from stageflow.pipeline.interceptors import BaseInterceptor

from ..primitives.errors import ConfigError
from .redact import show

__all__ = ["ENTRY_POINT_GROUP", "UnknownInterceptor", "available_interceptors", "load_interceptor"]

ENTRY_POINT_GROUP = "stageflow.interceptors"


class UnknownInterceptor(ConfigError):
    """No installed distribution provides an interceptor of that name."""


def available_interceptors() -> dict[str, EntryPoint]:
    """Every interceptor in the group, by name, from every installed distribution.

    :raises ConfigError: two distributions claim the same name.
    """
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        other = found.get(point.name)
        if other is not None and other.value != point.value:
            raise ConfigError(
                f"interceptor name {point.name!r} is claimed twice in the {ENTRY_POINT_GROUP!r} "
                f"entry-point group: {_origin(other)} and {_origin(point)}"
            )
        found[point.name] = point
    return found


def load_interceptor(name: str, options: Mapping[str, Any] | None = None) -> BaseInterceptor:
    """Build the interceptor registered as ``name``, passing ``options`` as keywords.

    :raises UnknownInterceptor: no such name (the message lists the available ones).
    :raises ConfigError: the entry point cannot be imported, rejects the options, or does
        not return a ``BaseInterceptor``.
    """
    if not isinstance(name, str):
        raise ConfigError(f"interceptor name must be a str, got {name!r}")
    if options is not None and (
        not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options)
    ):
        raise ConfigError(f"the options of interceptor {name!r} must be a table of keyword "
                          f"options, got {show(options)}")
    available = available_interceptors()
    point = available.get(name)
    if point is None:
        names = ", ".join(sorted(available)) or "none installed"
        raise UnknownInterceptor(
            f"unknown interceptor {name!r} (entry-point group {ENTRY_POINT_GROUP!r}); "
            f"available: {names}"
        )
    try:
        factory = point.load()
    except Exception as error:
        raise ConfigError(
            f"interceptor {name!r} ({point.value}) cannot be imported: {error}"
        ) from error
    try:
        interceptor = factory(**dict(options or {}))
    except ConfigError as error:
        raise ConfigError(f"interceptor {name!r}: {error}") from error
    except TypeError as error:
        raise ConfigError(f"interceptor {name!r} rejects its options: {error}") from error
    if not isinstance(interceptor, BaseInterceptor):
        raise ConfigError(
            f"interceptor {name!r} ({point.value}) returned {type(interceptor).__name__}, "
            "not a stageflow BaseInterceptor"
        )
    return interceptor


def _origin(point: EntryPoint) -> str:
    dist = point.dist
    return f"{point.value} ({dist.name if dist is not None else 'unknown distribution'})"
