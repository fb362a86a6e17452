"""Cost dimensions: the names a rate bucket may count, with a "did you mean" for typos.

A bucket of ``Rate(dimension="tokens")`` is charged ``call.cost["tokens"]``; a bucket whose
dimension no call ever carries charges nothing, so ``dimension = "token"`` (a typo) would
silently switch a TPM limit off. :func:`check_dimension` refuses a name that is not
registered but is close to a registered one (``'token'`` → did you mean ``'tokens'``?) —
:class:`~stageflow_plus.primitives.rate.Rate`, ``PriorityFairQueue(fair_cost=...)``, the
config and per-run overrides all ask it; :func:`register_dimension` adds your own names
(before you use them).

.. versionadded:: 0.2.0
"""

from __future__ import annotations

import difflib
import reprlib

from .errors import ConfigError

__all__ = ["KNOWN_DIMENSIONS", "check_dimension", "register_dimension"]

KNOWN_DIMENSIONS: dict[str, str] = {
    "requests": "one per call, charged automatically",
    "tokens": "LLM tokens (input + output) of a call",
    "input_tokens": "LLM prompt tokens of a call",
    "output_tokens": "LLM completion tokens of a call",
}
"""Registered dimension names and what they count (extend with :func:`register_dimension`)."""


def register_dimension(name: str, meaning: str = "") -> None:
    """Register a cost dimension name, so :func:`check_dimension` knows it is no typo."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a dimension name must be a non-empty string, got {reprlib.repr(name)}")
    KNOWN_DIMENSIONS[name] = meaning


def check_dimension(name: object, where: str) -> str:
    """``name`` if it is a usable dimension name.

    :raises ConfigError: not a non-empty string, or not registered while close to a
        registered name (a likely typo: the message says which one was meant).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where} must be a non-empty string (a cost dimension), "
                          f"got {reprlib.repr(name)}")
    if name in KNOWN_DIMENSIONS:
        return name
    lowered = {known.lower(): known for known in KNOWN_DIMENSIONS}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.75)
    if close:
        raise ConfigError(
            f"{where} = {name!r} is not a known cost dimension; did you mean "
            f"{lowered[close[0]]!r}? (known: {', '.join(sorted(KNOWN_DIMENSIONS))}; "
            "register your own with stageflow_plus.register_dimension)"
        )
    return name
