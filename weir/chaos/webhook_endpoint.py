"""The receiving endpoint of the webhook target in a chaos run: a real HTTP receiver
(:mod:`weir.chaos.webhook_receiver`) that checks every request as a receiver must, and the
schedule target ``endpoint`` that makes it misbehave.

While no fault is applied, a request is answered 200 if its ``Weir-Signature`` verifies under the
pipeline's secret (:func:`~weir.deliver.webhook_messages.verify_signature`, the timestamp matching
``Weir-Timestamp``), and recorded as :class:`~weir.chaos.delivery_check.Received` — the partition and
stream id its body carries, its ``Weir-Idempotency-Key`` — for the delivery checker; a bad signature
is answered 401 and recorded as forged, and a key that is not the body's ``id``
(``<source>/<partition>/<stream id>``; a batch's: weir.deliver.webhook_messages.batch_key of its
events), or an event whose ``id`` is not its own, as mismatched (the run fails on any of either).
Each event of a batch is recorded on its own, under its ``id``. While a fault is applied, every
request is answered by it instead, and counted:

- ``error_500``: status 500;
- ``hang``: the request is read and never answered (weir's ``timeout`` runs out);
- ``close_early``: the connection is closed once the request is read, before any response.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import attrs

from weir.chaos.delivery_check import Received
from weir.chaos.schedule import TimedFault
from weir.chaos.webhook_receiver import CLOSE, HANG, Answer, Request
from weir.deliver.webhook_messages import batch_key, verify_signature

__all__ = ["ChaosEndpoint"]

#: The answer to every request while each of the ``endpoint`` target's kinds (weir.chaos.schedule.KINDS) is applied.
ANSWERS: dict[str, Answer] = {"error_500": (500, b"chaos: error_500"), "hang": HANG, "close_early": CLOSE}


@attrs.define(eq=False)
class ChaosEndpoint:
    """What the receiver answers, and what it accepted; the schedule target ``endpoint``.

    Attributes:
        secret: the pipeline's HMAC key.
        fault: the kind applied now (None: answering normally).
        accepted: one item per request answered 200, in order.
        forged: the idempotency keys of the requests whose signature did not verify.
        mismatched: the idempotency keys that are not the body's ``id`` (``<source>/<partition>/<stream id>``).
        faulted: requests answered by each fault kind.
    """

    secret: bytes
    fault: str | None = None
    accepted: list[Received] = attrs.Factory(list)
    forged: list[str] = attrs.Factory(list)
    mismatched: list[str] = attrs.Factory(list)
    faulted: collections.Counter[str] = attrs.Factory(collections.Counter)
    applied: list[str] = attrs.Factory(list)  # the kinds applied so far, in order

    def respond(self, request: Request, earlier: int) -> Answer:
        if self.fault is not None:
            self.faulted[self.fault] += 1
            return ANSWERS[self.fault]
        signed = request.signature.startswith(f"t={request.timestamp},")
        if not (signed and verify_signature(self.secret, request.body, request.signature, now=time.time())):
            self.forged.append(request.key)
            return 401, b"bad signature"
        events = request.events
        if request.batched:
            first = events[0] if events else {}
            expected = batch_key(str(first.get("source")), str(first.get("partition")), [e["stream_id"] for e in events])
        else:
            expected = events[0].get("id")
        if request.key != expected or any(e.get("id") != f"{e.get('source')}/{e['partition']}/{e['stream_id']}"
                                          for e in events):
            self.mismatched.append(request.key)
        for event in events:  # what a receiver deduplicates on: each event's signed id
            self.accepted.append(Received(partition=str(event["partition"]), entry_id=str(event["stream_id"]),
                                          key=str(event["id"])))
        return 200

    async def apply_fault(self, fault: TimedFault):  # type: ignore[no-untyped-def]
        """The schedule's hook (:func:`weir.chaos.schedule._apply`): answer by ``fault.kind`` until cleared."""
        self.fault = fault.kind
        self.applied.append(fault.kind)

        async def clear() -> None:
            self.fault = None

        return clear, None

    def check(self, measures: dict[str, Any]) -> list[str]:
        """The endpoint's own verdict: no forged request, and every fault answered at least one
        request (a fault no request met proves nothing)."""
        measures["endpoint_faulted"] = dict(self.faulted)
        problems = [f"fault {kind} on the endpoint answered no request: it proves nothing"
                    for kind in dict.fromkeys(self.applied) if not self.faulted[kind]]
        if self.forged:
            problems.append(f"{len(self.forged)} webhook requests with a bad signature (e.g. {', '.join(self.forged[:3])})")
        if self.mismatched:
            problems.append(f"{len(self.mismatched)} webhook requests whose idempotency key is not their body's id "
                            f"(e.g. {', '.join(self.mismatched[:3])})")
        return problems
