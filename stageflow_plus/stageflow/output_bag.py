"""A conflict-detecting, versioned bag for the results of concurrent tool calls.

Stageflow's DAG keeps stage outputs in a plain dict, and its ``OutputBag`` is keyed by stage,
not by tool result. Tool calls made concurrently inside one stage need their own place to put
results where a lost update is an error, not a silent overwrite. :class:`ToolResultBag` is it:

* :meth:`~ToolResultBag.write` — first writer wins; any later write to the key raises
  :class:`WriteConflict` naming the key, the existing writer and the new one.
* :meth:`~ToolResultBag.read` — the value with its ``version`` and ``writer``.
* :meth:`~ToolResultBag.compare_and_set` — optimistic concurrency: store only if the key is
  still at ``expected_version``, else raise :class:`VersionConflict` with the current version.
* :meth:`~ToolResultBag.update` — atomic read-modify-write under a per-key lock.

Both errors, :class:`WriteConflict` (a second write to a key) and :class:`VersionConflict`
(``compare_and_set`` lost the race), subclass Stageflow's ``OutputConflictError`` — existing
handlers catch them — and :class:`~stageflow_plus.primitives.errors.StageflowPlusError`.

**Concurrency model.** The bag is for tasks on one asyncio event loop; it uses no threads and
is not thread-safe. Every state change is synchronous code between two awaits, so it cannot
interleave with another task's change. The only await inside the bag is acquiring a key's
``asyncio.Lock``: ``write``/``compare_and_set``/``update`` take it so that a plain write cannot
slip into the middle of an ``update`` whose ``fn`` is async. The lock is held **only around
computing and storing the new value** — never around the tool call itself. Do the I/O first,
then call ``update`` with a function that merges its result; an async ``fn`` that does I/O
would serialise every writer of that key behind it.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from stageflow.context import OutputConflictError

from ..primitives.errors import StageflowPlusError

__all__ = ["BagStatistics", "ToolResultBag", "VersionConflict", "Versioned", "WriteConflict"]

T = TypeVar("T")
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A value as stored in the bag.

    :ivar value: the stored value.
    :ivar version: 1 for the first write of the key, +1 on every later change (0 = absent).
    :ivar writer: who stored this version (a tool name, a call id, ...).
    """

    value: T
    version: int
    writer: str


class WriteConflict(OutputConflictError, StageflowPlusError):
    """A second write to a key that already has a value.

    :ivar key: the contested key.
    :ivar existing_writer: who wrote the value that stays.
    :ivar new_writer: who tried to write.
    :ivar existing_version: the version that stays.
    """

    def __init__(
        self, key: str, existing_writer: str, new_writer: str, existing_version: int
    ) -> None:
        OutputConflictError.__init__(self, key, existing_version)
        self.key = key
        self.existing_writer = existing_writer
        self.new_writer = new_writer
        self.args = (
            f"key {key!r} already written by {existing_writer!r} (version "
            f"{existing_version}); write by {new_writer!r} refused",
        )


class VersionConflict(OutputConflictError, StageflowPlusError):
    """``compare_and_set`` expected one version and found another: re-read and retry.

    :ivar key: the contested key.
    :ivar expected_version: the version the caller read.
    :ivar current_version: the version now stored (0 when absent).
    :ivar current_writer: who stored the current version (``None`` when absent).
    :ivar new_writer: who tried to write.
    """

    def __init__(
        self, key: str, expected_version: int, current_version: int,
        current_writer: str | None, new_writer: str,
    ) -> None:
        OutputConflictError.__init__(self, key, current_version)
        self.key = key
        self.expected_version = expected_version
        self.current_version = current_version
        self.current_writer = current_writer
        self.new_writer = new_writer
        self.args = (
            f"key {key!r} is at version {current_version} (by {current_writer!r}), "
            f"{new_writer!r} expected {expected_version}",
        )


@dataclass(frozen=True, slots=True)
class BagStatistics:
    """A snapshot of a :class:`ToolResultBag`'s counters.

    :ivar keys: keys holding a value.
    :ivar writes: changes stored (write, compare_and_set and update together).
    :ivar write_conflicts: writes refused with :class:`WriteConflict`.
    :ivar version_conflicts: compare_and_sets refused with :class:`VersionConflict`.
    :ivar updates: successful ``update`` calls.
    :ivar attempts: ``(key, attempts)`` pairs sorted by key — every try to change the key,
        refused or not.
    :ivar locks_waiting: tasks now waiting for a key's lock.
    """

    keys: int
    writes: int
    write_conflicts: int
    version_conflicts: int
    updates: int
    attempts: tuple[tuple[str, int], ...]
    locks_waiting: int


class ToolResultBag:
    """Results of concurrent tool calls, with conflict detection and versions.

    :param history: how many past versions to keep per key for :meth:`history`.
    """

    __slots__ = ("_attempts", "_entries", "_history", "_history_size", "_locks", "_updates",
                 "_users", "_version_conflicts", "_waiting", "_write_conflicts", "_writes")

    def __init__(self, *, history: int = 16) -> None:
        if not isinstance(history, int) or isinstance(history, bool):
            raise TypeError(f"history must be an int, got {history!r}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self._history_size = history
        # Invariant: _entries[k].version == len(all versions ever stored for k) and
        # _history[k][-1] is _entries[k].
        self._entries: dict[str, Versioned[Any]] = {}
        self._history: dict[str, deque[Versioned[Any]]] = {}
        # Invariant: a key is in _locks iff _users[key] > 0 (tasks holding or awaiting it).
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._writes = 0
        self._write_conflicts = 0
        self._version_conflicts = 0
        self._updates = 0
        self._waiting = 0

    # -- reads (synchronous: nothing to wait for) -------------------------------------------

    def read(self, key: str) -> Versioned[Any]:
        """The current value of ``key`` with its version and writer (``KeyError`` if absent)."""
        return self._entries[key]

    def get(self, key: str) -> Versioned[Any] | None:
        """Like :meth:`read` but ``None`` when the key is absent."""
        return self._entries.get(key)

    def version(self, key: str) -> int:
        """The current version of ``key``; 0 when absent (what ``compare_and_set`` expects)."""
        entry = self._entries.get(key)
        return entry.version if entry is not None else 0

    def history(self, key: str) -> tuple[Versioned[Any], ...]:
        """The last stored versions of ``key``, oldest first (empty when absent)."""
        return tuple(self._history.get(key, ()))

    def snapshot(self) -> Mapping[str, Any]:
        """An immutable mapping ``key -> value`` of the current values.

        Later writes do not show in it; the values themselves are not copied.
        """
        return MappingProxyType({k: v.value for k, v in self._entries.items()})

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    # -- writes -------------------------------------------------------------------------------

    async def write(
        self, key: str, value: Any, *, writer: str, allow_overwrite: bool = False
    ) -> Versioned[Any]:
        """Store ``value`` under ``key``; the first writer wins.

        :raises WriteConflict: ``key`` already has a value (from any writer, the same one
            included, as with Stageflow's ``OutputBag``) and ``allow_overwrite`` is false.

        Waits only if an :meth:`update` of the same key is computing; cancellation while
        waiting leaves the bag unchanged.
        """
        async with self._lock(key):
            self._count(key)
            existing = self._entries.get(key)
            if existing is not None and not allow_overwrite:
                self._write_conflicts += 1
                raise WriteConflict(key, existing.writer, writer, existing.version)
            return self._store(key, value, writer)

    async def compare_and_set(
        self, key: str, expected_version: int, value: Any, *, writer: str
    ) -> Versioned[Any]:
        """Store ``value`` only if ``key`` is still at ``expected_version`` (0: absent).

        :raises VersionConflict: someone changed the key since it was read; the error carries
            the current version — re-read and retry.

        Waits only if an :meth:`update` of the same key is computing; cancellation while
        waiting leaves the bag unchanged.
        """
        async with self._lock(key):
            self._count(key)
            current = self._entries.get(key)
            version = current.version if current is not None else 0
            if version != expected_version:
                self._version_conflicts += 1
                holder = current.writer if current is not None else None
                raise VersionConflict(key, expected_version, version, holder, writer)
            return self._store(key, value, writer)

    async def update(
        self,
        key: str,
        fn: Callable[[Any], Any | Awaitable[Any]],
        *,
        writer: str,
        default: Any = _MISSING,
    ) -> Versioned[Any]:
        """Atomically replace the value of ``key`` with ``fn(current)``.

        ``fn`` may be a plain function or return an awaitable. It runs under the key's lock,
        so concurrent updates of one key apply one after another and none is lost. Keep ``fn``
        a quick computation: do the tool's I/O *before* calling ``update``.

        :param default: the current value when ``key`` is absent (``KeyError`` without one).
        :raises KeyError: ``key`` is absent and no ``default`` was given.

        Cancellation while waiting for the lock, or while an async ``fn`` runs, stores
        nothing and releases the lock. An exception from ``fn`` stores nothing and propagates.
        """
        async with self._lock(key):
            self._count(key)
            current = self._entries.get(key)
            if current is None and default is _MISSING:
                raise KeyError(key)
            new = fn(current.value if current is not None else default)
            if inspect.isawaitable(new):
                new = await new
            self._updates += 1
            return self._store(key, new, writer)

    # -- statistics ---------------------------------------------------------------------------

    def statistics(self) -> BagStatistics:
        """The bag's counters (see :class:`BagStatistics`)."""
        return BagStatistics(
            keys=len(self._entries),
            writes=self._writes,
            write_conflicts=self._write_conflicts,
            version_conflicts=self._version_conflicts,
            updates=self._updates,
            attempts=tuple(sorted(self._attempts.items())),
            locks_waiting=self._waiting,
        )

    def __repr__(self) -> str:
        return (
            f"<ToolResultBag {len(self._entries)} keys, {self._writes} writes, "
            f"{self._write_conflicts + self._version_conflicts} conflicts>"
        )

    # -- internals ----------------------------------------------------------------------------

    @asynccontextmanager
    async def _lock(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``'s lock; the lock is forgotten once nobody holds or awaits it."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        self._users[key] = self._users.get(key, 0) + 1
        contended = lock.locked()
        self._waiting += contended
        try:
            try:
                await lock.acquire()  # uncontended: returns without yielding
            finally:
                self._waiting -= contended
            try:
                yield
            finally:
                lock.release()
        finally:
            users = self._users.pop(key) - 1
            if users:
                self._users[key] = users
            else:
                del self._locks[key]

    def _count(self, key: str) -> None:
        self._attempts[key] = self._attempts.get(key, 0) + 1

    def _store(self, key: str, value: Any, writer: str) -> Versioned[Any]:
        previous = self._entries.get(key)
        entry = Versioned(value, previous.version + 1 if previous is not None else 1, writer)
        self._entries[key] = entry
        past = self._history.get(key)
        if past is None:
            past = self._history[key] = deque(maxlen=self._history_size)
        past.append(entry)
        self._writes += 1
        assert self._history[key][-1] is self._entries[key]
        return entry

