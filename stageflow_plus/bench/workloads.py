"""Agent-style workloads: fan-out bursts, mixed priorities, tenants and token sizes.

A workload is a fixed, seeded list of :class:`CallSpec` grouped into bursts (one agent step
fanning out several tool calls at once), plus a hard time limit. Offered load is stated
relative to the provider's sustainable throughput (``2.0`` = twice what it can serve).

* :func:`overload` — 2x sustained overload; each burst has one priority in 0..3 (by default
  40/30/20/10 % of bursts, most work being background and little urgent, so the two top
  levels together stay under capacity); 80 % small calls (100-400 tokens), 20 % large
  (1 500-3 000 tokens).
* :func:`fairness` — 2x overload from two equal-weight tenants offering 10:1; one priority.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .provider import ProviderLimits

__all__ = ["PRIORITY_MIX", "CallSpec", "Workload", "bench_limits", "fairness", "overload"]

SMALL_TOKENS = (100, 400)
LARGE_TOKENS = (1500, 3000)
LARGE_SHARE = 0.2
BURST_SIZE = (3, 8)
MEAN_TOKENS = (1 - LARGE_SHARE) * sum(SMALL_TOKENS) / 2 + LARGE_SHARE * sum(LARGE_TOKENS) / 2


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One tool call of a workload.

    :ivar index: position in the workload (unique).
    :ivar at: seconds after the start when its burst is issued.
    :ivar burst: the burst (agent step) it belongs to.
    :ivar tokens: the call's token cost (estimate = actual here).
    :ivar tenant: who makes it.
    :ivar priority: 0 (lowest) .. 3 (highest).
    """

    index: int
    at: float
    burst: int
    tokens: int
    tenant: str
    priority: int


@dataclass(frozen=True, slots=True)
class Workload:
    """A named, fixed list of calls with a hard time limit.

    :ivar name: short name (a key in the JSON).
    :ivar description: one line for people.
    :ivar calls: every call, in burst order.
    :ivar time_limit: seconds after which unfinished calls are cancelled.
    :ivar offered_load: arrival rate over the provider's sustainable throughput.
    :ivar weights: tenant weights the fair strategies use (equal here).
    """

    name: str
    description: str
    calls: tuple[CallSpec, ...]
    time_limit: float
    offered_load: float
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def bursts(self) -> list[tuple[float, tuple[CallSpec, ...]]]:
        """``(at, calls)`` per burst, in time order."""
        groups: dict[int, list[CallSpec]] = {}
        for spec in self.calls:
            groups.setdefault(spec.burst, []).append(spec)
        return sorted(((g[0].at, tuple(g)) for g in groups.values()), key=lambda x: x[0])

    @property
    def mean_tokens(self) -> float:
        """Mean token cost of a call."""
        return sum(c.tokens for c in self.calls) / max(1, len(self.calls))

    @property
    def tenants(self) -> tuple[str, ...]:
        """The tenants, sorted."""
        return tuple(sorted({c.tenant for c in self.calls}))

    @property
    def priorities(self) -> tuple[int, ...]:
        """The priorities in use, ascending."""
        return tuple(sorted({c.priority for c in self.calls}))


def bench_limits() -> ProviderLimits:
    """The provider of the benchmark: RPM binds (30/s), TPM close behind (≈ 30.8/s at the
    mean call size), concurrency 6 at 150 ± 50 ms allows 40/s."""
    return ProviderLimits(rpm=1800, tpm=1_200_000, max_concurrent=6, latency_ms=150,
                          latency_jitter_ms=50, burst_s=1.0)


def _tokens(rng: random.Random) -> int:
    low, high = LARGE_TOKENS if rng.random() < LARGE_SHARE else SMALL_TOKENS
    return rng.randint(low, high)


def _bursts(
    rng: random.Random,
    *,
    rate: float,
    duration: float,
    tenants: dict[str, float],
    priorities: dict[int, float],
) -> list[CallSpec]:
    """Exactly ``round(rate · duration)`` calls in Poisson-spaced bursts, ``rate`` per second
    on average (the bursts are rescaled to end at ``duration``)."""
    target = max(1, round(rate * duration))
    mean_burst = sum(BURST_SIZE) / 2
    burst_rate = rate / mean_burst
    names, shares = list(tenants), list(tenants.values())
    levels, level_shares = list(priorities), list(priorities.values())
    drafts: list[tuple[float, int, int, str, int]] = []
    credit = dict.fromkeys(names, 0.0)  # smooth weighted round-robin: exact tenant shares
    t, burst = 0.0, 0
    while len(drafts) < target:
        for name, share in zip(names, shares, strict=True):
            credit[name] += share
        tenant = max(names, key=lambda n: credit[n])
        credit[tenant] -= sum(shares)
        priority = rng.choices(levels, level_shares)[0]
        for _ in range(min(rng.randint(*BURST_SIZE), target - len(drafts))):
            drafts.append((t, burst, _tokens(rng), tenant, priority))
        burst += 1
        t += rng.expovariate(burst_rate)
    scale = duration / t if t > 0 else 1.0
    return [CallSpec(i, round(at * scale, 6), b, tokens, tenant, priority)
            for i, (at, b, tokens, tenant, priority) in enumerate(drafts)]


PRIORITY_MIX = {0: 0.4, 1: 0.3, 2: 0.2, 3: 0.1}
"""Share of bursts per priority in :func:`overload`."""


def overload(limits: ProviderLimits, *, duration: float, seed: int = 1,
             load: float = 2.0, priority_mix: dict[int, float] | None = None) -> Workload:
    """``load`` x sustained overload for ``duration`` s, priorities 0..3, one tenant.

    :param priority_mix: share of bursts per priority (default :data:`PRIORITY_MIX`);
        ``{0: 1, 1: 1, 2: 1, 3: 1}`` is uniform — then at 2x load the two top levels alone
        fill the provider.
    """
    rate = load * limits.max_calls_per_second(MEAN_TOKENS)
    mix = priority_mix if priority_mix is not None else PRIORITY_MIX
    calls = _bursts(random.Random(seed), rate=rate, duration=duration,
                    tenants={"acme": 1.0}, priorities=mix)
    backlog = len(calls) / limits.max_calls_per_second(MEAN_TOKENS)
    return Workload(
        "overload",
        f"{load:g}x sustained overload for {duration:g}s: fan-out bursts of 3-8, priorities "
        f"0-3 ({'/'.join(f'{mix.get(p, 0):g}' for p in range(4))}), 20% large calls",
        tuple(calls), time_limit=backlog * 1.5 + 5.0, offered_load=load,
    )


def fairness(limits: ProviderLimits, *, duration: float, seed: int = 2,
             load: float = 2.0) -> Workload:
    """``load`` x overload from tenants ``big`` and ``small`` offering 10:1, equal weights."""
    rate = load * limits.max_calls_per_second(MEAN_TOKENS)
    calls = _bursts(random.Random(seed), rate=rate, duration=duration,
                    tenants={"big": 10.0, "small": 1.0}, priorities={1: 1.0})
    backlog = len(calls) / limits.max_calls_per_second(MEAN_TOKENS)
    return Workload(
        "fairness",
        f"{load:g}x overload for {duration:g}s from two equal-weight tenants offering 10:1",
        tuple(calls), time_limit=backlog * 1.5 + 5.0, offered_load=load,
        weights={"big": 1.0, "small": 1.0},
    )
