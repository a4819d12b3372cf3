"""Observability: /metrics, /healthz, /readyz over a real socket, and the structured log fields.

The service runs in process (``weir.app.serve``) against the Snapchain simulator and a real
redis-server; the endpoint is scraped with a plain HTTP/1.1 client on a TCP socket.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import trio
from grpclib.const import Status
from helpers import (
    LogCapture,
    assert_exact,
    capture_json_logs,
    dead_entries,
    e2e_config,
    in_process_sim,
    keys,
    offered,
    running_service,
    stream_entries,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

from weir.actors.farcaster import ShardReader, ShardStats
from weir.chaos.proxy import Down, open_proxy
from weir.codecs.farcaster_keys import scan_hub_event
from weir.codecs.farcaster_gaps import Gap, GapDetector
from weir.codecs.protowire import WireError
from weir.config import load_config
from weir.logs import JsonFormatter
from weir.observability.buckets import Buckets
from weir.observability.http import Observability, open_observability
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.process import open_snapchain_sim
from weir.supervision import (
    BreakerState,
    ChildSpec,
    CircuitBreaker,
    Strategy,
    Supervisor,
    SupervisorEscalation,
)

SHARDS = (1, 2)
TIMEOUT = 15.0


# -- a plain HTTP client and a metrics parser ---------------------------------------------------


async def http(base: str, path: str, *, method: str = "GET", extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (Connection: close); returns status, headers, body."""
    parts = urlsplit(base)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n".encode() + extra + b"\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics[(name, frozenset(labels.items()))]


async def scrape(base: str) -> dict:
    status, headers, body = await http(base, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    return samples(body.decode())


async def ready(base: str) -> tuple[int, dict]:
    status, headers, body = await http(base, "/readyz")
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    with capture_json_logs() as capture:
        yield capture


def service_url(service) -> str:
    assert service.observability is not None and service.observability.port, "the endpoint should be listening"
    return service.observability.url


def done(service, expected) -> bool:
    return all(view.sink.cursor == expected[int(view.name.split("/")[1])][-1][0] for view in service.partitions)


# -- end to end ---------------------------------------------------------------------------------


@pytest.mark.integration
async def test_metrics_count_exactly_what_was_persisted(redis_server, redis_client, logs):
    sim_config = SnapchainSimConfig(shards=2, seed=31, rate=0, history=1500, total=1500, corrupt_every=97)
    expected = {shard: offered(sim_config, shard) for shard in SHARDS}
    async with in_process_sim(sim_config) as (_, url):
        async with running_service(e2e_config(redis_server.url, url)) as (service, _):
            base = service_url(service)
            await wait_for(lambda: done(service, expected), timeout=TIMEOUT, what="every offered event to be durable")
            metrics = await scrape(base)
            status, verdict = await ready(base)
    assert status == 200 and verdict["status"] == "ready", verdict
    total_dead = 0
    for shard in SHARDS:
        labels = {"source": "farcaster", "partition": str(shard)}
        events = len(await stream_entries(redis_client, shard))
        dead = len(await dead_entries(redis_client, shard))
        total_dead += dead
        assert dead > 0  # corrupt_every: the dead-letter path is exercised too
        assert value(metrics, "weir_events_persisted_total", **labels) == events
        assert value(metrics, "weir_events_dead_lettered_total", **labels) == dead
        assert value(metrics, "weir_events_received_total", **labels) == len(expected[shard]) == events + dead
        assert value(metrics, "weir_events_skipped_total", **labels) == 0
        assert value(metrics, "weir_events_filtered_total", **labels) == 0
        cursor = int(await redis_client("HGET", keys(shard).cursor, "position"))
        assert value(metrics, "weir_cursor_position", **labels) == cursor == expected[shard][-1][0]
        assert value(metrics, "weir_source_position", **labels) == cursor
        # histograms: every persisted event observed once (latency), batches add up to the events
        assert value(metrics, "weir_batch_size_events_sum", **labels) == events
        assert value(metrics, "weir_batch_size_events_bucket", **labels, le="+Inf") == service.partitions[shard - 1].sink.batches
        assert value(metrics, "weir_persist_latency_seconds_count", **labels) == events
        assert value(metrics, "weir_persist_latency_seconds_bucket", **labels, le="30.0") == events
        assert value(metrics, "weir_lag_events", **labels) == 0
        assert value(metrics, "weir_lag_seconds", **labels) == 0
        assert value(metrics, "weir_source_connected", **labels) == 1
        assert value(metrics, "weir_partition_ready", **labels) == 1
        assert value(metrics, "weir_source_reconnects_total", **labels) == 0
        from weir.actors.pipeline import BATCH_TO_PERSIST, FILTER_TO_BATCH, SOURCE_TO_FILTER

        for channel, capacity in (("source_to_filter", SOURCE_TO_FILTER), ("filter_to_batch", FILTER_TO_BATCH),
                                  ("batch_to_persist", BATCH_TO_PERSIST)):
            assert value(metrics, "weir_channel_capacity", **labels, channel=channel) == capacity
            assert 0 <= value(metrics, "weir_channel_depth", **labels, channel=channel) <= capacity
        assert value(metrics, "weir_supervisor_restarts_total", supervisor=f"farcaster/{shard}") == 0
        assert value(metrics, "weir_child_running", supervisor=f"farcaster/{shard}", child=f"farcaster/{shard}/source") == 1
        assert value(metrics, "weir_gaps_total", **labels) == 0
    assert value(metrics, "weir_supervisor_restarts_total", supervisor="root") == 0
    assert value(metrics, "weir_supervisor_escalations_total", supervisor="root") == 0
    assert value(metrics, "weir_breaker_state", breaker="redis") == 0
    assert value(metrics, "weir_breaker_state", breaker=f"snapchain {url}") == 0
    for breaker in ("redis", f"snapchain {url}"):  # the same by name: 1 for its state only
        assert {state: value(metrics, "weir_breaker_status", breaker=breaker, state=state)
                for state in ("closed", "half_open", "open")} == {"closed": 1, "half_open": 0, "open": 0}
    assert ("process_cpu_seconds_total", frozenset()) in metrics
    # the log lines behind it: a connect per shard, a dead letter per corrupt event, with fields
    connects = logs.of("connect")
    assert {line["partition"] for line in connects} == {"1", "2"}
    assert all(line["source"] == "farcaster" and line["url"] == url and line["level"] == "info" for line in connects)
    dead_lines = logs.of("dead_letter")
    assert len(dead_lines) == total_dead
    assert all(isinstance(line["position"], int) and line["reason"] for line in dead_lines)


@pytest.mark.integration
async def test_filtered_counter_counts_exactly_what_the_fid_filter_dropped(redis_server, redis_client):
    """With farcaster.fids set, weir_events_filtered_total is the number of offered events whose fid is
    not wanted, and received = persisted + filtered + dead-lettered on every partition."""
    sim_config = SnapchainSimConfig(shards=2, seed=35, rate=0, history=1500, total=1500, corrupt_every=97)
    expected = {shard: offered(sim_config, shard) for shard in SHARDS}

    def fid(payload: bytes) -> int | None:
        try:
            return scan_hub_event(payload).fid
        except WireError:
            return None  # a corrupt event: dead-lettered before any filter sees it

    all_fids = sorted({fid(p) for events in expected.values() for _, p in events} - {None, 0})
    fids = set(all_fids[::10])  # ~10% of the users seen
    kept = {shard: [(i, p) for i, p in events if fid(p) in fids] for shard, events in expected.items()}
    dropped = {shard: sum(1 for _, p in events if fid(p) is not None and fid(p) not in fids) for shard, events in expected.items()}
    corrupt = {shard: sum(1 for _, p in events if fid(p) is None) for shard, events in expected.items()}
    async with in_process_sim(sim_config) as (_, url):
        config = e2e_config(redis_server.url, url, farcaster__fids=",".join(map(str, sorted(fids))))
        async with running_service(config) as (service, _):
            await wait_for(lambda: done(service, expected), timeout=TIMEOUT, what="the cursor to pass every offered event")
            metrics = await scrape(service_url(service))
    for shard in SHARDS:
        labels = {"source": "farcaster", "partition": str(shard)}
        assert 0 < len(kept[shard]) < dropped[shard] and corrupt[shard] > 0  # all three paths are exercised
        assert_exact(await stream_entries(redis_client, shard), kept[shard], shard=shard)
        assert len(await dead_entries(redis_client, shard)) == corrupt[shard]
        filtered = value(metrics, "weir_events_filtered_total", **labels)
        persisted = value(metrics, "weir_events_persisted_total", **labels)
        dead = value(metrics, "weir_events_dead_lettered_total", **labels)
        received = value(metrics, "weir_events_received_total", **labels)
        assert filtered == dropped[shard]
        assert persisted == len(kept[shard])
        assert dead == corrupt[shard]
        assert received == len(expected[shard]) == persisted + filtered + dead
        assert value(metrics, "weir_events_skipped_total", **labels) == 0
        assert value(metrics, "weir_cursor_position", **labels) == expected[shard][-1][0]


@pytest.mark.integration
async def test_readyz_follows_the_source_and_redis(redis_server, asyncio_loop, logs):
    sim_config = SnapchainSimConfig(shards=2, seed=32, rate=3000, history=200)
    async with in_process_sim(sim_config) as (sim, url):
        sim.set_error(Status.UNAVAILABLE)  # the node refuses every call: no data yet
        config = e2e_config(redis_server.url, url, metrics__stale_after="0.5")
        async with running_service(config) as (service, _):
            base = service_url(service)
            status, _, body = await http(base, "/healthz")
            assert (status, body) == (200, b"ok\n")

            # before the first data: not ready, and each partition says why
            status, verdict = await ready(base)
            assert status == 503 and verdict["status"] == "not ready"
            for name in ("farcaster/1", "farcaster/2"):
                problems = verdict["partitions"][name]["problems"]
                assert any(problem.startswith("source not connected") for problem in problems), problems
            await wait_for(lambda: len(logs.of("disconnect")) >= 2, timeout=TIMEOUT, what="reconnect attempts")

            # data flows: ready
            sim.set_error(None)

            async def is_ready() -> bool:
                return (await ready(base))[0] == 200

            def persisting() -> bool:
                return all(view.sink.appended > 0 for view in service.partitions)

            await wait_for(persisting, timeout=TIMEOUT, what="events to be persisted")
            await wait_for(is_ready, timeout=TIMEOUT, what="/readyz to turn 200 once data flows")

            # Redis hangs: no durable write while events pile up -> 503 naming the problem; /healthz stays 200
            redis_server.pause()
            try:

                async def stale() -> bool:
                    status, verdict = await ready(base)
                    problems = [p for v in verdict["partitions"].values() for p in v.get("problems", [])]
                    return status == 503 and any(p.startswith("events pending and no") for p in problems)

                await wait_for(stale, timeout=TIMEOUT, what="/readyz to report the stalled writes")
                assert (await http(base, "/healthz"))[0] == 200
                metrics = await scrape(base)
                assert value(metrics, "weir_lag_seconds", source="farcaster", partition="1") > 0 or \
                    value(metrics, "weir_lag_seconds", source="farcaster", partition="2") > 0
                await wait_for(lambda: bool(logs.of("sink_unavailable")), timeout=TIMEOUT, what="a sink_unavailable log line")
            finally:
                redis_server.resume()
            written = [view.sink.appended for view in service.partitions]
            await wait_for(lambda: all(v.sink.appended > n for v, n in zip(service.partitions, written)),
                           timeout=TIMEOUT, what="writes to resume on every partition")
            await wait_for(is_ready, timeout=TIMEOUT, what="/readyz to recover once Redis answers")
            await wait_for(lambda: bool(logs.of("sink_available")), timeout=TIMEOUT, what="a sink_available log line")
    disconnect = logs.of("disconnect")[0]
    assert disconnect["level"] == "warning" and disconnect["source"] == "farcaster"
    assert disconnect["partition"] in ("1", "2") and "UNAVAILABLE" in disconnect["error"]
    assert disconnect["opened"] is False and " did not open (" in disconnect["msg"]  # no data before the error
    assert isinstance(disconnect["reconnect_in"], float) and disconnect["reconnects"] >= 1
    unavailable = logs.of("sink_unavailable")[0]
    assert unavailable["partition"] in ("1", "2") and unavailable["source"] == "farcaster"
    assert isinstance(unavailable["through"], int) and unavailable["error"]
    available = logs.of("sink_available")[0]
    assert available["failed_attempts"] >= 1 and isinstance(available["cursor"], int)


@pytest.mark.integration
@pytest.mark.parametrize("dependency", ["redis", "node"])
async def test_readyz_is_503_naming_an_open_circuit_breaker_and_200_once_it_closes(durable_redis_server, dependency):
    """Redis killed (its breaker opens: every partition depends on it) or the node unreachable (the
    node's breaker opens: its network's partitions depend on it): /readyz names the breaker."""
    sim_config = SnapchainSimConfig(shards=2, seed=34, rate=1000, history=200)
    async with open_snapchain_sim(sim_config) as sim, open_proxy("127.0.0.1", sim.port, seed=34) as hub_link:
        config = e2e_config(durable_redis_server.url, hub_link.http_url, supervision__breaker_failures="2")
        async with running_service(config) as (service, _):
            base = service_url(service)
            breaker = service.breaker if dependency == "redis" else service.networks[0].node_breaker
            problem = f"circuit breaker {breaker.name!r} is "

            async def is_ready() -> bool:
                return (await ready(base))[0] == 200

            await wait_for(is_ready, timeout=TIMEOUT, what="/readyz to turn 200 once data flows")
            assert (await ready(base))[1]["breakers"][breaker.name] == "closed"

            async def names_the_breaker() -> bool:
                status, verdict = await ready(base)
                problems = {name: v.get("problems", []) for name, v in verdict["partitions"].items()}
                return status == 503 and all(any(p.startswith(problem) for p in ps) for ps in problems.values())

            if dependency == "redis":
                await durable_redis_server.kill()
                fault = None
            else:
                fault = hub_link.add(Down())
            try:
                await wait_for(lambda: breaker.state is not BreakerState.CLOSED, timeout=TIMEOUT, what="the breaker to open")
                await wait_for(names_the_breaker, timeout=TIMEOUT, what="/readyz to name the open breaker")
                status, verdict = await ready(base)
                assert verdict["status"] == "not ready"
                assert verdict["breakers"][breaker.name] in ("open", "half_open")
                metrics = await scrape(base)
                code = value(metrics, "weir_breaker_state", breaker=breaker.name)
                assert code in (1, 2)  # half-open, open
                named = {state: value(metrics, "weir_breaker_status", breaker=breaker.name, state=state)
                         for state in ("closed", "half_open", "open")}
                assert named == {"closed": 0, "half_open": float(code == 1), "open": float(code == 2)}
                assert value(metrics, "weir_breaker_opened_total", breaker=breaker.name) >= 1
                assert (await http(base, "/healthz"))[0] == 200  # alive, just not ready
            finally:
                if fault is None:
                    await durable_redis_server.start()
                else:
                    hub_link.remove(fault)
            await wait_for(is_ready, timeout=TIMEOUT, what="/readyz to turn 200 once the breaker closes")
            assert breaker.state is BreakerState.CLOSED
            status, verdict = await ready(base)
            assert verdict["breakers"][breaker.name] == "closed"
            assert not any(v.get("problems") for v in verdict["partitions"].values())


@pytest.mark.integration
async def test_http_details(redis_server, asyncio_loop):
    sim_config = SnapchainSimConfig(shards=1, seed=33, rate=0, history=10, total=10)
    async with in_process_sim(sim_config) as (_, url):
        async with running_service(e2e_config(redis_server.url, url, shards="1")) as (service, _):
            base = service_url(service)
            assert (await http(base, "/nope"))[0] == 404
            assert (await http(base, "/metrics", method="POST"))[0] == 405
            status, headers, body = await http(base, "/metrics", method="HEAD")
            assert status == 200 and body == b"" and int(headers["content-length"]) > 0
            # OpenMetrics when asked for
            status, headers, body = await http(base, "/metrics", extra=b"Accept: application/openmetrics-text; version=1.0.0\r\n")
            assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
            assert body.rstrip().endswith(b"# EOF")
            # keep-alive: two requests on one connection; then garbage gets a 400
            parts = urlsplit(base)
            stream = await trio.open_tcp_stream(parts.hostname, parts.port)
            async with stream:
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
                data = b""
                with trio.fail_after(5):
                    while data.count(b"ok\n") < 2:
                        data += await stream.receive_some(65536)
                assert data.count(b"HTTP/1.1 200") == 2
                await stream.send_all(b"NOT HTTP\r\n\r\n")
                rest = b""
                with trio.fail_after(5):
                    while chunk := await stream.receive_some(65536):
                        rest += chunk
                assert rest.startswith(b"HTTP/1.1 400")


async def test_disabled_and_port_in_use():
    settings = load_config(environ={}, overrides={"metrics.enabled": "false"}).metrics
    async with open_observability(settings) as observability:
        assert observability is None
    settings = load_config(environ={}, overrides={"metrics.port": "0"}).metrics
    async with open_observability(settings) as first:
        assert first is not None and first.port
        taken = load_config(environ={}, overrides={"metrics.port": str(first.port)}).metrics
        async with open_observability(taken) as second:
            assert second is None  # logged; ingestion would go on without the endpoint


# -- log fields of the supervision tree, the breaker and the gap detector -------------------------


async def test_supervisor_and_breaker_log_lines_carry_fields(logs, autojump_clock):
    async def crashing(stopping, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        raise RuntimeError("boom")

    supervisor = Supervisor("group", [ChildSpec(name="worker", target=crashing)], strategy=Strategy.ONE_FOR_ONE,
                            max_restarts=2, period=60.0)
    with pytest.raises(SupervisorEscalation):
        await supervisor.run()
    restarts = logs.of("restart")
    assert len(restarts) == 2
    assert {k: restarts[0][k] for k in ("supervisor", "child", "strategy", "level")} == {
        "supervisor": "group", "child": "worker", "strategy": "one_for_one", "level": "warning"}
    assert "boom" in restarts[0]["error"] and restarts[1]["restarts_in_period"] == 2
    assert isinstance(restarts[0]["delay"], float)
    (escalation,) = logs.of("escalation")
    assert escalation["level"] == "error" and escalation["child"] == "worker" and escalation["restarts_in_period"] == 3
    assert len(logs.of("crash")) == 3
    assert "weir_event" not in escalation  # in-process objects stay out of the JSON

    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout=1.0)
    breaker.record_failure()
    await trio.sleep(1.0)
    assert breaker.allow()
    breaker.record_success()
    changes = [(line["previous"], line["state"]) for line in logs.of("breaker_change")]
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    opened = logs.of("breaker_change")[0]
    assert opened["breaker"] == "redis" and opened["level"] == "warning" and opened["failures"] == 1
    assert opened["reset_timeout"] == 1.0


def test_gap_log_line_carries_fields(logs):
    reader = ShardReader(shard=3, partition="3", detector=GapDetector(), stats=ShardStats(), last_id=41)
    reader._report(Gap(kind="retention", detail="resumed at 60, asked for 42", missing=18))
    (gap,) = logs.of("gap")
    assert {k: gap[k] for k in ("source", "partition", "kind", "missing", "last_id", "level")} == {
        "source": "farcaster", "partition": "3", "kind": "retention", "missing": 18, "last_id": 41, "level": "warning"}
    assert gap["msg"] == "shard 3: gap (retention): resumed at 60, asked for 42"


def test_json_formatter_never_lets_fields_replace_the_core_keys():
    record = logging.LogRecord("weir.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.__dict__.update({"event": "connect", "msg_extra": [1, 2], "level_hint": {"a": 1}, "obj": object(), "_private": 1})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "hello you" and entry["level"] == "info" and entry["logger"] == "weir.x"
    assert entry["event"] == "connect" and entry["msg_extra"] == [1, 2] and entry["level_hint"] == {"a": 1}
    assert "obj" not in entry and "_private" not in entry


def test_buckets_are_cumulative_and_weighted():
    buckets = Buckets((1, 10))
    buckets.observe(0.5)
    buckets.observe(10, weight=3)
    buckets.observe(11, weight=2)
    assert buckets.cumulative() == [("1.0", 1), ("10.0", 4), ("+Inf", 6)]
    assert (buckets.count, buckets.sum) == (6, 0.5 + 30 + 22)


async def test_endpoint_before_the_service_is_attached_and_idle_connections():
    observability = Observability("127.0.0.1", 0, idle_timeout=0.2)
    await observability.bind()
    try:
        async with trio.open_nursery() as nursery:
            stopping = trio.Event()
            await nursery.start(observability.run, stopping)
            assert (await http(observability.url, "/healthz"))[0] == 200
            status, _, body = await http(observability.url, "/readyz")
            assert (status, body) == (503, b"starting\n")
            # a client that connects and says nothing is disconnected after the idle timeout
            parts = urlsplit(observability.url)
            stream = await trio.open_tcp_stream(parts.hostname, parts.port)
            async with stream:
                with trio.fail_after(5):
                    assert await stream.receive_some(100) == b""
            stopping.set()
    finally:
        await observability.aclose()
