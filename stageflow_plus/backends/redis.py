"""Global limits in Redis: one wait queue for every process sharing a prefix.

:class:`RedisBackend` holds the connection, the Lua scripts (:file:`lua/`) and the policy
for when Redis is unreachable. Its waiting primitive, :meth:`RedisBackend.acquire`, has the
contract of the in-process :meth:`~stageflow_plus.primitives.limiter.Limiter.acquire`, for
every process at once:

* **all or nothing** — concurrency pools (a lease per call in a ZSET, TTL + heartbeat),
  GCRA buckets (requests *and* tokens) and provider pauses are taken in one script or not
  at all; no call holds a permit while it waits for another;
* **one global order** — a call that cannot go at once joins the queue in Redis, ordered
  by priority with aging and weighted fair share across tenants (start-time fair queuing),
  the same policy as :class:`~stageflow_plus.primitives.ordering.PriorityFairOrdering`;
* **pushed wake-ups** — whoever frees capacity runs the dispatch pass in the same script,
  which pushes each grant to the waiter's process (:mod:`.wakeups`); no poll loop;
* **cancellation-safe** — a waiter cancelled or timed out leaves the queue, or gives back a
  grant that raced it, atomically (:file:`lua/cancel.lua`); a crashed process's leases and
  queued calls lapse after ``ttl``.

Time is the server's (``TIME``). An uncontended acquire is one round trip, so is a release.
Redis errors are translated at one boundary (:meth:`RedisBackend._run`) into
:class:`BackendUnavailable`; the policy (``fail_closed``, ``fail_open``, ``degrade``) is
applied by the caller, :class:`~stageflow_plus.backends.limits.RedisLimits`. Every text
naming the URL goes through :mod:`.redact`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from ..primitives.clock import Clock
from ..primitives.errors import ConfigError, DeadlineUnmeetable, WaitTimeout
from ..primitives.rate import Rate
from ..primitives.stats import WaitRecorder
from .base import BackendUnavailable
from .degrade import LocalShare
from .heartbeat import Heartbeat
from .lease import RedisLease
from .options import Policy, check_options, check_order, check_query
from .records import GlobalBucket, GlobalPool, Grant, RedisStatistics
from .redact import Redactor
from .resp import FastConnection, FastScript
from .wakeups import DispatchTimer, Mailbox

if TYPE_CHECKING:  # (types only: this module imports no interceptor)
    from ..interceptors.call import ToolCall, ToolCallInterceptor

__all__ = ["GlobalBucket", "GlobalPool", "Grant", "RedisBackend", "RedisLease",
           "RedisStatistics"]

_log = logging.getLogger("stageflow_plus.redis")


def _script(name: str, *, queue: bool = True) -> str:
    folder = resources.files(__package__).joinpath("lua")
    body = folder.joinpath(name).read_text(encoding="utf-8")
    return folder.joinpath("prelude.lua").read_text(encoding="utf-8") + body if queue else body


def _ms(value: Any) -> float | None:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return float(text) if text else None


class RedisBackend:
    """A connection to Redis plus the scripts and policy of global limits.

    :param url: ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``,
        ``unix://``); never shown unredacted.
    :param prefix: key prefix; processes sharing limits use the same one (keys are
        hash-tagged ``{prefix}``: one Redis Cluster slot).
    :param ttl: seconds a lease or a queued call lives without its process's heartbeat.
    :param on_unavailable: ``"fail_closed"`` (refuse), ``"fail_open"`` (no global limits) or
        ``"degrade"`` (this process's share of each limit, see :mod:`.degrade`).
    :param op_timeout: bound on any one Redis command, seconds (default ``min(0.5, ttl/4)``;
        must stay below ``ttl/3``, the heartbeat's period).
    :param recheck_s: after a failure, seconds during which Redis is not tried again.
    :param max_pause: the longest provider pause (``Retry-After``) shared through Redis;
        longer ones are shortened to it and logged.
    :param aging_interval: seconds of waiting worth one priority level in the global queue
        (``None``: strict priorities); every process of a prefix must use the same value.
    :param weights: tenant → fair-share weight (default 1), the same in every process.
    :param cluster: connect to a Redis Cluster (the URL names any node).
    :param client: an existing ``redis.asyncio`` client (the URL is then only a label).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "sfp",
                 ttl: float = 10.0, on_unavailable: Policy = "fail_closed",
                 op_timeout: float | None = None, recheck_s: float = 0.25,
                 max_pause: float = 60.0, aging_interval: float | None = 1.0,
                 weights: dict[str, float] | None = None, cluster: bool = False,
                 client: Any = None) -> None:
        self._redact = Redactor(url)
        if op_timeout is None:  # 0.5 s, and below ttl/4: a heartbeat must land before expiry
            op_timeout = min(0.5, ttl / 4) if isinstance(ttl, (int, float)) else 0.5
        check_options(ttl=ttl, on_unavailable=on_unavailable, op_timeout=op_timeout,
                      recheck_s=recheck_s, max_pause=max_pause, prefix=prefix)
        check_order(aging_interval, weights)
        if client is None:
            check_query(url, self._redact.url)
        self.weights = dict(weights or {})
        self.url = self._redact.url  # printable; the real URL only reaches the client
        self.prefix = f"{{{prefix}}}:"
        self.ttl = float(ttl)
        self.policy: Policy = on_unavailable
        self.op_timeout = float(op_timeout)
        self.recheck_s = float(recheck_s)
        self.max_pause = float(max_pause)
        self.aging_ms = "" if aging_interval is None else repr(float(aging_interval) * 1000)
        self.cluster = bool(cluster)
        self._initialized = False
        try:
            self.client: Any = client if client is not None else self._connect(url, op_timeout)
            blocking = self._connect(url, None) if client is None else client
        except (ValueError, RedisError) as exc:
            raise ConfigError(f"invalid Redis URL {self.url!r}: {self._redact(exc)}") from None
        # the hot path (every script) on a lean pipelined connection; redis-py for the
        # rest (blocking reads, Cluster, a client given by the caller)
        self._fast = FastConnection(url, connect_timeout=self.op_timeout) if (
            client is None and not self.cluster) else None
        sources = {name: _script(f"{name}.lua") for name in
                   ("acquire", "release", "cancel", "tick", "extend", "restore")}
        sources["pause"] = _script("pause.lua", queue=False)
        fast = self._fast
        self._scripts: dict[str, Any] = {
            name: FastScript(fast, source) if fast is not None
            else self.client.register_script(source) for name, source in sources.items()}
        self._proc = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._queue_key = f"{self.prefix}q:wait"
        self.mailbox = Mailbox(blocking, f"{self.prefix}wake:{self._proc}",
                               poll_s=1.0 if client is None else self.op_timeout / 2,
                               stall_s=max(0.5, 2 * self.op_timeout), describe=self.describe,
                               reachable=self._reachable)
        self._timer = DispatchTimer(self._tick, lambda: bool(self.mailbox.waiters), self._proc)
        self._held: dict[str, RedisLease] = {}
        self._degraded: dict[str, RedisLease] = {}  # admitted on the local share, running
        self._restore_due = False
        self._heartbeat = Heartbeat(self)
        self._background: set[asyncio.Task[Any]] = set()
        self._down_until = -math.inf
        self.share = LocalShare(aging_ms=None if aging_interval is None
                                else float(aging_interval) * 1000, weights=self.weights)
        self._latency = WaitRecorder()
        self._counts = dict.fromkeys(
            ("acquired", "refused", "round_trips", "unavailable", "failed_open",
             "failed_closed", "degraded", "lost_leases", "capped_pauses"), 0)

    def _connect(self, url: str, timeout: float | None) -> Any:
        options: dict[str, Any] = {"socket_timeout": timeout, "retry": Retry(NoBackoff(), 0),
                                   "socket_connect_timeout": self.op_timeout,
                                   "decode_responses": False}
        if self.cluster:
            return RedisCluster.from_url(url, **options)
        return aioredis.from_url(url, **options)

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

    def describe(self, exc: BaseException) -> str:
        """``"Type: message"`` of an exception, with every secret of the URL hidden."""
        return self._redact(f"{type(exc).__name__}: {exc}")

    # -- the one boundary where Redis errors are translated ---------------------------
    @property
    def available(self) -> bool:
        """``False`` while the backend is in its ``recheck_s`` pause after a failure."""
        return time.monotonic() >= self._down_until

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any], *,
                   force: bool = False) -> Any:
        """Run one script, translating every Redis failure into :class:`BackendUnavailable`.

        ``force``: try even during the ``recheck_s`` pause (releases: a permit given back
        late is better than one stranded until its TTL)."""
        if not force and not self.available:
            raise BackendUnavailable(f"Redis at {self.url} is unavailable (retrying in "
                                     f"{self._down_until - time.monotonic():.2f} s)",
                                     limiter="redis", retry_after=self.recheck_s)
        self._counts["round_trips"] += 1
        try:
            if self.cluster and not self._initialized:  # the slot map, once (a few commands)
                async with asyncio.timeout(max(5.0, self.op_timeout)):
                    await self.client.initialize()
                self._initialized = True
            async with asyncio.timeout(self.op_timeout):
                return await self._scripts[script](keys=list(keys), args=list(args))
        except (RedisError, OSError, TimeoutError) as exc:
            self._counts["unavailable"] += 1
            was_up = self.available  # warn once per outage; the retries within it at DEBUG
            self._down_until = time.monotonic() + self.recheck_s
            self._restore_due = True
            if not isinstance(exc, ResponseError):
                # every pooled connection is suspect (a restart breaks them all): drop them
                # at once, so the next attempt after recheck_s starts on fresh ones
                if self._fast is not None:
                    self._fast.close()
                with contextlib.suppress(Exception):  # idle ones: in-flight calls go on
                    await self.client.connection_pool.disconnect(inuse_connections=False)
            text = self.describe(exc)
            _log.log(logging.WARNING if was_up else logging.DEBUG,
                     "Redis at %s unavailable (%s; policy %s)", self.url, text, self.policy)
            error = BackendUnavailable(f"Redis at {self.url} is unavailable: {text}",
                                       limiter="redis", retry_after=self.recheck_s)
            # a refused connection sent nothing; anything else may have reached the server
            error.sent = not (isinstance(exc, RedisConnectionError) and "connecting" in str(exc))
            # (not chained: a client library's message could quote the URL; `text` is the
            # redacted account of the cause)
            raise error from None

    def _queue_args(self, *rest: Any) -> list[Any]:
        return [self.prefix, self.aging_ms, *rest]

    # -- acquiring ---------------------------------------------------------------------
    def _waiter(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
                pauses: Sequence[str], priority: int) -> list[Any]:
        out: list[Any] = [self._proc, int(priority), len(pools), len(buckets), len(pauses)]
        for p in pools:
            out += [self.pool_key(p.key), p.limit]
        for b in buckets:
            interval = b.interval_ms
            out += [self.bucket_key(b.key), repr(interval), repr(b.burst * interval),
                    repr(b.amount)]
        out += [self.pause_key(name) for name in pauses]
        return out

    def _weighted(self, tenant: str, cost: float) -> float:
        return cost / self.weights.get(tenant, 1.0)

    async def try_acquire(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
                          pauses: Sequence[str] = ()) -> tuple[Grant, RedisLease | None]:
        """One round trip that grants at once or refuses; never queues.

        Refuses (``reason="queued"``) while anyone waits in the global queue: nobody barges.

        :raises BackendUnavailable: Redis could not be reached (the caller applies the policy).
        """
        member = f"{self._proc}:{next(self._ids)}"
        reply = await self._send_acquire(member, "try", pools, buckets, pauses, 0, "", 1.0, None)
        status, wait = int(reply[0]), _ms(reply[1])
        if status == 1:
            return Grant(True, 0.0, "", ""), self._granted(member, pools, buckets, reply, 0.0)
        self._counts["refused"] += 1
        return Grant(False, (wait or 0.0) / 1000, _text(reply[2]), _text(reply[3])), None

    async def _send_acquire(self, member: str, mode: str, pools: Sequence[GlobalPool],
                            buckets: Sequence[GlobalBucket], pauses: Sequence[str],
                            priority: int, tenant: str, cost: float,
                            left: float | None) -> Any:
        if self._restore_due and self.available:
            await self._restore()
        args = self._queue_args(
            member, mode, round(self.ttl * 1000), tenant, repr(self._weighted(tenant, cost)),
            "" if left is None else repr(left * 1000),
            *self._waiter(pools, buckets, pauses, priority))
        started = time.perf_counter()
        try:
            reply = await self._run("acquire", [self._queue_key], args)
        except BackendUnavailable as exc:
            if pools and exc.sent:
                # sent, maybe run: a permit nobody owns is given back as soon as Redis
                # answers again (else its TTL does)
                self._cancel_later(member, [self.pool_key(p.key) for p in pools])
            raise
        self._latency.add(time.perf_counter() - started)
        return reply

    def _granted(self, member: str, pools: Sequence[GlobalPool],
                 buckets: Sequence[GlobalBucket], reply: Any, waited: float) -> RedisLease:
        self._counts["acquired"] += 1
        granted_at = (_ms(reply[4]) or 0.0) / 1000
        lease = RedisLease(self, member, [self.pool_key(p.key) for p in pools], buckets,
                           granted_at=granted_at, waited=waited)
        if pools:
            self._held[member] = lease
        self._heartbeat.ensure()
        return lease

    async def acquire(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
                      pauses: Sequence[str] = (), *, priority: int = 0, tenant: str = "",
                      cost: float = 1.0, timeout: float | None = None) -> RedisLease:
        """Wait in the global queue until every permit can be taken together, then take all.

        :param priority: higher is more urgent (aged by ``aging_interval``).
        :param tenant: the fair-share owner; ``cost`` is charged to it (weighted).
        :param timeout: seconds the call may wait (``None``: no bound).
        :raises DeadlineUnmeetable: the known wait (rate, pause) exceeds ``timeout``.
        :raises WaitTimeout: still waiting when ``timeout`` ran out.
        :raises BackendUnavailable: Redis could not be reached (the caller applies the policy).

        Cancellation: a call cancelled while waiting leaves the queue; if a grant raced the
        cancellation, its permits are given back (one atomic script, sent in the background).
        """
        member = f"{self._proc}:{next(self._ids)}"
        future = self.mailbox.expect(member)
        started = time.monotonic()
        pool_keys = [self.pool_key(p.key) for p in pools]
        try:
            reply = await self._send_acquire(member, "wait", pools, buckets, pauses, priority,
                                             tenant, cost, timeout)
        except asyncio.CancelledError:
            self._abandon(member, pool_keys)  # the script may have queued or granted it
            raise
        except BaseException:
            self.mailbox.forget(member)
            raise
        status = int(reply[0])
        if status == 1:
            self.mailbox.forget(member)
            return self._granted(member, pools, buckets, reply, 0.0)
        if status != 2:
            self.mailbox.forget(member)
            self._counts["refused"] += 1
            wait = (_ms(reply[1]) or 0.0) / 1000
            raise DeadlineUnmeetable(
                f"redis: {_text(reply[2])} on {_text(reply[3])!r} needs {wait:.3f} s, more "
                f"than the {max(0.0, timeout or 0.0):.3f} s the call may wait",
                key=_text(reply[3]), limiter="redis", retry_after=wait or None)
        self.mailbox.listen()
        self._timer.schedule(_ms(reply[5]), _ms(reply[4]) or 0.0, _text(reply[6]))
        self._heartbeat.ensure()
        try:
            async with asyncio.timeout(timeout):
                at_ms = await future
        except TimeoutError:
            if future.done() and not future.cancelled() and future.exception() is None:
                return self._granted(member, pools, buckets, [0, 0, 0, 0, future.result()],
                                     time.monotonic() - started)
            self._abandon(member, pool_keys)
            raise WaitTimeout(f"redis: still waiting in the global queue ({_text(reply[2])} on "
                              f"{_text(reply[3])!r}) after {timeout:.3f} s", key=_text(reply[3]),
                              limiter="redis") from None
        except BaseException:
            self._abandon(member, pool_keys)  # cancelled, or Redis lost (the policy decides)
            raise
        return self._granted(member, pools, buckets, [0, 0, 0, 0, at_ms],
                             time.monotonic() - started)

    def _abandon(self, member: str, pool_keys: Sequence[str]) -> None:
        self.mailbox.forget(member)
        self._cancel_later(member, pool_keys)

    def _cancel_later(self, member: str, pool_keys: Sequence[str]) -> None:
        async def cancel() -> None:
            for attempt in range(2):
                try:
                    reply = await self._run("cancel", [self._queue_key, *pool_keys],
                                            self._queue_args(member), force=True)
                    self._timer.schedule(_ms(reply[1]), _ms(reply[2]) or 0.0, _text(reply[3]))
                    return
                except BackendUnavailable:
                    if attempt == 0:
                        await asyncio.sleep(self.recheck_s)
            # still unreachable: the queued entry and any raced grant lapse after the TTL

        self._spawn(cancel())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reachable(self) -> bool:
        """Whether Redis answers now (one heartbeat: it also wakes waiters granted while
        their mailbox message was lost)."""
        await self._heartbeat.beat()
        return self.available

    async def _tick(self) -> tuple[float | None, float, str]:
        reply = await self._run("tick", [self._queue_key], self._queue_args())
        return _ms(reply[0]), _ms(reply[1]) or 0.0, _text(reply[2])

    # -- the policies ------------------------------------------------------------------
    def degraded_lease(self) -> RedisLease:
        """A lease standing for "no global permits" (``fail_open``); counts it."""
        self._counts["failed_open"] += 1
        return RedisLease(self, "", (), (), degraded=True)

    async def acquire_share(self, pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
                            *, priority: int, tenant: str, cost: float,
                            timeout: float | None, info: Any = None) -> RedisLease:
        """Wait for this process's share of the limits (``degrade``), in memory."""
        self.share.begin({m: lease.pools for m, lease in self._held.items()})
        demands = self.share.demands([(self.pool_key(p.key), p) for p in pools],
                                     [(self.bucket_key(b.key), b) for b in buckets])
        local = await self.share.acquire(demands, priority=priority, tenant=tenant, cost=cost,
                                         timeout=timeout, info=info)
        self._counts["degraded"] += 1
        member = f"{self._proc}:{next(self._ids)}"
        lease = RedisLease(self, member, [self.pool_key(p.key) for p in pools], (),
                           degraded=True, local=local)
        if pools:
            self._degraded[member] = lease
        return lease

    async def _restore(self) -> None:
        """Redis answers again: (re)lease what this process still runs — leases from before
        the outage (gone if the server restarted) and calls admitted on its local share —
        before anything new is granted. One round trip; raises BackendUnavailable."""
        leases = [*self._held.values(), *self._degraded.values()]
        keys = [k for lease in leases for k in lease.pools]
        members = [lease.member for lease in leases for _ in lease.pools]
        if keys:
            await self._run("restore", [self._queue_key, *keys],
                            self._queue_args(round(self.ttl * 1000), *members))
        for lease in leases:
            if lease.member in self._degraded:
                self._held[lease.member] = lease  # counted in Redis now: released there too
            elif lease.member not in self._held:  # ended during the round trip: take it out
                self._cancel_later(lease.member, lease.pools)
        self._degraded.clear()
        self._restore_due = False

    def count_failed_closed(self) -> None:
        """Count a call refused because Redis was unavailable (``fail_closed``)."""
        self._counts["failed_closed"] += 1

    # -- releasing ---------------------------------------------------------------------
    async def _release(self, lease: RedisLease, actual: dict[str, float]) -> None:
        self._held.pop(lease.member, None)
        self.share.lease_ended(lease.member)
        deltas: list[str] = []
        for b in lease.buckets:
            value = actual.get(b.dimension)
            delta = 0.0 if value is None else float(value) - b.amount
            deltas += [repr(b.interval_ms), repr(delta)]
        if not lease.pools and not any(float(d) for d in deltas[1::2]):
            return  # nothing to give back: no round trip
        keys = [self._queue_key, *lease.pools, *(self.bucket_key(b.key) for b in lease.buckets)]
        args = self._queue_args(lease.member, len(lease.pools), len(lease.buckets), *deltas)
        try:
            reply = await self._run("release", keys, args, force=True)
        except BackendUnavailable:
            if lease.pools:  # try once more after recheck_s; the TTL is the last resort
                self._cancel_later(lease.member, lease.pools)
            return
        self._timer.schedule(_ms(reply[1]), _ms(reply[2]) or 0.0, _text(reply[3]))

    async def pause(self, name: str, seconds: float) -> float:
        """Pause ``name`` for every process for ``seconds`` (keeps the later pause).

        A pause above ``max_pause`` (``inf`` included) is shortened to it (and logged).
        Returns the pause left in seconds.

        :raises ValueError: ``seconds`` is not a number >= 0 (``nan``, negative, a string).
        :raises BackendUnavailable: Redis is unreachable.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            seconds >= 0
        ):
            raise ValueError(f"pause seconds must be a number >= 0, got {seconds!r}")
        if seconds > self.max_pause:  # (inf included)
            self._counts["capped_pauses"] += 1
            _log.warning("provider pause of %r shortened from %.3f s to max_pause %.3f s",
                         name, seconds, self.max_pause)
            seconds = self.max_pause
        ms = max(1, math.ceil(seconds * 1000))
        left = await self._run("pause", [self.pause_key(name)], [ms])
        return int(left) / 1000.0

    def configure_queue(self, *, aging_interval: float | None = 1.0,
                        weights: dict[str, float] | None = None) -> None:
        """Set the global queue's order (``[stageflow_plus.priority]`` of the config): the
        aging interval and tenant weights, the same in every process of the prefix."""
        check_order(aging_interval, weights)
        self.aging_ms = "" if aging_interval is None else repr(float(aging_interval) * 1000)
        self.weights = dict(weights or {})
        self.share = LocalShare(aging_ms=None if aging_interval is None
                                else float(aging_interval) * 1000, weights=self.weights)

    def limits(self, *, concurrency: int | None = None,
               per_tool: int | Mapping[str, int] | None = None,
               per_tenant: int | Mapping[str, int] | None = None, per_run: int | None = None,
               rates: Rate | Sequence[Rate] = (),
               rate_key: str | Callable[[ToolCall], str] = "global", fair_cost: str = "calls",
               clock: Clock | Callable[[], float] | None = None) -> list[ToolCallInterceptor]:
        """The chain steps for these limits held in Redis: see
        :func:`~stageflow_plus.backends.limits.redis_limits`."""
        from .limits import redis_limits  # (the interceptor adapter imports this module)

        return redis_limits(self, concurrency=concurrency, per_tool=per_tool,
                            per_tenant=per_tenant, per_run=per_run, rates=rates,
                            rate_key=rate_key, fair_cost=fair_cost, clock=clock)

    # -- life --------------------------------------------------------------------------
    async def ping(self) -> bool:
        """Whether Redis answers now (bounded by ``op_timeout``)."""
        try:
            async with asyncio.timeout(self.op_timeout):
                return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def aclose(self) -> None:
        """Stop the heartbeat, the mailbox and the timer, close the connections (held
        leases then expire by TTL)."""
        await self._heartbeat.stop()
        self._timer.cancel()
        await self.mailbox.aclose()
        for pending in list(self._background):
            pending.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._fast is not None:
            self._fast.close()
        await self.client.aclose()
        blocking = self.mailbox._client
        if blocking is not self.client:
            await blocking.aclose()

    def statistics(self) -> RedisStatistics:
        """A frozen snapshot of this process's counters."""
        c = self._counts
        return RedisStatistics(
            url=self.url, policy=self.policy, held=len(self._held),
            queued=len(self.mailbox.waiters), acquired=c["acquired"], refused=c["refused"],
            round_trips=c["round_trips"], unavailable=c["unavailable"],
            failed_open=c["failed_open"], failed_closed=c["failed_closed"],
            degraded=c["degraded"], lost_leases=c["lost_leases"], woken=self.mailbox.woken,
            capped_pauses=c["capped_pauses"], live_processes=self.share.live,
            acquire_latency=self._latency.percentiles(),
        )

    def __repr__(self) -> str:
        return (f"<RedisBackend {self.url} prefix={self.prefix!r} ttl={self.ttl:g}s "
                f"{self.policy}, {len(self._held)} held, {len(self.mailbox.waiters)} queued>")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
