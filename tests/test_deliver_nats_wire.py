"""The NATS protocol pieces of the JetStream publisher (weir/deliver/nats_wire.py): properties of the
pure encoding, parsing and acknowledgement check."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weir.deliver.nats_messages import Message
from weir.deliver.nats_wire import (
    MAX_LINE,
    MAX_MESSAGE,
    ProtocolError,
    ServerAddress,
    ack_problem,
    publish_window,
    read_ops,
    reply_token,
)

tokens = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABC0123456789-_"), min_size=1, max_size=10)
subjects = st.lists(tokens, min_size=1, max_size=4).map(".".join)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)
messages = st.builds(Message, subject=subjects, payload=st.binary(max_size=60),
                     headers=st.dictionaries(tokens, header_values, max_size=4))


def frame(op: tuple) -> bytes:
    """An operation as the server writes it."""
    if op[0] == "MSG":
        _, subject, headers, body = op
        if headers:
            return b"HMSG %s 1 %d %d\r\n%s%s\r\n" % (subject, len(headers), len(headers) + len(body), headers, body)
        return b"MSG %s 1 %d\r\n%s\r\n" % (subject, len(body), body)
    if op[0] == "-ERR":
        return b"-ERR '%s'\r\n" % op[1].encode()
    if op[0] == "INFO":
        return b"INFO " + json.dumps(op[1]).encode() + b"\r\n"
    return op[0].encode() + b"\r\n"


server_ops = st.one_of(
    st.tuples(st.just("MSG"), subjects.map(str.encode), st.just(b""), st.binary(max_size=40)),
    st.tuples(st.just("MSG"), subjects.map(str.encode), st.just(b"NATS/1.0 503\r\n\r\n"), st.binary(max_size=10)),
    st.sampled_from([("PING",), ("PONG",), ("+OK",)]),
    st.tuples(st.just("-ERR"), st.text(st.sampled_from("abc XYZ"), max_size=20).map(str.strip)),
    st.tuples(st.just("INFO"), st.fixed_dictionaries({"max_payload": st.integers(1, 2**20), "headers": st.booleans()})),
)


@given(ops=st.lists(server_ops, max_size=12), cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_operations_come_out_whole_however_the_bytes_are_cut(ops, cuts):
    """Bodies may hold CRLF and any byte; a read that ends mid-frame leaves it for the next."""
    wire = b"".join(frame(op) for op in ops)
    buffer, seen = bytearray(), []
    for lo, hi in zip([0, *sorted(cuts)], [*sorted(cuts), len(wire)]):
        buffer += wire[lo:hi]
        got, used = read_ops(buffer)
        del buffer[:used]
        seen += got
    assert seen == ops
    assert not buffer


@pytest.mark.parametrize("line", [b"HELLO\r\n", b"MSG a 1 x\r\n", b"MSG a\r\n", b"HMSG a 1 9 3\r\n", b"INFO {\r\n",
                                  b"MSG a 1 %d\r\n" % (MAX_MESSAGE + 1), b"PING" + b" " * MAX_LINE])
def test_a_line_that_is_no_operation_or_beyond_the_bounds_is_a_protocol_error(line):
    with pytest.raises(ProtocolError):
        read_ops(line)


def hpub_frames(wire: bytes) -> list[tuple[str, str, bytes, bytes]]:
    """What the server reads: (subject, reply, header block, payload) per HPUB."""
    out, pos = [], 0
    while pos < len(wire):
        end = wire.index(b"\r\n", pos)
        verb, subject, reply, head_size, total = wire[pos:end].split(b" ")
        assert verb == b"HPUB"
        body = wire[end + 2:end + 2 + int(total)]
        assert wire[end + 2 + int(total):end + 4 + int(total)] == b"\r\n"
        out.append((subject.decode(), reply.decode(), body[:int(head_size)], body[int(head_size):]))
        pos = end + 4 + int(total)
    return out


@given(window=st.lists(messages, max_size=8), first=st.integers(0, 10**9))
def test_a_window_is_one_hpub_per_message_asking_its_reply_on_its_own_token(window, first):
    frames = hpub_frames(publish_window(window, "_INBOX.abc", first))
    assert len(frames) == len(window)
    for n, (message, (subject, reply, head, payload)) in enumerate(zip(window, frames)):
        assert subject == message.subject and payload == message.payload
        assert reply_token(reply.encode(), b"_INBOX.abc") == first + n
        lines = head.decode().split("\r\n")
        assert lines[0] == "NATS/1.0" and lines[-2:] == ["", ""]
        assert dict(line.split(": ", 1) for line in lines[1:-2]) == message.headers


def test_a_reply_to_another_subject_has_no_token():
    assert reply_token(b"_INBOX.abc.12", b"_INBOX.abd") is None
    assert reply_token(b"_INBOX.abc.x", b"_INBOX.abc") is None
    assert reply_token(b"_INBOX.abc.d.12", b"_INBOX.abc") is None


stream_names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"),
                       min_size=1, max_size=12) | st.just("error")


@given(stream=stream_names, seq=st.integers(1, 2**63), duplicate=st.booleans(), domain=st.none() | tokens)
def test_a_puback_stored_or_duplicate_is_an_acknowledgement(stream, seq, duplicate, domain):
    ack = {"stream": stream, "seq": seq, **({"domain": domain} if domain else {}), **({"duplicate": True} if duplicate else {})}
    assert ack_problem(b"", json.dumps(ack, separators=(",", ":")).encode()) is None
    assert ack_problem(b"", json.dumps(ack).encode()) is None  # other spacing: parsed


@given(stream=stream_names, code=st.integers(400, 599), description=st.text(st.sampled_from("abc xyz"), min_size=1))
def test_an_error_reply_is_not_an_acknowledgement_and_says_why(stream, code, description):
    reply = {"stream": stream, "seq": 0, "error": {"code": code, "err_code": 10077, "description": description}}
    assert ack_problem(b"", json.dumps(reply, separators=(",", ":")).encode()) == description
    assert ack_problem(b"", json.dumps({"error": {"code": code, "description": description}}).encode()) == description


@given(body=st.binary(max_size=40))
def test_a_status_reply_or_anything_else_is_not_an_acknowledgement(body):
    assert "no stream" in ack_problem(b"NATS/1.0 503\r\n\r\n", b"")
    if b'"seq"' not in body:
        assert ack_problem(b"", body) is not None


@pytest.mark.parametrize("url, address", [
    ("nats://127.0.0.1:4333", ServerAddress(host="127.0.0.1", port=4333, tls=False)),
    ("tls://nats.example.com", ServerAddress(host="nats.example.com", port=4222, tls=True)),
    ("nats://weir:s3cret@h:1", ServerAddress(host="h", port=1, tls=False, user="weir", password="s3cret")),
    ("nats://t0ken@h:1", ServerAddress(host="h", port=1, tls=False, token="t0ken")),
])
def test_the_server_address_and_credentials_of_a_url(url, address):
    assert ServerAddress.of(url) == address
