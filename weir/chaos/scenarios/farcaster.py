"""The built-in Farcaster scenarios: one fault (or one kind of fault, repeated) each, under load.

Times are seconds from the moment weir first persists an event (or from the start, for
``redis-down-at-start``). Load: two simulated Snapchain shards producing ``rate`` events/s each
after a ``history`` backlog, until ``tail`` seconds after the last fault clears. Every scenario
ends with a full drain, a SIGTERM (weir must exit 0), and the checker (nothing lost, unexpected,
duplicated or out of order; no cursor regression; recovery targets met). The engine is
:mod:`weir.chaos.suite`; the results are in docs/resilience.md.
"""

from __future__ import annotations

from weir.chaos.scenario import REDIS_OUTAGE_LOGS, Scenario, fault
from weir.chaos.schedule import Schedule

__all__ = ["scenarios"]


def _redis_timeout(seconds: float) -> Scenario:
    return Scenario(
        name=f"redis-timeout-{seconds:g}s",
        label=f"redis_link timeout (hang) {seconds:g} s",
        description=(f"The Redis link stops carrying data for {seconds:g} s (connections stay open, bytes are held); "
                     "weir's socket timeout (1 s) fires, the persist actor retries the same batch behind the breaker."),
        schedule=Schedule(seed=3, faults=[fault("redis_link", "timeout", 1.0, seconds)]),
        rate=1000.0 if seconds <= 5 else 300.0,
        # the long hang is also a stalled Redis: weir's memory must not grow with it
        checks=("memory_bounded",) if seconds > 5 else (),
        # a 1 s hold is at the edge of the 1 s socket timeout: the write often completes just in
        # time, and then there is no outage to log (CI saw both)
        expect=REDIS_OUTAGE_LOGS + ("breaker_change:state~open",) if seconds > 1 else (),
        max_restarts=0,
    )


def scenarios() -> list[Scenario]:
    """Every Farcaster scenario, at the fault lengths the issue names (CI runs them all, the 30 s hang too)."""
    return [
        Scenario(
            name="hub-stream-cut",
            label="hub drops every stream ×3, hub_link TCP reset ×2",
            description="The node ends every Subscribe stream three times (SIGUSR1 to the simulator), then the "
                        "hub link is reset (RST) twice, mid-stream; the source resumes from the last id received.",
            schedule=Schedule(seed=1, faults=[
                fault("hub", "drop_streams", 0.8),
                fault("hub", "drop_streams", 1.6),
                fault("hub", "drop_streams", 2.4),
                fault("hub_link", "reset_peer", 3.2, 0.1),
                fault("hub_link", "reset_peer", 4.0, 0.1),
            ]),
            expect=("disconnect:error~stream dropped", "disconnect:error~Connection"),
            max_restarts=0,
        ),
        Scenario(
            name="hub-silent",
            label="hub_link timeout (silent, open) 3 s; idle_timeout 1 s",
            description="The hub link holds every byte for 3 s without closing: the stream is open but silent. "
                        "Only farcaster.idle_timeout (1 s here) notices it; the source reconnects.",
            schedule=Schedule(seed=2, faults=[fault("hub_link", "timeout", 1.0, 3.0)]),
            expect=("disconnect:error~IdleStream",),
            max_restarts=0,
        ),
        _redis_timeout(1),
        _redis_timeout(5),
        _redis_timeout(30),  # CI runs it too: the whole suite stays within its budget (docs/resilience.md)
        Scenario(
            name="redis-kill",
            label="redis-server kill -9 ×2 (down 0.5 s), AOF always",
            description="redis-server is killed (SIGKILL) under load twice and restarted 0.5 s later from its AOF "
                        "(appendfsync always: every acknowledged write survives).",
            schedule=Schedule(seed=4, faults=[fault("redis", "kill", 1.0, 0.5), fault("redis", "kill", 3.0, 0.5)]),
            expect=REDIS_OUTAGE_LOGS,
            max_restarts=0,
        ),
        Scenario(
            name="redis-rollback",
            label="redis-server loses its last 1 s of acknowledged writes ×2",
            description="redis-server is killed and started on a copy of its AOF taken 1 s earlier, twice (a "
                        "failover to a lagging replica; a restart while a slow fsync held its last writes with "
                        "appendfsync everysec). weir finds the stored cursor below what it wrote, restarts the "
                        "pipeline from it and reads the lost events from the network again.",
            schedule=Schedule(seed=14, faults=[fault("redis", "rollback", 1.0, 1.0), fault("redis", "rollback", 3.5, 1.0)]),
            expect=("resume_behind",),  # restarts expected: SinkBehind restarts the pipeline
        ),
        Scenario(
            name="redis-down-at-start",
            label="redis-server down when weir starts, 2 s",
            description="Redis is not running when weir starts; it comes up 2 s later. weir waits for it "
                        "(read_cursor_patiently) instead of crash-looping.",
            schedule=Schedule(seed=5, faults=[fault("redis", "kill", 0.0, 2.0)]),
            before_start=True,
            max_restarts=0,
        ),
        Scenario(
            name="weir-kill",
            label="weir kill -9 ×3 mid-batch, restarted 0.2 s later",
            description="The weir process is killed (SIGKILL) three times while batches are in flight (the Redis "
                        "link adds 5 ms so a write is nearly always outstanding), and started again.",
            schedule=Schedule(seed=6, faults=[
                fault("redis_link", "latency", 0.0, 4.2, ms=5),
                fault("weir", "kill", 1.0, 0.2),
                fault("weir", "kill", 2.2, 0.2),
                fault("weir", "kill", 3.4, 0.2),
            ]),
            max_restarts=0,  # weir itself is started again (the process level); no supervisor acts
        ),
        Scenario(
            name="backpressure-slow-redis",
            label="redis_link 200 KB/s + 20 ms, 8 s",
            description="Redis is reachable but slower than the network (200 KB/s and 20 ms each way, a few hundred "
                        "events/s against 2000 offered) for 8 s: the channels fill, the source reads only as fast as "
                        "Redis writes, weir's memory stays flat, events keep being persisted. Batches are capped at "
                        "200 events so one batch fits in redis.socket_timeout (see redis-slower-than-timeout).",
            schedule=Schedule(seed=7, faults=[
                fault("redis_link", "bandwidth", 1.0, 8.0, kb_per_s=200),
                fault("redis_link", "latency", 1.0, 8.0, ms=20),
            ]),
            settings=("batch.max_events=200",),
            checks=("memory_bounded", "source_slowed", "sink_progress"),
            max_restarts=0,
        ),
        Scenario(
            name="redis-slower-than-timeout",
            label="redis_link 20 KB/s + 20 ms, 8 s",
            description="Redis is reachable but so slow (20 KB/s) that one full batch takes longer to send than "
                        "redis.socket_timeout: memory must stay flat and the source slow down, and events must "
                        "still be persisted while the link is slow.",
            schedule=Schedule(seed=7, faults=[
                fault("redis_link", "bandwidth", 1.0, 8.0, kb_per_s=20),
                fault("redis_link", "latency", 1.0, 8.0, ms=20),
            ]),
            checks=("memory_bounded", "source_slowed", "sink_progress"),
            max_restarts=0,
        ),
        Scenario(
            name="graceful-shutdown",
            label="weir SIGTERM ×2 under load, restarted 0.3 s later",
            description="weir gets SIGTERM under load (it must drain, checkpoint and exit 0), is started again, "
                        "and the same happens once more.",
            schedule=Schedule(seed=8, faults=[fault("weir", "term", 1.0, 0.3), fault("weir", "term", 3.0, 0.3)]),
            expect=("shutdown",),
            max_restarts=0,
        ),
        Scenario(
            name="slicer-latency",
            label="slicer + latency on both links, 4 s",
            description="Every byte on both links arrives late and in small pieces (TCP segments of 8–64 bytes): "
                        "framing (HTTP/2, RESP) must cope with any split.",
            schedule=Schedule(seed=9, faults=[
                fault("hub_link", "slicer", 0.5, 4.0, average_size=48, size_variation=16, delay_us=20),
                fault("hub_link", "latency", 0.5, 4.0, ms=30, jitter_ms=10),
                fault("redis_link", "slicer", 0.5, 4.0, average_size=24, size_variation=16, delay_us=10),
                fault("redis_link", "latency", 0.5, 4.0, ms=10, jitter_ms=5),
            ]),
            max_restarts=0,
        ),
        Scenario(
            name="hub-link-slow",
            label="hub_link 100 ms ± 30 ms + 150 KB/s, 4 s",
            description="The link to the node is slow and narrow (100 ms ± 30 ms each way, 150 KB/s, below what "
                        "2000 events/s need): the source falls behind and catches up afterwards; nothing "
                        "reconnects and no actor restarts.",
            schedule=Schedule(seed=15, faults=[
                fault("hub_link", "latency", 0.5, 4.0, ms=100, jitter_ms=30),
                fault("hub_link", "bandwidth", 0.5, 4.0, kb_per_s=150),
            ]),
            max_restarts=0,
        ),
        Scenario(
            name="hub-link-cut-after-bytes",
            label="hub_link closes every connection after 64 KB, 3 s",
            description="Every connection to the node is closed after 64 KB from the node (a middlebox that cuts "
                        "long streams): each cut lands mid-message; the source resumes from the last whole event.",
            schedule=Schedule(seed=16, faults=[fault("hub_link", "limit_data", 0.5, 3.0, bytes=65536, direction="downstream")]),
            expect=("disconnect",),
            max_restarts=0,
        ),
        Scenario(
            name="hub-error-status",
            label="hub answers INTERNAL, then RESOURCE_EXHAUSTED, 1.5 s each",
            description="The node drops every stream and answers each new Subscribe with an error status (INTERNAL, "
                        "then RESOURCE_EXHAUSTED): transient statuses, retried with backoff behind the node's breaker.",
            schedule=Schedule(seed=17, faults=[
                fault("hub", "error", 0.5, 1.5, status="INTERNAL"),
                fault("hub", "drop_streams", 0.55),
                fault("hub", "error", 2.5, 1.5, status="RESOURCE_EXHAUSTED"),
                fault("hub", "drop_streams", 2.55),
            ]),
            expect=("disconnect:error~INTERNAL", "disconnect:error~RESOURCE_EXHAUSTED"),
            max_restarts=0,
        ),
        Scenario(
            name="redis-link-cut",
            label="redis_link reset ×2, then down (refused) 2 s",
            description="The Redis link is reset (RST) under load twice, then refuses connections for 2 s: the write "
                        "in flight fails, the persist actor retries the same batch behind the Redis breaker.",
            schedule=Schedule(seed=18, faults=[
                fault("redis_link", "reset_peer", 0.8, 0.1),
                fault("redis_link", "reset_peer", 1.6, 0.1),
                fault("redis_link", "down", 2.4, 2.0),
            ]),
            expect=REDIS_OUTAGE_LOGS + ("breaker_change:state~open",),
            max_restarts=0,
        ),
        Scenario(
            name="redis-pause",
            label="redis-server SIGSTOP 3 s",
            description="redis-server is frozen (SIGSTOP) for 3 s and resumed: connections stay open and nothing "
                        "answers, as in a long fork or swap storm. weir's socket timeout fires and it retries.",
            schedule=Schedule(seed=19, faults=[fault("redis", "pause", 1.0, 3.0)]),
            expect=REDIS_OUTAGE_LOGS,
            max_restarts=0,
        ),
        Scenario(
            name="weir-pause",
            label="weir SIGSTOP 2 s ×2",
            description="weir itself is frozen (SIGSTOP) for 2 s, twice, as a VM pause or a stop-the-world would: on "
                        "resume its timers are all late at once; it must carry on without losing or doubling.",
            schedule=Schedule(seed=20, faults=[fault("weir", "pause", 1.0, 2.0), fault("weir", "pause", 4.0, 2.0)]),
        ),
    ]
