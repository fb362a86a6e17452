"""The connections of a Redis backend and the one boundary where Redis errors are translated.

:class:`RedisTransport` (the base of :class:`~stageflow_plus.backends.redis.RedisBackend`)
holds the clients — the lean pipelined connection of the hot path (:mod:`.resp`) and
redis-py's client (Cluster, a caller's own client, the odd command) — and runs the Lua
library's entry points (:mod:`.scripts`) on them. Every Redis failure becomes one
:class:`~stageflow_plus.primitives.errors.BackendUnavailable` in
:meth:`RedisTransport._unavailable`: counted, logged once per outage, followed by a
``recheck_s`` pause; its text is redacted (:mod:`.redact`).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from ..primitives.errors import BackendUnavailable, ConfigError
from .redact import Redactor
from .resp import Connection
from .scripts import ENTRIES, Library

__all__ = ["RedisTransport"]

_log = logging.getLogger("stageflow_plus.redis")


class RedisTransport:
    """Connections to one Redis (or Cluster) and the translation of its failures.

    :param url: the server's URL (never shown unredacted: :attr:`url` is the printable one).
    :param op_timeout: bound on any one command, seconds.
    :param recheck_s: after a failure, seconds during which Redis is not tried again.
    :param cluster: connect to a Redis Cluster.
    :param client: an existing ``redis.asyncio`` client (then no lean connection).
    """

    def __init__(self, url: str, *, op_timeout: float, recheck_s: float, cluster: bool,
                 client: Any) -> None:
        self._redact = Redactor(url)
        self.url = self._redact.url  # printable; the real URL only reaches the clients
        self.op_timeout = float(op_timeout)
        self.recheck_s = float(recheck_s)
        self.cluster = bool(cluster)
        self.policy = "fail_closed"  # (set by the backend; named in the logs)
        self._initialized = False
        self._down_until = -math.inf
        self._library = Library()
        self._counts: dict[str, int] = {"round_trips": 0, "unavailable": 0}
        try:
            self.client: Any = client if client is not None else self._connect(url, op_timeout)
            self._blocking: Any = self._connect(url, None) if client is None else client
        except (ValueError, RedisError) as exc:
            raise ConfigError(f"invalid Redis URL {self.url!r}: {self._redact(exc)}") from None
        # the hot path on a lean pipelined connection; redis-py for Cluster and a given client
        self._conn: Connection | None = None
        self._scripts: dict[str, Callable[..., Any]] = {}
        if client is None and not self.cluster:
            conn = self._conn = Connection(url, connect_timeout=self.op_timeout,
                                           op_timeout=self.op_timeout,
                                           setup=self._library.setup)
            for entry in ENTRIES:
                self._scripts[entry] = functools.partial(self._lean_call, conn, entry)
        else:
            for entry in ENTRIES:
                self._scripts[entry] = self.client.register_script(self._library.source(entry))

    def _connect(self, url: str, timeout: float | None) -> Any:
        options: dict[str, Any] = {"socket_timeout": timeout, "retry": Retry(NoBackoff(), 0),
                                   "socket_connect_timeout": self.op_timeout,
                                   "decode_responses": False}
        if self.cluster:
            return RedisCluster.from_url(url, **options)
        return aioredis.from_url(url, **options)

    async def _lean_call(self, conn: Connection, entry: str, *, keys: Sequence[Any],
                         args: Sequence[Any]) -> Any:
        await conn.connect()
        return await conn.send(self._library.call(entry, keys, args))

    def describe(self, exc: BaseException) -> str:
        """``"Type: message"`` of an exception, with every secret of the URL hidden."""
        return self._redact(f"{type(exc).__name__}: {exc}")

    @property
    def available(self) -> bool:
        """``False`` while the backend is in its ``recheck_s`` pause after a failure."""
        return time.monotonic() >= self._down_until

    def _check(self, force: bool) -> None:
        if not force and not self.available:
            raise BackendUnavailable(f"Redis at {self.url} is unavailable (retrying in "
                                     f"{self._down_until - time.monotonic():.2f} s)",
                                     limiter="redis", retry_after=self.recheck_s)
        self._counts["round_trips"] += 1

    def _failed(self) -> None:
        """Called on every failure (the backend marks its state to restore)."""

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background (closed if there is no running loop)."""
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(coro)
            return
        coro.close()

    def _unavailable(self, exc: BaseException, *, sent: bool) -> BackendUnavailable:
        """Count, log and translate one Redis failure (``sent``: the request may have run)."""
        self._counts["unavailable"] += 1
        was_up = self.available  # warn once per outage; the retries within it at DEBUG
        self._down_until = time.monotonic() + self.recheck_s
        self._failed()
        text = self.describe(exc)
        if not isinstance(exc, ResponseError) or "NOSCRIPT" in text or "not found" in text:
            # every connection is suspect (a restart breaks them all; a flushed library
            # is loaded again on a new one): drop them, the next attempt starts afresh
            if self._conn is not None:
                self._conn.close()
            self._spawn(self._drop_idle())
        _log.log(logging.WARNING if was_up else logging.DEBUG,
                 "Redis at %s unavailable (%s; policy %s)", self.url, text, self.policy)
        error = BackendUnavailable(f"Redis at {self.url} is unavailable: {text}",
                                   limiter="redis", retry_after=self.recheck_s)
        # a refused connection sent nothing; anything else may have reached the server
        error.sent = sent and not (isinstance(exc, RedisConnectionError)
                                   and "connecting" in str(exc))
        # (not chained by the callers: a client library's message could quote the URL;
        # `text` is the redacted account of the cause)
        return error

    async def _drop_idle(self) -> None:
        with contextlib.suppress(Exception):  # idle ones: in-flight calls go on
            await self.client.connection_pool.disconnect(inuse_connections=False)

    async def _run(self, entry: str, keys: Sequence[Any], args: Sequence[Any], *,
                   force: bool = False) -> Any:
        """Run one entry point, translating every Redis failure into
        :class:`BackendUnavailable`. ``force``: try even during the ``recheck_s`` pause
        (releases and cancels: a permit given back late beats one left to its TTL)."""
        self._check(force)
        try:
            if self.cluster and not self._initialized:  # the slot map, once (a few commands)
                async with asyncio.timeout(max(5.0, self.op_timeout)):
                    await self.client.initialize()
                self._initialized = True
            async with asyncio.timeout(self.op_timeout):
                return await self._scripts[entry](keys=list(keys), args=list(args))
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc, sent=True) from None

    async def ping(self) -> bool:
        """Whether Redis answers now (bounded by ``op_timeout``)."""
        try:
            async with asyncio.timeout(self.op_timeout):
                return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False
