"""The firehose frame decoder as it was before the session-8 tuning (main at db35a48), kept verbatim
as the oracle of tests/test_fuzz_decoders.py: the tuned ``decode_frame`` must give the same frame or
the same error on every input. Only imports changed (the shared pieces come from weir).
"""

from __future__ import annotations

from typing import Any

import attrs
import libipld

from weir.codecs.atproto_cbor import CborError, decode_prefix, index_car, verify_block
from weir.codecs.atproto_firehose import (
    _KIND_BY_TYPE,
    ACTIONS,
    HEAD_BYTES,
    KEEP_ALL,
    MAX_BLOCKS_BYTES,
    MAX_FRAME_BYTES,
    MAX_OPS,
    FrameError,
    OverLimit,
    RecordFilter,
    _short,
    seq_of_head,
)


@attrs.frozen(slots=True, kw_only=True)
class RecordOp:
    """One op of a commit that passed the filter. ``index`` is its place in the commit's ops."""

    index: int
    action: str
    collection: str
    rkey: str
    cid: bytes | None  # binary CID; None for a delete
    record: bytes | None  # the record block (original DAG-CBOR); None for a delete


@attrs.frozen(slots=True, kw_only=True)
class Frame:
    """A decoded frame.

    Attributes:
        kind: ``commit``, ``identity``, ``account``, ``sync``, ``info``, ``error`` or ``unknown``.
        type: the header's ``t`` as sent (``#commit`` …), or the error name for ``error``.
        seq: the body's seq (None for info, error and unknown frames).
        did: the repository (commit ``repo``, else ``did``).
        time: the body's ``time`` string.
        rev: the commit's / sync's rev.
        ops: the commit ops that passed the filter (all of them with no filter).
        total_ops: how many ops the commit has.
        body: the decoded body (libipld form: CIDs as bytes); for info/error frames, its fields.
        body_offset: where the body starts in the frame (the body's original bytes are frame[body_offset:]).
        wanted: False when the filter rejects the whole event (then ops is empty).
    """

    kind: str
    type: str
    seq: int | None = None
    did: str = ""
    time: str = ""
    rev: str = ""
    ops: tuple[RecordOp, ...] = ()
    total_ops: int = 0
    body: dict[str, Any] = attrs.field(factory=dict)
    body_offset: int = 0
    wanted: bool = True


def _wants_op_before(keep: RecordFilter, action: str, collection: str) -> bool:
    """RecordFilter.wants_op and wants_collection as they were."""
    if not (keep.collections or keep.prefixes):
        wanted = True
    else:
        wanted = collection in keep.collections or collection.startswith(keep.prefixes)
    return (not keep.actions or action in keep.actions) and wanted


def decode_frame_before(
    frame: bytes,
    *,
    keep: RecordFilter = KEEP_ALL,
    max_frame: int = MAX_FRAME_BYTES,
    max_blocks: int = MAX_BLOCKS_BYTES,
    max_ops: int = MAX_OPS,
) -> Frame:
    """Decode one firehose frame, keeping only what ``keep`` wants.

    Raises:
        FrameError: the frame is malformed or over a limit (message says which and where).
    """
    if len(frame) > max_frame:
        raise OverLimit(f"frame of {len(frame)} bytes exceeds the {max_frame}-byte limit (atproto.max_frame_bytes)", seq_of_head(frame[:HEAD_BYTES]))
    try:
        values = libipld.decode_dag_cbor_multi(frame)
    except BaseException as exc:  # libipld raises ValueError; a Rust panic surfaces as a BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise FrameError(f"frame is not DAG-CBOR: {_short(exc)}") from None
    if len(values) != 2:
        raise FrameError(f"frame holds {len(values)} DAG-CBOR values, expected 2 (header, body)")
    header, body = values
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise FrameError("frame header or body is not a map")
    op = header.get("op")
    if op == -1:
        error = body.get("error")
        message = body.get("message")
        return Frame(
            kind="error",
            type=error if isinstance(error, str) else "unknown error",
            body={"error": error, "message": message if isinstance(message, str) else ""},
        )
    if op != 1:
        raise FrameError(f"frame header op is {op!r}, expected 1 or -1")
    type_ = header.get("t")
    if not isinstance(type_, str):
        raise FrameError("frame header has no string 't'")
    kind = _KIND_BY_TYPE.get(type_)
    if kind is None:
        return Frame(kind="unknown", type=type_)
    if kind == "info":
        name, message = body.get("name"), body.get("message")
        return Frame(kind="info", type=type_, body={"name": name if isinstance(name, str) else "", "message": message if isinstance(message, str) else ""})
    seq = body.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise FrameError(f"{type_} body has no valid seq")
    did = body.get("repo" if kind == "commit" else "did")
    if not isinstance(did, str) or not did.startswith("did:"):
        raise FrameError(f"{type_} seq {seq}: no valid DID", seq)
    time = body.get("time")
    if not isinstance(time, str):
        raise FrameError(f"{type_} seq {seq}: no time string", seq)
    rev = body.get("rev", "")
    if kind in ("commit", "sync") and (not isinstance(rev, str) or not rev):
        raise FrameError(f"{type_} seq {seq}: no rev", seq)
    common = dict(kind=kind, type=type_, seq=seq, did=did, time=time, rev=rev if isinstance(rev, str) else "", body=body)
    if not keep.wants_repo(kind, did):
        return Frame(**common, wanted=False)
    if kind != "commit":
        try:
            _, common["body_offset"] = decode_prefix(frame, 0)  # the header is ~20 bytes
        except CborError as exc:
            raise FrameError(f"{type_} seq {seq}: header: {exc}", seq) from None
        if kind == "sync" and not isinstance(body.get("blocks"), bytes):
            raise FrameError(f"#sync seq {seq}: blocks is not bytes", seq)
        return Frame(**common)
    return _decode_commit(frame, body, keep, common, max_blocks, max_ops)


def _decode_commit(frame: bytes, body: dict[str, Any], keep: RecordFilter, common: dict[str, Any], max_blocks: int, max_ops: int) -> Frame:
    seq = common["seq"]
    ops = body.get("ops")
    blocks = body.get("blocks")
    if not isinstance(ops, list):
        raise FrameError(f"#commit seq {seq}: ops is not a list", seq)
    if not isinstance(blocks, bytes):
        raise FrameError(f"#commit seq {seq}: blocks is not bytes", seq)
    if len(ops) > max_ops:
        raise OverLimit(f"#commit seq {seq}: {len(ops)} ops exceed the limit of {max_ops} (atproto.max_ops)", seq)
    if len(blocks) > max_blocks:
        raise OverLimit(f"#commit seq {seq}: blocks of {len(blocks)} bytes exceed the {max_blocks}-byte limit (atproto.max_blocks_bytes)", seq)
    kept: list[tuple[int, str, str, str, bytes | None]] = []
    filtering = keep.filters_ops
    for index, op in enumerate(ops):
        if filtering:  # cheap look at the path first: ops the filter drops are not validated further
            try:
                path = op["path"]
                collection = path[: path.index("/")]
                if not _wants_op_before(keep, op["action"], collection):
                    continue
            except (TypeError, KeyError, ValueError, AttributeError):
                pass  # malformed: the checks below say how
        if not isinstance(op, dict):
            raise FrameError(f"#commit seq {seq}: op {index} is not a map", seq)
        action, path, cid = op.get("action"), op.get("path"), op.get("cid")
        if not isinstance(action, str) or action not in ACTIONS:  # a list or map is unhashable: test the type first
            raise FrameError(f"#commit seq {seq}: op {index} has action {action!r:.100}", seq)
        if not isinstance(path, str):
            raise FrameError(f"#commit seq {seq}: op {index} has no path", seq)
        collection, slash, rkey = path.partition("/")
        if not slash or not collection or not rkey or "/" in rkey:
            raise FrameError(f"#commit seq {seq}: op {index} path {path[:100]!r} is not collection/rkey", seq)
        if action == "delete":
            cid = None
        elif not isinstance(cid, bytes):
            raise FrameError(f"#commit seq {seq}: op {index} ({action} {path[:100]}) has no CID", seq)
        if not filtering or _wants_op_before(keep, action, collection):
            kept.append((index, action, collection, rkey, cid))
    records: list[RecordOp] = []
    spans: dict[bytes, tuple[int, int]] | None = None  # the CAR's index, walked once if find_block fails
    for index, action, collection, rkey, cid in kept:
        record = None
        if cid is not None:
            record = find_block_before(blocks, cid)
            if record is None:  # a broken CAR, a missing block, a bad hash, or find_block gave up: walk the CAR
                if spans is None:
                    try:
                        spans = index_car(blocks)
                    except (CborError, ValueError) as exc:
                        raise FrameError(f"#commit seq {seq}: blocks: {_short(exc)}", seq) from None
                span = spans.get(cid)
                if span is None:
                    raise FrameError(f"#commit seq {seq}: op {index} ({collection}/{rkey}): record block not in the CAR", seq)
                record = blocks[span[0] : span[1]]
                problem = verify_block(cid, record)
                if problem is not None:
                    raise FrameError(f"#commit seq {seq}: op {index} ({collection}/{rkey}): {problem}", seq)
        records.append(RecordOp(index=index, action=action, collection=collection, rkey=rkey, cid=cid, record=record))
    return Frame(**common, ops=tuple(records), total_ops=len(ops))


def find_block_before(car: bytes, cid: bytes) -> bytes | None:
    """The block of ``cid`` in ``car`` if it is there and its sha-256 matches, else None.

    Fast path for a few lookups in a small CAR: find the CID's bytes where a block section could
    start (a varint section length right before them, the section inside the data) and accept the
    section only if the block hashes to the CID. Content addressing makes a false match
    impossible, so the rest of the CAR need not be walked. A None answer is followed by
    :func:`index_car`, which finds the block or says precisely what is wrong.

    At most ``len(car)`` bytes are hashed in all: a CAR that repeats the CID behind long section
    lengths would otherwise cost a hash of up to the whole CAR per repetition (2 MB of them took
    15 s); past that budget the answer is None and the linear walk of :func:`index_car` decides.
    """
    size = len(car)
    width = len(cid)
    budget = size
    at = car.find(cid)
    while at > 0:
        for back in (1, 2, 3):
            start = at - back
            if start < 0:
                break
            length = 0
            for shift, byte in enumerate(car[start:at]):
                length |= (byte & 0x7F) << (7 * shift)
                if byte < 0x80 and shift != back - 1:
                    length = -1
                    break
            if length <= width or car[at - 1] >= 0x80 or start + back + length > size:
                continue
            budget -= length - width
            if budget < 0:
                return None
            block = car[at + width : at + length]
            if verify_block(cid, block) is None:
                return block
        at = car.find(cid, at + 1)
    return None


