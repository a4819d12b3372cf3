"""The reconnect loop every source actor runs: a session, and on a network fault, backoff and again."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio

from weir.errors import certificate_refused
from weir.supervision import Backoff, CircuitBreaker


async def reconnect_forever(
    session: Callable[[], Awaitable[None]],
    *,
    progress: Callable[[], int],
    is_transient: Callable[[BaseException], bool],
    on_lost: Callable[[BaseException, float, bool], Awaitable[None]],
    stats: Any,
    backoff: Backoff,
    rng: random.Random,
    breaker: CircuitBreaker | None = None,
    retry_after: Callable[[BaseException], float | None] = lambda exc: None,
    peer: str = "",
) -> NoReturn:
    """Run ``session`` again and again; only a fault that is not transient (or a cancel) ends it.

    Args:
        session: one connection's life; it ends by raising.
        progress: a counter that grows when a session delivers data. A session that delivered
            nothing counts against ``breaker``; one that did resets the backoff.
        on_lost: called with the fault, the delay before the next try, and whether the session
            had opened (``stats.connected``: it got data) or failed before (log it, note it in the
            stats, hand on what is pending).
        stats: the source's statistics; ``connected`` and ``reconnects`` are kept here.
        retry_after: a delay the peer asked for (e.g. HTTP 429 Retry-After), used when longer.
        peer: what the session connects to (a redacted URL), for the message of a fatal error.

    Raises:
        CertificateRefused: the peer's TLS certificate did not verify (whatever the transport
            wrapped it in): retrying cannot help, so it is fatal (weir.errors), never a reconnect.
        The session's exception when ``is_transient`` says it is not a network fault.
    """
    attempt = 0
    while True:
        before = progress()
        if breaker is not None:
            await breaker.wait_allowed()
        try:
            await session()
            raise AssertionError("a source session ends by raising")  # pragma: no cover
        except Exception as exc:
            opened, stats.connected = stats.connected, False  # opened: the session got as far as data
            progressed = progress() > before
            if breaker is not None and not progressed:
                breaker.record_failure()
            refused = certificate_refused(exc, peer)
            if refused is not None:
                raise refused from exc
            if not is_transient(exc):
                raise
            if progressed:
                attempt = 0
            delay = backoff.delay(attempt, rng)
            hint = retry_after(exc)
            if hint is not None:
                delay = max(delay, hint)
            attempt += 1
            stats.reconnects += 1
            await on_lost(exc, delay, opened)
            await trio.sleep(delay)
        except BaseException:
            if breaker is not None:
                breaker.release_trial()  # cancelled: no verdict on the peer
            raise
