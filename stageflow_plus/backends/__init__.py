"""Where limits live: in this process (``memory://``, the default) or in Redis.

:func:`backend_from_url` picks one by URL. The Redis classes live in
:mod:`stageflow_plus.backends.redis` and :mod:`stageflow_plus.backends.limits` (they need
``pip install 'stageflow-plus[redis]'``); this package imports without redis-py.

.. versionadded:: 0.1.0
"""

from .base import BackendUnavailable, LimitsBackend, MemoryBackend, backend_from_url

__all__ = ["BackendUnavailable", "LimitsBackend", "MemoryBackend", "backend_from_url"]
