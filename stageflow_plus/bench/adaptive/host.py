"""The capacity-modelled provider in a process of its own, driven by JSON lines.

A provider is a separate server: its service times must not stretch when the client's event
loop is busy shedding a 10x flood (on a shared 2-core machine they would). One process
(started with ``python -c``, running :func:`main`) serves every run of the adaptive
benchmark: its :class:`~stageflow_plus.bench.provider.ProviderSimulator` answers through a
:class:`~stageflow_plus.bench.capacity.CapacityModel` (``model=``). On stdin it reads one
JSON command per line — ``{"load": profile, "seed": n, "at": t}`` installs a fresh model
whose phases count from monotonic time ``t`` (the loop clock of both processes),
``{"stats": true}`` asks for its counters, ``{"stop": true}`` ends it — and answers each on
stdout (the first line is the server's URL). It ends when stdin closes.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from types import TracebackType
from typing import Any

from ..capacity import CapacityModel, CapacityPhase, CapacityProfile
from ..provider import ProviderLimits, ProviderSimulator

__all__ = ["ProviderProcess", "main"]

_OPEN = ProviderLimits(rpm=1e9, tpm=1e12, max_concurrent=1_000_000, latency_ms=1.0)


def _profile(data: dict[str, Any]) -> CapacityProfile:
    phases = tuple(CapacityPhase(**p) for p in data.pop("phases"))
    return CapacityProfile(phases, **data)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    async with ProviderSimulator(_OPEN) as sim:
        print(json.dumps({"url": sim.url}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            command: dict[str, Any] = json.loads(line) if line.strip() else {"stop": True}
            if "load" in command:
                if sim.model is not None:
                    sim.model.stop()
                sim.model = CapacityModel(_profile(command["load"]), seed=command["seed"])
                sim.model.start(command["at"])
                answer: dict[str, Any] = {"ok": True}
            elif "stats" in command:
                answer = sim.model.stats() if sim.model is not None else {}
            else:
                if sim.model is not None:
                    sim.model.stop()
                print(json.dumps({"ok": True}), flush=True)
                return
            print(json.dumps(answer), flush=True)


def main() -> int:
    """Serve until stdin closes or a ``stop`` command arrives."""
    asyncio.run(_serve())
    return 0


class ProviderProcess:
    """``async with ProviderProcess() as host:`` then ``await host.load(...)`` per run."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def _ask(self, command: dict[str, Any]) -> Any:
        assert self._process is not None and self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write((json.dumps(command) + "\n").encode())
        await self._process.stdin.drain()
        line = await asyncio.wait_for(self._process.stdout.readline(), 30.0)
        if not line:
            raise RuntimeError("the provider process ended unexpectedly")
        return json.loads(line)

    async def __aenter__(self) -> ProviderProcess:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from stageflow_plus.bench.adaptive.host import main; main()",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 60.0)
        if not line:
            raise RuntimeError("the provider process did not start")
        self.url = json.loads(line)["url"]
        return self

    async def load(self, profile: CapacityProfile, *, seed: int, at: float) -> None:
        """Serve ``profile`` from now on, its phases counting from ``at`` (monotonic)."""
        await self._ask({"load": asdict(profile), "seed": seed, "at": at})

    async def stats(self) -> dict[str, Any]:
        """The current model's counters."""
        result: dict[str, Any] = await self._ask({"stats": True})
        return result

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        process = self._process
        if process is None:
            return
        try:
            if process.returncode is None:
                await self._ask({"stop": True})
            await asyncio.wait_for(process.wait(), 10.0)
        except (RuntimeError, OSError, TimeoutError):
            if process.returncode is None:
                process.kill()
                await process.wait()


if __name__ == "__main__":
    sys.exit(main())
