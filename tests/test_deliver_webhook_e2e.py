"""weir deliver to a real HTTP receiver (h11 on 127.0.0.1, weir/chaos/webhook_receiver.py) from a real
Redis written by weir's sink: at least once, every request signed as docs/delivery.md's recipe
verifies, the same idempotency key on every repeat; retries, timeouts, connections closed early,
refusals dead-lettered, the circuit breaker, Ethereum retractions, filters, and kill -9.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import signal
from contextlib import asynccontextmanager

import pytest
import trio

import tests.test_deliver_e2e as parquet_e2e
from tests.helpers import metrics_url_from, wait_for, weir_args, weir_process
from tests.test_deliver_webhook_messages import documented_recipe
from tests.test_observability import http
from weir.chaos.webhook_receiver import CLOSE, HANG, Request, running_receiver
from weir.config import load_config
from weir.deliver.service import serve_deliver
from weir.deliver.webhook_messages import batch_key
from weir.events import Chunk, Event
from weir.sinks.keys import delivery_dead_key, partition_keys
from weir.sinks.redis_sink import open_redis_sink

pytestmark = pytest.mark.integration

write_events = parquet_e2e.write_events
group_done = parquet_e2e.group_done
stream_ids = parquet_e2e.stream_ids
verify = documented_recipe()
events_of = documented_recipe("events_of")
SECRET = "SECRET-hook-key"


def hook(url: str, **options: object) -> dict[str, object]:
    return {"source": "farcaster", "partitions": ["1"], "group": "files", "target": "webhook", "url": url,
            "secret": SECRET, "timeout": 1.0, "retry_initial": 0.02, "retry_max": 0.1, **options}


def hook_config(redis_url: str, *pipelines: dict[str, object], claim_idle: float = 6.0, **deliver: str):
    values = {"redis.url": redis_url, "redis.socket_timeout": "2", "deliver.pipelines": json.dumps(list(pipelines)),
              "deliver.claim_idle": str(claim_idle), "deliver.claim_interval": "0.2", "deliver.block_ms": "100",
              "deliver.consumer": "a", "deliver.max_deliveries": "3", "supervision.backoff_initial": "0.01",
              "supervision.backoff_max": "0.2", "log_level": "WARNING"}
    values.update({f"deliver.{key}": value for key, value in deliver.items()})
    return load_config(environ={}, overrides=values)


@asynccontextmanager
async def delivering(config):
    async with trio.open_nursery() as nursery:
        service = await nursery.start(functools.partial(serve_deliver, config))
        yield service
        service.stop()


def by_entry(requests: list[Request]) -> dict[str, list[Request]]:
    """Every request, checked (signature, key = the body's id), by the stream id it carried."""
    out: dict[str, list[Request]] = collections.defaultdict(list)
    for request in requests:
        assert verify(SECRET.encode(), request.body, request.signature), request
        assert request.signature.startswith(f"t={request.timestamp},v1=")
        body = json.loads(request.body)
        assert request.key == body["id"] == f"{body['source']}/{body['partition']}/{body['stream_id']}"
        out[body["stream_id"]].append(request)
    return out


async def test_every_entry_is_delivered_once_signed_with_its_fields(redis_server, redis_client):
    await write_events(redis_server.url, "1", 1, 300)
    async with running_receiver() as receiver:
        async with delivering(hook_config(redis_server.url, hook(receiver.url))):
            await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        received = by_entry(receiver.requests)
    assert sorted(received) == sorted(await stream_ids(redis_client))
    assert all(len(requests) == 1 for requests in received.values())  # no fault: no repeat
    body = json.loads(received["42-0"][0].body)
    assert body["type"] == "farcaster.MERGE_MESSAGE" and body["fields"] == {"block": 4, "fid": 42, "type": "CAST_ADD"}
    assert bytes.fromhex(body["key"]) == b"h42" and body["ts"] > 1_764_000_000


@pytest.mark.parametrize("first_answer", [500, 429, HANG, CLOSE], ids=["500", "429", "timeout", "closed-early"])
async def test_an_endpoint_failing_once_gets_the_entry_again_with_the_same_key(redis_server, redis_client, first_answer):
    await write_events(redis_server.url, "1", 1, 20)
    async with running_receiver(lambda request, earlier: first_answer if earlier == 0 else 200) as receiver:
        pipeline = hook(receiver.url, timeout=0.4, breaker_failures=1000)
        async with delivering(hook_config(redis_server.url, pipeline)):
            await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        received = by_entry(receiver.requests)
    assert sorted(received) == sorted(await stream_ids(redis_client))
    for requests in received.values():
        assert len(requests) >= 2  # the failed try, then the delivered one
        assert len({(r.key, r.body) for r in requests}) == 1  # same key, same body; signed again each time


async def test_entries_still_failing_after_their_tries_are_left_pending_and_delivered_later(redis_server, redis_client):
    await write_events(redis_server.url, "1", 1, 20)
    async with running_receiver(lambda request, earlier: 503 if earlier < 2 else 200) as receiver:
        pipeline = hook(receiver.url, timeout=0.4, attempts=1, breaker_failures=1000)
        async with delivering(hook_config(redis_server.url, pipeline, claim_idle=1.5)) as service:
            await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        received = by_entry(receiver.requests)
    assert sorted(received) == sorted(await stream_ids(redis_client))
    assert all(len(requests) >= 3 and len({r.key for r in requests}) == 1 for requests in received.values())
    stats = service.stats["farcaster-webhook/1"]
    assert stats.given_back >= 40 and (stats.refused, stats.dead_lettered) == (0, 0)  # two offers each at least, no refusal


async def test_a_claim_pass_of_many_slow_pages_acknowledges_each_page_before_the_next(redis_server, redis_client):
    # 100 entries pending to a dead consumer, claimed 20 a page; every first try hangs past the
    # timeout, so each page's offer takes ~0.3 s and the pass ~1.5 s, past the safe margin
    # (2/3 of claim_idle): a page left for the loop's commit would be dropped and claimed again.
    # (The timeout leaves the second try half of an offer's 0.5 s, even on a loaded machine.)
    await write_events(redis_server.url, "1", 1, 100)
    key = partition_keys("farcaster", "1").events
    await redis_client("XGROUP", "CREATE", key, "files", "0")
    await redis_client("XREADGROUP", "GROUP", "files", "dead", "COUNT", "100", "STREAMS", key, ">")
    async with running_receiver(lambda request, earlier: HANG if earlier == 0 else 200) as receiver:
        pipeline = hook(receiver.url, timeout=0.25, concurrency=20, retry_initial=0.01, retry_max=0.02,
                        breaker_failures=1000)
        config = hook_config(redis_server.url, pipeline, claim_idle=1.5, read_count="20")
        async with delivering(config) as service:
            await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        received = by_entry(receiver.requests)
    assert sorted(received) == sorted(await stream_ids(redis_client))
    stats = service.stats["farcaster-webhook/1"]
    assert stats.claimed == 100 and stats.aborts == 0 and stats.given_back == 0, stats


async def test_a_refused_entry_is_dead_lettered_after_max_deliveries_with_the_status_and_body(redis_server, redis_client):
    await write_events(redis_server.url, "1", 1, 30)

    def respond(request: Request, earlier: int):  # the body echoes the secret: it must not reach the dead letter
        return (422, f"fid 7 is not welcome ({SECRET})".encode()) if request.stream_id == "7-0" else 200

    async with running_receiver(respond) as receiver:
        config = hook_config(redis_server.url, hook(receiver.url, timeout=0.4), claim_idle=1.5, max_deliveries="2")
        async with delivering(config) as service:
            await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged or dead-lettered")
        received = by_entry(receiver.requests)
    assert len(received["7-0"]) == 2 and sorted(received) == sorted(await stream_ids(redis_client))
    letters = await redis_client("XRANGE", delivery_dead_key("farcaster", "1", "files"), "-", "+")
    assert [fields[b"entry_id"] for _, fields in letters] == [b"7-0"]
    reason = letters[0][1][b"reason"].decode()
    assert "not accepted after 2 deliveries" in reason and "HTTP 422: fid 7 is not welcome (***)" in reason
    assert SECRET not in reason
    assert service.stats["farcaster-webhook/1"].refused == 2


async def test_batched_requests_are_delivered_retried_whole_and_refused_event_by_event(redis_server, redis_client):
    # 30 entries, fids 1..30; the filter leaves out fids 3 and 4: requests of 10 selected events.
    # The request carrying 9-0 fails once (500), the one carrying 19-0 is refused (422) every time.
    await write_events(redis_server.url, "1", 1, 30)

    def respond(request: Request, earlier: int):
        carried = {event["stream_id"] for event in events_of(request.body)}
        return 500 if "9-0" in carried and earlier == 0 else (422, b"no thanks") if "19-0" in carried else 200

    async with running_receiver(respond) as receiver:
        pipeline = hook(receiver.url, timeout=0.4, events_per_request=10, fids=[n for n in range(1, 31) if n not in (3, 4)],
                        breaker_failures=1000)
        config = hook_config(redis_server.url, pipeline, claim_idle=1.5, max_deliveries="2")
        async with delivering(config):
            await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged or dead-lettered")
        requests = list(receiver.requests)
    carried: dict[str, list[list[str]]] = collections.defaultdict(list)  # idempotency key -> the ids of each request
    for request in requests:
        assert verify(SECRET.encode(), request.body, request.signature) and request.batched
        events = events_of(request.body)
        assert all(event["id"] == f"farcaster/1/{event['stream_id']}" for event in events)
        carried[request.key].append([event["stream_id"] for event in events])
    selected = [f"{n}-0" for n in range(1, 31) if n not in (3, 4)]
    first = [ids for repeats in carried.values() for ids in repeats[:1]]
    assert sorted(first) == sorted([selected[:10], selected[10:20], selected[20:]])  # filtered first, 10 a request
    retried = next(repeats for repeats in carried.values() if "9-0" in repeats[0])
    assert len(retried) == 2 and retried[0] == retried[1]  # retried whole: the same events under the same key
    letters = await redis_client("XRANGE", delivery_dead_key("farcaster", "1", "files"), "-", "+")
    assert [fields[b"entry_id"].decode() for _, fields in letters] == selected[10:20]  # each event of the refused request
    assert all(b"HTTP 422: no thanks" in fields[b"reason"] for _, fields in letters)


async def test_the_circuit_breaker_opens_sends_nothing_while_open_then_closes(redis_server, redis_client):
    await write_events(redis_server.url, "1", 1, 10)
    failing = 3  # the first requests fail: two open the breaker, the first trial fails, the second succeeds
    async with running_receiver(lambda request, earlier: 503 if len(receiver.requests) <= failing else 200) as receiver:
        pipeline = hook(receiver.url, concurrency=1, attempts=10, breaker_failures=2, breaker_reset=1.0,
                        breaker_max_reset=1.0, retry_initial=0.01, retry_max=0.02)
        async with delivering(hook_config(redis_server.url, pipeline, claim_idle=12.0)):  # an offer may take 4 s
            await wait_for(functools.partial(group_done, redis_client), timeout=30, what="every entry acknowledged")
        requests = list(receiver.requests)
    assert sorted(by_entry(requests)) == sorted(await stream_ids(redis_client))
    at = [request.at for request in requests]
    gaps = [round(b - a, 3) for a, b in zip(at, at[1:])]
    # Open after the second failure: each trial a reset_timeout after the last failure, nothing between.
    assert gaps[1] >= 0.9 and gaps[2] >= 0.9, gaps
    # The second trial succeeded: closed, the other entries of the offer follow at once.
    assert len(requests) >= 10 and all(gap < 0.5 for gap in gaps[3:]), gaps


async def test_ethereum_retractions_are_signed_events_and_each_endpoint_gets_what_its_filters_select(
        redis_server, redis_client):
    a, b = "0x" + "ab" * 20, "0x" + "cd" * 20

    def log(position: int, kind: str, index: int, address: str) -> Event:
        return Event(source="ethereum", partition="1", position=position, kind=kind, key=b"1:0xb%d:%d" % (index, index),
                     payload=json.dumps({"logIndex": hex(index)}).encode(), timestamp=1_764_000_000 + position,
                     fields={"chain": 1, "block": 100 + index, "block_hash": f"0xb{index}", "log_index": index,
                             "address": address, "event": "Transfer"})

    events = [log(1, "log", 0, a), log(2, "log", 1, a), log(3, "log", 2, b), log(4, "retract", 1, a), log(5, "retract", 2, b)]
    async with open_redis_sink(redis_server.url, source="ethereum") as sink:
        await sink.write("1", [Chunk(partition="1", events=events, through=5)])
    async with running_receiver() as contract_hook, running_receiver() as retract_hook:
        mixed_case = "0x" + a[2:].upper()
        pipelines = [hook(contract_hook.url, name="a-logs", group="a-logs", source="ethereum", contracts=[mixed_case]),
                     hook(retract_hook.url, name="retractions", group="retractions", source="ethereum", kinds=["retract"])]
        async with delivering(hook_config(redis_server.url, *pipelines)):
            for group in ("a-logs", "retractions"):
                await wait_for(functools.partial(group_done, redis_client, source="ethereum", group=group), timeout=30,
                               what=f"every entry acknowledged by {group}")
        for_a, retractions = by_entry(contract_hook.requests), by_entry(retract_hook.requests)
    assert sorted(for_a) == ["1-0", "2-0", "4-0"] and sorted(retractions) == ["4-0", "5-0"]
    retract = json.loads(for_a["4-0"][0].body)
    assert retract["type"] == "ethereum.retract" and retract["kind"] == "retract"
    assert bytes.fromhex(retract["key"]) == b"1:0xb1:1" == bytes.fromhex(json.loads(for_a["2-0"][0].body)["key"])
    assert retract["fields"]["address"] == a and retract["fields"]["log_index"] == 1


def by_event(requests: list[Request]) -> dict[str, list[bytes]]:
    """Every event of every batched request, checked (signature, the request's key, each event's
    id), by its stream id: each as its own canonical JSON."""
    out: dict[str, list[bytes]] = collections.defaultdict(list)
    for request in requests:
        assert verify(SECRET.encode(), request.body, request.signature) and request.batched, request
        events = events_of(request.body)
        assert request.key == batch_key("farcaster", "1", [event["stream_id"] for event in events])
        for event in events:
            assert event["id"] == f"farcaster/1/{event['stream_id']}"
            out[event["stream_id"]].append(json.dumps(event, sort_keys=True).encode())
    return out


@pytest.mark.parametrize("per_request", [1, 20], ids=["one-per-request", "batched"])
async def test_kill_9_mid_delivery_then_restart_delivers_every_entry_with_the_same_key_on_repeats(
        redis_server, redis_client, tmp_path, per_request):
    await write_events(redis_server.url, "1", 1, 2000)
    async with running_receiver() as receiver:
        received_events = (lambda: len(receiver.requests)) if per_request == 1 else (lambda: len(receiver.requests) * per_request)
        pipeline = json.dumps([hook(receiver.url, secret="", secret_env="HOOK_SECRET", concurrency=4,
                                    events_per_request=per_request)])
        flags = ["--redis-url", redis_server.url, "--set", f"deliver.pipelines={pipeline}", "--set", "deliver.claim_idle=6",
                 "--set", "deliver.claim_interval=0.2", "--set", "deliver.block_ms=100", "--set", "deliver.read_count=200",
                 "--set", "metrics.port=0", "--log-format", "json", "--consumer", "first"]
        log_path = tmp_path / "deliver.log"
        environ = {"HOOK_SECRET": SECRET}
        async with weir_process(weir_args("deliver", *flags), log_path, environ=environ) as process:
            await wait_for(lambda: process.returncode is not None or received_events() >= 300, timeout=60,
                           what="delivery under way")
            assert process.returncode is None, log_path.read_text()[-3000:]
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
        pending = (await redis_client("XPENDING", partition_keys("farcaster", "1").events, "files"))["pending"]
        seen = by_entry if per_request == 1 else by_event
        assert pending > 0 and len(seen(receiver.requests)) < 2000  # killed with entries read, not acknowledged
        restart_log = tmp_path / "restart.log"
        async with weir_process(weir_args("deliver", *flags), restart_log, environ=environ) as process:
            await wait_for(functools.partial(group_done, redis_client), timeout=60, what="every entry acknowledged")
            metrics_url = await metrics_url_from(restart_log)
            shown = b"".join([(await http(metrics_url, "/metrics"))[2], (await http(metrics_url, "/readyz"))[2]])
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                assert await process.wait() == 0, restart_log.read_text()[-3000:]
        received = seen(receiver.requests)
    assert sorted(received) == sorted(await stream_ids(redis_client))  # every entry at least once
    for repeats in received.values():  # a repeat carries the same key and body (batched: the same event)
        assert len({(r.key, r.body) if isinstance(r, Request) else r for r in repeats}) == 1
    assert b"weir_deliver_entries_given_back_total" in shown and b"deliver:farcaster-webhook/1" in shown
    assert SECRET not in log_path.read_text() + restart_log.read_text() and SECRET.encode() not in shown
