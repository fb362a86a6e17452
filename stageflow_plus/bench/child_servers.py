"""Servers the distributed benchmark starts as child processes, and their clean-up.

A temporary ``redis-server`` on a free loopback port (no persistence) and the provider
simulator (:mod:`~stageflow_plus.bench.provider`). Both are stopped when the benchmark
ends — by an exception, by ``Ctrl-C`` and by ``SIGTERM`` too (:func:`sigterm_as_exit`
turns it into ``SystemExit`` so that every ``finally`` runs): no orphaned server.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["free_port", "http", "provider_process", "redis_server", "sigterm_as_exit"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While inside, ``SIGTERM`` raises ``SystemExit(143)`` in the main thread (so the
    child servers are stopped); elsewhere (another thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def redis_server() -> Iterator[str]:
    """A temporary ``redis-server`` on a free loopback port, no persistence; its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: install it or pass --backend redis://…")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                 directory, "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def provider_process(settings: Mapping[str, float]) -> Iterator[str]:
    """The provider simulator with ``settings`` (rpm, tpm, max_concurrent, latency_ms,
    latency_jitter_ms, burst_s) in a child process; its base URL."""
    args = [sys.executable, "-m", "stageflow_plus.bench.provider", "--port", "0"]
    for name in ("rpm", "tpm", "max_concurrent", "latency_ms", "latency_jitter_ms", "burst_s"):
        args += ["--" + name.replace("_", "-"), str(settings[name])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError("the provider simulator did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def http(method: str, url: str) -> dict[str, Any]:
    """One JSON request to the provider simulator's control API."""
    import urllib.request

    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result
