"""The delivery checker (weir.chaos.delivery_check) against synthetic inputs, the rule a deliverer
kill is judged by, and the Parquet read-back on real files; the scenarios themselves run in
tests/test_chaos_suite.py."""

from __future__ import annotations

import time

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from weir.chaos.delivery import Delivery, KillRecord
from weir.chaos.delivery_check import AT_LEAST_ONCE, EXACTLY_ONCE, Received, check_delivery
from weir.chaos.delivery_targets import NATS, PARQUET, committed_rows
from weir.chaos.scenario import Scenario, fault
from weir.chaos.schedule import Schedule

PARTITIONS = ("1", "2", "3")
streams_st = st.dictionaries(
    st.sampled_from(PARTITIONS),
    st.lists(st.integers(1, 10**6), unique=True, max_size=40).map(lambda ps: [f"{p}-0" for p in sorted(ps)]),
    min_size=1,
)


def key(partition: str, entry_id: str) -> str:
    return f"farcaster/{partition}/{entry_id}"  # as a Nats-Msg-Id


def exact(streams: dict[str, list[str]]) -> list[Received]:
    return [Received(partition=p, entry_id=i, key=key(p, i)) for p, ids in streams.items() for i in ids]


@given(streams_st, st.sampled_from([EXACTLY_ONCE, AT_LEAST_ONCE]), st.randoms(use_true_random=False))
def test_every_entry_received_once_in_any_order_passes(streams, guarantee, rng):
    received = exact(streams)
    rng.shuffle(received)
    report = check_delivery("t", guarantee, streams, received)
    assert report.ok, report.summary()
    assert report.total("entries") == report.total("received") == sum(map(len, streams.values()))


@given(streams_st, st.randoms(use_true_random=False), st.lists(st.integers(2 * 10**6, 3 * 10**6), unique=True, max_size=3))
def test_missing_duplicated_and_extra_entries_are_each_counted(streams, rng, invented):
    everything = exact(streams)
    dropped = {r for r in everything if rng.random() < 0.2}
    repeated = [r for r in everything if r not in dropped and rng.random() < 0.2]
    partition = next(iter(streams))
    extra = [Received(partition=partition, entry_id=f"{p}-0", key=key(partition, f"{p}-0")) for p in invented]
    received = [r for r in everything if r not in dropped] + repeated + repeated[:1] + extra
    rng.shuffle(received)

    once = check_delivery("t", EXACTLY_ONCE, streams, received)
    assert once.total("missing") == len(dropped)
    assert once.total("duplicated") == len(repeated)  # distinct entries received more than once
    assert once.total("extra") == len(extra)
    assert once.total("unstable_keys") == 0
    assert once.ok == (not dropped and not repeated and not extra)

    at_least = check_delivery("t", AT_LEAST_ONCE, streams, received)
    assert at_least.total("duplicated") == 0  # repeats are what at least once allows
    assert at_least.total("missing") == len(dropped) and at_least.total("extra") == len(extra)
    assert at_least.ok == (not dropped and not extra)


@given(streams_st.filter(lambda s: sum(map(len, s.values())) >= 2), st.randoms(use_true_random=False))
def test_a_repeat_under_another_key_or_two_entries_under_one_key_are_unstable(streams, rng):
    everything = exact(streams)
    first, second = rng.sample(everything, 2)
    rekeyed = [*everything, Received(partition=first.partition, entry_id=first.entry_id, key=first.key + "-retry")]
    report = check_delivery("webhook", AT_LEAST_ONCE, streams, rekeyed)
    assert report.total("unstable_keys") == 1 and not report.ok
    shared = [r if r != second else Received(partition=r.partition, entry_id=r.entry_id, key=first.key) for r in everything]
    report = check_delivery("webhook", AT_LEAST_ONCE, streams, shared)
    assert report.total("unstable_keys") == 2 and not report.ok


@given(streams_st, st.sampled_from(PARTITIONS), st.integers(1, 5), st.booleans())
def test_entries_left_pending_or_dead_lettered_fail_the_run(streams, partition, count, pending):
    counts = {partition: count}
    report = check_delivery("t", EXACTLY_ONCE, streams, exact(streams),
                            pending=counts if pending else None, dead=None if pending else counts)
    fed = partition in streams
    assert report.total("pending" if pending else "dead") == (count if fed else 0)
    assert report.ok == (not fed)


def test_items_of_a_partition_the_run_never_fed_are_extra():
    streams = {"1": ["1-0"]}
    report = check_delivery("t", EXACTLY_ONCE, streams, [*exact(streams), Received(partition="9", entry_id="1-0", key="k")])
    assert report.total("extra") == 1 and "extra 9/1-0" in report.summary()
    with pytest.raises(ValueError, match="unknown guarantee"):
        check_delivery("t", "twice", streams, [])


def test_a_kill_counts_as_mid_work_only_holding_entries_with_the_targets_evidence():
    assert KillRecord(pid=1, held=3, open_work=None).mid_work
    assert not KillRecord(pid=1, held=0, open_work=None).mid_work
    assert not KillRecord(pid=1, held=3, open_work=0).mid_work  # Parquet: no file open
    assert KillRecord(pid=1, held=3, open_work=1).mid_work
    assert not KillRecord(pid=1, held=3, open_work=None, stored=0).mid_work  # NATS: nothing published yet
    assert KillRecord(pid=1, held=3, open_work=None, stored=2).mid_work


def test_delivery_targets_are_schedule_targets_only_in_a_scenario_with_that_delivery():
    kill = fault("deliver", "kill", 1.0, 0.3)
    restart = fault("nats", "kill", 1.0, 0.5)
    Scenario(name="a", label="a", schedule=Schedule(faults=[kill, restart]), delivery=Delivery(target=NATS))
    with pytest.raises(ValueError, match="no target nats"):
        Scenario(name="b", label="b", schedule=Schedule(faults=[kill, restart]), delivery=Delivery(target=PARQUET))
    with pytest.raises(ValueError, match="no target deliver"):
        Scenario(name="c", label="c", schedule=Schedule(faults=[kill]))


def test_the_parquet_read_back_finds_a_row_written_twice(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(partition: str, name: str, ids: list[str]) -> None:
        directory = tmp_path / "source=farcaster" / f"partition={partition}" / "hour=2026-01-01T00"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"stream_id": ids, "position": [int(i.split("-")[0]) for i in ids]}), directory / name)

    write("1", "part-1-0_3-0-a.parquet", ["1-0", "2-0", "3-0"])
    write("1", "part-3-0_4-0-b.parquet", ["3-0", "4-0"])  # 3-0 again: two instances wrote it
    write("2", "part-1-0_1-0-a.parquet", ["1-0"])
    (tmp_path / "source=farcaster" / "partition=2" / "hour=2026-01-01T00" / ".part-a-1-0.parquet.tmp").write_bytes(b"x")
    rows = committed_rows(tmp_path, "farcaster")
    assert sorted((r.partition, r.entry_id) for r in rows) == [("1", "1-0"), ("1", "2-0"), ("1", "3-0"), ("1", "3-0"),
                                                               ("1", "4-0"), ("2", "1-0")]
    report = check_delivery("parquet", EXACTLY_ONCE, {"1": ["1-0", "2-0", "3-0", "4-0"], "2": ["1-0", "2-0"]}, rows)
    assert (report.total("duplicated"), report.total("missing")) == (1, 1) and not report.ok
    assert committed_rows(tmp_path, "atproto") == []


class FakeDeliverer:
    """The process side of a deliverer, for the kill rule: frozen, running or dead."""

    pid = 4242

    def __init__(self) -> None:
        self.state = "running"
        self.freezes = 0

    def pause(self) -> None:
        self.state, self.freezes = "frozen", self.freezes + 1

    def resume(self) -> None:
        self.state = "running"

    async def kill(self) -> None:
        self.state = "dead"


@pytest.mark.parametrize("stored_from_look", [3, None], ids=["mid-publish-on-the-third-look", "never-mid-publish"])
async def test_a_deliverer_kill_freezes_it_until_a_look_finds_it_mid_work(autojump_clock, stored_from_look):
    from weir.chaos.delivery import HOLD_TIMEOUT_S, DeliverProcess

    fake = FakeDeliverer()
    looks: list[str] = []

    async def held(consumer: str) -> int:
        return 5

    async def held_ids(consumer: str) -> list[tuple[str, str]]:
        looks.append(fake.state)  # what it holds is read while it cannot change it
        return [("1", f"{n}-0") for n in range(5)]

    async def recent(count: int) -> list[Received]:
        stored = stored_from_look is not None and len(looks) >= stored_from_look
        return [Received(partition="1", entry_id="2-0", key="k")] if stored else []

    process = DeliverProcess(process=fake, held=held, held_ids=held_ids, recent=recent)  # type: ignore[arg-type]
    began = trio.current_time()
    await process.kill()
    (record,) = process.kills
    assert fake.state == "dead" and record.pid == 4242 and record.held == 5
    if stored_from_look is not None:
        assert looks == ["frozen"] * 3 and fake.freezes == 3 and record.stored == 1 and record.mid_work
    else:  # killed after the timeout, and the record says it held nothing stored: the run fails
        assert trio.current_time() - began >= HOLD_TIMEOUT_S and looks[-1] == "dead"
        assert all(state == "frozen" for state in looks[:-1]) and record.stored == 0 and not record.mid_work


async def test_the_webhook_endpoint_accepts_signed_requests_answers_each_fault_and_fails_a_forged_one():
    import json

    from weir.chaos.schedule import KINDS, TimedFault
    from weir.chaos.webhook_endpoint import ANSWERS, ChaosEndpoint
    from weir.chaos.webhook_receiver import Request
    from weir.deliver.webhook_messages import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers

    assert set(ANSWERS) == set(KINDS["endpoint"])
    endpoint = ChaosEndpoint(secret=b"s3cret")

    def request(stream_id: str, secret: bytes = b"s3cret") -> Request:
        body = json.dumps({"id": f"farcaster/2/{stream_id}", "source": "farcaster", "partition": "2",
                           "stream_id": stream_id}).encode()
        headers = signed_headers(secret=secret, key=f"farcaster/2/{stream_id}", timestamp=int(time.time()), body=body)
        return Request(key=f"farcaster/2/{stream_id}", timestamp=headers[TIMESTAMP_HEADER],
                       signature=headers[SIGNATURE_HEADER], body=body, at=0.0)

    assert endpoint.respond(request("1-0"), 0) == 200
    clear, outcome = await endpoint.apply_fault(TimedFault(target="endpoint", kind="hang", start=0, duration=1))
    assert outcome is None and endpoint.respond(request("2-0"), 0) == ANSWERS["hang"]
    await clear()
    clear, _ = await endpoint.apply_fault(TimedFault(target="endpoint", kind="close_early", start=0, duration=1))
    await clear()  # cleared before any request met it
    assert endpoint.respond(request("2-0"), 1) == 200
    assert endpoint.accepted == [Received(partition="2", entry_id="1-0", key="farcaster/2/1-0"),
                                 Received(partition="2", entry_id="2-0", key="farcaster/2/2-0")]
    measures: dict = {}
    assert endpoint.check(measures) == ["fault close_early on the endpoint answered no request: it proves nothing"]
    assert measures["endpoint_faulted"] == {"hang": 1}
    forged = request("3-0", secret=b"other")
    assert endpoint.respond(forged, 0) == (401, b"bad signature") and len(endpoint.accepted) == 2
    assert endpoint.respond(attrs.evolve(request("4-0"), timestamp="1"), 0)[0] == 401  # header and signature disagree
    assert endpoint.check({})[-1] == "2 webhook requests with a bad signature (e.g. farcaster/2/3-0, farcaster/2/4-0)"
    rekeyed = request("5-0")
    assert endpoint.respond(attrs.evolve(rekeyed, key="farcaster/2/5-0#2"), 0) == 200  # accepted, and judged
    assert endpoint.check({})[-1] == "1 webhook requests whose idempotency key is not their body's id (e.g. farcaster/2/5-0#2)"
    # A batched request: each event accepted under its own id; a key that is not the batch's is judged.
    from weir.deliver.webhook_messages import request_of

    bodies = {i: json.dumps({"id": f"farcaster/2/{i}", "source": "farcaster", "partition": "2", "stream_id": i},
                            sort_keys=True).encode() for i in ("6-0", "7-0")}
    key, body = request_of("farcaster", "2", ["6-0", "7-0"], bodies, batched=True)
    headers = signed_headers(secret=b"s3cret", key=key, timestamp=int(time.time()), body=body)
    batch = Request(key=key, timestamp=headers[TIMESTAMP_HEADER], signature=headers[SIGNATURE_HEADER], body=body, at=0.0)
    assert endpoint.respond(batch, 0) == 200 and endpoint.accepted[-2:] == [
        Received(partition="2", entry_id="6-0", key="farcaster/2/6-0"), Received(partition="2", entry_id="7-0", key="farcaster/2/7-0")]
    assert endpoint.respond(attrs.evolve(batch, key="farcaster/2/6-0"), 0) == 200
    assert endpoint.check({})[-1].startswith("2 webhook requests whose idempotency key is not their body's id")
