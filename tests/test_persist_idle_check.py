"""The persist actor's pure logic: the idle check and the durable mark, with a fake cursor.

Unit tests only (no Redis): the same behaviour against a real redis-server, paused, killed and
rolled back, is in test_persist_actor.py.
"""

from __future__ import annotations

import functools
import logging

import trio

from weir.actors.persist import DurableMark, run_persist
from weir.sinks.redis_sink import SinkBehind
from weir.supervision import Backoff, CircuitBreaker

PART = "2"


class _FakeCursorSink:
    """Just the cursor of a sink (pure-logic test of the idle check; the real sink is tested above)."""

    def __init__(self, stored: int) -> None:
        self.stored = stored
        self.checked: list[int] = []

    async def check_behind(self, partition: str, expect: int) -> None:
        await trio.sleep(0.001)
        self.checked.append(expect)
        if self.stored < expect:
            raise SinkBehind("cursor", partition, self.stored, expect)


async def test_after_a_restart_the_idle_check_waits_for_the_source_to_resume(autojump_clock):
    """After SinkBehind restarted the pipeline, the mark still says what Redis lost until the
    source has read the cursor again (which may wait long behind an open breaker). Checking the old
    mark meanwhile would restart the pipeline again and again until it escalated."""
    mark = DurableMark(PART, position=6)  # what the last incarnation had seen stored
    sink = _FakeCursorSink(stored=3)  # Redis came back with less
    _send, receive = trio.open_memory_channel[object](0)
    stopping = trio.Event()
    breaker = CircuitBreaker("redis", failure_threshold=2, reset_timeout=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(
            run_persist, stopping, receive=receive, sink=sink, breaker=breaker, backoff=Backoff(initial=0.01, maximum=0.05),
            mark=mark, verify_every=0.5,
        ))  # fmt: skip
        await trio.sleep(30)  # (mock time) the source waits for Redis: no check of the stale mark
        assert sink.checked == []
        mark.resumed_from(3)  # the source reads the cursor and resumes from it
        await trio.sleep(2)
        assert sink.checked and set(sink.checked) == {3}  # checks resume, against what Redis holds
        stopping.set()


def test_a_resume_behind_the_mark_is_counted_and_a_vanished_cursor_is_an_error(caplog):
    mark = DurableMark(PART)
    with caplog.at_level(logging.WARNING, logger="weir.actors.persist"):
        mark.resumed_from(None)  # first start on an empty Redis: nothing was acknowledged yet
        mark.stored(6)
        mark.resumed_from(6)  # a restart that finds what was written
        mark.resumed_from(3)  # Redis lost 4-6
        mark.stored(9)
        mark.resumed_from(None)  # Redis lost everything of the partition
    assert (mark.rollbacks, mark.resumes, mark.position) == (2, 4, None)
    assert [(r.levelname, r.event, r.stored, r.expected) for r in caplog.records] == [
        ("WARNING", "resume_behind", 3, 6), ("ERROR", "resume_behind", None, 9)]
    assert "events up to 9 are read again only if that start reaches back to them" in caplog.records[1].getMessage()
