"""A lean pipelined connection for the hot-path scripts (``EVALSHA``), RESP2 on asyncio.

redis-py's asyncio client costs about three raw round trips per command on a busy 2-core
machine (connection-pool checkout, locks, per-command objects). The acquire and release
scripts are the whole hot path of the Redis backend, so they go through this connection:
one socket per backend, requests written back to back (pipelined across tasks), replies
matched in order to their futures. Everything else (blocking reads, cluster, the odd
command) stays on redis-py.

Failure semantics match what :meth:`RedisBackend._run` translates: a broken or refused
connection raises ``redis.exceptions.ConnectionError``, an error reply ``ResponseError``; a
caller that gives up (timeout, cancellation) leaves its reply to be read and dropped, and a
timeout closes the connection (a stalled server must not pile up replies); the next call
reconnects.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["FastConnection", "FastScript"]


def _encode(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One reply from ``buf`` at ``pos``: ``(value, next pos)``; raises _Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:end])
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return ResponseError(line.decode(errors="replace")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    raise RedisConnectionError(f"unexpected reply type {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        while self.waiting:
            try:
                value, pos_next = _parse(self.buf, pos)
            except _Incomplete:
                break
            pos = pos_next
            future = self.waiting.popleft()
            if not future.done():  # (a caller that gave up: its reply is dropped)
                if isinstance(value, ResponseError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        del self.buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(
                    f"Connection closed by server ({type(exc).__name__ if exc else 'EOF'})"))


class FastConnection:
    """One pipelined connection to the server of a ``redis://``, ``rediss://`` or
    ``unix://`` URL (password, user and db from the URL)."""

    def __init__(self, url: str, *, connect_timeout: float) -> None:
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
        self._connect_timeout = connect_timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.closed:
                return self._proto
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._connect_timeout):
                    if self._scheme == "unix":
                        _, proto = await loop.create_unix_connection(_Protocol, self._path)
                    else:
                        context = ssl.create_default_context() if self._scheme == "rediss" \
                            else None
                        _, proto = await loop.create_connection(
                            _Protocol, self._host, self._port, ssl=context)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(
                    f"Error connecting to {self._host}:{self._port}: "
                    f"{type(exc).__name__}") from None
            self._proto = proto
            if self._password is not None:
                auth = [self._user, self._password] if self._user else [self._password]
                await self._call(proto, ["AUTH", *auth])
            if self._db:
                await self._call(proto, ["SELECT", self._db])
            return proto

    @staticmethod
    async def _call(proto: _Protocol, args: Sequence[Any]) -> Any:
        if proto.transport is None or proto.closed:
            raise RedisConnectionError("Connection closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.waiting.append(future)
        proto.transport.write(_encode(args))
        return await future

    async def execute(self, *args: Any) -> Any:
        """Send one command and wait for its reply (pipelined with other callers')."""
        proto = await self._connection()
        try:
            return await self._call(proto, args)
        except TimeoutError:
            self.close()  # a stalled server: do not let replies pile up
            raise

    def close(self) -> None:
        """Close the socket; pending callers get ``ConnectionError``; the next call
        reconnects."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()


class FastScript:
    """A Lua script run with ``EVALSHA`` (``EVAL`` once after a server forgot it), with
    the calling convention of redis-py's ``Script``: ``await script(keys=..., args=...)``."""

    def __init__(self, connection: FastConnection, source: str) -> None:
        self._connection = connection
        self._source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # (Redis names scripts so)

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self._connection.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self._connection.execute("EVAL", self._source, len(keys), *keys, *args)
