"""Stream entries as NATS JetStream messages: subjects, headers, message ids (docs/delivery.md, NATS).

Pure: the subject template's checks, the message of an entry, the stream's expected configuration
and how an existing stream differs from it. The I/O is in weir/deliver/jetstream.py.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping, Sequence

import attrs

#: The fields a subject template may use.
SUBJECT_FIELDS = ("source", "partition", "kind")
MSG_ID_HEADER = "Nats-Msg-Id"
HEADER_PREFIX = "Weir-"
_TOKEN = re.compile(r"[^\s.*>]+\Z")  # a subject token: no white space, dot or wildcard
_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
# A value sent as text: printable ASCII (no CR/LF, which end a header; no encoding question), no
# leading or trailing space (a header value's own are not kept), or empty.
_CLEAN_VALUE = re.compile(rb"(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?\Z")


class MessageError(ValueError):
    """The entry cannot become a message (its kind cannot be a subject token, a field name no header)."""


def template_problem(template: str) -> str | None:
    """What is wrong with a subject template, or None: only {source}, {partition} and {kind}, no
    format specs, and every token non-empty once rendered."""
    if not template:
        return "must not be empty"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{template!r} is not a template ({exc})"
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in SUBJECT_FIELDS:
            return f"{template!r}: unknown field {{{field}}}; known: {', '.join('{' + f + '}' for f in SUBJECT_FIELDS)}"
        if spec or conversion:
            return f"{template!r}: {{{field}}} takes no format spec or conversion"
    sample = render_subject(template, source="s", partition="p", kind="k")
    if not all(_TOKEN.match(token) for token in sample.split(".")):
        return f"{template!r}: every dot-separated token must be non-empty, without spaces, '*' or '>'"
    return None


def render_subject(template: str, *, source: str, partition: str, kind: str) -> str:
    return template.format(source=source, partition=partition, kind=kind)


def default_stream_subjects(template: str) -> tuple[str, ...] | None:
    """The stream subjects that cover every subject of ``template``: its literal leading tokens and
    ``>`` (``weir.{source}.{partition}.{kind}`` -> ``weir.>``); None when it starts with a field."""
    literal = []
    for token in template.split("."):
        if "{" in token:
            break
        literal.append(token)
    return (".".join([*literal, ">"]),) if literal else None


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more trailing tokens."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)


def covered(template: str, stream_subjects: Sequence[str]) -> bool:
    """Whether a subject of ``template`` (fields filled with one-token values) lands in the stream."""
    sample = render_subject(template, source="s", partition="p", kind="k")
    return any(subject_matches(pattern, sample) for pattern in stream_subjects)


@attrs.frozen
class Message:
    subject: str
    payload: bytes
    headers: dict[str, str]


def msg_id(source: str, partition: str, entry_id: str) -> str:
    """An entry's identity, the same for every delivery of it: JetStream drops a replay by it."""
    return f"{source}/{partition}/{entry_id}"


def message_of(template: str, *, source: str, partition: str, entry_id: str,
               fields: Mapping[bytes, bytes]) -> Message:
    """The message of one entry: its ``data`` as the body, every other field as a ``Weir-<name>``
    header (``key``, raw bytes, in hex; any other value that is not printable ASCII without leading
    or trailing spaces as ``Weir-<name>-Hex``).

    Raises:
        MessageError: no ``kind``, a kind that cannot be a subject token, or a field name that
            cannot be a header name.
    """
    raw_kind = fields.get(b"kind")
    if raw_kind is None:
        raise MessageError(f"entry {entry_id} has no kind field")
    subject = _subject(template, source, partition, raw_kind)
    if subject is None:
        kind = raw_kind.decode("utf-8", errors="replace")
        raise MessageError(f"entry {entry_id}: kind {kind[:40]!r} cannot be a subject token")
    headers = {MSG_ID_HEADER: msg_id(source, partition, entry_id)}
    for raw_name, value in fields.items():
        if raw_name == b"data":
            continue
        names = _header_names(raw_name)
        if names is None:
            name = raw_name.decode("utf-8", errors="replace")
            raise MessageError(f"entry {entry_id}: field name {name[:40]!r} cannot be a header name")
        if raw_name == b"key":
            headers[names[0]] = value.hex()
        elif _CLEAN_VALUE.match(value):
            headers[names[0]] = value.decode("ascii")
        else:
            headers[names[1]] = value.hex()
    return Message(subject=subject, payload=fields.get(b"data", b""), headers=headers)


@functools.lru_cache(maxsize=1024)  # a partition's entries share a handful of kinds
def _subject(template: str, source: str, partition: str, raw_kind: bytes) -> str | None:
    """The subject of an entry of this kind, or None when the kind cannot be a subject token."""
    kind = raw_kind.decode("utf-8", errors="replace")
    return render_subject(template, source=source, partition=partition, kind=kind) if _TOKEN.match(kind) else None


@functools.lru_cache(maxsize=1024)  # a stream's entries share a handful of field names
def _header_names(raw_name: bytes) -> tuple[str, str] | None:
    """A field's header names, as text and in hex (``Weir-<name>``, ``Weir-<name>-Hex``), or
    None when the name cannot be a header name."""
    name = raw_name.decode("utf-8", errors="replace")
    if not _HEADER_NAME.match(name):
        return None
    return HEADER_PREFIX + name, f"{HEADER_PREFIX}{name}-Hex"


def stream_mismatch(*, name: str, want_subjects: Sequence[str], want_window: float, have_subjects: Sequence[str],
                    have_window: float) -> str | None:
    """How an existing stream differs from what the pipeline asks (one line), or None."""
    problems = []
    if sorted(have_subjects) != sorted(want_subjects):
        problems.append(f"subjects {sorted(have_subjects)} (configured: {sorted(want_subjects)})")
    if round(have_window, 3) != round(want_window, 3):
        problems.append(f"duplicate_window {have_window:g}s (configured: {want_window:g}s)")
    if not problems:
        return None
    return (f"JetStream stream {name!r} exists with {' and '.join(problems)}: change the pipeline's settings, "
            f"or the stream (or delete it to have weir create it)")
