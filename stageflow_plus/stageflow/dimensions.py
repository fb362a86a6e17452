"""Cost dimensions: the names a rate bucket may count, with a "did you mean" for typos.

A bucket of ``Rate(dimension="tokens")`` is charged ``call.cost["tokens"]``; a bucket whose
dimension no call ever carries charges nothing, so ``dimension = "token"`` (a typo) would
silently switch a TPM limit off. Two guards:

* at build, :func:`check_dimension` refuses a name that is not registered but is close to a
  registered one (``'token'`` → did you mean ``'tokens'``?); :func:`register_dimension` adds
  your own names;
* at run time, :class:`UnchargedDimensionWatch` (added by :func:`~stageflow_plus.build`
  when the config declares no cost that charges a bucket's dimension) logs a warning on the
  ``stageflow_plus`` logger the first time a call comes with no cost for it.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..interceptors.call import ToolCall
from ..interceptors.part import LimitPart
from ..primitives.errors import ConfigError
from ..primitives.resources import Resource
from .redact import show

__all__ = [
    "KNOWN_DIMENSIONS",
    "UnchargedDimensionWatch",
    "bucket_dimensions",
    "check_dimension",
    "dimension_watch",
    "register_dimension",
]

logger = logging.getLogger("stageflow_plus")

KNOWN_DIMENSIONS: dict[str, str] = {
    "requests": "one per call, charged automatically",
    "tokens": "LLM tokens (input + output) of a call",
    "input_tokens": "LLM prompt tokens of a call",
    "output_tokens": "LLM completion tokens of a call",
}
"""Registered dimension names and what they count (extend with :func:`register_dimension`)."""


def register_dimension(name: str, meaning: str = "") -> None:
    """Register a cost dimension name, so :func:`check_dimension` knows it is no typo."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a dimension name must be a non-empty string, got {show(name)}")
    KNOWN_DIMENSIONS[name] = meaning


def check_dimension(name: object, where: str) -> str:
    """``name`` if it is a usable dimension name.

    :raises ConfigError: not a non-empty string, or not registered while close to a
        registered name (a likely typo: the message says which one was meant).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where} must be a non-empty string (a cost dimension), "
                          f"got {show(name)}")
    if name in KNOWN_DIMENSIONS:
        return name
    lowered = {known.lower(): known for known in KNOWN_DIMENSIONS}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.75)
    if close:
        raise ConfigError(
            f"{where} = {name!r} is not a known cost dimension; did you mean "
            f"{lowered[close[0]]!r}? (known: {', '.join(sorted(KNOWN_DIMENSIONS))}; "
            "register your own with stageflow_plus.register_dimension)"
        )
    return name


class UnchargedDimensionWatch(LimitPart):
    """Warns once per dimension when a call carries no cost for a bucket's dimension.

    A chain step fused into the admission gate beside the rate limiter; it adds no demand.
    Once every watched dimension has been warned about it does nothing.

    :param dimensions: the bucket dimensions to watch (``"requests"`` is never watched).
    :param where: the config entry that declared them, for the message.
    """

    __slots__ = ("_pending", "_where")

    contributes_demands = True

    def __init__(self, dimensions: Iterable[str], *, where: str = "the rate limiter") -> None:
        super().__init__()
        self._pending = tuple(sorted({d for d in dimensions if d != "requests"}))
        self._where = where

    @property
    def pending(self) -> tuple[str, ...]:
        """The dimensions not warned about yet."""
        return self._pending

    def add_demands(self, call: ToolCall, now: float, out: list[tuple[Resource, float]]) -> None:
        if not self._pending:
            return
        cost = call.cost
        missing = [d for d in self._pending if d not in cost]
        if missing:
            self._pending = tuple(d for d in self._pending if d not in missing)
            for dimension in missing:
                logger.warning(
                    "stageflow_plus: tool call %r carries no %r cost, so the %r bucket of %s "
                    "charges it nothing; give the registry a cost_of estimator (or a run's "
                    "_cost) that returns %r, or fix the dimension's name (warned once)",
                    call.tool, dimension, dimension, self._where, dimension,
                )

    def __repr__(self) -> str:
        return f"UnchargedDimensionWatch(pending={list(self._pending)!r})"


def bucket_dimensions(cfg: Mapping[str, Any]) -> dict[str, str]:
    """Every non-``requests`` dimension of a checked config's rates → the entry naming it."""
    found: dict[str, str] = {}
    rate = cfg.get("rate", {})
    sources = [("stageflow_plus.rate.rates", rate.get("rates", []))]
    sources += [(f"stageflow_plus.rate.per_key_rates.{k}", v)
                for k, v in rate.get("per_key_rates", {}).items()]
    for where, items in sources:
        for index, item in enumerate(items):
            dimension = item.get("dimension", "requests")
            if dimension != "requests":
                found.setdefault(dimension, f"{where}[{index}].dimension")
    return found


def dimension_watch(
    cfg: Mapping[str, Any],
    cost_sections: Mapping[str, Callable[[Mapping[str, Any]], Iterable[str]]],
) -> UnchargedDimensionWatch | None:
    """A watch for the configured rates' dimensions, or ``None``.

    :param cost_sections: the sections that declare costs and the dimensions each charges.
    :raises ConfigError: with declared costs in ``cfg``, a dimension none of them charges.
    """
    dimensions = bucket_dimensions(cfg)
    if not dimensions:
        return None
    declaring = [section for section in cost_sections if section in cfg]
    if declaring:
        charged = {"requests"}
        for section in declaring:
            charged.update(cost_sections[section](cfg[section]))
        for dimension, where in dimensions.items():
            if dimension not in charged:
                raise ConfigError(
                    f"{where} = {dimension!r}: no declared cost charges it (charged: "
                    f"{', '.join(sorted(charged))}, from "
                    f"{', '.join('stageflow_plus.' + s for s in declaring)}), so this bucket "
                    "would limit nothing"
                )
        return None
    return UnchargedDimensionWatch(
        dimensions, where=", ".join(sorted(set(dimensions.values())))
    )
