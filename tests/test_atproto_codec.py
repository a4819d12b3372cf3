"""Sans-IO AT Protocol codecs: DAG-CBOR / CAR, firehose frames, Jetstream messages, the readers.

Properties (hypothesis): arbitrary bytes never crash the frame decoder (only FrameError); the
DAG-CBOR encoder and decoder round-trip; simulator frames decode to exactly their records.
"""

from __future__ import annotations

import json

import pytest
import trio
import trio_websocket
from hypothesis import given, settings
from hypothesis import strategies as st

from weir.actors.atproto import (
    MAX_RETRY_AFTER,
    AtprotoStats,
    FirehoseReader,
    IdleStream,
    JetstreamReader,
    RelayError,
    TooManyBadFrames,
    connect_url,
    is_transient,
    retry_after,
)
from weir.codecs import atproto_cbor as cbor
from weir.codecs.atproto_firehose import FrameError, RecordFilter, decode_frame
from weir.codecs.atproto_jetstream import JetstreamDecoder
from weir.config import load_config
from weir.sim.atproto_data import AtprotoSimConfig, error_frame, expected_records, generate_history, info_frame

HISTORY = generate_history(AtprotoSimConfig(seed=2, total=300, corrupt_every=20))
FRAMES = [event.frame for event in HISTORY]


def reader(**kwargs) -> FirehoseReader:
    return FirehoseReader(partition="p", stats=AtprotoStats(), **kwargs)


# ----------------------------------------------------------------------------- DAG-CBOR, CAR

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=20)
    | st.builds(cbor.CID.of_block, st.binary(max_size=8)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(cbor_values)
def test_dag_cbor_round_trips_and_agrees_with_libipld(value):
    import libipld

    encoded = cbor.encode(value)
    assert cbor.decode(encoded) == value
    assert cbor.from_json(json.loads(json.dumps(cbor.to_json(value)))) == value
    assert libipld.encode_dag_cbor(libipld.decode_dag_cbor(encoded)) == encoded or _has_cid(value)


def _has_cid(value) -> bool:
    if isinstance(value, cbor.CID):
        return True
    if isinstance(value, dict):
        return any(_has_cid(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cid(v) for v in value)
    return False


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\xa2aa\x01aa\x02", "out of canonical order"),
        (b"\x18\x05", "non-minimal"),
        (b"\xfb" + bytes(8), "no floats"),
        (b"\xc1\x00", "only tag 42"),
        (b"\x9f\xff", "indefinite"),
        (b"\x01\x02", "trailing bytes"),
        (b"\x62a", "runs past the end"),
    ],
)
def test_strict_decoder_names_the_problem_and_offset(data, message):
    with pytest.raises(cbor.CborError, match=message):
        cbor.decode(data)


def test_car_index_finds_every_block_and_verify_detects_a_bad_one():
    blocks = [(cbor.CID.of_block(b), b) for b in (cbor.encode({"a": i}) for i in range(5))]
    car = cbor.encode_car([blocks[0][0]], blocks)
    index = cbor.index_car(car)
    assert {cid: car[s:e] for cid, (s, e) in index.items()} == {cid.raw: data for cid, data in blocks}
    assert cbor.verify_block(blocks[0][0].raw, blocks[0][1]) is None
    assert "sha-256 differs" in cbor.verify_block(blocks[0][0].raw, blocks[1][1])
    with pytest.raises(cbor.CborError, match="runs past the end"):
        cbor.index_car(car[:-3])


# ----------------------------------------------------------------------------- frames


def test_simulator_frames_decode_to_exactly_their_records():
    chunk = reader().read(FRAMES, 0.0)
    expected, dead = expected_records(HISTORY)
    assert [(e.position, e.sub, e.kind, e.payload) for e in chunk.events] == [(x.position, x.sub, x.kind, x.data) for x in expected]
    assert [d.position for d in chunk.dead] == dead and dead
    assert all("does not match its CID" in d.reason for d in chunk.dead)
    assert chunk.through == HISTORY[-1].seq


def test_filter_applies_before_records_and_keeps_op_indexes():
    keep = RecordFilter.build(collections=["app.bsky.feed.*"], actions=["create"], kinds=["commit"])
    chunk = reader(keep=keep).read(FRAMES, 0.0)
    assert chunk.events and all(e.fields["collection"].startswith("app.bsky.feed.") and e.fields["action"] == "create" for e in chunk.events)
    want = [(x.position, x.sub) for x in expected_records(HISTORY, collections=("app.bsky.feed.*",))[0]
            if x.kind == "commit" and x.fields["action"] == "create"]
    assert [(e.position, e.sub) for e in chunk.events] == want
    # a filtered-out op never has its block looked up: a corrupt commit whose bad record is filtered out is fine
    corrupt = next(e for e in HISTORY if e.corrupt)
    bad = next(op for op in corrupt.ops if op.tampered)
    others = [c for c in ("app.bsky.feed.post", "app.bsky.graph.follow") if c != bad.collection]
    frame = decode_frame(corrupt.frame, keep=RecordFilter.build(collections=others))
    assert all(op.collection != bad.collection for op in frame.ops)


NSIDS = st.sampled_from(["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow", "app.bsky.feed.*", "app.*", "x"])


@settings(max_examples=200)
@given(st.lists(NSIDS, max_size=3), st.lists(st.sampled_from(["create", "update", "delete"]), max_size=2),
       st.lists(st.sampled_from(["did:plc:a", "did:plc:b"]), max_size=1), st.lists(st.sampled_from(["commit", "identity"]), max_size=1),
       st.sampled_from(["create", "delete"]), NSIDS, st.sampled_from(["did:plc:a", "did:plc:b"]))
def test_derived_filter_attributes_answer_as_the_filter_does(collections, actions, dids, kinds, action, collection, did):
    """The decoder's shortcuts (every_commit, filters_ops, only_collections) give wants_repo's and wants_op's answers."""
    keep = RecordFilter.build(collections=collections, actions=actions, dids=dids, kinds=kinds)
    if keep.every_commit:
        assert keep.wants_repo("commit", did)
    assert keep.filters_ops == any(not keep.wants_op(a, c) for a in ("create", "update", "delete") for c in ("app.bsky.feed.post", "x", "y.z"))
    if keep.only_collections is not None:
        assert (collection in keep.only_collections) == keep.wants_op(action, collection)


@settings(max_examples=100)
@given(st.lists(NSIDS | st.sampled_from(["a/b", "app.bsky.feed.post/"]), max_size=3), st.lists(st.sampled_from(["create", "delete"]), max_size=1),
       NSIDS, st.sampled_from(["/3k", "/a/b", "x/3k", "", "//"]))
def test_only_paths_answer_as_the_first_part_of_a_path(collections, actions, collection, rest):
    """``only_paths`` (the decoder's first look at an op's path): a path with a slash starts with one of
    them exactly when the part before its first slash is one of ``only_collections``."""
    keep = RecordFilter.build(collections=collections, actions=actions)
    assert (keep.only_paths is None) == (keep.only_collections is None)
    path = collection + rest
    if keep.only_paths is not None and "/" in path:
        assert path.startswith(keep.only_paths) == (path[: path.index("/")] in keep.only_collections)


def test_did_filter_keeps_only_the_wanted_repos_of_every_kind():
    """``atproto.dids``: only those repos' commits and identity/account/sync events come out; other
    repos' frames are counted as filtered and never looked into (their corrupt records are no dead letters)."""
    corrupt = next(e for e in HISTORY if e.corrupt)
    wanted = {corrupt.did} | {next(e for e in HISTORY if e.kind == kind).did for kind in ("identity", "account", "sync")}
    mine = [e for e in HISTORY if e.did in wanted]
    others = [e for e in HISTORY if e.did not in wanted]
    assert any(e.corrupt for e in others)  # so "not dead-lettered" below means something

    r = reader(keep=RecordFilter.build(dids=sorted(wanted)))
    chunk = r.read(FRAMES, 0.0)
    expected, dead = expected_records(mine)
    assert [(e.position, e.sub, e.kind, e.payload) for e in chunk.events] == [(x.position, x.sub, x.kind, x.data) for x in expected]
    assert {e.fields["did"] for e in chunk.events} == wanted
    assert {"commit", "identity", "account", "sync"} <= {e.kind for e in chunk.events}
    assert [d.position for d in chunk.dead] == dead == [corrupt.seq]
    assert r.stats.filtered == len(others) and r.stats.dead_letters == 1
    assert chunk.through == HISTORY[-1].seq  # filtered frames still move the cursor
    frame = decode_frame(next(e for e in others if e.corrupt).frame, keep=r.keep)
    assert not frame.wanted and frame.ops == ()

    keep = RecordFilter.build(dids=sorted(wanted))
    js = JetstreamReader(partition="p", stats=AtprotoStats(), keep=keep, decoder=JetstreamDecoder(keep=keep))
    chunk = js.read([m for event in HISTORY for _, m in event.jetstream], 0.0)
    expected, dead = expected_records(mine, mode="jetstream")
    assert [(e.position, e.kind, e.payload) for e in chunk.events] == [(x.position, x.kind, x.data) for x in expected]
    assert [d.position for d in chunk.dead] == dead and len(dead) == 1
    assert js.stats.filtered == sum(len(e.jetstream) for e in others)


def test_replay_at_or_below_the_cursor_is_skipped():
    r = reader(last_id=HISTORY[99].seq)
    chunk = r.read(FRAMES[90:110], 0.0)
    assert min(e.position for e in chunk.events) > HISTORY[99].seq
    assert r.stats.duplicates_skipped == 10


def test_stale_rev_is_reported_and_dropped():
    commit = next(e for e in HISTORY if e.kind == "commit" and not e.corrupt)
    r = reader()
    r.revs.advance(commit.did, "zzzzzzzzzzzzz")
    chunk = r.read([commit.frame], 0.0)
    assert chunk.events == [] and r.stats.stale_revs == 1 and chunk.through == commit.seq


def test_an_equal_rev_is_stale_on_the_firehose():
    """Per DID a commit must move the rev forward: the same rev again is dropped (a #sync may repeat it)."""
    first, second = [e for e in HISTORY if e.kind == "commit" and not e.corrupt][:2]
    body = cbor.decode(second.body)
    again = cbor.encode({"t": "#commit", "op": 1}) + cbor.encode({**body, "repo": first.did, "rev": first.rev})
    r = reader()
    chunk = r.read([first.frame, again], 0.0)
    assert {e.position for e in chunk.events} == {first.seq} and chunk.through == second.seq
    assert r.stats.stale_revs == 1 and r.revs.last(first.did) == first.rev
    assert r.revs.advance(first.did, first.rev, allow_equal=True)  # what a #sync of that rev does


def test_an_equal_rev_passes_between_jetstream_messages_and_an_older_one_does_not():
    """Jetstream sends one message per op, each with the commit's rev: equal is the same commit."""
    commit = next(e for e in HISTORY if e.kind == "commit" and len(e.ops) > 1 and not e.corrupt and all(op.cid for op in e.ops))
    messages = [m for _, m in commit.jetstream]
    older = json.loads(messages[0])
    older.update(time_us=older["time_us"] + 10_000, commit={**older["commit"], "rev": "2222222222222"})
    r = JetstreamReader(partition="p", stats=AtprotoStats())
    chunk = r.read([*messages, json.dumps(older)], 0.0)
    assert len(chunk.events) == len(messages) and {e.fields["rev"] for e in chunk.events} == {commit.rev}
    assert r.stats.stale_revs == 1 and chunk.through == older["time_us"]


def test_info_error_and_unknown_frames():
    unknown = cbor.encode({"t": "#new", "op": 1}) + cbor.encode({"seq": 1})
    r = reader()
    chunk = r.read([info_frame("OutdatedCursor"), unknown, FRAMES[0], error_frame("ConsumerTooSlow", "slow"), FRAMES[1]], 0.0)
    assert r.stats.infos == 1 and r.stats.unknown_frames == 1 and r.stats.relay_errors == 1
    assert r.relay_error is not None and r.relay_error.name == "ConsumerTooSlow"
    assert chunk.through == HISTORY[0].seq  # nothing after the error frame is read


def test_malformed_frames_become_dead_letters_with_their_position():
    body = cbor.decode(HISTORY[0].body)
    bad = cbor.encode({"t": "#commit", "op": 1}) + cbor.encode({**body, "ops": [{"action": "create", "path": "nope", "cid": None}]})
    r = reader()
    chunk = r.read([b"\x00garbage", bad, FRAMES[1]], 0.0)
    assert [d.position for d in chunk.dead] == [None, HISTORY[0].seq]
    assert "not DAG-CBOR" in chunk.dead[0].reason and "is not collection/rkey" in chunk.dead[1].reason
    assert r.consecutive_bad == 0 and chunk.through == HISTORY[1].seq


def _bad_commit(event) -> bytes:
    """``event``'s frame with an op path that is not collection/rkey: a FrameError that knows the seq."""
    body = cbor.decode(event.body)
    return cbor.encode({"t": "#commit", "op": 1}) + cbor.encode({**body, "ops": [{"action": "create", "path": "nope", "cid": None}]})


def test_consecutive_bad_frames_are_counted_across_reads_and_reset_by_a_good_one():
    """What the connection compares with ``atproto.max_bad_frames`` (``TooManyBadFrames``)."""
    commits = [e for e in HISTORY if e.kind == "commit" and not e.corrupt]
    r = reader()
    r.read([_bad_commit(commits[0]), b"\x00garbage"], 0.0)
    assert r.consecutive_bad == 2
    r.read([_bad_commit(commits[1])], 0.0)
    assert r.consecutive_bad == 3  # the run goes on across reads
    r.read([_bad_commit(commits[2]), commits[3].frame], 0.0)
    assert r.consecutive_bad == 0  # a good frame ends the run ...
    assert r.longest_bad_run == 4  # ... but the run it ended, inside one read, is still seen
    r.longest_bad_run = 0  # what the connection does after checking it
    r.read([_bad_commit(commits[4])], 0.0)
    assert r.consecutive_bad == 1
    r.read([_bad_commit(commits[4]), _bad_commit(commits[2])], 0.0)  # replays (at or below the cursor): not bad
    assert r.consecutive_bad == 1 and r.stats.duplicates_skipped == 2 and r.stats.dead_letters == 5


def test_frame_size_limit():
    with pytest.raises(FrameError, match="exceeds the 100-byte limit"):
        decode_frame(FRAMES[0], max_frame=100)


def test_json_form_of_records():
    chunk = reader(record_format="json").read(FRAMES[:30], 0.0)
    records = [e for e in chunk.events if e.kind == "commit" and e.payload]
    for event in records:
        doc = json.loads(event.payload)
        assert doc["$type"] == event.fields["collection"]
        assert cbor.CID.of_block(cbor.encode(cbor.from_json(doc))) == cbor.CID.parse(event.fields["cid"])


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_frame_decoder(data):
    try:
        decode_frame(data)
    except FrameError:
        pass


@settings(max_examples=300)
@given(st.integers(0, len(FRAMES) - 1), st.integers(0, 10_000), st.integers(0, 255), st.integers(1, 50))
def test_damaged_frames_never_crash_the_reader(which, at, value, cut):
    frame = bytearray(FRAMES[which])
    frame[at % len(frame)] = value
    for data in (bytes(frame), bytes(frame[: max(1, len(frame) - cut)])):
        try:
            decode_frame(data)
        except FrameError:
            pass
        reader().read([data], 0.0)  # never raises: a dead letter at worst


# ----------------------------------------------------------------------------- Jetstream


def test_jetstream_messages_give_the_firehose_shape():
    messages = [m for event in HISTORY for _, m in event.jetstream]
    r = JetstreamReader(partition="p", stats=AtprotoStats())
    chunk = r.read(messages, 0.0)
    expected, dead = expected_records(HISTORY, mode="jetstream")
    assert [(e.position, e.kind, e.payload) for e in chunk.events] == [(x.position, x.kind, x.data) for x in expected]
    assert [d.position for d in chunk.dead] == dead


def test_jetstream_zstd_and_errors():
    import zstandard

    message = HISTORY[0].jetstream[0][1]
    decoder = JetstreamDecoder()
    assert decoder.decode(zstandard.ZstdCompressor().compress(message.encode())).kind == "commit"
    with pytest.raises(FrameError, match="not a zstd frame"):
        decoder.decode(b"\x00\x01")
    with pytest.raises(FrameError, match="not JSON"):
        decoder.decode("{")
    with pytest.raises(FrameError, match="time_us"):
        decoder.decode('{"kind": "commit"}')


def test_jetstream_size_limit_counts_utf8_bytes_not_characters():
    message = json.loads(HISTORY[0].jetstream[0][1])
    message["commit"]["record"] = {"text": "✓" * 300}  # 3 bytes a character in UTF-8
    text = json.dumps(message, ensure_ascii=False)
    size = len(text.encode())
    assert len(text) < 1000 < size
    with pytest.raises(FrameError, match=f"message of {size} bytes exceeds the 1000-byte limit"):
        JetstreamDecoder(max_frame=1000).decode(text)
    assert JetstreamDecoder(max_frame=size).decode(text).time_us == message["time_us"]
    r = JetstreamReader(partition="p", stats=AtprotoStats(), decoder=JetstreamDecoder(max_frame=1000), last_id=1)
    chunk = r.read([text], 0.0)
    assert chunk.events == [] and "exceeds the 1000-byte limit" in chunk.dead[0].reason


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_random_jetstream_messages_never_crash(data):
    try:
        JetstreamDecoder().decode(data)
    except FrameError:
        pass


def test_connect_urls():
    config = load_config(environ={}, overrides={"atproto.url": "ws://h:1", "atproto.jetstream_url": "ws://j:2",
                                                "atproto.collections": "app.bsky.feed.post,app.bsky.graph.*"})
    assert connect_url(config.atproto, 42) == "ws://h:1/xrpc/com.atproto.sync.subscribeRepos?cursor=42"
    assert connect_url(config.atproto, None) == "ws://h:1/xrpc/com.atproto.sync.subscribeRepos"
    js = load_config(environ={}, overrides={"atproto.mode": "jetstream", "atproto.jetstream_url": "ws://j:2",
                                            "atproto.collections": "app.bsky.graph.*", "atproto.compress": "true"})
    assert connect_url(js.atproto, 7) == "ws://j:2/subscribe?wantedCollections=app.bsky.graph.%2A&cursor=7&compress=true"
    dids = "did:plc:ewvi7nxzyoun6zhxrhs64oiz,did:web:example.com"
    js = load_config(environ={}, overrides={"atproto.mode": "jetstream", "atproto.jetstream_url": "ws://j:2",
                                            "atproto.collections": "app.bsky.feed.post", "atproto.dids": dids})
    assert connect_url(js.atproto, 0) == (
        "ws://j:2/subscribe?wantedCollections=app.bsky.feed.post&wantedDids=did%3Aplc%3Aewvi7nxzyoun6zhxrhs64oiz"
        "&wantedDids=did%3Aweb%3Aexample.com&cursor=1")  # cursor 0 (start=oldest) is sent as 1
    assert connect_url(js.atproto, None) == (
        "ws://j:2/subscribe?wantedCollections=app.bsky.feed.post&wantedDids=did%3Aplc%3Aewvi7nxzyoun6zhxrhs64oiz"
        "&wantedDids=did%3Aweb%3Aexample.com")
    firehose = load_config(environ={}, overrides={"atproto.url": "ws://h:1", "atproto.dids": dids})
    assert connect_url(firehose.atproto, 5) == "ws://h:1/xrpc/com.atproto.sync.subscribeRepos?cursor=5"  # filtered locally
    # A gateway's own path and query (an access token) stay where they belong: path before, query first.
    gateway = load_config(environ={}, overrides={"atproto.url": "wss://gw.example/relay/?token=abc"})
    assert connect_url(gateway.atproto, 5) == "wss://gw.example/relay/xrpc/com.atproto.sync.subscribeRepos?token=abc&cursor=5"


# ----------------------------------------------------------------------------- HTTP rejections


def rejected(status: int, *headers: tuple[bytes, bytes]) -> trio_websocket.ConnectionRejected:
    return trio_websocket.ConnectionRejected(status, headers, b"")


@pytest.mark.parametrize(
    "value, seconds",
    [
        (b"7", 7.0),
        (b" 7 ", 7.0),
        (b"2.5", 2.5),
        (b"0", 0.0),
        (b"-3", 0.0),  # never a negative sleep
        (b"86400", MAX_RETRY_AFTER),  # a day: capped
        (b"inf", MAX_RETRY_AFTER),
        (b"Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # HTTP-date form, in the past: no wait beyond the backoff
        (b"soon", None),
        (b"", None),
        (b"\xff\xfe", None),
    ],
)
def test_retry_after_header(value, seconds):
    for status in (429, 503):
        assert retry_after(rejected(status, (b"Content-Type", b"text/plain"), (b"Retry-After", value))) == seconds
        assert retry_after(rejected(status, (b"retry-after", value))) == seconds  # names are case-insensitive
        assert retry_after(BaseExceptionGroup("one", [rejected(status, (b"RETRY-AFTER", value))])) == seconds


NOW = 1_754_850_000.0  # 2025-08-10T18:20:00Z


@pytest.mark.parametrize(
    "value, seconds",
    [
        (b"Sun, 10 Aug 2025 18:20:30 GMT", 30.0),
        (b"Sun, 10 Aug 2025 18:20:30 -0000", 30.0),  # parses without a timezone: HTTP-dates are GMT
        (b"Sun, 10 Aug 2025 20:20:30 +0200", 30.0),
        (b"Sunday, 10-Aug-25 18:21:00 GMT", 60.0),  # RFC 850, which HTTP/1.1 recipients must accept
        (b"Sun Aug 10 18:20:05 2025", 5.0),  # asctime
        (b"Sun, 10 Aug 2025 18:20:00 GMT", 0.0),
        (b"Sun, 10 Aug 2025 18:19:00 GMT", 0.0),  # in the past
        (b"Mon, 11 Aug 2025 18:20:00 GMT", MAX_RETRY_AFTER),  # a day away: capped
        (b"Sun, 10 Aug 2025 25:61:00 GMT", None),  # not a time
        (b"Sun, 32 Foo 2025 18:20:00 GMT", None),
    ],
)
def test_retry_after_http_date(value, seconds):
    for status in (429, 503):
        assert retry_after(rejected(status, (b"Retry-After", value)), now=NOW) == seconds


def test_retry_after_http_date_against_the_clock():
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    soon = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True).encode()
    assert 28.0 <= retry_after(rejected(503, (b"Retry-After", soon))) <= 30.0


def test_retry_after_is_none_without_the_header_or_a_rejection():
    assert retry_after(rejected(429)) is None
    assert retry_after(rejected(429, (b"Retry-After-Not", b"7"))) is None
    assert retry_after(OSError("refused")) is None
    assert retry_after(trio_websocket.HandshakeError()) is None
    two = BaseExceptionGroup("two", [rejected(429, (b"Retry-After", b"7")), OSError()])
    assert retry_after(two) is None  # only a lone rejection speaks for the whole group


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 520, 599])
def test_rejections_a_reconnect_may_cure_are_transient(status):
    assert is_transient(rejected(status))
    assert is_transient(BaseExceptionGroup("g", [rejected(status), OSError()]))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 426, 451, 499])
def test_client_error_rejections_go_to_the_supervisor(status):
    """A 4xx (but 408/425/429) means the request is wrong: retrying it unchanged would loop for ever."""
    assert not is_transient(rejected(status))
    assert not is_transient(BaseExceptionGroup("g", [OSError(), rejected(status)]))


def test_network_faults_are_transient_and_bugs_are_not():
    for exc in (IdleStream(), RelayError("ConsumerTooSlow", ""), TooManyBadFrames(), OSError(), ConnectionResetError(),
                TimeoutError(), trio.BrokenResourceError(), trio.TooSlowError(), trio_websocket.HandshakeError(),
                trio_websocket.ConnectionTimeout(), trio_websocket.DisconnectionTimeout()):
        assert is_transient(exc), exc
    for exc in (ValueError("bug"), KeyError("k"), AssertionError(), RuntimeError()):
        assert not is_transient(exc), exc
    assert not is_transient(BaseExceptionGroup("g", [OSError(), ValueError("bug")]))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("mode", "relay", "expected 'firehose' or 'jetstream'"),
        ("url", "http://x", "expected ws://"),
        ("collections", "app bsky", "expected an NSID"),
        ("dids", "plc:abc", "expected a DID"),
        ("actions", "edit", "unknown action"),
        ("partition", "a:b", "use letters, digits"),
    ],
)
def test_config_errors_name_the_field(key, value, message):
    from weir.config import ConfigError

    with pytest.raises(ConfigError, match=f"atproto.{key}: {message}"):
        load_config(environ={}, overrides={f"atproto.{key}": value})
