"""The sans-IO decisions of the webhook target: the signature against the verification recipe of
docs/delivery.md (run from the docs themselves), the body, the filters, what a status means and
the backoff between tries."""

from __future__ import annotations

import base64
import json
import re

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import ROOT
from weir.deliver.entry_fields import EntryError
from weir.deliver.settings import DeliverPipelineSettings
from weir.deliver.webhook_filter import EndpointFilter, filter_problems
from weir.deliver.webhook_messages import (KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, body_of, idempotency_key,
                                           request_of, requests_of, signed_headers, verify_signature)
from weir.deliver.webhook_outcome import EXCERPT_BYTES, Outcome, Verdict, outcome_of_status, retry_backoff, settle
from weir.deliver.webhook_settings import webhook_problems


def documented_recipe(name: str = "verify"):
    """A function (``verify``, ``events_of``) of docs/delivery.md's verification recipe, executed as a
    receiver would paste it."""
    text = (ROOT / "docs" / "delivery.md").read_text()
    block = re.search(r"<!-- verification recipe[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert block, "docs/delivery.md has no verification recipe block"
    namespace: dict = {}
    exec(compile(block[1], "docs/delivery.md (verification recipe)", "exec"), namespace)
    return namespace[name]


verify = documented_recipe()
events_of = documented_recipe("events_of")
secrets = st.binary(min_size=1, max_size=64)
bodies = st.binary(max_size=300)
timestamps = st.integers(1_000_000_000, 4_000_000_000)


@given(secrets, bodies, timestamps)
def test_every_signature_verifies_with_the_documented_recipe(secret, body, timestamp):
    headers = signed_headers(secret=secret, key="farcaster/1/1-0", timestamp=timestamp, body=body)
    assert headers[TIMESTAMP_HEADER] == str(timestamp) and headers[KEY_HEADER] == "farcaster/1/1-0"
    assert verify(secret, body, headers[SIGNATURE_HEADER], now=timestamp)
    assert verify(secret, body, headers[SIGNATURE_HEADER], now=timestamp + 299)


@given(secrets, bodies.filter(bool), timestamps, st.data())
def test_any_changed_byte_another_secret_or_timestamp_fails(secret, body, timestamp, data):
    header = signed_headers(secret=secret, key="k", timestamp=timestamp, body=body)[SIGNATURE_HEADER]
    at = data.draw(st.integers(0, len(body) - 1))
    changed = body[:at] + bytes([body[at] ^ data.draw(st.integers(1, 255))]) + body[at + 1:]
    assert not verify(secret, changed, header, now=timestamp)
    assert not verify(secret, body + b" ", header, now=timestamp)
    other = data.draw(secrets.filter(lambda s: s != secret))
    assert not verify(other, body, header, now=timestamp)
    shifted = data.draw(st.integers(-200, 200).filter(bool)) + timestamp
    assert not verify(secret, body, header.replace(f"t={timestamp}", f"t={shifted}"), now=timestamp)
    assert not verify(secret, body, header, now=timestamp + 301)  # too old: a replay


@given(st.text(max_size=40))
def test_a_malformed_signature_header_is_refused_not_raised(header):
    assert verify(b"s", b"{}", header, now=1_000_000_000) is False


@given(secrets, bodies, timestamps, st.integers(-400, 400), st.sampled_from(["", "t=", "v1=", "x"]), st.data())
def test_weirs_own_verification_agrees_with_the_documented_recipe(secret, body, timestamp, skew, mangle, data):
    header = signed_headers(secret=secret, key="k", timestamp=timestamp, body=body)[SIGNATURE_HEADER]
    if mangle:  # a malformed or forged header
        header = header.replace(mangle, data.draw(st.sampled_from(["", "t=1,", "v1=0"])), 1)
    now = timestamp + skew
    assert verify_signature(secret, body, header, now=now) == verify(secret, body, header, now=now)


farcaster_fields = st.fixed_dictionaries({
    b"kind": st.sampled_from([b"MERGE_MESSAGE", b"PRUNE_MESSAGE"]), b"data": st.binary(max_size=40),
    b"key": st.binary(max_size=20), b"ts": st.sampled_from([b"0", b"1764000000.25", b"1764000123"]),
}, optional={b"fid": st.integers(0, 10**6).map(lambda n: b"%d" % n), b"block": st.integers(0, 10**9).map(lambda n: b"%d" % n),
             b"type": st.sampled_from([b"CAST_ADD", b"LINK_ADD"]), b"shard": st.sampled_from([b"1", b"2"])})


@given(farcaster_fields, st.integers(0, 2**40), st.integers(0, 9))
def test_the_body_carries_the_entry_decoded_and_is_the_same_bytes_every_time(fields, position, sub):
    entry_id = f"{position}-{sub}"
    body = body_of(source="farcaster", partition="1", entry_id=entry_id, fields=fields)
    assert body == body_of(source="farcaster", partition="1", entry_id=entry_id, fields=dict(reversed(fields.items())))
    parsed = json.loads(body)
    assert body == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()  # canonical
    assert parsed["id"] == f"farcaster/1/{entry_id}" and parsed["stream_id"] == entry_id
    assert (parsed["position"], parsed["sub"]) == (position, sub)
    assert parsed["type"] == "farcaster." + fields[b"kind"].decode() and parsed["kind"] == fields[b"kind"].decode()
    assert base64.b64decode(parsed["data"]) == fields[b"data"] and bytes.fromhex(parsed["key"]) == fields[b"key"]
    assert parsed["ts"] == (float(fields[b"ts"]) or None)
    for name in (b"fid", b"block"):
        assert parsed["fields"].get(name.decode()) == (int(fields[name]) if name in fields else None)
    assert parsed["fields"].get("shard") == (fields[b"shard"].decode() if b"shard" in fields else None)


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 12))
def test_requests_carry_the_selected_entries_in_order_each_once_at_most_n_each(selected, per_request):
    """``selected``: whether the filters select each entry of the offer (and it has a body)."""
    ids = [f"{n}-{n % 3}" for n in range(len(selected))]
    sendable = {entry_id for entry_id, chosen in zip(ids, selected) if chosen}
    requests = requests_of(ids, sendable=sendable, per_request=per_request)
    assert [entry_id for request in requests for entry_id in request] == [i for i in ids if i in sendable]
    assert all(1 <= len(request) <= per_request for request in requests)
    assert all(len(request) == per_request for request in requests[:-1])  # only the last one may be short


@given(st.lists(farcaster_fields, min_size=1, max_size=8), st.booleans())
def test_a_request_carries_each_events_own_body_and_the_recipe_reads_both_forms(many_fields, batched):
    ids = [f"{n + 1}-0" for n in range(len(many_fields))]
    bodies = {i: body_of(source="farcaster", partition="1", entry_id=i, fields=f) for i, f in zip(ids, many_fields)}
    carried = ids if batched else ids[:1]
    key, body = request_of("farcaster", "1", carried, bodies, batched=batched)
    assert events_of(body) == [json.loads(bodies[i]) for i in carried]  # each event as it is alone, with its own id
    assert verify(b"k", body, signed_headers(secret=b"k", key=key, timestamp=1_764_000_000, body=body)[SIGNATURE_HEADER],
                  now=1_764_000_000)
    if not batched:
        assert key == idempotency_key("farcaster", "1", ids[0]) and body == bodies[ids[0]]  # today's request exactly
    else:  # the key is the request's: the same for the same events, another for others
        assert key == request_of("farcaster", "1", list(carried), bodies, batched=True)[0]
        if len(ids) > 1:
            assert key != request_of("farcaster", "1", ids[1:], bodies, batched=True)[0]
            assert key != request_of("farcaster", "1", ids[:-1], bodies, batched=True)[0]


@given(st.sampled_from(["farcaster", "atproto", "ethereum", "other"]), st.text(max_size=6),
       st.dictionaries(st.sampled_from([b"kind", b"data", b"key", b"fid", b"block", b"did", b"chain", b"decoded", b"x\"\n"]),
                       st.one_of(st.binary(max_size=20), st.text(max_size=10).map(str.encode),
                                 st.integers(0, 2**64).map(lambda n: b"%d" % n), st.just(b'{"a":[1,"\xc3\xa9"]}'))),
       st.one_of(st.none(), st.floats(0, 1e11, exclude_max=True).map(lambda x: repr(x).encode())))
def test_every_body_is_canonical_json_whatever_its_fields(source, partition, fields, ts):
    """The body written key by key is what json.dumps(sort_keys=True, compact) gives for it."""
    fields = {b"kind": b"k", **fields, **({b"ts": ts} if ts is not None else {})}
    try:
        body = body_of(source=source, partition=partition, entry_id="5-1", fields=fields)
    except EntryError:  # a routing field not of its type (a test above checks those)
        return
    assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_an_ethereum_retraction_is_its_own_event_with_the_decoded_json():
    fields = {b"kind": b"retract", b"data": b'{"logIndex":"0x3"}', b"key": b"1:0xb:3", b"ts": b"1764000000", b"chain": b"1",
              b"block": b"77", b"log_index": b"3", b"address": b"0x" + b"ab" * 20, b"event": b"Transfer",
              b"decoded": b'{"event":"Transfer","args":{"value":"5"}}'}
    parsed = json.loads(body_of(source="ethereum", partition="1", entry_id="9-1", fields=fields))
    assert parsed["type"] == "ethereum.retract" and parsed["kind"] == "retract"
    assert bytes.fromhex(parsed["key"]) == b"1:0xb:3"
    assert parsed["fields"]["decoded"] == {"event": "Transfer", "args": {"value": "5"}}
    assert (parsed["fields"]["chain"], parsed["fields"]["block"], parsed["fields"]["log_index"]) == (1, 77, 3)


# --- filters -------------------------------------------------------------------------------------

KINDS = ["log", "retract", "commit", "MERGE_MESSAGE"]
ADDRESSES = ["0x" + c * 40 for c in "abc"]
COLLECTIONS = ["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow", "chat.bsky.convo"]
entry_fields = st.fixed_dictionaries({}, optional={
    b"kind": st.sampled_from(KINDS).map(str.encode), b"fid": st.sampled_from([b"1", b"2", b"3", b"x"]),
    b"collection": st.sampled_from(COLLECTIONS).map(str.encode),
    b"address": st.sampled_from(ADDRESSES + [a.upper().replace("0X", "0x") for a in ADDRESSES]).map(str.encode),
    b"event": st.sampled_from([b"Transfer", b"Approval"])})
filters = st.fixed_dictionaries({
    "kinds": st.lists(st.sampled_from(KINDS), max_size=2), "fids": st.lists(st.integers(1, 3), max_size=2),
    "collections": st.lists(st.sampled_from(COLLECTIONS + ["app.bsky.*", "app.bsky.feed.*"]), max_size=2),
    "contracts": st.lists(st.sampled_from(ADDRESSES), max_size=2),
    "events": st.lists(st.sampled_from(["Transfer", "Approval"]), max_size=2)})


def endpoint_filter(**chosen) -> EndpointFilter:
    return EndpointFilter.of(DeliverPipelineSettings(**{key: tuple(values) for key, values in chosen.items()}))


@given(entry_fields)
def test_no_filter_selects_everything(fields):
    assert endpoint_filter().selects(fields)


@given(filters, entry_fields)
def test_an_entry_is_selected_exactly_when_every_filter_set_selects_it(chosen, fields):
    alone = [endpoint_filter(**{key: values}).selects(fields) for key, values in chosen.items()]
    assert endpoint_filter(**chosen).selects(fields) == all(alone)


@given(filters, entry_fields, st.data())
def test_one_filter_selects_the_entries_whose_field_is_one_of_its_values(chosen, fields, data):
    key = data.draw(st.sampled_from(sorted(chosen)))
    values = chosen[key]
    field = {"kinds": b"kind", "fids": b"fid", "collections": b"collection", "contracts": b"address", "events": b"event"}[key]
    got = endpoint_filter(**{key: values}).selects(fields)
    raw = fields.get(field)
    if not values:
        assert got
    elif raw is None:
        assert not got  # a filter on a field the entry does not have
    elif key == "collections":
        text = raw.decode()
        assert got == any(text == v or (v.endswith(".*") and text.startswith(v[:-1])) for v in values)
    elif key == "contracts":
        assert got == (raw.decode().lower() in values)
    elif key == "fids":
        assert got == (raw.isdigit() and int(raw) in values)
    else:
        assert got == (raw.decode() in values)


def test_a_fid_of_thousands_of_digits_is_not_selected_and_raises_nothing():
    # Past int()'s limit for text (4,300 digits), a plain ValueError crashed the offer of its batch.
    assert not endpoint_filter(fids=[7]).selects({b"fid": b"7" * 5000})
    assert endpoint_filter(fids=[7]).selects({b"fid": b"7"})


def test_filters_that_do_not_fit_the_source_are_config_errors():
    assert filter_problems(DeliverPipelineSettings(source="farcaster", fids=(3,))) == []
    assert filter_problems(DeliverPipelineSettings(source="atproto", fids=(3,))) == [
        "fids: only farcaster entries have it (this pipeline's source is 'atproto')"]
    assert "contracts: expected an address" in filter_problems(DeliverPipelineSettings(source="ethereum", contracts=("0x1",)))[0]
    assert "collections: expected an NSID" in filter_problems(DeliverPipelineSettings(source="atproto", collections=("app.*x",)))[0]


def test_the_secret_is_in_no_problem_and_no_repr():
    pipe = DeliverPipelineSettings(source="farcaster", target="webhook", url="ftp://h/x", secret="SECRET-value", timeout=0)
    problems = webhook_problems(pipe, claim_idle=60)
    assert problems and not any("SECRET" in problem for problem in problems)
    assert "SECRET" not in repr(pipe)


# --- answers and backoff --------------------------------------------------------------------------

@given(st.integers(100, 599), st.binary(max_size=600))
def test_what_a_status_means(status, body):
    outcome = outcome_of_status(status, body)
    if 200 <= status < 300:
        assert outcome.verdict is Verdict.DELIVERED and outcome.reason == ""
    elif status in (408, 429) or status >= 500:
        assert outcome.verdict is Verdict.RETRY
    else:
        assert outcome.verdict is Verdict.REFUSED
    if outcome.reason:
        assert outcome.reason.startswith(f"HTTP {status}") and outcome.reason.isprintable()
        assert len(outcome.reason) <= len(f"HTTP {status}: ") + EXCERPT_BYTES


def test_a_refusal_says_the_status_and_the_start_of_the_body():
    assert outcome_of_status(422, b'{"error": "no such fid"}\n' + b"x" * 1000).reason.startswith(
        'HTTP 422: {"error": "no such fid"} xxx')


@given(st.floats(0, 5), st.floats(0.01, 60), st.integers(0, 200), st.randoms(use_true_random=False))
def test_the_pause_before_a_retry_is_full_jitter_under_a_doubling_cap(initial, maximum, attempt, rng):
    initial = min(initial, maximum)
    backoff = retry_backoff(DeliverPipelineSettings(retry_initial=initial, retry_max=maximum))
    cap = min(maximum, initial * 2.0 ** min(attempt, 1000))
    assert 0 <= backoff.delay(attempt, rng) <= cap <= maximum
    assert backoff.cap(attempt) <= backoff.cap(attempt + 1)


outcomes = st.sampled_from([Outcome(Verdict.DELIVERED), Outcome(Verdict.RETRY, "HTTP 503"), Outcome(Verdict.REFUSED, "HTTP 404")])


@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.one_of(st.none(), outcomes)), max_size=30))
def test_an_offer_settles_every_entry_in_exactly_one_place(plan):
    """Each entry: selected by the filters?, had a body?, its last outcome (None: no answer in time)."""
    ids = [f"{n}-0" for n in range(len(plan))]
    sent = {i for i, (selected, body, _) in zip(ids, plan) if selected and body}
    unsendable = {i: "ts is not a number" for i, (selected, body, _) in zip(ids, plan) if selected and not body}
    answers = {i: outcome for i, (_, _, outcome) in zip(ids, plan) if i in sent and outcome is not None}
    settled = settle(ids, sent=sent, unsendable=unsendable, outcomes=answers)
    places = [*settled.done, *settled.refused, *settled.given_back]
    assert sorted(places) == sorted(ids)  # each once
    assert list(settled.done) == [i for i in ids if i in settled.done]  # offer order
    for entry_id, (selected, body, outcome) in zip(ids, plan):
        if not selected:
            assert entry_id in settled.done  # not for this endpoint: acknowledged, nothing sent
        elif not body:
            assert settled.refused[entry_id] == "ts is not a number"
        elif outcome is None or outcome.verdict is Verdict.RETRY:
            assert entry_id in settled.given_back
        elif outcome.verdict is Verdict.REFUSED:
            assert settled.refused[entry_id] == "HTTP 404"
        else:
            assert entry_id in settled.done
