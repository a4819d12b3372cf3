"""Errors that no restart can fix.

A :class:`Fatal` error is raised where weir finds it (a codec, an actor); the supervisors restart
the actor that raised it as for any crash, within their restart intensity (a node that served a
bogus answer once gets another chance), but once a supervisor gives up on it, no supervisor above
restarts that subtree again: the escalation climbs to the root and weir stops with one line naming
the error and exit code :data:`EXIT_FATAL`, instead of crash-looping. A leaf module: codecs,
actors, supervision and the CLI import it; it imports nothing of weir.
"""

from __future__ import annotations

import ssl

__all__ = ["EXIT_FATAL", "CertificateRefused", "Fatal", "certificate_refused", "fatal_in"]

#: weir's exit code after a fatal error (1 is any other failure, 2 a usage error).
EXIT_FATAL = 3


class Fatal(Exception):
    """An error only an operator can resolve: configuration (another chain behind the URL), or a
    decision weir will not take alone (a reorg deeper than it can retract, history the node no
    longer serves). The message says what and where, on one line."""


class CertificateRefused(Fatal):
    """The peer's TLS certificate does not verify against the trusted CAs (any transport): a
    configuration matter (the URL, the CA bundle, ``SSL_CERT_FILE``), not a network fault."""


def fatal_in(exc: BaseException | None) -> Fatal | None:
    """The :class:`Fatal` error ``exc`` is, wraps (exception groups) or was caused by, if any."""
    found = _find(exc, Fatal)
    return found if isinstance(found, Fatal) else None


def certificate_refused(exc: BaseException | None, peer: str = "") -> CertificateRefused | None:
    """The :class:`CertificateRefused` to raise (from ``exc``) when ``exc`` is, wraps or was caused
    by a certificate verification failure (libraries wrap it: redis-py in a ConnectionError, trio
    in BrokenResourceError); None otherwise. ``peer``: what was connected to (a redacted URL)."""
    found = _find(exc, ssl.SSLCertVerificationError)
    if not isinstance(found, ssl.SSLCertVerificationError):
        return None
    where = f" of {peer}" if peer else ""
    return CertificateRefused(f"the TLS certificate{where} was refused (CERTIFICATE_VERIFY_FAILED: {found.verify_message})")


def _find(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        if isinstance(current, BaseExceptionGroup):
            stack += list(current.exceptions)
        stack += [current.__cause__, current.__context__]
    return None
