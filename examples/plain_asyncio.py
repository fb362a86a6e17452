"""Plain asyncio: ``async with chain.limit(...)`` and ``@limited``, no Stageflow pipeline.

An "LLM" that answers after 50 ms is called by two tenants at two priorities through one
chain (concurrency 3, 1 200 requests/min, 200 000 tokens/min); one caller gives up (is
cancelled) while queued and its place goes to the next. Then a 429 with Retry-After pauses
the key for every caller.

Run: python examples/plain_asyncio.py   (prints 3 lines)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from stageflow_plus import (
    ConcurrencyLimiter,
    PriorityFairQueue,
    Rate,
    TokenBucketRateLimiter,
    ToolCallChain,
    limited,
)


@dataclass(frozen=True)
class User:
    org: str
    vip: bool = False


class TooManyRequests(Exception):
    """What an SDK raises on a 429 (the chain reads ``retry_after``)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429, retry after {retry_after}s")
        self.retry_after = retry_after


rate = TokenBucketRateLimiter([Rate(1_200, per=60, burst=10),
                               Rate(200_000, per=60, burst=20_000, dimension="tokens")],
                              key="global")
chain = ToolCallChain([PriorityFairQueue(), rate, ConcurrencyLimiter(3)], name="llm")
order: list[str] = []


@limited(chain, tool="llm", per_call=lambda prompt, *, user: {
    "tenant": user.org, "priority": 2 if user.vip else 0,
    "cost": {"tokens": len(prompt) * 10 + 500}})
async def answer(prompt: str, *, user: User) -> str:
    order.append(user.org)
    await asyncio.sleep(0.05)  # the provider
    return prompt.upper()


async def main() -> None:
    batch = [asyncio.ensure_future(answer(f"doc {i}", user=User("batch"))) for i in range(8)]
    await asyncio.sleep(0.01)  # three run, five wait
    impatient = batch[-1]
    impatient.cancel()  # a caller that gives up while queued: it leaves the queue
    vip = [asyncio.ensure_future(answer("help!", user=User("acme", vip=True)))
           for _ in range(2)]
    done = await asyncio.gather(*batch[:-1], *vip)
    assert impatient.cancelled() and len(done) == 9
    first_after_queue = order[3:5]
    assert first_after_queue == ["acme", "acme"], order  # priority 2 went before the batch
    print(f"9 answers; call order {' '.join(order)} (the VIP overtook the queued batch)")

    stats = chain.statistics()
    assert stats is not None and stats.in_flight == 0 and stats.tasks_waiting == 0
    print(f"in flight {stats.in_flight}, waiting {stats.tasks_waiting}, cancelled while "
          f"waiting {stats.cancelled}: no permit leaked")

    loop = asyncio.get_running_loop()
    try:
        async with chain.limit(tool="llm", tenant="acme", cost={"tokens": 800}):
            raise TooManyRequests(retry_after=0.3)  # e.g. openai.RateLimitError
    except TooManyRequests:
        pass
    start = loop.time()
    async with chain.limit(tool="llm", tenant="acme", cost={"tokens": 800}) as call:
        call.adjust({"tokens": 350})  # what the provider billed
    print(f"after a 429 with Retry-After 0.3 s the next call waited "
          f"{loop.time() - start:.1f} s (the key was paused for every caller)")


if __name__ == "__main__":
    asyncio.run(main())
