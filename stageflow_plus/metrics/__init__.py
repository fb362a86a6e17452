"""Metrics for chains: Prometheus and OpenTelemetry exporters.

:class:`PrometheusMetrics` needs ``stageflow-plus[prometheus]`` and :class:`OTelMetrics`
needs ``stageflow-plus[otel]``; both are imported on first use, so this package imports
without either. See :mod:`~stageflow_plus.metrics.prometheus` for the metric names.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core import DEFAULT_WAIT_BUCKETS, OTHER, ChainSnapshot, LabelBudget, MetricsRecorder

if TYPE_CHECKING:
    from .otel import OTelMetrics
    from .prometheus import PrometheusMetrics

__all__ = [
    "DEFAULT_WAIT_BUCKETS",
    "OTHER",
    "ChainSnapshot",
    "LabelBudget",
    "MetricsRecorder",
    "OTelMetrics",
    "PrometheusMetrics",
]

_EXTRAS = {"PrometheusMetrics": ("prometheus", "prometheus"), "OTelMetrics": ("otel", "otel")}


def __getattr__(name: str) -> Any:
    if name not in _EXTRAS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, extra = _EXTRAS[name]
    from importlib import import_module

    from ..primitives.errors import ConfigError

    try:
        return getattr(import_module(f"{__name__}.{module}"), name)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"stageflow_plus.metrics.{name} needs {error.name}: "
            f"pip install 'stageflow-plus[{extra}]'"
        ) from error
