"""The AT Protocol chaos source: its comparison by identity (pure), its schedule targets, and the
simulator process's run-time commands and record (real process, real WebSockets)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio
import trio_websocket

from weir.actors.atproto import open_websocket
from weir.chaos.atproto import FIREHOSE, JETSTREAM, offered_entries
from weir.chaos.atproto_check import AtprotoOffered, compare_atproto
from weir.chaos.farcaster import FARCASTER
from weir.chaos.scenario import Scenario, fault
from weir.chaos.schedule import INSTANT_KINDS, KINDS, Schedule, TimedFault
from weir.chaos.source import Load
from weir.chaos.suite import random_scenarios
from weir.chaos.waiting import wait_until
from weir.codecs.atproto_firehose import decode_frame
from weir.config import AtprotoSettings
from weir.sim.atproto_data import AtprotoSimConfig
from weir.sim.process import open_atproto_sim_process

CONFIG = AtprotoSimConfig(seed=4, total=120)


def stored(mode: str, event: AtprotoOffered, position: int | None = None, sub: int | None = None, data: bytes | None = None):  # type: ignore[no-untyped-def]
    """The entry weir writes for ``event`` (at its own id unless told otherwise)."""
    fields = {"kind": event.kind, "data": event.data if data is None else data, **event.fields}
    fields["seq" if mode == "firehose" else "time_us"] = str(event.position)
    entry_id = b"%d-%d" % (event.position if position is None else position, event.sub if sub is None else sub)
    return entry_id, {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def firehose_offer() -> tuple[AtprotoOffered, ...]:
    return offered_entries(CONFIG, "firehose")


def test_a_firehose_stream_that_holds_every_op_once_in_order_is_clean():
    offered = firehose_offer()
    assert any(e.sub > 0 for e in offered) and any(e.kind != "commit" for e in offered)
    assert any(e.data == b"" for e in offered)  # deletes: data alone does not identify an op
    entries = [stored("firehose", e) for e in offered]
    report = compare_atproto("firehose", "firehose", offered, entries, final_cursor=offered[-1].position)
    assert report.ok and report.offered == report.persisted == len(offered), report


def test_the_firehose_comparison_finds_each_kind_of_fault():
    offered = firehose_offer()
    entries = [stored("firehose", e) for e in offered]
    last = offered[-1].position
    lost = compare_atproto("firehose", "p", offered, entries[:10] + entries[11:], final_cursor=last)
    assert (lost.lost, lost.unexpected, lost.duplicated) == (1, 0, 0)
    again = compare_atproto("firehose", "p", offered, [*entries, stored("firehose", offered[3], position=last + 1)],
                            final_cursor=last + 1)
    assert again.duplicated == 1 and again.cursor_mismatch
    swapped = compare_atproto("firehose", "p", offered, [entries[1], entries[0], *entries[2:]], final_cursor=last)
    assert swapped.out_of_order == 1 and swapped.wrong_id == 0
    moved = compare_atproto("firehose", "p", offered, [*entries[:5], stored("firehose", offered[5], sub=7), *entries[6:]],
                            final_cursor=last)
    assert moved.wrong_id == 1
    other = compare_atproto("firehose", "p", offered, [*entries[:5], stored("firehose", offered[5], data=b"x"), *entries[6:]],
                            final_cursor=last)
    assert other.unexpected == 1 and other.lost == 0
    regressed = compare_atproto("firehose", "p", offered, entries, cursors=[5, 9, 7, last], final_cursor=last)
    assert regressed.cursor_regressions == 1


def test_jetstream_events_stored_late_are_judged_by_what_the_relay_sent_late():
    offered = offered_entries(CONFIG, "jetstream")
    a, b, c, d = offered[:4]
    # b arrived after c: stored just above c's position; d then at its own time_us (above b's)
    in_arrival_order = [stored("jetstream", a), stored("jetstream", c), stored("jetstream", b, position=c.position + 1),
                        stored("jetstream", d)]
    report = compare_atproto("jetstream", "j", offered[:4], in_arrival_order, late={b.position}, final_cursor=d.position)
    assert report.ok, report
    never_sent_late = compare_atproto("jetstream", "j", offered[:4], in_arrival_order, late=set(), final_cursor=d.position)
    assert never_sent_late.out_of_order == 1
    at_its_time = [stored("jetstream", a), stored("jetstream", c), stored("jetstream", b), stored("jetstream", d)]
    assert compare_atproto("jetstream", "j", offered[:4], at_its_time, late={b.position}, final_cursor=d.position).wrong_id == 1
    # an event bumped although its time_us was above the last position is misplaced
    bumped = [stored("jetstream", a), stored("jetstream", b, position=b.position + 5), stored("jetstream", c), stored("jetstream", d)]
    assert compare_atproto("jetstream", "j", offered[:4], bumped, final_cursor=d.position).wrong_id == 1
    # the cursor is the highest position stored, not the last time_us
    assert compare_atproto("jetstream", "j", offered[:4], in_arrival_order, late={b.position}, final_cursor=c.position).cursor_mismatch


def test_relay_faults_are_instant_kinds_of_the_atproto_targets_only():
    assert set(KINDS["relay"]) == {"drop", "error_frame", "outdated_cursor"} <= INSTANT_KINDS
    assert TimedFault(target="relay", kind="error_frame", start=1, duration=0, params={"name": "FutureCursor"}).param("name") == "FutureCursor"
    with pytest.raises(ValueError, match="has no fault"):
        TimedFault(target="relay", kind="kill", start=1, duration=0)
    with pytest.raises(ValueError, match="farcaster source has no target relay"):
        Scenario(name="x", label="x", schedule=Schedule(faults=[fault("relay", "drop", 1.0)]), source=FARCASTER)


def test_generated_schedules_for_an_atproto_source_draw_from_its_targets():
    scenarios = random_scenarios(12, 5, JETSTREAM)
    targets = {f.target for s in scenarios for f in s.schedule.faults}
    assert {"relay", "relay_link"} <= targets and "hub" not in targets and "hub_link" not in targets
    assert all(f.duration == 0 for s in scenarios for f in s.schedule.faults if f.target == "relay")
    assert all(s.source is JETSTREAM for s in scenarios)


def test_the_offer_follows_the_load_and_time_us_follows_the_rate():
    load = Load(seed=3, rate=400.0, history=50, seconds=1.0)
    config = JETSTREAM.sim_config(load)
    assert config.total == 450 and config.time_step_us == 2500 and config.reorder_at_cutover > 0
    (offer,) = FIREHOSE.offered(load).values()
    assert offer.final_cursor == offer.events[-1][0] and len(offer.events) > config.total


async def _next_of_kind(ws: trio_websocket.WebSocketConnection, kind: str):  # type: ignore[no-untyped-def]
    """The next firehose frame of ``kind`` (live commit frames keep coming in between)."""
    while True:
        decoded = decode_frame(await ws.get_message())
        if decoded.kind == kind:
            return decoded


@pytest.mark.integration
async def test_the_simulator_process_takes_commands_and_records_what_it_offered():
    config = AtprotoSimConfig(seed=6, total=600, rate=300.0, history=50, reorder_at_cutover=5)
    async with open_atproto_sim_process(config, record=True) as sim:
        with trio.fail_after(20):
            async with open_websocket(f"{sim.url}/xrpc/com.atproto.sync.subscribeRepos?cursor=0", AtprotoSettings()) as ws:
                await ws.get_message()
                sim.command(info="OutdatedCursor", message="too old")
                info = await _next_of_kind(ws, "info")
                assert (info.body["name"], info.body["message"]) == ("OutdatedCursor", "too old")
                sim.command(error="ConsumerTooSlow", message="slow")
                error = await _next_of_kind(ws, "error")
                assert (error.type, error.body["message"]) == ("ConsumerTooSlow", "slow")
                with pytest.raises(trio_websocket.ConnectionClosed):
                    await ws.get_message()  # the relay closes after an error frame
            async with open_websocket(f"{sim.url}/subscribe?cursor=1", AtprotoSettings()) as ws:
                times = [json.loads(await ws.get_message())["time_us"] for _ in range(150)]
                sim.command(drop=True)
                with pytest.raises(trio_websocket.ConnectionClosed):
                    while True:
                        await ws.get_message()
            os.kill(sim.pid, signal.SIGTERM)
            assert await wait_until(lambda: os.path.exists(sim.record), timeout=10)
        record = json.loads(await trio.Path(sim.record).read_text())
    assert record["total"] == 600 and 50 < record["released"] <= 600
    # the cutover sent 5 live messages before the last 5 replayed ones: those came late
    sent_late = [t for i, t in enumerate(times) if t < max(times[:i], default=-1)]
    assert len(sent_late) == 5 and set(sent_late) <= set(record["late"])


def test_atproto_disconnects_count_as_reconnects():
    from weir.chaos.checker import restarts_from_log

    line = ('{"msg": "firehose: connection to ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos lost '
            '(IdleStream: no data for 1s); reconnecting in 0.05s after 2146", "event": "disconnect"}')
    assert restarts_from_log("\n".join([line, line, "unrelated"])) == (0, 2)
