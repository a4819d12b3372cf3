"""The NATS JetStream target: each entry published once, deduplicated by JetStream on its Msg-Id.

An entry is published with ``Nats-Msg-Id`` = its identity (weir/deliver/nats_messages.py), so a
replay inside the stream's duplicate window, after a crash between publish and XACK, is dropped
by JetStream and acknowledged as a duplicate. They are published ``in_flight`` at a time
(weir/deliver/nats_publisher.py: one window sent, then its acknowledgements awaited): ``prepare``
packs the buffered entries and sends the first window, ``commit`` awaits it, sends the others, and
returns only once every message was acknowledged; those that failed or timed out are sent again,
with backoff, while NATS is unreachable. nats-py (in asyncio, weir/bridge.py) only creates or
checks the stream, once per target.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
import trio
from nats.js.api import StorageType, StreamConfig

from weir.bridge import call_asyncio
from weir.config import ConfigError
from weir.deliver.group import Entry
from weir.deliver.nats_messages import Message, MessageError, message_of, stream_mismatch
from weir.deliver.nats_publisher import CONNECT_WITHIN, NatsPublisher, NatsUnavailable
from weir.deliver.nats_wire import message_size
from weir.deliver.settings import DeliverPipelineSettings
from weir.deliver.target import Prepared
from weir.redact import redact_text, redact_url
from weir.supervision import Backoff

log = logging.getLogger("weir.deliver.nats")


async def connect(url: str, name: str) -> Any:
    """A nats-py client for the stream's creation or check, whose error callback logs with the
    URL redacted, each distinct error once in a row (asyncio side).

    Raises:
        NatsUnavailable: not connected within CONNECT_WITHIN seconds.
    """
    shown = redact_url(url)
    last_error = ""

    async def on_error(exc: Exception) -> None:
        nonlocal last_error
        text = redact_text(str(exc)) or type(exc).__name__
        if text != last_error:  # a server down fails every reconnect attempt the same way
            log.warning("nats %s: %s", shown, text, extra={"event": "deliver_nats_error", "url": shown})
        last_error = text

    try:
        # nats-py retries its first connection while allowed to reconnect: the timeout bounds the attempt.
        return await asyncio.wait_for(
            nats.connect(url, name=name, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                         connect_timeout=2, error_cb=on_error),
            timeout=CONNECT_WITHIN)
    except asyncio.TimeoutError:
        raise NatsUnavailable(f"cannot connect to NATS at {shown} within {CONNECT_WITHIN:g}s"
                              f"{': ' + last_error if last_error else ''}") from None
    except Exception as exc:  # nats-py's own errors, OSError: its text may hold the URL
        raise NatsUnavailable(f"cannot connect to NATS at {shown}: {redact_text(str(exc)) or type(exc).__name__}") from None


async def check_stream(pipe: DeliverPipelineSettings, name: str) -> None:
    """Connect nats-py, create or check the pipeline's stream (ensure_stream), close (trio side).

    Raises:
        ConfigError, NatsUnavailable: as ensure_stream.
    """
    client = await call_asyncio(connect, pipe.url, name)
    try:
        await call_asyncio(ensure_stream, client, pipe)
    finally:
        with trio.CancelScope(shield=True):
            await call_asyncio(client.close)


async def ensure_stream(client: Any, pipe: DeliverPipelineSettings) -> None:
    """Create the pipeline's stream, or check that the existing one has its subjects and duplicate
    window (asyncio side).

    Raises:
        ConfigError: the stream exists with other subjects or another duplicate window.
        NatsUnavailable: JetStream did not answer (not enabled on the server, no quorum, timeout).
    """
    try:
        await _ensure_stream(client, pipe)
    except (nats.errors.Error, asyncio.TimeoutError) as exc:
        raise NatsUnavailable(f"JetStream at {redact_url(pipe.url)} cannot create or check stream {pipe.stream!r}: "
                              f"{redact_text(str(exc)) or type(exc).__name__}") from None


async def _ensure_stream(client: Any, pipe: DeliverPipelineSettings) -> None:
    js = client.jetstream()
    subjects = list(pipe.nats_stream_subjects())
    try:
        info = await js.stream_info(pipe.stream)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(StreamConfig(name=pipe.stream, subjects=subjects, duplicate_window=pipe.duplicate_window,
                                             storage=StorageType.FILE))
            log.info("created JetStream stream %s (subjects %s, duplicate window %gs)", pipe.stream, subjects,
                     pipe.duplicate_window, extra={"event": "deliver_nats_stream_created", "stream": pipe.stream})
            return
        except nats.js.errors.BadRequestError:  # created meanwhile by another instance: checked below
            info = await js.stream_info(pipe.stream)
    problem = stream_mismatch(name=pipe.stream, want_subjects=subjects, want_window=pipe.duplicate_window,
                              have_subjects=info.config.subjects or [], have_window=info.config.duplicate_window or 0)
    if problem is not None:
        raise ConfigError(f"deliver.pipelines: {problem}")


class NatsTarget:
    """One partition's publisher; implements weir.deliver.target.Target.

    Args:
        pipe: the pipeline's settings (url, subject, stream, in_flight, ack_timeout, …).
        backoff / rng: the pauses between attempts while NATS is unreachable.
    """

    def __init__(self, pipe: DeliverPipelineSettings, *, source: str, partition: str, consumer: str,
                 backoff: Backoff, rng: random.Random, clock=trio.current_time) -> None:
        self.pipe = pipe
        self.source = source
        self.partition = partition
        self.consumer = consumer
        self.shown_url = redact_url(pipe.url)
        self._backoff = backoff
        self._rng = rng
        self._clock = clock
        self._publisher: NatsPublisher | None = None
        self._buffer: list[tuple[str, Message]] = []
        self._since: float | None = None

    async def recover(self) -> None:
        """Create or check the stream (patiently: nats-py, closed afterwards), once."""
        attempt = 0
        while self._publisher is None:
            try:
                await check_stream(self.pipe, f"weir-{self.consumer}")
            except NatsUnavailable as exc:
                if attempt == 0:
                    log.warning("%s; retrying", exc, extra={"event": "deliver_nats_unavailable", "url": self.shown_url})
                await trio.sleep(self._backoff.delay(attempt, self._rng))
                attempt += 1
                continue
            self._publisher = NatsPublisher(self.pipe.url, name=f"weir-{self.consumer}", ack_timeout=self.pipe.ack_timeout)
            await self._publisher.connect()  # learns the server's max_payload, which offer checks

    async def already_delivered(self, entries: Sequence[Entry]) -> set[str]:
        return set()  # JetStream drops what it already has (same Msg-Id inside the duplicate window)

    async def offer(self, entries: Sequence[Entry]) -> dict[str, str]:
        refused: dict[str, str] = {}
        for entry in entries:
            try:
                message = message_of(self.pipe.subject, source=self.source, partition=self.partition,
                                     entry_id=entry.entry_id, fields=entry.fields)
            except MessageError as exc:
                refused[entry.entry_id] = str(exc)
                continue
            too_large = self._too_large(message)
            if too_large:  # the server would refuse it on every try: the partition would stall on it
                refused[entry.entry_id] = too_large
                continue
            self._buffer.append((entry.entry_id, message))
        if self._buffer and self._since is None:
            self._since = self._clock()
        return refused

    def _too_large(self, message: Message) -> str:
        limit = self._publisher.max_payload if self._publisher is not None else None
        if limit is None:  # not connected yet: the publisher refuses it per window, and the next offer here
            return ""
        size = message_size(message)
        if size <= limit:
            return ""
        return f"message of {size} bytes (headers and payload) is larger than the server's max_payload ({limit} bytes)"

    def given_back(self) -> list[str]:
        return []  # every entry offered is buffered or refused

    def next_due(self) -> float | None:
        return self._since  # at once: each read's batch is published as one unit

    async def prepare(self, now: float, *, everything: bool = False) -> list[Prepared]:
        """Pack the buffered entries and send their first window already: JetStream stores it
        while the core checks the entries are still this consumer's (weir/deliver/target.py: a
        publish cannot be taken back, and a dropped unit is deduplicated when sent again)."""
        if not self._buffer:
            return []
        assert self._publisher is not None  # recover ran first
        batch, self._buffer, self._since = self._buffer, [], None
        messages = [m for _, m in batch]
        first = await self._publisher.send(messages[:self.pipe.in_flight])
        return [Prepared(entry_ids=tuple(entry_id for entry_id, _ in batch), handle=(messages, first))]

    async def commit(self, prepared: Prepared) -> None:
        """Publish every message of ``prepared``; returns once JetStream acknowledged each (stored,
        or dropped as a duplicate of one it stored). Messages whose acknowledgement failed or did
        not come are sent again (deduplicated by their Msg-Id) until every one is acknowledged."""
        assert self._publisher is not None  # recover ran first
        waiting, sent = prepared.handle  # type: ignore[misc]
        attempt = 0
        while waiting:
            failed: list[Message] = []
            reason = ""
            for start in range(0, len(waiting), self.pipe.in_flight):
                if sent is None:
                    sent = await self._publisher.send(waiting[start:start + self.pipe.in_flight])
                lost, why = await self._publisher.settle(sent)
                sent = None
                failed += lost
                reason = reason or why
            if not failed:
                return
            if attempt == 0:
                log.warning("%s: %d of %d publishes to %s not acknowledged (%s): sending them again",
                            self.pipe.stream, len(failed), len(waiting), self.shown_url, reason,
                            extra={"event": "deliver_nats_unacknowledged", "url": self.shown_url,
                                   "messages": len(failed)})
            waiting = failed
            await trio.sleep(self._backoff.delay(attempt, self._rng))
            attempt += 1

    async def abort(self, prepared: Prepared) -> None:
        pass  # its first window is out (its replies are ignored); the entries are delivered again, deduplicated

    async def aclose(self) -> None:
        self._buffer, self._since = [], None
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.aclose()
