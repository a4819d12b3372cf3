"""The webhook target: each selected entry POSTed, signed, to the pipeline's endpoint (at least once),
one per request or ``events_per_request`` at a time.

A thin shell over the decisions in webhook_filter.py (which entries), webhook_messages.py (which
entries in which request, body, idempotency key, signature) and webhook_outcome.py (what a status
means, backoff); the circuit breaker is weir.supervision's. The work happens in ``offer``: every
entry of the batch is sent, ``concurrency`` requests at a time for the whole endpoint, each request
tried up to ``attempts`` times with backoff while the endpoint answers 5xx / 408 / 429 or not at
all. Then, for each entry of the request (a batched request's entries share its fate):

- delivered (2xx), or not selected by the filters: prepared, so the core acknowledges them
  (``commit`` has nothing left to do: the POST was the delivery);
- refused (another status): returned as refused, so the core dead-letters it after max_deliveries;
- neither within ``attempts`` tries, or within a third of deliver.claim_idle for the whole offer
  (an open breaker sends nothing): given back (``given_back``); they stay pending and the core
  delivers them again after claim_idle.

A crash between a POST and the acknowledgement sends the entry again: at least once, with the same
``id`` in its body every time (and, unbatched, the same ``Weir-Idempotency-Key``).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence

import httpx
import trio

from weir.config import ConfigError
from weir.deliver.decisions import parse_entry_id
from weir.deliver.entry_fields import EntryError
from weir.deliver.group import Entry
from weir.deliver.settings import DeliverPipelineSettings
from weir.deliver.target import Prepared
from weir.deliver.webhook_filter import EndpointFilter
from weir.deliver.webhook_messages import body_of, request_of, requests_of, signed_headers
from weir.deliver.webhook_outcome import Outcome, Verdict, excerpt_of, outcome_of_status, retry_backoff, settle
from weir.redact import REDACTED, redact_text, redact_url
from weir.supervision import BreakerState, CircuitBreaker

log = logging.getLogger("weir.deliver.webhook")

_READ_AT_MOST = 1024  # bytes of a response body read (a refusal's reason); the rest is not wanted


def resolve_secret(pipe: DeliverPipelineSettings, where: str) -> bytes:
    """The pipeline's HMAC key: ``secret``, or the environment variable ``secret_env`` names.

    Raises:
        ConfigError: the variable is not set (the message names it, never a value).
    """
    if pipe.secret:
        return pipe.secret.encode()
    value = os.environ.get(pipe.secret_env, "")
    if not value:
        raise ConfigError(f"deliver.pipelines: {where}: secret_env: the environment variable {pipe.secret_env!r} "
                          f"is not set (or empty)")
    return value.encode()


class Endpoint:
    """What every partition's target of one webhook pipeline shares: the endpoint's circuit breaker,
    its concurrency limit and its secret.

    Args:
        pipe: the pipeline's settings.
        name: the pipeline's name (the breaker's, in logs).
    """

    def __init__(self, pipe: DeliverPipelineSettings, name: str) -> None:
        self.pipe = pipe
        self.name = name
        self.secret = resolve_secret(pipe, name)
        self.shown_url = redact_url(pipe.url)
        self.breaker = CircuitBreaker(f"webhook {name}", failure_threshold=pipe.breaker_failures,
                                      reset_timeout=pipe.breaker_reset, max_reset_timeout=pipe.breaker_max_reset)
        self.limiter = trio.CapacityLimiter(pipe.concurrency)
        self.filter = EndpointFilter.of(pipe)


class WebhookTarget:
    """One partition's sender to one endpoint; implements weir.deliver.target.Target.

    Args:
        endpoint: the pipeline's shared state (breaker, limiter, secret, filters).
        offer_within: seconds an offer may take at most (a third of deliver.claim_idle: its
            delivered entries must be acknowledged long before another instance could claim them).
        rng: the jitter of the pauses between tries.
        wall: unix time, for the signature's timestamp.
    """

    def __init__(self, endpoint: Endpoint, *, source: str, partition: str, offer_within: float, rng: random.Random,
                 wall=time.time) -> None:
        self.endpoint = endpoint
        self.pipe = endpoint.pipe
        self.source = source
        self.partition = partition
        self.offer_within = offer_within
        self._rng = rng
        self._wall = wall
        self._backoff = retry_backoff(self.pipe)
        self._client: httpx.AsyncClient | None = None
        self._url = httpx.URL(self.pipe.url)  # parsed once, not on every request
        self._done: list[str] = []  # delivered or not selected: acknowledged at the next prepare
        self._since: float | None = None
        self._given_back: list[str] = []

    async def recover(self) -> None:
        if self._client is None:
            limits = httpx.Limits(max_connections=self.pipe.concurrency, max_keepalive_connections=self.pipe.concurrency)
            # identity: a compressed answer could expand without bound before any size check
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.pipe.timeout), limits=limits,
                                             follow_redirects=False,
                                             headers={"User-Agent": "weir", "Accept-Encoding": "identity"})

    async def already_delivered(self, entries: Sequence[Entry]) -> set[str]:
        return set()  # the receiver deduplicates by each event's id

    async def offer(self, entries: Sequence[Entry]) -> dict[str, str]:
        refused: dict[str, str] = {}
        bodies: dict[str, bytes] = {}
        for entry in entries:
            if not self.endpoint.filter.selects(entry.fields):
                continue
            try:
                bodies[entry.entry_id] = body_of(source=self.source, partition=self.partition, entry_id=entry.entry_id,
                                                 fields=entry.fields)
            except EntryError as exc:
                refused[entry.entry_id] = str(exc)
        outcomes: dict[str, Outcome] = {}
        per_request = self.pipe.events_per_request
        offered = [entry.entry_id for entry in entries]
        requests = requests_of(offered, sendable=bodies.keys(), per_request=per_request)
        with trio.move_on_after(self.offer_within):
            async with trio.open_nursery() as nursery:
                for entry_ids in requests:
                    key, body = request_of(self.source, self.partition, entry_ids, bodies, batched=per_request > 1)
                    nursery.start_soon(self._deliver, entry_ids, key, body, outcomes)
        settled = settle(offered, sent=bodies.keys(), unsendable=refused, outcomes=outcomes)
        self._done += settled.done
        given_back = settled.given_back
        if given_back:
            last = next((outcomes[i].reason for i in given_back if i in outcomes), "")
            log.warning("%s: %d entries not delivered to %s this time (%s): they are delivered again after "
                        "deliver.claim_idle", self.endpoint.name, len(given_back), self.endpoint.shown_url,
                        last or f"not answered within {self.offer_within:g}s",
                        extra={"event": "deliver_webhook_given_back", "pipeline": self.endpoint.name,
                               "url": self.endpoint.shown_url, "entries": len(given_back)})
        self._given_back += given_back
        if self._done and self._since is None:
            self._since = trio.current_time()
        return settled.refused

    def given_back(self) -> list[str]:
        given_back, self._given_back = self._given_back, []
        return given_back

    async def _deliver(self, entry_ids: tuple[str, ...], key: str, body: bytes, outcomes: dict[str, Outcome]) -> None:
        """Try one request up to ``attempts`` times, the same body each time; its last outcome is
        each of its entries' in ``outcomes`` (a batch is delivered, refused or given back whole)."""
        breaker = self.endpoint.breaker
        for attempt in range(self.pipe.attempts):
            if attempt:
                await trio.sleep(self._backoff.delay(attempt - 1, self._rng))
            async with self.endpoint.limiter:
                await breaker.wait_allowed()  # an open breaker: no request until its trial is due
                # Only the request let through half-open is the trial: it alone may give the slot
                # back or have its failure judged as the trial's.
                trial = breaker.state is BreakerState.HALF_OPEN
                try:
                    outcome = await self._post(key, body)
                except BaseException:  # cancelled (the offer's time is up): no outcome to record
                    if trial:
                        breaker.release_trial()
                    raise
            outcomes.update(dict.fromkeys(entry_ids, outcome))
            if outcome.verdict is not Verdict.RETRY:
                breaker.record_success()  # a refusal is an answer: the endpoint is up
                return
            if trial or breaker.state is BreakerState.CLOSED:  # a late failure does not judge another's trial
                breaker.record_failure()

    async def _post(self, key: str, body: bytes) -> Outcome:
        assert self._client is not None  # recover ran first
        headers = signed_headers(secret=self.endpoint.secret, key=key, timestamp=int(self._wall()), body=body)
        status: int | None = None  # once the answer's head is in, it is the outcome
        start = bytearray()  # the body's first bytes as sent (never decompressed: no expansion)
        with trio.move_on_after(self.pipe.timeout):  # the whole request (httpx's timeouts are per read)
            try:
                async with self._client.stream("POST", self._url, content=body, headers=headers) as response:
                    status = response.status_code
                    # Read to its end (the connection stays reusable; stopping early would leave
                    # httpcore's generators half-run), keeping only the first bytes: memory stays
                    # flat and the deadline bounds an endless body. One that stalls or breaks after
                    # the head changes nothing.
                    async for chunk in response.aiter_raw():
                        if len(start) < _READ_AT_MOST:
                            start += chunk[: _READ_AT_MOST - len(start)]
            except httpx.HTTPError as exc:  # refused, reset, closed early, timed out, a bad answer
                if status is None and not isinstance(exc, httpx.TimeoutException):
                    text = excerpt_of(self._hidden(redact_text(str(exc)).encode())) or type(exc).__name__
                    return Outcome(Verdict.RETRY, f"{type(exc).__name__}: {text}")
        if status is not None:
            return outcome_of_status(status, self._hidden(bytes(start[:_READ_AT_MOST])))
        return Outcome(Verdict.RETRY, f"no response within {self.pipe.timeout:g}s")

    def _hidden(self, text: bytes) -> bytes:
        """``text`` without the secret (an endpoint echoing it must not put it in a log or dead letter)."""
        return text.replace(self.endpoint.secret, REDACTED.encode())

    def next_due(self) -> float | None:
        return self._since  # at once: what an offer delivered is acknowledged next

    async def prepare(self, now: float, *, everything: bool = False) -> list[Prepared]:
        if not self._done:
            return []
        done, self._done, self._since = self._done, [], None
        return [Prepared(entry_ids=tuple(sorted(done, key=parse_entry_id)), handle=None)]

    async def commit(self, prepared: Prepared) -> None:
        pass  # delivered by the POST already

    async def abort(self, prepared: Prepared) -> None:
        pass  # already delivered; the entries are delivered again (the same idempotency key)

    async def aclose(self) -> None:
        self._done, self._since, self._given_back = [], None, []
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # closing a broken connection: nothing to keep
                pass
