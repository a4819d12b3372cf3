"""Entries as JetStream messages (weir/deliver/nats_messages.py): properties of the pure mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weir.deliver.nats_messages import (
    HEADER_PREFIX,
    MSG_ID_HEADER,
    MessageError,
    covered,
    default_stream_subjects,
    message_of,
    render_subject,
    stream_mismatch,
    subject_matches,
    template_problem,
)

TEMPLATE = "weir.{source}.{partition}.{kind}"
tokens = st.text(st.characters(codec="ascii", categories=("L", "N")) | st.sampled_from("-_:"), min_size=1, max_size=12)
field_names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_0123456789"), min_size=1, max_size=10).filter(
    lambda name: name not in {"data", "kind"})
entry_ids = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


def fields_back(headers: dict[str, str]) -> dict[bytes, bytes]:
    """What a consumer does with the headers (docs/delivery.md): the entry's fields again."""
    out: dict[bytes, bytes] = {}
    for name, value in headers.items():
        if not name.startswith(HEADER_PREFIX):
            continue
        name = name[len(HEADER_PREFIX):]
        if name == "key":
            out[b"key"] = bytes.fromhex(value)
        elif name.endswith("-Hex"):
            out[name[:-4].encode()] = bytes.fromhex(value)
        else:
            out[name.encode()] = value.encode()
    return out


@given(tokens, tokens, tokens, entry_ids, st.dictionaries(field_names, st.binary(max_size=40), max_size=8),
       st.binary(max_size=64))
def test_every_field_but_data_is_carried_by_headers_that_give_it_back(source, partition, kind, entry_id, extra, data):
    fields = {name.encode(): value for name, value in extra.items()} | {b"kind": kind.encode(), b"data": data}
    message = message_of(TEMPLATE, source=source, partition=partition, entry_id=entry_id, fields=fields)
    assert message.payload == data
    assert message.subject == f"weir.{source}.{partition}.{kind}"
    assert message.headers[MSG_ID_HEADER] == f"{source}/{partition}/{entry_id}"
    assert fields_back(message.headers) == {name: value for name, value in fields.items() if name != b"data"}
    for value in message.headers.values():  # each value is one header line as NATS sends it
        assert value.isascii() and value.isprintable() and value == value.strip()


@given(entry_ids, st.dictionaries(field_names, st.binary(max_size=8), max_size=4), st.dictionaries(field_names, st.binary(max_size=8), max_size=4))
def test_the_message_id_is_the_entry_identity_whatever_its_fields(entry_id, first, second):
    one = message_of(TEMPLATE, source="farcaster", partition="1", entry_id=entry_id,
                     fields={b"kind": b"k", **{k.encode(): v for k, v in first.items()}})
    two = message_of(TEMPLATE, source="farcaster", partition="1", entry_id=entry_id,
                     fields={b"kind": b"k", **{k.encode(): v for k, v in second.items()}})
    assert one.headers[MSG_ID_HEADER] == two.headers[MSG_ID_HEADER]


@pytest.mark.parametrize(("fields", "reason"), [
    ({b"data": b"x"}, "has no kind"),
    ({b"kind": b"a.b"}, "cannot be a subject token"),
    ({b"kind": b"a b"}, "cannot be a subject token"),
    ({b"kind": b">"}, "cannot be a subject token"),
    ({b"kind": b"k", b"bad name": b"1"}, "cannot be a header name"),
])
def test_an_entry_that_cannot_be_a_message_is_refused_with_the_reason(fields, reason):
    with pytest.raises(MessageError, match=reason):
        message_of(TEMPLATE, source="s", partition="1", entry_id="1-0", fields=fields)


@given(st.lists(tokens, min_size=1, max_size=3), tokens, tokens, tokens)
def test_the_default_stream_subjects_cover_every_subject_of_the_template(prefix, source, partition, kind):
    template = ".".join(prefix) + ".{source}.p{partition}.{kind}"
    subjects = default_stream_subjects(template)
    assert subjects == (".".join(prefix) + ".>",)
    assert covered(template, subjects)
    assert subject_matches(subjects[0], render_subject(template, source=source, partition=partition, kind=kind))


@given(tokens, tokens, tokens)
def test_wildcards_match_as_nats_does(a, b, c):
    subject = f"{a}.{b}.{c}"
    assert subject_matches(f"{a}.*.{c}", subject) and subject_matches(f"{a}.>", subject) and subject_matches(">", subject)
    assert not subject_matches(f"{a}.*", subject) and not subject_matches(f"{a}.{b}.{c}.>", subject)
    assert not subject_matches(f"{a}.{b}.{c}.x", subject)


@pytest.mark.parametrize(("template", "problem"), [
    (TEMPLATE, None),
    ("events.{kind}", None),
    ("{source}-{partition}.{kind}", None),
    ("weir.{network}.{kind}", "unknown field {network}; known: {source}, {partition}, {kind}"),
    ("weir.{kind:>10}", "{kind} takes no format spec or conversion"),
    ("weir.{kind!r}", "{kind} takes no format spec or conversion"),
    ("weir..{kind}", "every dot-separated token must be non-empty"),
    ("weir.*.{kind}", "every dot-separated token must be non-empty, without spaces, '*' or '>'"),
    ("weir.{kind", "is not a template"),
    ("", "must not be empty"),
])
def test_subject_templates_are_checked(template, problem):
    found = template_problem(template)
    assert (found is None) if problem is None else (found is not None and problem in found), found


@given(st.lists(tokens, max_size=3), st.lists(tokens, max_size=3), st.integers(1, 3600), st.integers(1, 3600))
def test_a_stream_mismatches_exactly_when_its_subjects_or_window_differ(want, have, want_window, have_window):
    problem = stream_mismatch(name="WEIR", want_subjects=want, want_window=want_window, have_subjects=have,
                              have_window=have_window)
    same = sorted(want) == sorted(have) and want_window == have_window
    assert (problem is None) == same
    if problem is not None:
        assert "\n" not in problem and problem.startswith("JetStream stream 'WEIR' exists with ")
