"""What an endpoint's answer means for an entry, and how long to wait before trying again.

Pure (docs/delivery.md, Webhooks):

- 2xx: delivered (the entry is acknowledged);
- 408, 429, 5xx, no answer within the timeout, a connection refused or closed before the
  response: the endpoint is unwell, try again (with backoff, and it counts against the circuit
  breaker);
- any other status (4xx, and 1xx / 3xx: redirects are not followed): the endpoint refuses this
  entry; it is delivered again and dead-lettered after deliver.max_deliveries, with the status
  and the start of the response body as the reason.
"""

from __future__ import annotations

import enum

import attrs

from weir.deliver.settings import DeliverPipelineSettings
from weir.supervision import Backoff

EXCERPT_BYTES = 200  # of a refusing response's body, in the reason
_RETRIED_4XX = frozenset({408, 429})


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


@attrs.frozen
class Outcome:
    """One attempt's result; ``reason`` says why it was not delivered (empty when it was)."""

    verdict: Verdict
    reason: str = ""


DELIVERED = Outcome(Verdict.DELIVERED)


def outcome_of_status(status: int, body: bytes) -> Outcome:
    """The outcome of a response with ``status`` whose body begins with ``body``."""
    if 200 <= status < 300:
        return DELIVERED
    excerpt = excerpt_of(body)
    reason = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in _RETRIED_4XX or 500 <= status < 600:
        return Outcome(Verdict.RETRY, reason)
    return Outcome(Verdict.REFUSED, reason)


def excerpt_of(body: bytes) -> str:
    """The start of a response body as one line of printable text."""
    text = body[:EXCERPT_BYTES].decode("utf-8", errors="replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def retry_backoff(pipe: DeliverPipelineSettings) -> Backoff:
    """The pauses between an entry's tries: full jitter, the cap doubling from ``retry_initial``
    up to ``retry_max`` (weir.supervision.Backoff)."""
    return Backoff(initial=pipe.retry_initial, maximum=pipe.retry_max, multiplier=2.0)
