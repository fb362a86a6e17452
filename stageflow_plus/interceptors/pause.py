"""ProviderPause: a provider's Retry-After stops a key for every caller, in the admission gate.

When a provider answers 429 with ``Retry-After`` (or 503/529 asking to wait), every other
call to it would get the same answer until then. :class:`ProviderPause` turns the answer into
a **resource the admission gate waits on**: while a key is paused, a call on that key needs
the key's :class:`PauseGate` besides its permits and tokens, and the gate grants all of them
together or none (so nobody holds a permit while the pause runs, and a cancelled or timed-out
waiter simply leaves the queue). Calls already queued on the key when the pause starts get
the pause added to what they wait for. With no pause active, a call pays one dictionary
truth test.

:class:`~stageflow_plus.interceptors.chain.ToolCallChain` adds a ``ProviderPause()`` (keyed
by tool) to every chain that has limiter interceptors, so a concurrency-only chain pauses
too; put your own ``ProviderPause(key=...)`` in the chain to choose the key, or pass
``provider_pause=False`` to the chain to turn pauses off.

Every pause is capped at ``max_pause`` seconds (default 60 s, the official SDKs honour at
most 60-120 s); a capped pause is logged once per key and pause (logger
``"stageflow_plus"``, WARNING). Unusable provider values (garbage, nan, inf, negative) are
ignored and logged; a programmer's :meth:`ProviderPause.pause` with such a value raises
:class:`~stageflow_plus.primitives.errors.ConfigError`.

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from ..llm.answers import _DATA_ONLY, read_answer
from ..primitives.errors import ConfigError, Rejected
from ..primitives.lease import Lease
from ..primitives.resources import Resource
from .call import ToolCall
from .part import LimitPart

__all__ = ["DEFAULT_MAX_PAUSE", "PAUSE_KEYS", "PauseGate", "ProviderPause", "check_seconds"]

logger = logging.getLogger("stageflow_plus")

_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, tuple})
# (_DATA_ONLY, from the answers module: a success of one of these result types without a
# ``data`` mapping has nothing to read)

DEFAULT_MAX_PAUSE = 60.0
"""The default cap of a provider pause, in seconds."""

PAUSE_KEYS: dict[str, Callable[[ToolCall], str]] = {
    "tool": lambda call: call.tool,
    "global": lambda call: "*",
    "tenant": lambda call: call.tenant,
}
"""The named keys a pause can be per."""


def check_seconds(value: object, where: str, *, allow_zero: bool = True) -> float:
    """``value`` as finite seconds ``>= 0`` (``> 0`` unless ``allow_zero``), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number of seconds, got {value!r}")
    number = float(value)
    if math.isnan(number) or math.isinf(number) or number < 0 or (
        not allow_zero and number == 0
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{where} must be a finite number {bound}, got {value!r}")
    return number


class PauseGate(Resource):
    """A key's pause as a resource: available from ``until`` on; nothing is ever spent.

    A call needs ``1`` of it; ``take``/``release``/``refund`` change nothing, so a grant or a
    cancellation can never leak it.
    """

    __slots__ = ("capped_logged", "until")

    def __init__(self, key: str, until: float) -> None:
        super().__init__(key)
        self.until = until
        self.capped_logged = False  # "once per key and pause"

    def max_amount(self) -> float:
        return 1.0

    def available(self, amount: float, now: float) -> bool:
        return now >= self.until

    def try_take(self, amount: float, now: float) -> bool:
        return now >= self.until

    def take(self, amount: float, now: float) -> None:
        """Nothing to take: a pause only delays."""

    def ready_at(self, amount: float, now: float) -> float:
        return max(now, self.until)

    def release(self, amount: float, now: float, held_for: float) -> None:
        """Nothing to give back."""

    def refund(self, amount: float, now: float) -> None:
        """Nothing to give back."""

    def estimate_wait(self, amount: float, now: float) -> float:
        return max(0.0, self.until - now)

    def __repr__(self) -> str:
        return f"<PauseGate {self.key} until {self.until:.3f}, {self.queued} waiting>"


class ProviderPause(LimitPart):
    """Pauses a key for every caller when a provider asks to wait (a limiter interceptor).

    :param key: what a pause is per: ``"tool"`` (default), ``"global"``, ``"tenant"``, or a
        function of the call (e.g. the provider or model) — independent of any rate key.
    :param retry_after: finds the wait in a result or exception (default: the provider's
        answer as :func:`~stageflow_plus.llm.answers.read_answer` sees it: 429/503/529 with
        ``retry-after-ms`` / ``retry-after``, ``retry_after`` attributes and data keys).
    :param max_pause: the longest pause, in seconds (default 60).

    Our own refusals (:class:`~stageflow_plus.primitives.errors.Rejected`, e.g. a Redis
    backend refusing under ``fail_closed``) never pause anything: no provider answered.
    """

    __slots__ = ("_key", "_max_pause", "_next_expiry", "_paused", "_retry_after", "pauses")

    contributes_demands = True
    observes_results = True

    def __init__(
        self,
        *,
        key: str | Callable[[ToolCall], str] = "tool",
        retry_after: Callable[[Any], float | None] | None = None,
        max_pause: float = DEFAULT_MAX_PAUSE,
    ) -> None:
        super().__init__()
        if isinstance(key, str):
            if key not in PAUSE_KEYS:
                raise ConfigError(
                    f"ProviderPause key must be one of {sorted(PAUSE_KEYS)} or a function, "
                    f"got {key!r}"
                )
            self._key = PAUSE_KEYS[key]
        elif callable(key):
            self._key = key
        else:
            raise ConfigError(f"ProviderPause key must be a str or callable, got {key!r}")
        if retry_after is not None and not callable(retry_after):
            raise ConfigError(f"ProviderPause retry_after must be callable, got {retry_after!r}")
        self._retry_after = retry_after
        self._max_pause = check_seconds(max_pause, "ProviderPause max_pause", allow_zero=False)
        self._paused: dict[str, PauseGate] = {}  # invariant: only keys paused at some point
        self._next_expiry = math.inf  # the earliest ``until`` in _paused
        #: pauses started or extended (for statistics and tests)
        self.pauses = 0

    @property
    def max_pause(self) -> float:
        """The longest pause, in seconds."""
        return self._max_pause

    def key_of(self, call: ToolCall) -> str:
        """The pause key of ``call``."""
        return self._key(call)

    # the gate's hooks -------------------------------------------------------------------
    def demand_template(self) -> tuple[tuple[Resource, str | None], ...] | None:
        """Nothing while no key is paused (the gate then asks nothing per call)."""
        if type(self).add_demands is not ProviderPause.add_demands or self._paused:
            return None
        return ()

    def add_demands(self, call: ToolCall, now: float, out: list[tuple[Resource, float]]) -> None:
        if self._paused:  # the whole cost when nothing is paused: this truth test
            if now >= self._next_expiry:
                self._sweep(now)
            gate = self._paused.get(self._key(call))
            if gate is not None and now < gate.until:
                out.append((gate, 1.0))

    def reads_quiet_results(self) -> bool:
        """Only with a ``retry_after`` callback: otherwise a quiet result (see
        :meth:`LimitPart.reads_quiet_results`) holds no 429 or Retry-After to read."""
        return self._retry_after is not None

    def after_result(self, call: ToolCall, lease: Lease, result: Any) -> None:
        if type(result) in _PLAIN:
            return  # the common plain results: nothing to look at
        data = getattr(result, "data", None)
        if data is None and type(result) in _DATA_ONLY:
            return  # a Stageflow ToolOutput without data: no answer anywhere in it
        if type(data) is dict:  # a ToolOutput / StageOutput: a success says nothing here
            status = data.get("status")
            if type(status) is int and status < 400 and "retry_after" not in data and (
                "retry_after_ms" not in data
            ):
                return
        self._observe(call, result)

    def after_error(self, call: ToolCall, lease: Lease, error: Exception) -> None:
        if not isinstance(error, Rejected):
            self._observe(call, error)

    def _observe(self, call: ToolCall, outcome: Any) -> None:
        if self._retry_after is not None:
            seconds = self._retry_after(outcome)
            if seconds is None:
                return
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                0 <= seconds < math.inf
            ):
                logger.warning("stageflow_plus: ignored an unusable provider wait %r for key "
                               "%r (retry_after callback)", seconds, self._key(call))
                return
        else:
            answer = read_answer(outcome)
            if answer is None:
                return
            if answer.invalid:
                logger.warning("stageflow_plus: ignored unusable provider values for key %r: "
                               "%s", self._key(call), "; ".join(answer.invalid))
            if answer.retry_after is None or not answer.rate_limited:
                return
            seconds = answer.retry_after
        self._start(self._key(call), float(seconds), provider=True)

    # pausing ---------------------------------------------------------------------------
    def pause(self, key: str, seconds: float) -> None:
        """Stop ``key`` for every caller for ``seconds`` (capped at ``max_pause``, logged).

        A later pause never shortens a running one. :raises ConfigError: ``seconds`` is not a
        finite number ``>= 0`` (a bool, a string, nan, inf or negative).
        """
        if not isinstance(key, str):
            raise ConfigError(f"ProviderPause.pause: key must be a str, got {key!r}")
        self._start(key, check_seconds(seconds, "ProviderPause.pause seconds"), provider=False)

    def _start(self, key: str, seconds: float, *, provider: bool) -> None:
        limiter = self.gate.limiter
        now = limiter.clock.now()
        capped = seconds > self._max_pause
        wait = min(seconds, self._max_pause)
        until = now + wait
        gate = self._paused.get(key)
        if gate is not None and gate.until <= now and not gate.queued:
            del self._paused[key]  # an old pause: this is a new one
            gate = None
        if gate is None:
            gate = self._paused[key] = PauseGate(f"pause:{key}", until)
            if len(self._paused) == 1:
                self.demands_changed()  # from now on every call is asked about its key
        elif until <= gate.until:
            return  # a shorter or equal pause changes nothing
        else:
            gate.until = until
        self._next_expiry = min(self._next_expiry, until)
        self.pauses += 1
        if capped and not gate.capped_logged:
            gate.capped_logged = True
            logger.warning(
                "stageflow_plus: %s pause of %r for %.6gs capped at max_pause=%gs",
                "provider" if provider else "requested", key, seconds, self._max_pause,
            )
        self._hold_queued(key, gate)
        on_paused = getattr(limiter.listener, "on_paused", None)
        if on_paused is not None:
            on_paused(key, wait)

    def _hold_queued(self, key: str, gate: PauseGate) -> None:
        """Calls already queued on ``key`` wait for the pause too (their demands grow)."""
        for waiter in self.gate.limiter.ordering.waiting():
            call = waiter.info
            if not isinstance(call, ToolCall) or self._key(call) != key:
                continue
            if any(resource is gate for resource, _ in waiter.demands):
                continue
            waiter.demands = [*waiter.demands, (gate, 1.0)]
            gate.queued += 1
            gate.queued_amount += 1.0

    def _sweep(self, now: float) -> None:
        """Forget ended pauses nobody waits on (memory stays bounded by live pauses)."""
        expiry = math.inf
        for key, gate in list(self._paused.items()):
            if gate.until <= now and not gate.queued:
                del self._paused[key]
            else:
                expiry = min(expiry, gate.until if gate.until > now else now + 1.0)
        self._next_expiry = expiry
        if not self._paused:
            self.demands_changed()  # no pause left: calls are no longer asked

    def paused(self) -> dict[str, float]:
        """Seconds left per paused key (keys whose pause is over are left out)."""
        now = self.gate.limiter.clock.now()
        return {key: g.until - now for key, g in self._paused.items() if g.until > now}

    def __repr__(self) -> str:
        return f"ProviderPause(max_pause={self._max_pause:g}, {len(self._paused)} keys)"
