"""Global permits in Redis: the same limits across processes.

Shape: a *local waiting room over global permits*. Each process keeps its in-memory
:class:`~stageflow_plus.interceptors.gate.AdmissionGate` (priority/fair ordering,
cancellation safety, queue bounds). Right after it in the
:class:`~stageflow_plus.interceptors.chain.ToolCallChain` stands
:class:`~stageflow_plus.backends.limits.RedisLimits`, which takes the call's *global*
permits from Redis with one Lua script (:file:`lua/acquire.lua`), atomically and all or
nothing:

* **concurrency** — a lease per call in a ZSET scored by its expiry (``now + ttl``); a
  heartbeat task extends held leases every ``ttl / 3``; the script purges expired leases
  itself, so the permits of a crashed (SIGKILLed) process come back within ``ttl``;
* **rates** — GCRA per bucket (one key holding the theoretical arrival time), several
  buckets per call (requests *and* tokens), all or nothing; burst = the bucket's tolerance;
* **provider pauses** — a key alive while a provider's ``Retry-After`` lasts, set by
  :meth:`RedisBackend.pause`, seen by every process.

Time comes from ``redis.call('TIME')``, never from a client clock. The script answers
"granted" or "wait *w* for *reason*"; the client sleeps (bounded by the call's deadline) and
tries again. The common case is **one round trip** (``EVALSHA``; redis-py reloads a script
flushed by a restart). Release is one round trip too, reconciling the actual token cost
(charge or refund) in the same script.

When Redis cannot be reached the backend applies its policy: ``"fail_open"`` (the call
proceeds with only the local limits — the local gate is the fallback limiter) or
``"fail_closed"`` (:class:`BackendUnavailable`). Either way a WARNING (logger
``stageflow_plus.redis``, ``limiter_event="redis_limits.unavailable"``) is logged and
counted in :meth:`RedisBackend.statistics`;
after a failure the backend does not try Redis again for ``recheck_s`` (no call waits on
a dead server). Every Redis command is bounded by ``op_timeout``.

Priority across processes: each process orders its own waiters; between processes the
global permits go to whoever asks first after they free up (polling). So priority holds
within a process, only approximately across processes. See :file:`docs/redis.md`.

Keys share the hash tag ``{prefix}`` so one script's keys live in one Redis Cluster slot.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from .._logging import get_logger
from ..interceptors.call import ToolCall, ToolCallInterceptor
from ..interceptors.concurrency import ConcurrencyLimiter
from ..interceptors.rate import TokenBucketRateLimiter
from ..primitives.clock import Clock
from ..primitives.errors import ConfigError
from ..primitives.resources import Rate
from ..primitives.stats import WaitRecorder
from .base import BackendUnavailable
from .records import GlobalBucket, Grant, RedisStatistics

__all__ = ["GlobalBucket", "Grant", "RedisBackend", "RedisLease", "RedisStatistics"]

Policy = Literal["fail_open", "fail_closed"]
_log = get_logger("redis")


def _script(name: str) -> str:
    return resources.files(__package__).joinpath("lua", name).read_text(encoding="utf-8")


class RedisLease:
    """Global permits held by one call; :meth:`release` once (idempotent).

    :ivar member: the lease id in the concurrency ZSETs.
    :ivar pools: the concurrency ZSET keys (with prefix).
    :ivar buckets: the buckets drawn from, with the amounts taken.
    :ivar granted_at: the grant's time on the Redis server's clock (Unix seconds).
    :ivar degraded: ``True`` when Redis was unreachable and the policy let the call proceed
        without global permits.
    """

    __slots__ = ("_backend", "buckets", "degraded", "granted_at", "member", "pools", "released")

    def __init__(
        self,
        backend: RedisBackend,
        member: str,
        pools: Sequence[str],
        buckets: Sequence[GlobalBucket],
        *,
        granted_at: float = 0.0,
        degraded: bool = False,
    ) -> None:
        self._backend = backend
        self.granted_at = granted_at
        self.member = member
        self.pools = tuple(pools)
        self.buckets = tuple(buckets)
        self.degraded = degraded
        self.released = degraded

    async def release(self, actual: dict[str, float] | None = None) -> None:
        """Return the concurrency permits and reconcile token costs (one round trip).

        :param actual: the actual cost per bucket key suffix dimension, e.g.
            ``{"tokens": 812}``; a bucket whose key ends with ``:tokens`` is charged the
            difference to its estimate (refunded when lower).

        Never raises for Redis trouble: a lease that cannot be released expires after the
        TTL. Cancellation during the round trip leaves that to the TTL as well.
        """
        if self.released:
            return
        self.released = True
        await self._backend._release(self, actual or {})


class RedisBackend:
    """A connection to Redis plus the scripts and policy of global limits.

    :param url: ``redis://[:password@]host[:port][/db]`` (or ``rediss://``, ``unix://``).
    :param prefix: key prefix; processes sharing limits must use the same one.
    :param ttl: seconds a concurrency lease lives without a heartbeat (>= 0.1).
    :param on_unavailable: ``"fail_open"`` or ``"fail_closed"``.
    :param op_timeout: bound on any one Redis command, seconds (default ``min(0.5, ttl/4)``;
        must stay below ``ttl/3``, the heartbeat's period).
    :param recheck_s: after a failure, seconds during which Redis is not tried again.
    :param client: an existing ``redis.asyncio.Redis`` (the URL is then only a label).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sfp",
        ttl: float = 10.0,
        on_unavailable: Policy = "fail_closed",
        op_timeout: float | None = None,
        recheck_s: float = 0.25,
        client: aioredis.Redis | None = None,
    ) -> None:
        if op_timeout is None:  # 0.5 s, and below ttl/4: a heartbeat must land before expiry
            op_timeout = min(0.5, ttl / 4) if isinstance(ttl, (int, float)) else 0.5
        if on_unavailable not in ("fail_open", "fail_closed"):
            raise ConfigError(
                f"on_unavailable must be 'fail_open' or 'fail_closed', got {on_unavailable!r}"
            )
        for name, value, low in (("ttl", ttl, 0.1), ("op_timeout", op_timeout, 0.001),
                                 ("recheck_s", recheck_s, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value >= low and math.isfinite(value)
            ):
                raise ConfigError(f"RedisBackend {name} must be a number >= {low}, got {value!r}")
        if op_timeout >= ttl / 3:
            raise ConfigError(
                f"RedisBackend op_timeout ({op_timeout:g} s) must be below ttl/3 "
                f"({ttl / 3:g} s): the heartbeat extends leases every ttl/3"
            )
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(f"RedisBackend prefix must be a non-empty string without braces, "
                              f"got {prefix!r}")
        self.url = url
        self.prefix = f"{{{prefix}}}:"
        self.ttl = float(ttl)
        self.policy: Policy = on_unavailable
        self.op_timeout = float(op_timeout)
        self.recheck_s = float(recheck_s)
        try:
            self.client: aioredis.Redis = client if client is not None else aioredis.from_url(
                url,
                socket_timeout=op_timeout,
                socket_connect_timeout=op_timeout,
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {url!r}: {exc}") from None
        self._acquire = self.client.register_script(_script("acquire.lua"))
        self._release_script = self.client.register_script(_script("release.lua"))
        self._extend = self.client.register_script(_script("extend.lua"))
        self._pause = self.client.register_script(_script("pause.lua"))
        self._token = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._held: dict[str, RedisLease] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._down_until = -math.inf
        self._latency = WaitRecorder()
        self._counts = dict.fromkeys(
            ("acquired", "refused", "round_trips", "unavailable", "failed_open",
             "failed_closed", "lost_leases"), 0)

    # -- keys --------------------------------------------------------------------------
    def pool_key(self, name: str) -> str:
        """The Redis key of the concurrency pool ``name``."""
        return f"{self.prefix}pool:{name}"

    def bucket_key(self, name: str) -> str:
        """The Redis key of the GCRA bucket ``name``."""
        return f"{self.prefix}gcra:{name}"

    def pause_key(self, name: str) -> str:
        """The Redis key of the provider pause of ``name``."""
        return f"{self.prefix}pause:{name}"

    # -- the one boundary where Redis errors are translated ---------------------------
    @property
    def available(self) -> bool:
        """``False`` while the backend is in its ``recheck_s`` pause after a failure."""
        return time.monotonic() >= self._down_until

    async def _run(
        self, script: Any, keys: Sequence[str], args: Sequence[Any], *, force: bool = False
    ) -> Any:
        """Run one script, translating every Redis failure into :class:`BackendUnavailable`.

        ``force``: try even during the ``recheck_s`` pause (releases: a permit given back
        late is better than one stranded until its TTL)."""
        if not force and not self.available:
            raise BackendUnavailable(
                f"Redis at {_safe_url(self.url)} is unavailable (retrying in "
                f"{self._down_until - time.monotonic():.2f} s)", limiter="redis")
        self._counts["round_trips"] += 1
        try:
            async with asyncio.timeout(self.op_timeout):
                return await script(keys=list(keys), args=list(args))
        except (RedisError, OSError, TimeoutError) as exc:
            self._counts["unavailable"] += 1
            self._down_until = time.monotonic() + self.recheck_s
            if not isinstance(exc, ResponseError):
                # every pooled connection is suspect (a restart breaks them all): drop them
                # at once, so the next attempt after recheck_s starts on fresh ones
                with contextlib.suppress(Exception):  # idle ones: in-flight calls go on
                    await self.client.connection_pool.disconnect(inuse_connections=False)
            _log.warning("stageflow-plus: Redis at %s is unavailable (%s: %s); %s for %.1fs",
                         _safe_url(self.url), type(exc).__name__, exc, self.policy,
                         self.recheck_s,
                         extra={"limiter_event": "redis_limits.unavailable",
                                "url": _safe_url(self.url),
                                "policy": self.policy, "error": f"{type(exc).__name__}: {exc}"})
            raise BackendUnavailable(
                f"Redis at {_safe_url(self.url)} is unavailable: {type(exc).__name__}: {exc}",
                limiter="redis",
            ) from exc

    # -- operations --------------------------------------------------------------------
    async def try_acquire(
        self,
        pools: Sequence[tuple[str, int]],
        buckets: Sequence[GlobalBucket],
        pauses: Sequence[str] = (),
    ) -> tuple[Grant, RedisLease | None]:
        """One acquire round trip: all permits or none.

        :param pools: ``(pool name, limit)`` pairs.
        :param buckets: the buckets and amounts.
        :param pauses: names of pause keys to respect.
        :raises BackendUnavailable: Redis could not be reached (the caller applies the policy).
        """
        member = f"{self._token}:{next(self._ids)}"
        pool_keys = [self.pool_key(name) for name, _ in pools]
        keys = pool_keys + [self.bucket_key(b.key) for b in buckets]
        keys += [self.pause_key(p) for p in pauses]
        args: list[Any] = [member, round(self.ttl * 1000), len(pools), len(buckets), len(pauses)]
        args += [limit for _, limit in pools]
        for b in buckets:
            args += [repr(b.interval_ms), repr(b.burst * b.interval_ms), repr(b.amount)]
        started = time.perf_counter()
        try:
            reply = await self._run(self._acquire, keys, args)
        except BackendUnavailable as exc:
            if pool_keys and exc.__cause__ is not None:  # sent: it may have run
                # the script may have run and leased a permit nobody owns: give it back as
                # soon as Redis answers again (else the TTL does)
                self._release_in_background(member, pool_keys)
            raise
        self._latency.add(time.perf_counter() - started)
        granted, wait_us, reason, key = int(reply[0]), int(reply[1]), reply[2], reply[3]
        if not granted:
            self._counts["refused"] += 1
            return Grant(False, wait_us / 1e6, _text(reason), _text(key)), None
        self._counts["acquired"] += 1
        lease = RedisLease(self, member, pool_keys, buckets, granted_at=int(reply[4]) / 1e6)
        if pool_keys:
            self._held[member] = lease
            self._ensure_heartbeat()
        return Grant(True, 0.0, "", ""), lease

    def degraded_lease(self) -> RedisLease:
        """A lease standing for "no global permits" (fail_open); counts it."""
        self._counts["failed_open"] += 1
        return RedisLease(self, "", (), (), degraded=True)

    def count_failed_closed(self) -> None:
        """Count a call refused because Redis was unavailable (fail_closed)."""
        self._counts["failed_closed"] += 1

    async def _release(self, lease: RedisLease, actual: dict[str, float]) -> None:
        self._held.pop(lease.member, None)
        deltas = []
        for b in lease.buckets:
            dimension = b.key.rsplit(":", 1)[-1]
            value = actual.get(dimension)
            delta = 0.0 if value is None else float(value) - b.amount
            deltas += [repr(b.interval_ms), repr(delta)]
        if not lease.pools and not any(float(d) for d in deltas[1::2]):
            return  # nothing to give back: no round trip
        keys = list(lease.pools) + [self.bucket_key(b.key) for b in lease.buckets]
        try:
            await self._run(self._release_script, keys,
                            [lease.member, len(lease.pools), len(lease.buckets), *deltas],
                            force=True)
        except BackendUnavailable:
            if lease.pools:  # try once more after recheck_s; the TTL is the last resort
                self._release_in_background(lease.member, lease.pools)

    def _release_in_background(self, member: str, pools: Sequence[str]) -> None:
        async def retry() -> None:
            await asyncio.sleep(self.recheck_s)
            with contextlib.suppress(BackendUnavailable):
                await self._run(self._release_script, list(pools),
                                [member, len(pools), 0], force=True)

        task = asyncio.get_running_loop().create_task(retry())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def pause(self, name: str, seconds: float) -> float:
        """Pause ``name`` for every process for ``seconds`` (keeps the later pause).

        Returns the pause left in seconds. Raises :class:`BackendUnavailable` when Redis is
        unreachable.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            seconds >= 0 and math.isfinite(seconds)
        ):
            raise ValueError(f"pause seconds must be a finite number >= 0, got {seconds!r}")
        ms = max(1, math.ceil(seconds * 1000))
        left = await self._run(self._pause, [self.pause_key(name)], [ms])
        return int(left) / 1000.0

    # -- heartbeat ---------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        task = self._heartbeat
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beat(), name="stageflow_plus.redis.heartbeat")

    async def _beat(self) -> None:
        while self._held:
            await asyncio.sleep(self.ttl / 3)
            held = list(self._held.values())
            keys = [k for lease in held for k in lease.pools]
            members = [lease.member for lease in held for _ in lease.pools]
            if not keys:
                continue
            try:
                lost = await self._run(self._extend, keys, [round(self.ttl * 1000), *members])
            except BackendUnavailable:
                continue
            for index in lost:
                member = members[int(index) - 1]
                if self._held.pop(member, None) is not None:  # counted once, not re-extended
                    self._counts["lost_leases"] += 1
                    _log.warning("stageflow-plus: Redis lease %s on %s was lost (expired)",
                                 member, _text(keys[int(index) - 1]),
                                 extra={"limiter_event": "redis_limits.lease_lost",
                                        "key": _text(keys[int(index) - 1]), "member": member})

    def limits(
        self,
        *,
        concurrency: int | None = None,
        per_tool: int | Mapping[str, int] | None = None,
        per_tenant: int | Mapping[str, int] | None = None,
        per_run: int | None = None,
        rates: Rate | Sequence[Rate] = (),
        rate_key: str | Callable[[ToolCall], str] = "global",
        clock: Clock | Callable[[], float] | None = None,
    ) -> list[ToolCallInterceptor]:
        """This process's waiting room, then the global limits in Redis.

        The waiting room: a local :class:`TokenBucketRateLimiter` with the same rates (given
        rates; at the global rate it never holds a process below its share, it orders and
        bounds the waiting) and a local :class:`ConcurrencyLimiter` capped like the global
        limit (``per_run`` stays local: a run lives in one process). Then
        :class:`~stageflow_plus.backends.limits.RedisLimits` on ``clock`` (the chain's).
        """
        from .limits import RedisLimits

        local: list[ToolCallInterceptor] = []
        if isinstance(rates, Rate) or rates:
            local.append(TokenBucketRateLimiter(rates, key=rate_key))
        local.append(ConcurrencyLimiter(concurrency, per_tool=per_tool, per_tenant=per_tenant,
                                        per_run=per_run))
        return [
            *local,
            RedisLimits(self, concurrency=concurrency, per_tool=per_tool, per_tenant=per_tenant,
                        rates=rates, rate_key=rate_key, clock=clock),
        ]

    # -- life --------------------------------------------------------------------------
    async def ping(self) -> bool:
        """Whether Redis answers now (bounded by ``op_timeout``)."""
        try:
            async with asyncio.timeout(self.op_timeout):
                return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        """Stop the heartbeat and close the connection pool (held leases then expire)."""
        if self._heartbeat is not None:
            task, self._heartbeat = self._heartbeat, None
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                await asyncio.gather(task, return_exceptions=True)
        for pending in list(self._background):
            pending.cancel()
        await self.client.aclose()

    def statistics(self) -> RedisStatistics:
        """A frozen snapshot of this process's counters."""
        c = self._counts
        return RedisStatistics(
            url=_safe_url(self.url), policy=self.policy, held=len(self._held),
            acquired=c["acquired"], refused=c["refused"], round_trips=c["round_trips"],
            unavailable=c["unavailable"], failed_open=c["failed_open"],
            failed_closed=c["failed_closed"], lost_leases=c["lost_leases"],
            acquire_latency=self._latency.percentiles(),
        )

    def __repr__(self) -> str:
        return (f"<RedisBackend {_safe_url(self.url)} prefix={self.prefix!r} ttl={self.ttl:g}s "
                f"{self.policy}, {len(self._held)} held>")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
