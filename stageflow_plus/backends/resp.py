"""A lean pipelined RESP2 connection for the hot path of the Redis backend, on asyncio.

redis-py's asyncio client costs about three raw round trips per command on a busy 2-core
machine (connection-pool checkout, locks, per-command objects). The backend's hot path —
acquire, release, cancel, the mailbox read — goes through this instead: one socket, the
commands of every task written back to back, replies matched in order.

* **Coalesced writes.** :meth:`Connection.send_nowait` (a release) queues its command;
  it is written with the next command sent at once (:meth:`Connection.send`, an
  acquire) or at the next turn of the loop: a release and the next acquire of a process
  leave in one packet.
* **Answers nobody waits for.** Each command may carry ``on_orphan``: called with the
  reply (or the error) when the caller gave up waiting (cancelled, timed out). The
  backend uses it to give back a grant that raced a cancellation, in order, on the same
  connection. A command sent with ``on_reply`` only (no future) is fire-and-forget.
* **One stall watchdog per connection**, not a timer per command: a command unanswered
  after its deadline closes the connection; every pending command fails with
  ``redis.exceptions.TimeoutError`` (a stalled server must not pile up replies). A broken
  or refused connection raises ``ConnectionError``, an error reply ``ResponseError``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Connection", "encode", "encode_items"]

Handler = Callable[[Any], None]
"""Receives a reply value or the exception that ended the command."""


def encode_items(args: Sequence[Any]) -> bytes:
    """RESP bulk strings for ``args`` (bytes as they are, anything else as ``str()``)."""
    out = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def encode(args: Sequence[Any]) -> bytes:
    """One RESP command."""
    return b"*%d\r\n" % len(args) + encode_items(args)


class _Incomplete(Exception):
    pass


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One reply from ``buf`` at ``pos``: ``(value, next pos)``; raises _Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = buf[pos + 1:end]  # (int() reads a bytearray as it is: no copy to bytes)
    pos = end + 2
    if kind == 36:  # $
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == 42:  # *
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 58:  # :
        return int(line), pos
    if kind == 43:  # +
        return bytes(line), pos
    if kind == 45:  # -
        return ResponseError(line.decode(errors="replace")), pos
    raise RedisConnectionError(f"unexpected reply type {chr(kind)!r}")


class _Pending:
    """One command sent, its answer not read yet."""

    __slots__ = ("deadline", "future", "on_orphan", "on_reply")

    def __init__(self, future: asyncio.Future[Any] | None, on_reply: Handler | None,
                 on_orphan: Handler | None, deadline: float) -> None:
        self.future = future
        self.on_reply = on_reply
        self.on_orphan = on_orphan
        self.deadline = deadline

    def settle(self, value: Any) -> None:
        future = self.future
        if future is not None:
            if not future.done():
                if isinstance(value, BaseException):
                    future.set_exception(value)
                else:
                    future.set_result(value)
                return
            if self.on_orphan is not None and future.cancelled():
                self.on_orphan(value)
            return
        if self.on_reply is not None:
            self.on_reply(value)


class _Protocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buf = bytearray()
        self.pending: deque[_Pending] = deque()
        self.out: list[bytes] = []
        self.flushing: asyncio.Handle | None = None  # the flush due at the next turn
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def flush(self) -> None:
        if self.flushing is not None:
            self.flushing.cancel()
            self.flushing = None
        out, self.out = self.out, []
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        pending = self.pending
        while pending:
            try:
                value, pos_next = _parse(buf, pos)
            except _Incomplete:
                break
            pos = pos_next
            try:
                pending.popleft().settle(value)
            except Exception:  # a handler's bug must not break the connection's order
                self.loop.call_exception_handler({"message": "redis reply handler failed",
                                                  "protocol": self})
        del buf[:pos]

    def fail(self, error: BaseException) -> None:
        self.closed = True
        self.out = []
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        pending, self.pending = self.pending, deque()
        for entry in pending:
            entry.settle(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(
            f"Connection closed by server ({type(exc).__name__ if exc else 'EOF'})"))


class Connection:
    """One pipelined connection to the server of a ``redis://``, ``rediss://`` or
    ``unix://`` URL (password, user and db from the URL).

    :param connect_timeout: bound on connecting (seconds).
    :param op_timeout: default deadline of a command (seconds).
    :param setup: run on every new connection after AUTH and SELECT, before anyone else
        may send on it (e.g. loading a script library): given a ``send(payload)`` that
        returns the reply's future.
    """

    def __init__(self, url: str, *, connect_timeout: float, op_timeout: float,
                 setup: Callable[[Callable[[bytes], asyncio.Future[Any]]], Awaitable[None]]
                 | None = None) -> None:
        parts = urlsplit(url)
        self._scheme = parts.scheme.lower()
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = parts.path
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        if self._scheme == "unix":
            self._db = 0
        else:
            db = parts.path.strip("/")
            self._db = int(db) if db.isdigit() else 0
        for part in parts.query.split("&"):
            name, _, value = part.partition("=")
            if name == "db" and value.isdigit():
                self._db = int(value)
            elif name == "password" and value:
                self._password = unquote(value)
        self.connect_timeout = connect_timeout
        self.op_timeout = op_timeout
        self._setup = setup
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @property
    def ready(self) -> bool:
        """Connected now: :meth:`send` needs no :meth:`connect` first."""
        proto = self._proto
        return proto is not None and not proto.closed

    async def connect(self) -> None:
        """Connect (once, shared by concurrent callers) unless connected. Cancelling one
        caller does not abort a connection others wait for."""
        if self.ready:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(_retrieved)
        await asyncio.shield(self._connecting)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        proto: _Protocol | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self._scheme == "unix":
                    _, proto = await loop.create_unix_connection(
                        lambda: _Protocol(loop), self._path)
                else:
                    context = ssl.create_default_context() if self._scheme == "rediss" else None
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(loop), self._host, self._port, ssl=context)
                setup: list[asyncio.Future[Any]] = []
                if self._password is not None:
                    auth = [self._user, self._password] if self._user else [self._password]
                    setup.append(self._send_on(proto, encode(["AUTH", *auth])))
                if self._db:
                    setup.append(self._send_on(proto, encode(["SELECT", self._db])))
                for reply in setup:
                    await reply  # an error reply (wrong password) raises ResponseError
                if self._setup is not None:
                    await self._setup(lambda payload: self._send_on(proto, payload))
        except BaseException as exc:
            if proto is not None and proto.transport is not None:
                proto.transport.close()
            if isinstance(exc, (OSError, TimeoutError)):
                raise RedisConnectionError(f"Error connecting to {self._host}:{self._port}: "
                                           f"{type(exc).__name__}") from None
            raise
        self._proto = proto
        return proto

    def _send_on(self, proto: _Protocol, payload: bytes,
                 timeout: float | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = proto.loop.create_future()
        self._queue(proto, payload, _Pending(future, None, None, 0.0), timeout)
        return future

    def _queue(self, proto: _Protocol, payload: bytes, entry: _Pending,
               timeout: float | None, now: bool = False) -> None:
        if proto.closed or proto.transport is None:
            raise RedisConnectionError("Connection closed")
        loop = proto.loop
        entry.deadline = loop.time() + (self.op_timeout if timeout is None else timeout)
        proto.pending.append(entry)
        if now:  # written at once, with whatever waits to be written (in order)
            if proto.out:
                proto.out.append(payload)
                proto.flush()
            else:
                proto.transport.write(payload)
        else:  # written at the next turn of the loop, or with the next command sent at once
            if proto.flushing is None:
                proto.flushing = loop.call_soon(proto.flush)
            proto.out.append(payload)
        if proto.watchdog is None:
            proto.watchdog = loop.call_at(entry.deadline, self._watch, proto)

    def _watch(self, proto: _Protocol) -> None:
        proto.watchdog = None
        if not proto.pending or proto.closed:
            return
        head = proto.pending[0]
        if proto.loop.time() >= head.deadline:
            # a stalled server: close, and every command waiting fails at once
            if proto is self._proto:
                self._proto = None
            if proto.transport is not None:
                proto.transport.abort()
            proto.fail(RedisTimeoutError("Redis did not answer in time"))
            return
        proto.watchdog = proto.loop.call_at(head.deadline, self._watch, proto)

    def send(self, payload: bytes, *, on_orphan: Handler | None = None,
             timeout: float | None = None) -> asyncio.Future[Any]:
        """Write one encoded command now (behind what :meth:`send_nowait` queued); returns
        the future of its reply. ``on_orphan`` gets the reply if that future is cancelled.

        :raises ConnectionError: not connected (see :attr:`ready`, :meth:`connect`).
        """
        proto = self._proto
        if proto is None:
            raise RedisConnectionError("Connection closed")
        future: asyncio.Future[Any] = proto.loop.create_future()
        self._queue(proto, payload, _Pending(future, None, on_orphan, 0.0), timeout, True)
        return future

    def send_nowait(self, payload: bytes, on_reply: Handler | None,
                    timeout: float | None = None) -> None:
        """Queue one encoded command nobody awaits, written with the next command sent or at
        the next turn of the loop; ``on_reply`` gets its reply or error."""
        proto = self._proto
        if proto is None:
            raise RedisConnectionError("Connection closed")
        self._queue(proto, payload, _Pending(None, on_reply, None, 0.0), timeout)

    async def execute(self, *args: Any) -> Any:
        """Send one command and wait for its reply (connecting first if need be)."""
        await self.connect()
        return await self.send(encode(args))

    def close(self) -> None:
        """Close the socket; pending commands fail with ``ConnectionError``; the next
        :meth:`connect` opens a new one."""
        proto, self._proto = self._proto, None
        if proto is not None:
            if proto.transport is not None:
                proto.transport.close()
            proto.fail(RedisConnectionError("Connection closed by the client"))


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
