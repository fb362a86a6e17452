"""The Lua library of the Redis backend, and how its entry points are called.

All server-side logic lives in one file, :file:`lua/library.lua`. It is loaded once per
server as a Redis 7 ``FUNCTION`` library and called with ``FCALL`` — the library's
functions are compiled once, not re-created on every call as an ``EVAL`` script's would
be. Where that is not possible the same source runs as one ``EVAL`` script per entry
point (:func:`eval_source`): on Redis 6.x (no ``FUNCTION``), when the user may not load
functions (ACL), in a Redis Cluster and with a client given by the caller (both use
redis-py's script objects). The library's name carries a digest of its source, so two
versions of the package sharing a server never call each other's code.

A :class:`Plan` is what every call of one shape needs — the same pools, buckets and pauses
from one process — serialised once into one argument (the server parses it once and
keeps it) and pre-encoded into the first bytes of every command of that shape.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from redis.exceptions import ResponseError

from .records import GlobalBucket, GlobalPool
from .resp import encode, encode_items

__all__ = ["ENTRIES", "LIBRARY_NAME", "Library", "Plan", "eval_source", "library_source"]

ENTRIES = ("acquire", "release", "cancel", "tick", "extend", "restore", "pause")
"""The library's entry points."""


def _raw() -> str:
    return resources.files(__package__).joinpath("lua", "library.lua").read_text("utf-8")


LIBRARY_NAME = "sfp_" + hashlib.sha1(_raw().encode()).hexdigest()[:12]
"""The library's name on the server: ``sfp_`` and a digest of its source."""


def library_source() -> str:
    """The library as ``FUNCTION LOAD`` takes it."""
    return _raw().replace("@LIB@", LIBRARY_NAME)


def eval_source(entry: str) -> str:
    """The library as an ``EVAL`` script that runs ``entry`` (Redis 6.x, Cluster)."""
    if entry not in ENTRIES:
        raise ValueError(f"unknown entry point {entry!r}")
    lines = [line for line in library_source().splitlines()
             if not line.startswith(("#!", "redis.register_function("))]
    return "\n".join(lines) + f"\nreturn {entry}(KEYS, ARGV)\n"


class Plan:
    """Everything calls of one shape send: keys, caps, bucket shapes, encoded once.

    :ivar pools: the pools (as given).
    :ivar buckets: the buckets (their amounts are those of the call that made the plan).
    :ivar dimensions: each bucket's dimension (``"requests"``, ``"tokens"``...).
    :ivar pool_keys: the pools' Redis keys.
    :ivar text: the plan argument (JSON) the server parses once and keeps.
    :ivar generation: the backend's queue settings it was made with (see
        :meth:`~stageflow_plus.backends.redis.RedisBackend.configure_queue`).
    """

    __slots__ = ("buckets", "dimensions", "generation", "heads", "last", "pauses", "pool_keys",
                 "pools", "queue_key", "tail", "text")

    def __init__(self, *, prefix: str, aging_ms: str, process: str, ttl_ms: int,
                 pools: Sequence[GlobalPool], buckets: Sequence[GlobalBucket],
                 pauses: Sequence[str], generation: int = 0) -> None:
        self.generation = generation
        self.pools = tuple(pools)
        self.buckets = tuple(buckets)
        self.dimensions = tuple(b.dimension for b in self.buckets)  # (a property: parsed once)
        self.pauses = tuple(pauses)
        self.pool_keys = tuple(f"{prefix}pool:{p.key}" for p in pools)
        self.queue_key = f"{prefix}q:wait"
        raw = [prefix, aging_ms, process, ttl_ms, [[k, p.limit] for k, p in
                                                   zip(self.pool_keys, pools, strict=True)],
               [[f"{prefix}gcra:{b.key}", b.interval_ms, b.burst * b.interval_ms]
                for b in buckets],
               [f"{prefix}pause:{name}" for name in pauses]]
        self.text = json.dumps(raw, separators=(",", ":"))
        self.tail = encode_items(["1", self.queue_key, self.text])  # numkeys, key, plan
        self.heads: dict[tuple[bool, str, int], bytes] = {}  # the first bytes, per command
        # per entry point: the arguments after the first (the lease id) last sent, encoded
        self.last: dict[str, tuple[tuple[str | int, ...], bytes]] = {}


class Library:
    """Calls the library's entry points: ``FCALL`` when the server has the library loaded
    (:meth:`setup` loads it on each new connection), else ``EVALSHA``.

    :ivar functions: ``True`` while ``FCALL`` is used (``False``: Redis 6.x, or the user
        may not load functions).
    """

    __slots__ = ("_heads", "_sources", "functions")

    def __init__(self) -> None:
        self._sources = {entry: eval_source(entry) for entry in ENTRIES}
        self.functions = True
        self._heads: dict[str, bytes] = {}
        self._use(True)

    def _use(self, functions: bool) -> None:
        self.functions = functions
        for entry in ENTRIES:
            if functions:
                name = f"{LIBRARY_NAME}_{entry}"
                self._heads[entry] = encode_items(["FCALL", name])
            else:
                sha = hashlib.sha1(self._sources[entry].encode()).hexdigest()
                self._heads[entry] = encode_items(["EVALSHA", sha])

    async def setup(self, send: Callable[[bytes], asyncio.Future[Any]]) -> None:
        """Make the entry points callable on a new connection: load the library unless
        the server has it (or, failing ``FUNCTION``, the ``EVAL`` scripts)."""
        if self.functions:
            try:
                listed = await send(encode(["FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME]))
                if not any(_named(item) for item in listed or ()):
                    await send(encode(["FUNCTION", "LOAD", "REPLACE", library_source()]))
                return
            except ResponseError as exc:
                text = str(exc).lower()
                if "unknown command" not in text and "noperm" not in text:
                    raise
                self._use(False)  # Redis 6.x, or an ACL without FUNCTION: EVAL scripts
        for source in self._sources.values():
            await send(encode(["SCRIPT", "LOAD", source]))

    def command(self, entry: str, plan: Plan, args: Sequence[str | int]) -> bytes:
        """``entry`` called with ``plan`` and ``args`` (the plan's bytes are reused, and so
        are those of the arguments after the first when they repeat the plan's last call
        of ``entry``: calls of one shape differ in their lease id only)."""
        shape = (self.functions, entry, len(args))
        head = plan.heads.get(shape)
        if head is None:
            head = plan.heads[shape] = (b"*%d\r\n" % (5 + len(args)) + self._heads[entry]
                                        + plan.tail)
        first = args[0]
        data = first.encode() if isinstance(first, str) else b"%d" % first
        rest = tuple(args[1:])
        last = plan.last.get(entry)
        if last is not None and last[0] == rest:
            encoded = last[1]
        else:
            encoded = encode_items(rest)
            plan.last[entry] = (rest, encoded)
        return b"".join((head, b"$%d\r\n%s\r\n" % (len(data), data), encoded))

    def call(self, entry: str, keys: Sequence[Any], args: Sequence[Any]) -> bytes:
        """``entry`` called with ``keys`` and ``args`` (the entry points without a plan)."""
        return (b"*%d\r\n" % (3 + len(keys) + len(args)) + self._heads[entry]
                + encode_items([len(keys), *keys, *args]))

    def source(self, entry: str) -> str:
        """The ``EVAL`` source of ``entry``."""
        return self._sources[entry]


def _named(item: Any) -> bool:
    """Whether one ``FUNCTION LIST`` entry is this library."""
    if isinstance(item, list):
        for key, value in zip(item[::2], item[1::2], strict=False):
            if key in (b"library_name", "library_name"):
                return value in (LIBRARY_NAME.encode(), LIBRARY_NAME)
    return False
