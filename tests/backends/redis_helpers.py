"""A real redis-server for tests: one process on a free loopback port, no persistence.

Missing ``redis-server`` is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process in a temporary directory, no persistence.

    :meth:`stop` and :meth:`start` keep the port, so a restart looks like the real thing.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server); the "
                        "Redis backend tests need a real server", pytrace=False)
        self.executable = executable
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []  # more redis-server arguments

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (at most 10 s) until it accepts connections."""
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--loglevel", "warning", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                pytest.fail(f"redis-server exited at start: {err}", pytrace=False)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        pytest.fail("redis-server did not answer PING within 10 s", pytrace=False)

    def stop(self) -> None:
        """Kill the server (like a crash: nothing is saved) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None


def _bus_port() -> int:
    for _ in range(100):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    pytest.fail("no free port pair (port, port + 10000) for a cluster node", pytrace=False)


class RedisClusterNodes:
    """A real 3-node Redis Cluster (no replicas) on free loopback ports, no persistence.

    Started with ``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create``;
    :meth:`start` waits (at most 20 s) until every node reports ``cluster_state:ok``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # a cluster node also listens on port + 10000 (the cluster bus): both must be free
        self.nodes = [RedisServer(directory / f"n{i}", port=_bus_port()) for i in range(3)]
        self.cli = shutil.which("redis-cli")
        if self.cli is None:
            pytest.fail("redis-cli is not installed (it comes with redis-server)", pytrace=False)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> float:
        """Start the nodes, create the cluster; returns the seconds it took."""
        started = time.monotonic()
        try:
            return self._start(started)
        except BaseException:
            self.stop()  # never leave a node behind
            raise

    def _start(self, started: float) -> float:
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            node.extra = ["--cluster-enabled", "yes", "--cluster-config-file",
                          str(node.directory / "nodes.conf"), "--cluster-node-timeout", "2000"]
            node.start()
        assert self.cli is not None
        subprocess.run(
            [self.cli, "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [subprocess.run([self.cli, "-p", str(n.port), "cluster", "info"],
                                     capture_output=True, text=True, timeout=5).stdout
                      for n in self.nodes]
            if all("cluster_state:ok" in s for s in states):
                return time.monotonic() - started
            time.sleep(0.05)
        pytest.fail("the 3-node cluster did not reach cluster_state:ok within 20 s",
                    pytrace=False)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class DelayingProxy:
    """A loopback TCP proxy in front of a real server whose client→server bytes can be held
    back per connection — a slow network path, to reorder what two connections send.

    Use inside a running loop: ``await proxy.start()``, ``proxy.hold_all()`` (bytes of the
    connections open now are held from then on), ``proxy.release_all()``, ``await
    proxy.aclose()``. New connections flow freely.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self._server: Any = None
        self._links: list[_Link] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            link = _Link(reader, writer, up_reader, up_writer)
            self._links.append(link)
            await link.run()
        except (OSError, asyncio.CancelledError):  # (closed with the proxy)
            writer.close()

    def hold_all(self) -> None:
        for link in self._links:
            link.held = True

    def release_all(self) -> None:
        for link in self._links:
            link.release()

    async def aclose(self) -> None:
        for link in self._links:
            link.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _Link:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.up_reader, self.up_writer = up_reader, up_writer
        self.held = False
        self.backlog: list[bytes] = []
        self.client_gone = False

    async def run(self) -> None:
        await asyncio.gather(self._up(), self._down(), return_exceptions=True)

    async def _up(self) -> None:
        while data := await self.reader.read(65536):
            if self.held:
                self.backlog.append(data)
            else:
                self.up_writer.write(data)
        self.client_gone = True  # (what is held is still delivered when released)

    async def _down(self) -> None:
        while data := await self.up_reader.read(65536):
            if not self.writer.is_closing():
                self.writer.write(data)

    def release(self) -> None:
        self.held = False
        for data in self.backlog:
            self.up_writer.write(data)
        self.backlog.clear()

    def close(self) -> None:
        self.writer.close()
        self.up_writer.close()
