"""The part of the NATS client protocol a JetStream publisher needs (docs/delivery.md, NATS JetStream).

Pure, no socket: the server address of a URL, the CONNECT line, a window of messages as HPUB
commands (one buffer, one ``sendall``), the server's operations read out of a receive buffer (INFO,
MSG/HMSG, PING, PONG, +OK, -ERR), and whether a reply is JetStream's acknowledgement. The I/O is
in weir/deliver/nats_publisher.py. Protocol: https://docs.nats.io/reference/reference-protocols/nats-protocol
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from weir.deliver.nats_messages import Message

DEFAULT_PORT = 4222
CRLF = b"\r\n"
_HEADER_START = "NATS/1.0\r\n"
_ACK_START = b'{"stream":'  # a PubAck: {"stream":"WEIR","seq":7[,"domain":..][,"duplicate":true]}
# Bounds on what a server may make us hold: a control line (an INFO lists the cluster's URLs), and a
# message (the largest max_payload nats-server allows is 64 MiB).
MAX_LINE = 1024 * 1024
MAX_MESSAGE = 64 * 1024 * 1024


class ProtocolError(Exception):
    """The server sent something that is not the NATS protocol (the connection cannot go on)."""


@attrs.frozen(kw_only=True)
class ServerAddress:
    """Where and how to connect: from ``nats://[user:password@|token@]host[:port]`` or ``tls://…``."""

    host: str
    port: int
    tls: bool
    user: str | None = None
    password: str | None = None
    token: str | None = None

    @classmethod
    def of(cls, url: str) -> ServerAddress:
        parts = urlsplit(url)
        # As nats-py reads a URL: user and password, or a lone user part as the token.
        user, password = parts.username, parts.password
        token = user if user and password is None else None
        return cls(host=parts.hostname or "127.0.0.1", port=parts.port or DEFAULT_PORT, tls=parts.scheme == "tls",
                   user=None if token else user, password=password, token=token)


def connect_command(address: ServerAddress, *, name: str, tls: bool) -> bytes:
    """CONNECT (headers on, no +OK per command, "no responders" status when no stream listens)."""
    options: dict[str, Any] = {"verbose": False, "pedantic": False, "tls_required": tls, "name": name,
                               "lang": "python3", "version": "weir", "protocol": 1, "headers": True,
                               "no_responders": True}
    if address.token is not None:
        options["auth_token"] = address.token
    elif address.user is not None:
        options["user"], options["pass"] = address.user, address.password or ""
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + CRLF


def subscribe_command(subject: str, sid: int) -> bytes:
    return f"SUB {subject} {sid}\r\n".encode()


def header_block(headers: dict[str, str]) -> bytes:
    """``NATS/1.0`` and one ``Name: value`` line per header (names and values are checked clean
    ASCII by nats_messages.message_of), then the empty line."""
    return (_HEADER_START + "".join([f"{name}: {value}\r\n" for name, value in headers.items()]) + "\r\n").encode()


def message_size(message: Message) -> int:
    """What a server weighs against its ``max_payload``: the header block and the payload."""
    return len(header_block(message.headers)) + len(message.payload)


def publish_window(messages: Sequence[Message], reply_prefix: str, first_token: int) -> bytes:
    """The HPUB commands of ``messages``, message ``i`` asking for its reply on
    ``<reply_prefix>.<first_token + i>``."""
    out = []
    for token, message in enumerate(messages, first_token):
        head = header_block(message.headers)
        out.append(b"HPUB %s %s.%d %d %d\r\n%s%s\r\n" % (
            message.subject.encode(), reply_prefix.encode(), token, len(head), len(head) + len(message.payload),
            head, message.payload))
    return b"".join(out)


# Server operations, as tuples (one per frame: this is the hot path of every acknowledgement):
#   ("MSG", subject, headers, body)   headers b"" for a MSG, the raw header block for an HMSG
#   ("PING",) ("PONG",) ("+OK",) ("-ERR", text) ("INFO", dict)
Op = tuple[Any, ...]


def read_ops(buffer: bytes | bytearray, start: int = 0) -> tuple[list[Op], int]:
    """The complete operations in ``buffer`` from ``start``, and where the first incomplete one
    begins (the caller keeps the bytes from there for the next read).

    Raises:
        ProtocolError: a line that is no NATS operation.
    """
    ops: list[Op] = []
    pos = start
    while True:
        end = buffer.find(CRLF, pos)
        if end < 0:
            if len(buffer) - pos > MAX_LINE:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
            return ops, pos
        line = bytes(buffer[pos:end])
        if line.startswith((b"MSG ", b"HMSG ")):
            fields = line.split()
            with_headers = fields[0] == b"HMSG"  # HMSG <subject> <sid> [reply] <header bytes> <total bytes>
            try:
                header_size, total = (int(fields[-2]) if with_headers else 0), int(fields[-1])
            except ValueError:
                raise ProtocolError(f"bad message line {line[:80]!r}") from None
            if len(fields) - with_headers not in (4, 5) or not 0 <= header_size <= total <= MAX_MESSAGE:
                raise ProtocolError(f"bad message line {line[:80]!r}")
            body_start = end + 2
            if len(buffer) < body_start + total + 2:
                return ops, pos
            ops.append(("MSG", fields[1], bytes(buffer[body_start:body_start + header_size]),
                        bytes(buffer[body_start + header_size:body_start + total])))
            pos = body_start + total + 2
            continue
        pos = end + 2
        if line == b"PING":
            ops.append(("PING",))
        elif line == b"PONG":
            ops.append(("PONG",))
        elif line == b"+OK":
            ops.append(("+OK",))
        elif line.startswith(b"-ERR"):
            ops.append(("-ERR", line[4:].strip().strip(b"'").decode("utf-8", errors="replace")))
        elif line.startswith(b"INFO "):
            try:
                ops.append(("INFO", json.loads(line[5:])))
            except ValueError:
                raise ProtocolError(f"bad INFO {line[:80]!r}") from None
        else:
            raise ProtocolError(f"unknown operation {line[:80]!r}")


def reply_token(subject: bytes, reply_prefix: bytes) -> int | None:
    """The token of a reply subject ``<reply_prefix>.<n>``, or None for another subject."""
    prefix, _, token = subject.rpartition(b".")
    if prefix != reply_prefix or not token.isdigit():
        return None
    return int(token)


def ack_problem(headers: bytes, body: bytes) -> str | None:
    """None when the reply is JetStream's acknowledgement (stored, or a duplicate it already
    stored); otherwise why not, in one line."""
    if headers:  # a status reply: "NATS/1.0 503" no responders (no stream takes the subject), timeouts
        status = headers.split(CRLF, 1)[0][len(b"NATS/1.0"):].strip().decode("ascii", errors="replace")
        return f"status {status or 'without code'}" + (" (no stream takes the subject)" if status.startswith("503") else "")
    if body.startswith(_ACK_START) and b'"error"' not in body and b'"seq":' in body:
        return None  # the common case, without parsing the JSON
    try:
        reply = json.loads(body)
    except ValueError:
        return f"not a JetStream acknowledgement: {body[:80]!r}"
    if not isinstance(reply, dict):
        return f"not a JetStream acknowledgement: {body[:80]!r}"
    error = reply.get("error")
    if error is not None:
        return str(error.get("description", error) if isinstance(error, dict) else error)
    if "stream" in reply and "seq" in reply:
        return None  # a stream whose name holds "error"
    return f"not a JetStream acknowledgement: {body[:80]!r}"
