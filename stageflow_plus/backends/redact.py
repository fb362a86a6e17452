"""Credentials never leave the process: the one place where a backend URL is made printable.

Every log line, warning, exception text, ``repr``, statistics record and CLI line that names
a backend URL goes through :func:`redact_url` (a URL) or :class:`Redactor` (free text that
may quote one, e.g. a client library's error message)::

    >>> redact_url("redis://user:s3cret@cache:6379/0?password=s3cret")
    'redis://user:***@cache:6379/0?password=***'

What is hidden: the password of the ``user:password@`` part (the user name stays: it helps
and is not a secret), the values of the query parameters ``password``, ``pass``, ``pwd``,
``passwd``, ``secret``, ``token``, ``auth``, ``key`` and ``access_key`` (any case), and a URL
whose shape cannot be parsed is hidden whole after its scheme. A :class:`Redactor` also
replaces every occurrence of the URL's secrets in any text, however they were quoted.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["MASK", "SECRET_PARAMS", "Redactor", "redact_url"]

MASK = "***"
"""What a secret is replaced with."""

SECRET_PARAMS = frozenset({"password", "pass", "pwd", "passwd", "secret", "token", "auth",
                            "key", "access_key"})
"""Query parameters whose values are secrets (compared case-insensitively)."""
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^@/?#]*)@")


def _secrets_of(url: str) -> list[str]:
    """The secret strings inside ``url`` (raw and percent-decoded), longest first."""
    found: set[str] = set()
    match = _USERINFO.match(url)
    if match is not None:
        user = match.group("user")
        if ":" in user:
            password = user.split(":", 1)[1]
            found.update({password, unquote(password)})
        elif user and not url.lower().startswith(("unix", "memory")):
            # "redis://secret@host": redis-py reads a lone user part as the password
            found.update({user, unquote(user)})
    query = url.split("?", 1)[1] if "?" in url else ""
    for raw in query.split("&"):
        name, _, value = raw.partition("=")
        if unquote(name).lower() in SECRET_PARAMS and value:
            found.update({value, unquote(value)})
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower() in SECRET_PARAMS and value:
            found.add(value)
    return sorted((s for s in found if s), key=len, reverse=True)


def redact_url(url: object) -> str:
    """``url`` with its password and secret query values replaced by ``***``.

    Accepts anything (a config value may be of the wrong type): a non-string is shown by
    its type only, never by its value.
    """
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    text = url
    match = _USERINFO.match(text)
    if match is not None:
        user = match.group("user")
        if ":" in user:
            masked = f"{user.split(':', 1)[0]}:{MASK}"
        elif user and not text.lower().startswith(("unix", "memory")):
            masked = MASK
        else:
            masked = user
        text = f"{match.group('scheme')}{masked}@{text[match.end():]}"
    if "?" in text:
        base, query = text.split("?", 1)
        parts = []
        for raw in query.split("&"):
            name, eq, value = raw.partition("=")
            if eq and value and unquote(name).lower() in SECRET_PARAMS:
                value = MASK
            parts.append(f"{name}{eq}{value}")
        text = f"{base}?{'&'.join(parts)}"
    rest = text.split("://", 1)[-1].split("?", 1)[0]
    if rest.count("@") > (1 if match is not None else 0):  # an '@' the parser did not take
        scheme = text.split("://", 1)[0] if "://" in text else ""
        return f"{scheme}://{MASK}" if scheme else MASK
    try:
        urlsplit(text)
    except ValueError:
        scheme = text.split("://", 1)[0] if "://" in text else ""
        return f"{scheme}://{MASK}" if scheme else MASK
    for secret in _secrets_of(url):  # whatever quoting survived the structured pass
        text = text.replace(secret, MASK)
    return text


class Redactor:
    """Scrubs the secrets of one URL out of any text (error messages, log fields).

    :param url: the backend URL whose secrets must never be shown.

    ``Redactor(url).url`` is the printable URL; ``Redactor(url)(text)`` returns ``text``
    with the URL replaced by its printable form and every secret string replaced by ``***``.
    """

    __slots__ = ("_raw", "_secrets", "url")

    def __init__(self, url: object) -> None:
        self._raw = url if isinstance(url, str) else ""
        self.url = redact_url(url)
        self._secrets = _secrets_of(self._raw) if self._raw else []

    def __call__(self, text: object) -> str:
        out = str(text)
        if self._raw:
            out = out.replace(self._raw, self.url)
        for secret in self._secrets:
            out = out.replace(secret, MASK)
        return out

    def __repr__(self) -> str:
        return f"Redactor({self.url!r})"
