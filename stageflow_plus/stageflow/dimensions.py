"""Which cost dimensions a config's rate buckets count, and whether anything charges them.

At build, :func:`dimension_watch` refuses a bucket dimension that no declared cost charges
(when the config declares costs, e.g. ``[llm]``), or returns an
:class:`~stageflow_plus.interceptors.dimensions.UnchargedDimensionWatch` that warns at run
time. The registry of names (``KNOWN_DIMENSIONS``, ``register_dimension``,
``check_dimension``) lives in :mod:`stageflow_plus.primitives.dimensions`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..interceptors.dimensions import UnchargedDimensionWatch
from ..primitives.errors import ConfigError

__all__ = ["bucket_dimensions", "dimension_watch"]


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
