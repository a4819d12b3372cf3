"""The Snapchain simulator over real sockets, with a grpclib client (plain asyncio per test)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import grpclib.client
import pytest
import trio
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

import weir.bridge
from weir.codecs.farcaster_keys import scan_hub_event
from weir.codecs.farcaster_models import decode_hub_event
from weir.codecs.farcaster_validity import InvalidMessage, verify_message
from weir.codecs.grpc_raw import RawBytesCodec
from weir.codecs.protowire import LEN, WireError, iter_fields
from weir.protos.snapchain import (
    EventRequest,
    EventsRequest,
    EventsResponse,
    GetInfoRequest,
    GetInfoResponse,
    HubEventType,
    SubscribeRequest,
)
from weir.sim.farcaster_data import BLOCK_CONFIRMED, SnapchainSimConfig, generate_offered, shard_for_fid
from weir.sim.process import open_snapchain_sim
from weir.sim.snapchain import SnapchainSim, serve_snapchain

T = TypeVar("T")
TIMEOUT = 30.0
ALL_TYPES = [int(t) for t in HubEventType]


def run(test: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(test(), TIMEOUT)

    return asyncio.run(bounded())


@asynccontextmanager
async def simulator(config: SnapchainSimConfig) -> AsyncIterator[tuple[SnapchainSim, grpclib.client.Channel]]:
    sim, port = await serve_snapchain(config)
    channel = grpclib.client.Channel("127.0.0.1", port, codec=RawBytesCodec())
    try:
        yield sim, channel
    finally:
        channel.close()
        sim.close()
        await sim.wait_closed()


async def unary(channel: grpclib.client.Channel, method: str, request: Any, reply_type: Any) -> Any:
    async with channel.request(f"/HubService/{method}", Cardinality.UNARY_UNARY, type(request), reply_type) as stream:
        await stream.send_message(request, end=True)
        reply = await stream.recv_message()
        await stream.recv_trailing_metadata()
        return reply


async def collect(channel: grpclib.client.Channel, request: SubscribeRequest, count: int) -> list[bytes]:
    """The first ``count`` events of a Subscribe stream, as wire bytes."""
    events: list[bytes] = []
    async with channel.request("/HubService/Subscribe", Cardinality.UNARY_STREAM, SubscribeRequest, bytes) as stream:
        await stream.send_message(request, end=True)
        while len(events) < count:
            event = await stream.recv_message()
            assert event is not None, "stream ended early"
            events.append(event)
        await stream.cancel()
    return events


def messages_in(event: bytes) -> list[bytes]:
    """Raw bytes of every Message an event carries (body message, deleted ones, proof message)."""
    found: list[bytes] = []
    for field, wire_type, start, end in iter_fields(event):
        if wire_type != LEN:
            continue
        if field in (3, 4, 5, 13):  # merge/prune/revoke/failure: message=1, deleted_messages=2
            wanted = (1, 2)
        elif field == 8:  # username proof: username_proof_message=3, deleted=4
            wanted = (3, 4)
        else:
            continue
        found += [event[s:e] for f, w, s, e in iter_fields(event, start, end) if f in wanted and w == LEN]
    return found


def test_blocks_ids_counts_messages_and_shards() -> None:
    config = SnapchainSimConfig(shards=3, seed=7, rate=0, history=700, total=700)

    async def scenario() -> None:
        async with simulator(config) as (sim, channel):
            for shard in (1, 2, 3):
                events = await collect(channel, SubscribeRequest(event_types=ALL_TYPES, from_id=0, shard_index=shard), 700)
                assert [(k, v) for k, v in sim.offered(shard)] == [(scan_hub_event(e).event_id, e) for e in events]
                check_blocks(events, shard)
                for event in events:
                    for message in messages_in(event):
                        verified = verify_message(message)
                        assert shard_for_fid(verified.fid, 3) == shard
                    keys = scan_hub_event(event)
                    if keys.fid:
                        assert shard_for_fid(keys.fid, 3) == shard

    run(scenario)


def check_blocks(events: list[bytes], shard: int) -> None:
    keys = [scan_hub_event(e) for e in events]
    ids = [k.event_id for k in keys]
    assert ids == sorted(set(ids)), "ids strictly increase"
    blocks: dict[int, list[Any]] = {}
    for k in keys:
        blocks.setdefault(k.block_number, []).append(k)
    assert list(blocks) == sorted(blocks)
    for block_number, members in blocks.items():
        first = members[0]
        assert first.event_type == BLOCK_CONFIRMED, "BLOCK_CONFIRMED opens every block"
        assert first.block is not None and first.block.block_number == block_number
        for seq, k in enumerate(members):
            assert k.event_id == (block_number << 14) | seq
            assert (k.block_number, k.shard, k.timestamp) == (block_number, shard, first.timestamp)
        # The node counts BLOCK_CONFIRMED itself in total_events and event_counts_by_type.
        assert first.block.total_events == len(members)
        assert first.block.counts_by_type == dict(Counter(k.event_type for k in members))
    typed = decode_hub_event(events[0])
    assert typed.block_confirmed_body is not None
    assert typed.block_confirmed_body.total_events == len(blocks[keys[0].block_number])
    assert len(typed.block_confirmed_body.block_hash) == 32


def test_replay_is_inclusive_then_live() -> None:
    config = SnapchainSimConfig(shards=2, seed=3, rate=5000, history=120, total=400)

    async def scenario() -> None:
        async with simulator(config) as (sim, channel):
            offered = generate_offered(config, 1, 400)
            start = 50
            events = await collect(channel, SubscribeRequest(event_types=ALL_TYPES, from_id=offered[start][0], shard_index=1), 400 - start)
            assert [(scan_hub_event(e).event_id, e) for e in events] == offered[start:]
            assert sim.logs[1].finished

    run(scenario)


def test_live_only_without_from_id() -> None:
    config = SnapchainSimConfig(shards=1, seed=4, rate=4000, history=200, total=600)

    async def scenario() -> None:
        async with simulator(config) as (_, channel):
            offered = generate_offered(config, 1, 600)
            events = await collect(channel, SubscribeRequest(event_types=ALL_TYPES, shard_index=1), 50)
            got = [(scan_hub_event(e).event_id, e) for e in events]
            first = offered.index(got[0])
            assert first >= 200, "no history without from_id"
            assert got == offered[first : first + 50]
            assert scan_hub_event(events[0]).event_type == BLOCK_CONFIRMED  # live starts at a block

    run(scenario)


def test_live_production_can_wait_for_the_first_subscribe() -> None:
    """With live_after_subscribe only the history exists until a client subscribes (the chaos
    suite's load then starts when weir listens); without it production starts with the server."""
    held = SnapchainSimConfig(shards=1, seed=5, rate=0, history=30, total=300, live_after_subscribe=True)

    async def scenario(config: SnapchainSimConfig) -> int:
        async with simulator(config) as (sim, channel):
            for _ in range(50):  # rate 0: a free-running producer releases a block per turn of the loop
                await asyncio.sleep(0)
            before = sim.logs[1].released
            events = await collect(channel, SubscribeRequest(event_types=ALL_TYPES, from_id=0, shard_index=1), 300)
            assert [(scan_hub_event(e).event_id, e) for e in events] == generate_offered(config, 1, 300)
            return before

    assert run(lambda: scenario(held)) == 30
    assert run(lambda: scenario(attrs.evolve(held, live_after_subscribe=False))) > 30


def test_event_types_filter() -> None:
    config = SnapchainSimConfig(shards=2, seed=5, rate=0, history=1500, total=1500)
    wanted = {int(HubEventType.MERGE_ON_CHAIN_EVENT), int(HubEventType.PRUNE_MESSAGE), BLOCK_CONFIRMED}

    async def scenario() -> None:
        async with simulator(config) as (sim, channel):
            expected = [e for _, e in sim.offered(2) if scan_hub_event(e).event_type in wanted]
            assert {scan_hub_event(e).event_type for e in expected} == wanted
            events = await collect(channel, SubscribeRequest(event_types=sorted(wanted), from_id=0, shard_index=2), len(expected))
            assert events == expected

    run(scenario)


def test_empty_event_types_sends_nothing() -> None:
    config = SnapchainSimConfig(shards=1, seed=5, rate=0, history=300, total=300)

    async def scenario() -> None:
        async with simulator(config) as (sim, channel):
            received: list[bytes] = []
            async with channel.request("/HubService/Subscribe", Cardinality.UNARY_STREAM, SubscribeRequest, bytes) as stream:
                await stream.send_message(SubscribeRequest(event_types=[], from_id=0, shard_index=1), end=True)
                await stream.recv_initial_metadata()  # the handler has seen the request and all history exists
                assert sim.drop_streams() == 1
                with pytest.raises(GRPCError) as excinfo:
                    async for event in stream:
                        received.append(event)
                    await stream.recv_trailing_metadata()  # the status arrives in the trailers
            assert excinfo.value.status == Status.UNAVAILABLE
            assert received == []

    run(scenario)


def test_retention_gap_starts_at_oldest_retained_block() -> None:
    config = SnapchainSimConfig(shards=2, seed=6, rate=0, history=900, total=900, retention=200)

    async def scenario() -> None:
        async with simulator(config) as (sim, channel):
            shard_log = sim.logs[1]
            retained = shard_log.retained()
            assert 0 < len(retained) <= 200
            assert shard_log.oldest > 0
            events = await collect(channel, SubscribeRequest(event_types=ALL_TYPES, from_id=0, shard_index=1), len(retained))
            assert [(scan_hub_event(e).event_id, e) for e in events] == retained
            assert scan_hub_event(events[0]).event_type == BLOCK_CONFIRMED  # whole blocks are pruned
            assert sim.offered(1) == generate_offered(config, 1, 900)  # offered includes pruned events

    run(scenario)


def test_determinism_same_seed_same_bytes() -> None:
    config = SnapchainSimConfig(shards=2, seed=11, rate=0, history=400, total=400, corrupt_every=17)
    assert generate_offered(config, 1, 400) == generate_offered(config, 1, 400)
    assert generate_offered(config, 1, 400) != generate_offered(config, 2, 400)
    other = SnapchainSimConfig(shards=2, seed=12, rate=0, history=400, total=400, corrupt_every=17)
    assert generate_offered(config, 1, 400) != generate_offered(other, 1, 400)

    async def scenario() -> None:
        async with simulator(config) as (sim, _):
            assert sim.offered(1) == generate_offered(config, 1, 400)
            assert sim.offered(2) == generate_offered(config, 2, 400)

    run(scenario)


def test_corrupt_every_keeps_envelope_readable() -> None:
    config = SnapchainSimConfig(shards=1, seed=9, rate=0, history=300, total=300, corrupt_every=10)
    user_events = 0
    corrupt = 0
    for event_id, event in generate_offered(config, 1, 300):
        top = {f: (w, s, e) for f, w, s, e in iter_fields(event)}  # the envelope always parses
        assert 1 in top and 2 in top and 12 in top and 14 in top
        event_type = event[top[1][1]]
        if event_type == BLOCK_CONFIRMED:
            continue
        user_events += 1
        bad = user_events % 10 == 0
        if bad:
            corrupt += 1
            with pytest.raises(WireError):
                scan_hub_event(event)
            with pytest.raises(WireError):
                decode_hub_event(event)
            for message in messages_in(event)[:1]:  # on-chain bodies carry no Message
                with pytest.raises(InvalidMessage):
                    verify_message(message)
        else:
            scan_hub_event(event)
            for message in messages_in(event):
                verify_message(message)
    assert corrupt == user_events // 10 > 0


def test_get_info_get_events_paging_and_get_event() -> None:
    config = SnapchainSimConfig(shards=2, seed=8, rate=0, history=500, total=500)

    async def scenario() -> None:
        async with simulator(config) as (sim, channel):
            info = await unary(channel, "GetInfo", GetInfoRequest(), GetInfoResponse)
            assert info.num_shards == 2
            heights = {s.shard_id: s.max_height for s in info.shard_infos}
            for shard in (1, 2):
                assert heights[shard] == sim.offered(shard)[-1][0] >> 14

            offered = sim.offered(1)
            pages: list[bytes] = []
            token: bytes | None = None
            while True:
                request = EventsRequest(start_id=0, shard_index=1, page_size=64, page_token=token)
                reply = await unary(channel, "GetEvents", request, bytes)
                page = EventsResponse.parse(reply)
                assert len(page.events) <= 64
                pages += [e for f, w, s, end in iter_fields(reply) if f == 1 for e in [reply[s:end]]]
                token = page.next_page_token
                if not token:
                    break
            assert pages == [e for _, e in offered]

            start_id, stop_id = offered[100][0], offered[150][0]
            reply = await unary(channel, "GetEvents", EventsRequest(start_id=start_id, stop_id=stop_id, shard_index=1), bytes)
            assert [reply[s:e] for f, _, s, e in iter_fields(reply) if f == 1] == [e for _, e in offered[100:150]]

            event_id, event = offered[42]
            assert await unary(channel, "GetEvent", EventRequest(id=event_id, shard_index=1), bytes) == event
            with pytest.raises(GRPCError) as excinfo:
                await unary(channel, "GetEvent", EventRequest(id=event_id + 10_000, shard_index=1), bytes)
            assert excinfo.value.status == Status.NOT_FOUND

    run(scenario)


@pytest.mark.parametrize("shard_index", [0, 3])
def test_invalid_shard_index_is_rejected(shard_index: int) -> None:
    config = SnapchainSimConfig(shards=2, seed=1, rate=0, history=10, total=10)

    async def scenario() -> None:
        async with simulator(config) as (_, channel):
            with pytest.raises(GRPCError) as excinfo:
                await collect(channel, SubscribeRequest(event_types=ALL_TYPES, from_id=0, shard_index=shard_index), 1)
            assert excinfo.value.status == Status.INVALID_ARGUMENT
            with pytest.raises(GRPCError) as excinfo:
                await unary(channel, "GetEvents", EventsRequest(start_id=0, shard_index=shard_index), bytes)
            assert excinfo.value.status == Status.INVALID_ARGUMENT

    run(scenario)


def test_injected_errors_and_dropped_streams() -> None:
    config = SnapchainSimConfig(shards=1, seed=2, rate=0, history=50, total=50)

    async def scenario() -> None:
        async with simulator(config) as (sim, channel):
            sim.set_error(Status.UNAVAILABLE)
            with pytest.raises(GRPCError) as excinfo:
                await unary(channel, "GetInfo", GetInfoRequest(), GetInfoResponse)
            assert excinfo.value.status == Status.UNAVAILABLE
            sim.set_error(None)
            info = await unary(channel, "GetInfo", GetInfoRequest(), GetInfoResponse)
            assert info.num_shards == 1

            async with channel.request("/HubService/Subscribe", Cardinality.UNARY_STREAM, SubscribeRequest, bytes) as stream:
                await stream.send_message(SubscribeRequest(event_types=ALL_TYPES, from_id=0, shard_index=1), end=True)
                received = [await stream.recv_message() for _ in range(50)]  # all history, then idle
                assert sim.drop_streams() == 1
                with pytest.raises(GRPCError) as excinfo:
                    assert await stream.recv_message() is None
                    await stream.recv_trailing_metadata()  # the status arrives in the trailers
                assert excinfo.value.status == Status.UNAVAILABLE
            assert [e for _, e in sim.offered(1)] == received

    run(scenario)


async def test_subprocess_simulator_under_trio() -> None:
    config = SnapchainSimConfig(shards=2, seed=1, rate=0, history=40, total=40)
    async with open_snapchain_sim(config) as sim:
        assert sim.url == f"http://127.0.0.1:{sim.port}"
        async with weir.bridge.open_asyncio_loop():

            async def fetch() -> tuple[GetInfoResponse, list[bytes]]:
                channel = grpclib.client.Channel(sim.host, sim.port, codec=RawBytesCodec())
                try:
                    info = await unary(channel, "GetInfo", GetInfoRequest(), GetInfoResponse)
                    events = await collect(channel, SubscribeRequest(event_types=ALL_TYPES, from_id=0, shard_index=2), 40)
                    return info, events
                finally:
                    channel.close()

            info, events = await weir.bridge.call_asyncio(fetch)
        assert info.num_shards == 2
        assert [(scan_hub_event(e).event_id, e) for e in events] == generate_offered(config, 2, 40)
        pid = sim.pid
    with pytest.raises(ProcessLookupError):  # stopped and reaped on exit
        os.kill(pid, 0)
    await trio.lowlevel.checkpoint()
