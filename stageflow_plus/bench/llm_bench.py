"""The LLM benchmark: the real ``openai`` / ``anthropic`` clients against the simulator.

Three scenarios, each on a fresh :class:`~stageflow_plus.bench.provider.ProviderSimulator`
with the client's ``base_url`` on it (``max_retries=0``; the tools of
:mod:`~stageflow_plus.bench.llm_tools`) and a chain from ``build({"llm": ...})``:

* ``learned_limits`` — no limits configured, the provider named (OpenAI, then Anthropic):
  calls offered at 1.5x what the provider sustains. Reports the 429s in the first 10 s and
  after, and the efficiency after 10 s (calls the provider admitted over what it sustains).
* ``tpm_reconciled`` — an Anthropic-shaped provider (it reconciles output tokens to the real
  usage, as Anthropic documents); calls reserve ``max_tokens`` but use 20 % of it. Output-
  token utilisation with the usage reconciled (``reconcile = "refund"``) beside reserve-and-
  never-refund (``reconcile = "off"``, what the OpenAI cookbook's processor does).
* ``exact_limits`` — the issue's set-up: an OpenAI-shaped provider enforcing exactly the
  configured 600 RPM / 120 000 TPM, 300 tokens a call, bursts of calls. The ``[llm]``
  defaults (safety margin, pause, retry) beside a chain configured by hand to the exact
  numbers (no margin, no pause, no retry): calls lost and 429s per burst.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stageflow.tools import ToolRegistry

from ..interceptors.chain import ToolCallChain
from ..interceptors.concurrency import ConcurrencyLimiter
from ..interceptors.rate import TokenBucketRateLimiter
from ..llm.usage import estimate_tokens
from ..primitives.resources import Rate
from ..stageflow.config import build
from ..stageflow.tools import LimitedToolRegistry
from ..testing import SimpleAction
from .listeners import SilentListener
from .llm_tools import ANTHROPIC_ACTION, OPENAI_ACTION, AnthropicMessagesTool, OpenAIChatTool
from .provider import ProviderLimits, ProviderSimulator

__all__ = [
    "LLM_TARGETS",
    "Scenario",
    "format_llm_table",
    "llm_scenarios",
    "run_llm_bench",
    "run_scenario",
    "summarize_scenario",
]

LLM_TARGETS = {
    "learned_limits": "learned from headers: <= 1 429 in the first 10 s, 0 after, "
                      "efficiency >= 0.95 after 10 s",
    "tpm_reconciled": "usage reconciled: TPM utilisation >= 0.95 with 0 429s",
    "exact_limits": "exact provider limits: no call lost, <= 1 429 per burst",
}
"""What the LLM scenarios aim at (measured and reported, never asserted by tests)."""

KEY = "sk-loopback-bench"  # the simulator checks no key


@dataclass(frozen=True)
class Scenario:
    """One run: a provider, a chain, and calls offered at a rate or in bursts.

    :ivar name: the scenario and variant, e.g. ``"learned_limits/openai"``.
    :ivar provider: ``"openai"`` or ``"anthropic"`` (which client and endpoint).
    :ivar limits: what the simulated provider enforces.
    :ivar llm: the ``[stageflow_plus.llm]`` table, or ``None`` for the hand-made chain.
    :ivar rate: calls offered per second (when no ``bursts``).
    :ivar duration: seconds of arrivals.
    :ivar bursts: ``(at, calls)`` pairs instead of a rate.
    :ivar max_tokens: the calls' output budget; :ivar output_fraction: the part used.
    :ivar prompt_chars: the prompt's length (characters / 4 = tokens).
    :ivar split: seconds after which the "after" figures start.
    :ivar grace: seconds after the arrivals for the calls still queued (then they are cut:
        under overload, the backlog).
    """

    name: str
    provider: str
    limits: ProviderLimits
    llm: Mapping[str, Any] | None
    rate: float = 0.0
    duration: float = 10.0
    bursts: tuple[tuple[float, int], ...] = ()
    max_tokens: int = 200
    output_fraction: float = 1.0
    prompt_chars: int = 400
    split: float = 10.0
    grace: float = 0.5


def _client(provider: str, url: str) -> Any:
    if provider == "openai":
        import openai

        return openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    import anthropic

    return anthropic.AsyncAnthropic(base_url=url, api_key=KEY, max_retries=0)


def _hand_made(registry: ToolRegistry, limits: ProviderLimits) -> LimitedToolRegistry:
    """The issue's chain: rate and concurrency limits at the provider's exact numbers."""
    rate = TokenBucketRateLimiter([
        Rate(limits.rpm, per=60, burst=limits.request_burst),
        Rate(limits.tpm, per=60, burst=limits.token_burst, dimension="tokens"),
    ], key="global")
    chain = ToolCallChain([rate, ConcurrencyLimiter(limits.max_concurrent)],
                          listener=SilentListener(), provider_pause=False)

    def cost_of(tool: str, payload: Mapping[str, Any]) -> Mapping[str, float]:
        return estimate_tokens(payload)

    return LimitedToolRegistry(chain, registry, cost_of=cost_of)


def _arrivals(sc: Scenario, rng: random.Random) -> list[tuple[float, int]]:
    if sc.bursts:
        return [(at, i) for i, (at, n) in enumerate(sc.bursts) for _ in range(n)]
    count = int(sc.rate * sc.duration)
    return [(i / sc.rate + rng.uniform(0, 0.5 / sc.rate), -1) for i in range(count)]


async def run_scenario(sc: Scenario, *, seed: int = 0) -> dict[str, Any]:
    """Run one scenario; the figures of :func:`summarize_scenario`."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    action = OPENAI_ACTION if sc.provider == "openai" else ANTHROPIC_ACTION
    payload = {"model": "sim", "max_tokens": sc.max_tokens,
               "messages": [{"role": "user", "content": "x" * sc.prompt_chars}]}
    outcomes: list[str] = []
    async with ProviderSimulator(sc.limits, seed=seed, output_fraction=sc.output_fraction) as sim:
        client = _client(sc.provider, sim.url)
        registry = ToolRegistry()
        registry.register(OpenAIChatTool(client) if sc.provider == "openai"
                          else AnthropicMessagesTool(client))
        if sc.llm is not None:
            plus = build({"llm": dict(sc.llm)}, env={})
            plus.chain.gate.limiter.listener = SilentListener()  # type: ignore[union-attr]
            limited: LimitedToolRegistry = plus.registry(registry)
        else:
            limited = _hand_made(registry, sc.limits)

        async def one() -> None:
            try:
                out = await limited.execute(SimpleAction(action, dict(payload)), {})
                outcomes.append("ok" if out is not None and out.success else "failed")
            except asyncio.CancelledError:
                outcomes.append("cut")
                raise
            except Exception:
                outcomes.append("failed")

        sim.reset()
        start = loop.time()
        tasks: list[asyncio.Task[None]] = []
        for at, _ in _arrivals(sc, rng):
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        end = sc.duration if not sc.bursts else sc.bursts[-1][0]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True),
                                   max(0.0, start + end + sc.grace - loop.time()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await client.close()
        return summarize_scenario(sc, sim, outcomes)


def _sustained(sc: Scenario) -> tuple[float, float]:
    """Calls per second the provider sustains, and the tokens per call it keeps charging."""
    lim, prompt = sc.limits, math.ceil(sc.prompt_chars / 4)
    used = round(sc.max_tokens * sc.output_fraction)
    if sc.provider == "openai":
        charged = prompt + sc.max_tokens  # no refund
        return min(lim.rpm / 60, lim.tpm / 60 / charged), float(charged)
    rates = [lim.rpm / 60, lim.tpm / 60 / max(1, used)]
    if lim.input_tpm is not None:
        rates.append(lim.input_tpm / 60 / prompt)
    return min(rates), float(used)


def summarize_scenario(sc: Scenario, sim: ProviderSimulator,
                       outcomes: list[str]) -> dict[str, Any]:
    """Calls, outcomes, 429s (in the first ``split`` s and after, per burst), efficiency after
    ``split`` s and output-token utilisation after ``split`` s (in the arrival window)."""
    end = sc.duration if not sc.bursts else sc.bursts[-1][0] + 1.0
    per_second, _ = _sustained(sc)
    window = max(1e-9, end - sc.split)
    admitted = [t for t, _, _ in sim.ok_log if sc.split <= t < end]
    output = sum(o for t, _, o in sim.ok_log if sc.split <= t < end)
    burst_429: list[int] = []
    if sc.bursts:
        edges = [at for at, _ in sc.bursts] + [math.inf]
        burst_429 = [sum(1 for t in sim.log_429 if edges[i] <= t < edges[i + 1])
                     for i in range(len(sc.bursts))]
    return {
        "provider": sc.provider,
        "limits": {"rpm": sc.limits.rpm, "tpm": sc.limits.tpm,
                   "input_tpm": sc.limits.input_tpm, "burst_s": sc.limits.burst_s},
        "calls": len(outcomes) + 0,
        "ok": outcomes.count("ok"),
        "lost": outcomes.count("failed"),
        "cut_at_time_limit": outcomes.count("cut"),
        "http_429": len(sim.log_429),
        "http_429_first": sum(1 for t in sim.log_429 if t < sc.split),
        "http_429_after": sum(1 for t in sim.log_429 if t >= sc.split),
        "http_429_per_burst": burst_429,
        "efficiency_after": round(len(admitted) / (per_second * window), 3),
        "tpm_utilisation_after": round(output / (sc.limits.tpm / 60 * window), 3),
        "split_s": sc.split,
    }


def llm_scenarios(quick: bool = False) -> list[Scenario]:
    """The scenarios of ``stageflow-plus bench`` (``quick``: a few seconds each)."""
    scale = 0.2 if quick else 1.0
    learned_split = 10.0 * scale
    openai_limits = ProviderLimits(rpm=1200, tpm=120_000, max_concurrent=10_000,
                                   latency_ms=100, latency_jitter_ms=30)
    anthropic_limits = ProviderLimits(rpm=1200, tpm=60_000, max_concurrent=10_000,
                                      latency_ms=100, latency_jitter_ms=30, input_tpm=400_000)
    reconciling = ProviderLimits(rpm=60_000, tpm=60_000, max_concurrent=10_000, latency_ms=200,
                                 latency_jitter_ms=50, burst_s=3.0)
    exact = ProviderLimits(rpm=600, tpm=120_000, max_concurrent=10_000, latency_ms=100,
                           latency_jitter_ms=30)
    bursts = tuple((i * 2.5, 12) for i in range(5 if not quick else 2))
    return [
        Scenario("learned_limits/openai", "openai", openai_limits,
                 {"provider": "openai", "tools": [OPENAI_ACTION]},
                 rate=10.0, duration=20.0 * scale, split=learned_split),
        Scenario("learned_limits/anthropic", "anthropic", anthropic_limits,
                 {"provider": "anthropic", "tools": [ANTHROPIC_ACTION]},
                 rate=15.0, duration=20.0 * scale, output_fraction=0.5, split=learned_split),
        Scenario("tpm_reconciled/refund", "anthropic", reconciling,
                 {"provider": "anthropic", "tools": [ANTHROPIC_ACTION], "reconcile": "refund"},
                 rate=20.0, duration=12.0 * scale, max_tokens=500, output_fraction=0.2,
                 split=4.0 * scale),
        Scenario("tpm_reconciled/never_refund", "anthropic", reconciling,
                 {"provider": "anthropic", "tools": [ANTHROPIC_ACTION], "reconcile": "off"},
                 rate=20.0, duration=12.0 * scale, max_tokens=500, output_fraction=0.2,
                 split=4.0 * scale),
        Scenario("exact_limits/llm_defaults", "openai", exact,
                 {"provider": "openai", "tools": [OPENAI_ACTION], "rpm": 600, "tpm": 120_000},
                 bursts=bursts, split=0.0, grace=10.0),
        Scenario("exact_limits/hand_made_exact", "openai", exact, None, bursts=bursts,
                 split=0.0, grace=10.0),
    ]


def _targets(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    learned = [r for n, r in runs.items() if n.startswith("learned_limits/")]
    if learned:
        measured = {n.split("/")[1]: {k: r[k] for k in ("http_429_first", "http_429_after",
                                                         "efficiency_after")}
                    for n, r in runs.items() if n.startswith("learned_limits/")}
        met = all(r["http_429_first"] <= 1 and r["http_429_after"] == 0
                  and r["efficiency_after"] >= 0.95 for r in learned)
        out["learned_limits"] = {"target": LLM_TARGETS["learned_limits"],
                                 "measured": measured, "met": met}
    refund, never = runs.get("tpm_reconciled/refund"), runs.get("tpm_reconciled/never_refund")
    if refund is not None:
        out["tpm_reconciled"] = {
            "target": LLM_TARGETS["tpm_reconciled"],
            "measured": {"utilisation": refund["tpm_utilisation_after"],
                         "http_429": refund["http_429"],
                         "never_refund_utilisation": never["tpm_utilisation_after"]
                         if never else None},
            "met": refund["tpm_utilisation_after"] >= 0.95 and refund["http_429"] == 0,
        }
    exact = runs.get("exact_limits/llm_defaults")
    if exact is not None:
        out["exact_limits"] = {
            "target": LLM_TARGETS["exact_limits"],
            "measured": {"lost": exact["lost"] + exact["cut_at_time_limit"],
                         "http_429_per_burst": exact["http_429_per_burst"]},
            "met": exact["lost"] + exact["cut_at_time_limit"] == 0
            and max(exact["http_429_per_burst"] or [0]) <= 1,
        }
    return out


def run_llm_bench(*, quick: bool = False, names: Callable[[str], bool] | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every scenario (in this process, one after another): ``{"runs", "targets"}``."""
    runs: dict[str, Any] = {}
    for sc in llm_scenarios(quick):
        if names is not None and not names(sc.name):
            continue
        if progress is not None:
            progress(sc.name)
        runs[sc.name] = asyncio.run(run_scenario(sc))
    return {"quick": quick, "runs": runs, "targets": _targets(runs)}


def format_llm_table(llm: Mapping[str, Any]) -> str:
    """The LLM scenarios for people: one row per run."""
    header = (f"{'scenario':<30} {'calls':>5} {'ok':>4} {'lost':>4} {'cut':>4} "
              f"{'429 first':>9} {'429 after':>9} {'eff after':>9} {'TPM util':>8}  429/burst")
    lines = ["", "LLM scenarios (real openai / anthropic clients against the simulator; "
             "'cut' = still queued at the end of an overloaded run)", header, "-" * len(header)]
    for name, r in llm.get("runs", {}).items():
        bursts = "/".join(str(n) for n in r["http_429_per_burst"]) or "-"
        lines.append(
            f"{name:<30} {r['calls']:>5} {r['ok']:>4} {r['lost']:>4} "
            f"{r['cut_at_time_limit']:>4} {r['http_429_first']:>9} {r['http_429_after']:>9} "
            f"{r['efficiency_after']:>9.3f} {r['tpm_utilisation_after']:>8.3f}  {bursts}")
    return "\n".join(lines)
