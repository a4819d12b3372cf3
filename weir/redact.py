"""Secrets out of everything weir prints: URLs in logs, metric labels, /readyz and error lines.

A node, relay or Redis URL often carries a credential: a password (``redis://user:pass@…``), a
provider key in the path (Alchemy ``/v2/<key>``, Infura ``/v3/<id>``, QuickNode ``/<token>/``) or
in the query (``?api_key=…``). :func:`redact_url` hides, as ``***``:

- the whole userinfo (``user:password@`` becomes ``***@``);
- in the path, every run of 20 or more key characters (letters, digits, ``-_+=~%``: hex, base58,
  base64url keys), and the segment after a version segment (``/v2/<key>``) whatever its length;
  dotted names (``/xrpc/com.atproto.sync.subscribeRepos``) and short words stay readable;
- query values whose name says secret (key, token, secret, pass, auth, sig, credential, session,
  jwt), and a value-less query item that looks like a key; others (``cursor=…``) stay;
- the fragment.

Scheme, host and port always stay: they say which server is meant. :func:`redact_text` does the
same to every URL inside a message (an exception's text, a log line).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

_KEY_RUN = re.compile(r"[A-Za-z0-9_\-+=~%]{20,}")
_VERSION_SEGMENT = re.compile(r"v\d+", re.IGNORECASE)
_SECRET_NAME = re.compile(r"key|token|secret|pass|pwd|auth|sig|credential|session|jwt", re.IGNORECASE)
# A URL inside free text: a scheme, ://, any userinfo (a password may hold quotes and brackets),
# then anything up to white space or a quote.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://(?:[^\s/@]*@)?[^\s'\"<>`]*")
_TRAILING_PUNCTUATION = ".,;:!?)]}"
_FILESYSTEM_SCHEMES = frozenset({"unix", "file"})  # their path is a file name, not a provider's key


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***`` (see the module docstring)."""
    url = _without_userinfo(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL urllib can take apart (e.g. an unclosed IPv6 bracket): show none of it
        scheme = url.partition("://")[0] if "://" in url else ""
        return f"{scheme}://{REDACTED}" if scheme.isalnum() else REDACTED
    path = parts.path if parts.scheme.lower() in _FILESYSTEM_SCHEMES else _redact_path(parts.path)
    return urlunsplit((parts.scheme, parts.netloc, path, _redact_query(parts.query), REDACTED if parts.fragment else ""))


def _without_userinfo(url: str) -> str:
    """Everything between ``://`` and the last ``@`` before the path is userinfo: taken out before
    urllib parses the URL, which would split a password holding ``?`` or ``#`` at that character."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    at = rest.rfind("@", 0, len(rest.split("/", 1)[0]))
    return url if at < 0 else f"{scheme}://{REDACTED}{rest[at:]}"


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`."""
    if "://" not in text:  # the common case for a log line: nothing to look at
        return text
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    found = match.group()
    url = found.rstrip(_TRAILING_PUNCTUATION)  # "(see ws://host/path)." ends the URL before ")."
    return redact_url(url) + found[len(url):]


def _redact_path(path: str) -> str:
    segments = path.split("/")
    for i, segment in enumerate(segments):
        if i > 0 and segment and _VERSION_SEGMENT.fullmatch(segments[i - 1]):
            segments[i] = REDACTED
        else:
            segments[i] = _KEY_RUN.sub(REDACTED, segment)
    return "/".join(segments)


def _redact_query(query: str) -> str:
    if not query:
        return query
    items = []
    for item in query.split("&"):
        name, equals, value = item.partition("=")
        if equals and value and _SECRET_NAME.search(name):
            item = f"{name}={REDACTED}"
        elif not equals:
            item = _KEY_RUN.sub(REDACTED, item)
        items.append(item)
    return "&".join(items)
