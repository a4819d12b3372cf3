"""What an endpoint's answer means for an entry, how long to wait before trying again, and where
each entry of an offer goes (settle).

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
from collections.abc import Mapping, Sequence, Set

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


@attrs.frozen(kw_only=True)
class Settled:
    """Where each entry of an offer goes: acknowledged, refused (with its reason) or given back."""

    done: tuple[str, ...]
    refused: dict[str, str]
    given_back: tuple[str, ...]


def settle(entry_ids: Sequence[str], *, sent: Set[str], unsendable: Mapping[str, str],
           outcomes: Mapping[str, Outcome]) -> Settled:
    """An offer's entries by what became of them (each in exactly one place, in offer order).

    ``sent``: the entries the filters selected and that had a body; ``unsendable``: those without
    one (their reason); ``outcomes``: the last outcome of each entry that got an answer. An entry
    not sent (not selected) is done with nothing sent; one sent that was delivered is done; refused
    is refused; one whose last try failed, or that got no answer in the offer's time, is given back.
    """
    done: list[str] = []
    refused = dict(unsendable)
    given_back: list[str] = []
    for entry_id in entry_ids:
        if entry_id in unsendable:
            continue
        if entry_id not in sent:
            done.append(entry_id)
            continue
        outcome = outcomes.get(entry_id)
        if outcome is None or outcome.verdict is Verdict.RETRY:
            given_back.append(entry_id)
        elif outcome.verdict is Verdict.REFUSED:
            refused[entry_id] = outcome.reason
        else:
            done.append(entry_id)
    return Settled(done=tuple(done), refused=refused, given_back=tuple(given_back))
