"""Keeping secrets out of messages: URL credentials and values shown in errors.

A Redis URL may carry a password (``redis://:secret@host/0``, ``?password=...``); config
errors, ``config show`` and ``config check`` print values, so every value they print goes
through here. A URL alone goes through the backends' :func:`~stageflow_plus.backends.
redact.redact_url` (re-exported here: one redactor for URLs); free text that may quote
URLs through :func:`redact_text`.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

from ..backends.redact import SECRET_PARAMS, redact_url

__all__ = ["redact_error", "redact_text", "redact_url", "show"]


_CREDENTIALS_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#\s'\"]*)@")
# a URL's secret query values (the names backends.redact hides), wherever a URL is quoted
_SECRET_NAMES = "|".join(sorted(SECRET_PARAMS))
_SECRET_QUERY_IN_TEXT = re.compile(rf"([?&](?:{_SECRET_NAMES})=)[^&#\s'\"]*", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` (e.g. a value's repr in a message) with every URL's credentials hidden: the
    password of ``user:password@`` and the values of secret query parameters (``password=``,
    ``token=``, … as :mod:`stageflow_plus.backends.redact` lists them)."""
    text = _CREDENTIALS_IN_TEXT.sub(
        lambda m: m.group(1) + (f"{m.group(2).partition(':')[0]}:***@" if ":" in m.group(2)
                                else "***@"), text)
    return _SECRET_QUERY_IN_TEXT.sub(lambda m: m.group(1) + "***", text)


def show(value: Any) -> str:
    """``value`` for a message: a short repr, any URL's credentials hidden, and the type
    named for strings (so ``'false'`` is visibly not ``false``)."""
    text = redact_text(reprlib.repr(value))
    return f"{text} ({type(value).__name__})" if isinstance(value, str) else text


def redact_error(error: BaseException) -> None:
    """Hide URL credentials in the messages of ``error`` and of the errors it chains to."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.args and isinstance(current.args[0], str):
            current.args = (redact_text(current.args[0]), *current.args[1:])
        current = current.__cause__ or current.__context__
