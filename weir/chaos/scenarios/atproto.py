"""The built-in AT Protocol scenarios: the relay's firehose and its Jetstream under the same faults.

Times are seconds from the moment weir first persists an event. Load: the simulated relay
(``python -m weir.sim atproto``) with ``history`` events at its start, then ``rate`` events/s
(frames: a commit frame carries one or more ops, one entry each) until ``tail`` seconds after the
last fault clears. The Jetstream simulator reorders 20 messages and repeats 5 at every
replay-to-live cutover, so every Jetstream reconnect crosses one. Every scenario ends with a full
drain, a SIGTERM (weir must exit 0), and the checker (:mod:`weir.chaos.atproto_check`: every op
once, nothing unexpected, firehose ops at ``<seq>-<op index>`` in seq order, Jetstream events at
their ``time_us`` unless the relay sent them late; no cursor regression; recovery targets met).
The engine is :mod:`weir.chaos.suite`; the results are in docs/resilience.md.
"""

from __future__ import annotations

from weir.chaos.atproto import FIREHOSE, JETSTREAM, AtprotoSource
from weir.chaos.scenario import REDIS_OUTAGE_LOGS, Scenario, fault
from weir.chaos.schedule import Schedule

__all__ = ["scenarios"]

#: Frames that carry many records: a kill lands between the ops of one commit far more often.
MANY_OPS = (5, 10, 20)


def _relay_cut(source: AtprotoSource, seed: int) -> Scenario:
    return Scenario(
        name=f"{source.mode}-relay-cut",
        label="relay_link cuts every connection after 32 KB for 1.5 s; relay closes every connection ×2, link reset",
        description=f"{source.mode.capitalize()}: for 1.5 s every connection is cut after 32 KB from the relay, so "
                    "each cut lands mid-frame; then the relay closes every connection, the link is reset (RST), and "
                    "the relay closes every connection again. The source reconnects from its cursor"
                    + (" (Jetstream: 2 s before it, skipping what it stored by identity; while every connection "
                       "is cut before that replay is over it cannot progress, and catches up once the cuts stop)."
                       if source.mode == "jetstream" else "."),
        source=source,
        schedule=Schedule(seed=seed, faults=[
            fault("relay_link", "limit_data", 0.8, 1.5, bytes=32768, direction="downstream"),
            fault("relay", "drop", 3.0),
            fault("relay_link", "reset_peer", 3.8, 0.1),
            fault("relay", "drop", 4.6),
        ]),
        rate=500.0,
        expect=("disconnect:error~1000", "disconnect:error~1006"),
        max_restarts=0,
    )


def _relay_silent(source: AtprotoSource, seed: int) -> Scenario:
    return Scenario(
        name=f"{source.mode}-relay-silent",
        label="relay_link timeout (silent, open) 3 s; idle_timeout 1 s",
        description=f"{source.mode.capitalize()}: the relay link holds every byte for 3 s without closing. Only "
                    "atproto.idle_timeout (1 s here) notices it; the source reconnects.",
        source=source,
        schedule=Schedule(seed=seed, faults=[fault("relay_link", "timeout", 1.0, 3.0)]),
        rate=500.0,
        expect=("disconnect:error~IdleStream",),
        max_restarts=0,
    )


def _weir_kill(source: AtprotoSource, seed: int) -> Scenario:
    return Scenario(
        name=f"{source.mode}-weir-kill",
        label="weir kill -9 ×3 mid-commit (5–20 ops per commit), restarted 0.2 s later",
        description=f"{source.mode.capitalize()}: every commit carries 5 to 20 ops; the weir process is killed "
                    "(SIGKILL) three times while batches are in flight (the Redis link adds 5 ms) and started "
                    "again. A commit's ops are written in one atomic batch, so no kill leaves part of one behind"
                    + (" (Jetstream: one message per op; the restart rebuilds what it stored from the stream)."
                       if source.mode == "jetstream" else "."),
        source=AtprotoSource(mode=source.mode, ops_per_commit=MANY_OPS, reorder_at_cutover=source.reorder_at_cutover,
                             duplicate_at_cutover=source.duplicate_at_cutover),
        # 1.8 s apart: a restart (~1 s of start-up, then Jetstream's 2 s rewind read back from Redis
        # and replayed) is over before the next kill, so each kill's recovery is its own
        schedule=Schedule(seed=seed, faults=[
            fault("redis_link", "latency", 0.0, 5.4, ms=5),
            fault("weir", "kill", 1.0, 0.2),
            fault("weir", "kill", 2.8, 0.2),
            fault("weir", "kill", 4.6, 0.2),
        ]),
        rate=150.0 if source.mode == "firehose" else 80.0,  # Jetstream: one message per op
        history=100,
        max_restarts=0,
    )


def _redis(source: AtprotoSource, seed: int) -> Scenario:
    return Scenario(
        name=f"{source.mode}-redis-hang-kill",
        label="redis_link timeout (hang) 3 s, then redis-server kill -9 (down 0.5 s)",
        description=f"{source.mode.capitalize()}: the Redis link holds every byte for 3 s (weir's socket timeout, 1 s, "
                    "fires; the persist actor retries the same batch behind the breaker), then redis-server is "
                    "killed under load and restarted 0.5 s later from its AOF. The relay connection stays up: "
                    "the source only waits.",
        source=source,
        schedule=Schedule(seed=seed, faults=[fault("redis_link", "timeout", 1.0, 3.0), fault("redis", "kill", 5.5, 0.5)]),
        rate=500.0,
        # the breaker opens only after several failed writes: a 3 s hang is at its edge (seen both ways)
        expect=REDIS_OUTAGE_LOGS,
        max_restarts=0,
    )


def scenarios() -> list[Scenario]:
    """Every AT Protocol scenario."""
    return [
        _relay_cut(FIREHOSE, 101),
        _relay_cut(JETSTREAM, 102),
        _relay_silent(FIREHOSE, 103),
        _relay_silent(JETSTREAM, 104),
        Scenario(
            name="firehose-relay-error",
            label="relay error frames ConsumerTooSlow, FutureCursor; #info OutdatedCursor",
            description="The relay sends every client an error frame (ConsumerTooSlow) and closes, then an #info "
                        "OutdatedCursor frame (the connection goes on), then a FutureCursor error frame and closes: "
                        "each error is logged and the source reconnects from its cursor; the info is logged only.",
            source=FIREHOSE,
            schedule=Schedule(seed=105, faults=[
                fault("relay", "error_frame", 0.8, name="ConsumerTooSlow"),
                fault("relay", "outdated_cursor", 1.6),
                fault("relay", "error_frame", 2.4, name="FutureCursor"),
            ]),
            rate=500.0,
            expect=("relay_error:error~ConsumerTooSlow", "disconnect:error~ConsumerTooSlow",
                    "relay_info:info~OutdatedCursor", "relay_error:error~FutureCursor", "disconnect:error~FutureCursor"),
            max_restarts=0,
        ),
        Scenario(
            name="jetstream-cutover",
            label="Jetstream reorders 50, repeats 10 at each cutover; relay closes every connection ×4",
            description="Jetstream sends 50 live messages before the last 50 replayed ones and repeats 10 at every "
                        "replay-to-live cutover; the relay closes every connection four times, so each reconnect "
                        "(2 s before the cursor) crosses another: late events are stored above the highest "
                        "position, repeated ones are skipped by identity.",
            source=AtprotoSource(mode="jetstream", reorder_at_cutover=50, duplicate_at_cutover=10),
            schedule=Schedule(seed=106, faults=[fault("relay", "drop", t) for t in (0.8, 1.6, 2.4, 3.2)]),
            rate=500.0,
            expect=("reordered", "disconnect:error~ConnectionClosed"),
            max_restarts=0,
        ),
        _weir_kill(FIREHOSE, 107),
        _weir_kill(JETSTREAM, 108),
        _redis(FIREHOSE, 109),
        _redis(JETSTREAM, 110),
    ]
