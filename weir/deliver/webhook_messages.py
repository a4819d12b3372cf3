"""Stream entries as signed webhook requests: which events go in which request, the JSON body,
the idempotency key and the signature headers (docs/delivery.md, Webhooks, has the receiver's
verification recipe).

Pure. The body of an entry is the same bytes on every attempt and every redelivery; a batched
request (``events_per_request`` > 1) carries those same bytes as the items of ``{"events": [...]}``.
The signature covers a timestamp taken per attempt, in the style of Stripe's and Standard Webhooks':

    Weir-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from json.encoder import encode_basestring
from collections.abc import Mapping, Sequence, Set

from weir.deliver.entry_fields import ROUTING, entry_values
from weir.deliver.nats_messages import msg_id

_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_string = encode_basestring  # a JSON string, non-ASCII as is (ensure_ascii=False's)

KEY_HEADER = "Weir-Idempotency-Key"
TIMESTAMP_HEADER = "Weir-Timestamp"
SIGNATURE_HEADER = "Weir-Signature"
SIGNATURE_VERSION = "v1"


def idempotency_key(source: str, partition: str, entry_id: str) -> str:
    """The entry's identity, ``<source>/<partition>/<stream id>``: stable across attempts,
    redeliveries, crashes and claims (the same as the NATS target's Nats-Msg-Id)."""
    return msg_id(source, partition, entry_id)


def body_of(*, source: str, partition: str, entry_id: str, fields: Mapping[bytes, bytes]) -> bytes:
    """The JSON body of one entry (compact, keys sorted: the same bytes every time).

    ``key`` is hex, ``data`` base64 (the payload as weir persisted it), ``ts`` unix seconds (null
    when the source gives none); ``fields`` holds the source's routing fields typed (integers as
    numbers) and every other field as text; Ethereum's ``decoded`` is its JSON object.

    Raises:
        weir.deliver.entry_fields.EntryError: the entry cannot be decoded (no kind, a bad ts, a
            routing field not of its type).
    """
    # Written out key by key in sorted order rather than json.dumps of a dict: the same bytes at a
    # third of the cost (per event, the hot path of a batched endpoint; a test checks it canonical).
    stream_id, position, sub, kind, key, ts, data, *routed, extra = entry_values(source, entry_id, fields)
    routing = {name: value for (name, _), value in zip(ROUTING.get(source, ()), routed) if value is not None}
    if isinstance(routing.get("decoded"), str):
        try:
            routing["decoded"] = json.loads(routing["decoded"])
        except ValueError:  # not JSON after all: sent as the text it is
            pass
    routing.update(extra or ())  # type: ignore[arg-type]
    data_json = f'"{base64.b64encode(data).decode()}"' if isinstance(data, bytes) else "null"  # ASCII: no escaping
    key_json = f'"{key.hex()}"' if isinstance(key, bytes) else "null"
    ts_json = repr(ts / 1_000_000) if isinstance(ts, int) else "null"
    return (f'{{"data":{data_json},"fields":{_encode(routing)},"id":{_string(idempotency_key(source, partition, entry_id))},'
            f'"key":{key_json},"kind":{_string(kind)},"partition":{_string(partition)},"position":{position},'
            f'"source":{_string(source)},"stream_id":{_string(stream_id)},"sub":{sub},"ts":{ts_json},'
            f'"type":{_string(f"{source}.{kind}")}}}').encode()


def requests_of(entry_ids: Sequence[str], *, sendable: Set[str], per_request: int) -> list[tuple[str, ...]]:
    """The requests of an offer, each as the ids of the events it carries: the ``sendable`` entries
    (selected by the endpoint's filters, with a body) in offer order, ``per_request`` at a time (the
    last request of an offer may carry fewer: nothing waits for later entries to fill it)."""
    ids = [entry_id for entry_id in entry_ids if entry_id in sendable]
    return [tuple(ids[start:start + per_request]) for start in range(0, len(ids), per_request)]


def request_of(source: str, partition: str, entry_ids: Sequence[str], bodies: Mapping[str, bytes], *,
               batched: bool) -> tuple[str, bytes]:
    """The idempotency key and body of the request carrying ``entry_ids``.

    Not ``batched``: one entry, its key and body as ``body_of`` gives them. ``batched``:
    ``{"events":[<each entry's body_of bytes>]}`` (whatever the count, so a receiver sees one form)
    under a key derived from the ids it carries, ``<source>/<partition>/<first stream id>/<count>/
    <16 hex digits of SHA-256 over the ids>``: the same for every try of the same request; a
    receiver deduplicates by each event's own ``id``.
    """
    if not batched:
        (entry_id,) = entry_ids
        return idempotency_key(source, partition, entry_id), bodies[entry_id]
    return batch_key(source, partition, entry_ids), b'{"events":[' + b",".join(bodies[i] for i in entry_ids) + b"]}"


def batch_key(source: str, partition: str, entry_ids: Sequence[str]) -> str:
    """The idempotency key of a batched request carrying ``entry_ids`` (see ``request_of``)."""
    digest = hashlib.sha256("\n".join(entry_ids).encode()).hexdigest()[:16]
    return f"{idempotency_key(source, partition, entry_ids[0])}/{len(entry_ids)}/{digest}"


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str, *, now: float, tolerance: float = 300.0) -> bool:
    """Whether ``header`` (a Weir-Signature value) signs ``body`` under ``secret`` at a timestamp
    within ``tolerance`` seconds of ``now``: what a receiver checks (docs/delivery.md's recipe, in
    the chaos suite's receiver)."""
    try:
        parts = dict(part.strip().split("=", 1) for part in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), parts.get(SIGNATURE_VERSION, ""))


def signed_headers(*, secret: bytes, key: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt: content type, idempotency key, timestamp and signature."""
    return {
        "Content-Type": "application/json",
        KEY_HEADER: key,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"t={timestamp},{SIGNATURE_VERSION}={signature(secret, timestamp, body)}",
    }
