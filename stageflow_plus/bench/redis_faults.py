"""Redis faults under load, under each unavailability policy (issue 11's reliability run).

:func:`run_redis_faults` starts its own ``redis-server`` on a loopback port and drives the
global limits through four faults, each under ``fail_closed``, ``fail_open`` and
``degrade``:

* ``holder_killed``    — another process holds permits and is SIGKILLed mid-load;
* ``server_restarted`` — the server is killed and started again (empty: no persistence);
* ``server_stalled``   — the server is SIGSTOPped for a while, then SIGCONTed;
* ``unreachable_at_start`` — the load starts before the server does.

The load is two backends in this process (two "processes" as Redis sees them: own
connections, mailboxes, heartbeats) sharing one global cap, each running closed-loop calls
with deadlines. Reported per run: calls, outcomes (ran, refused by reason, cancelled),
**lost** calls (must be 0: every call ends admitted, refused with a typed error or
cancelled), peak in flight vs the cap, seconds above the cap, and leases left in Redis once
the run is over. Bounded: the whole run takes well under a minute (``quick``: a few
seconds per fault).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from ..backends.options import Policy

__all__ = ["POLICIES", "SCENARIOS", "format_faults_table", "run_redis_faults"]

POLICIES: tuple[Policy, ...] = ("fail_closed", "fail_open", "degrade")
SCENARIOS = ("holder_killed", "server_restarted", "server_stalled", "unreachable_at_start")
CAP = 4
TASKS = 6  # per backend: 12 callers against a cap of 4


class _Server:
    """One redis-server on a fixed loopback port that can be killed, restarted, stalled."""

    def __init__(self, directory: str) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: install it to run the fault benchmark")
        self.exe, self.dir = exe, directory
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)


class _Tally:
    """Calls in flight over time: the peak and the seconds spent above the cap."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.above_since: float | None = None
        self.above_s = 0.0

    def move(self, delta: int, now: float) -> None:
        self.in_flight += delta
        self.peak = max(self.peak, self.in_flight)
        above = self.in_flight > CAP
        if above and self.above_since is None:
            self.above_since = now
        elif not above and self.above_since is not None:
            self.above_s += now - self.above_since
            self.above_since = None


_HOLDER = """
import asyncio, sys
from stageflow_plus.backends.redis import RedisBackend, GlobalPool
async def main():
    b = RedisBackend(sys.argv[1], prefix=sys.argv[2], ttl=float(sys.argv[3]))
    for _ in range(int(sys.argv[4])):
        await b.acquire([GlobalPool("global:*", int(sys.argv[5]))], [])
    print("HELD", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def _one_run(server: _Server, scenario: str, policy: Policy,
                   quick: bool) -> dict[str, Any]:
    from ..backends.limits import RedisLimits
    from ..backends.redis import RedisBackend
    from ..interceptors import ToolCall
    from ..primitives import Rejected

    ttl = 1.5
    prefix = f"faults{uuid.uuid4().hex[:8]}"
    load_s = 2.0 if quick else 4.0
    if scenario == "unreachable_at_start":
        server.kill()
    elif server.proc is None:
        server.start()
    backends = [RedisBackend(server.url, prefix=prefix, ttl=ttl, on_unavailable=policy,
                             op_timeout=0.2, recheck_s=0.2) for _ in range(2)]
    for backend in [*backends, *backends]:  # both register as live, then both see 2
        await backend._heartbeat.beat()
    limits = [RedisLimits(b, concurrency=CAP) for b in backends]
    holder: subprocess.Popen[str] | None = None
    if scenario == "holder_killed":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        holder = subprocess.Popen(  # noqa: ASYNC220 (started once, not waited on here)
            [sys.executable, "-c", _HOLDER, server.url, prefix, str(ttl), "2", str(CAP)],
            stdout=subprocess.PIPE, text=True, env=env)
        assert holder.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 20)
        if line.strip() != "HELD":
            raise RuntimeError("the holder process did not start")
    loop = asyncio.get_running_loop()
    state = _Tally()
    outcomes: dict[str, int] = {"ran": 0, "cancelled": 0}
    calls = 0
    end = loop.time() + load_s

    def moved(delta: int) -> None:
        state.move(delta, loop.time())

    async def caller(lim: RedisLimits) -> None:
        nonlocal calls
        while loop.time() < end:
            calls += 1
            try:
                lease = await lim.acquire(ToolCall("t", deadline=loop.time() + 1.0))
            except Rejected as error:
                outcomes[error.reason] = outcomes.get(error.reason, 0) + 1
                await asyncio.sleep(0.05)
                continue
            except asyncio.CancelledError:
                outcomes["cancelled"] += 1
                raise
            moved(+1)
            try:
                await asyncio.sleep(0.02)
                outcomes["ran"] += 1
            finally:
                moved(-1)
                await lease.release()

    views: list[int] = []

    async def fault() -> None:
        await asyncio.sleep(load_s / 4)
        views.extend(b.share.live for b in backends)  # what each saw last (1: nothing)
        if scenario == "holder_killed" and holder is not None:
            holder.send_signal(signal.SIGKILL)
        elif scenario == "server_restarted":
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.start)
        elif scenario == "server_stalled":
            server.signal(signal.SIGSTOP)
            await asyncio.sleep(1.0)
            server.signal(signal.SIGCONT)
        elif scenario == "unreachable_at_start":
            await asyncio.to_thread(server.start)

    async with asyncio.timeout(load_s + 20):
        await asyncio.gather(fault(), *(caller(lim) for lim in limits for _ in range(TASKS)))
        for lim in limits:
            await lim.aclose()
    state.move(-state.in_flight, loop.time())
    if holder is not None:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    for backend in backends:
        await backend.aclose()
    leases_left = -1
    probe = RedisBackend(server.url, prefix=prefix)
    try:
        leases_left = int(await probe.client.zcard(probe.pool_key("global:*")))
    except Exception:  # the server may be the one that just restarted
        leases_left = -1
    finally:
        await probe.aclose()
    ended = sum(outcomes.values())
    return {"calls": calls, "outcomes": outcomes, "lost": calls - ended,
            "cap": CAP, "peak_in_flight": state.peak, "live_seen": views,
            "bound": _bound(policy, views),
            "seconds_above_cap": round(state.above_s, 3),
            "leases_left": leases_left}


def _bound(policy: Policy, views: list[int]) -> int | None:
    """The documented ceiling on calls in flight (``None``: ``fail_open``, no ceiling).

    ``fail_closed``: the cap. ``degrade``: the cap plus the sum over the processes of their
    shares ``max(1, CAP // N)``, ``N`` the live processes each last saw (1 when it never
    saw any: it then takes the whole cap) — while Redis is out the shares alone; the cap is
    added for the recovery, when Redis grants again while a process that has not yet told
    it (within ``recheck_s``) still runs calls of its share. See
    :mod:`stageflow_plus.backends.degrade`."""
    if policy == "fail_open":
        return None
    if policy == "fail_closed":
        return CAP
    return CAP + sum(max(1, CAP // max(1, n)) for n in views)


def run_redis_faults(*, quick: bool = False, scenarios: tuple[str, ...] = SCENARIOS,
                     policies: tuple[Policy, ...] = POLICIES) -> dict[str, Any]:
    """Every fault under every policy; a JSON-able dict with ``runs`` and ``targets``.

    :param quick: shorter loads (about 3 s per run instead of 5).
    :param scenarios: a subset of :data:`SCENARIOS` (tests run one or two).
    :param policies: a subset of :data:`POLICIES`.

    ``targets``: ``lost_calls`` (``{"measured": total, "met": total == 0}``),
    ``above_cap_s_fail_closed`` (seconds above the cap, summed: <= 0.5) and
    ``degrade_within_bound`` (the largest ``peak - bound`` of the ``degrade`` runs: <= 0,
    see :func:`_bound`; ``degrade``'s seconds above the cap are reported in each run).
    """
    started = time.monotonic()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as directory:
        server = _Server(directory)
        server.start()
        try:
            unknown = sorted(set(scenarios) - set(SCENARIOS)) + sorted(
                set(policies) - set(POLICIES))
            if unknown:
                raise ValueError(f"unknown fault scenario or policy {unknown}")
            for scenario in scenarios:
                for policy in policies:
                    runs[f"{scenario}/{policy}"] = asyncio.run(
                        _one_run(server, scenario, policy, quick))
                    if server.proc is None:
                        server.start()
        finally:
            server.kill()
    lost = sum(r["lost"] for r in runs.values())
    closed = sum(r["seconds_above_cap"] for k, r in runs.items() if k.endswith("fail_closed"))
    over = max((r["peak_in_flight"] - r["bound"] for k, r in runs.items()
                if k.endswith("/degrade")), default=0)
    return {
        "cap": CAP, "callers": 2 * TASKS, "quick": quick,
        "wall_s": round(time.monotonic() - started, 1),
        "runs": runs,
        "targets": {
            "lost_calls": {"measured": lost, "met": lost == 0},
            "above_cap_s_fail_closed": {"measured": round(closed, 3), "met": closed <= 0.5},
            "degrade_within_bound": {"measured": over, "met": over <= 0},
        },
    }


def format_faults_table(result: dict[str, Any]) -> str:
    """The runs as a plain-text table."""
    lines = [f"Redis faults, cap {result['cap']}, {result['callers']} callers in 2 backends",
             f"{'fault / policy':<34} {'calls':>5} {'lost':>4} {'peak':>4} {'bound':>5} "
             f"{'>cap s':>7} {'left':>4}  outcomes"]
    for name, r in result["runs"].items():
        bound = "-" if r["bound"] is None else r["bound"]
        lines.append(f"{name:<34} {r['calls']:>5} {r['lost']:>4} {r['peak_in_flight']:>4} "
                     f"{bound:>5} {r['seconds_above_cap']:>7.3f} {r['leases_left']:>4}  "
                     f"{r['outcomes']}")
    lines.append("targets: " + ", ".join(f"{k}={'met' if v['met'] else 'MISSED'} "
                                         f"({v['measured']})"
                                         for k, v in result["targets"].items()))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - a manual entry point
    import json

    outcome = run_redis_faults(quick="--quick" in sys.argv)
    print(format_faults_table(outcome))
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w", encoding="utf-8") as out:
            json.dump(outcome, out, indent=2)
