"""Sans-IO decoding of Jetstream messages (the AT Protocol firehose re-served as JSON).

A message is a JSON object ``{did, time_us, kind: commit|identity|account, commit|identity|account:
{…}}``; with ``compress=true`` each WebSocket message is a zstd frame made with a shared dictionary
(Bluesky publishes its servers' one; the connection actor loads it, :class:`JetstreamDecoder` only
uses it). Errors are :class:`~weir.codecs.atproto_firehose.FrameError`, like the firehose's, with
``seq`` = ``time_us`` when it could be read.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import attrs
import zstandard

from weir.codecs.atproto_cbor import MAX_DEPTH
from weir.codecs.atproto_firehose import (
    ACTIONS,
    KEEP_ALL,
    HEAD_BYTES,
    MAX_FRAME_BYTES,
    FrameError,
    OverLimit,
    RecordFilter,
)

_KINDS = ("commit", "identity", "account")
_TIME_US = re.compile(rb'"time_us"\s*:\s*(\d{1,30})[\s,}]')
HEAD_TEXT_BYTES = 4096  # of a compressed message too large to keep: decompressed to find its time_us
ZSTD_DICTIONARY_MAGIC = b"\x37\xa4\x30\xec"  # 0xEC30A437 little-endian: a zstd dictionary with a header


def dictionary_id(data: bytes) -> int:
    """The id of a zstd dictionary (from its header); ValueError if ``data`` is not one.

    Only dictionaries with a header are accepted: a fetched error page must not pass as raw content.
    """
    if len(data) < 8 or data[:4] != ZSTD_DICTIONARY_MAGIC:
        raise ValueError(f"not a zstd dictionary ({len(data)} bytes starting {data[:8].hex() or 'with nothing'})")
    return int.from_bytes(data[4:8], "little")


def _deeper_than(doc: Any, limit: int) -> bool:
    """Whether a value of ``doc`` (a JSON document, ``doc`` itself at depth 0) lies deeper than ``limit``."""
    stack = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    return False


@attrs.frozen(slots=True, kw_only=True)
class JetstreamMessage:
    """A decoded Jetstream message.

    Attributes:
        kind: ``commit``, ``identity``, ``account`` or ``unknown``.
        time_us: Jetstream's cursor (unix microseconds).
        did: the repository.
        body: the kind's object (``commit`` / ``identity`` / ``account``).
        wanted: False when the filter rejects it.
    """

    kind: str
    time_us: int
    did: str = ""
    body: dict[str, Any] = attrs.field(factory=dict)
    wanted: bool = True


@attrs.define(eq=False)
class JetstreamDecoder:
    """Decodes Jetstream messages (text, or zstd-compressed binary), keeping what ``keep`` wants."""

    keep: RecordFilter = KEEP_ALL
    dictionary: bytes | None = None
    max_frame: int = MAX_FRAME_BYTES
    _zstd: Any = None

    def decode(self, message: str | bytes) -> JetstreamMessage:
        """Raises FrameError for anything that is not a well-formed Jetstream event."""
        if isinstance(message, bytes):
            message = self._decompress(message)  # checks the decompressed size in bytes
        elif len(message) * 4 > self.max_frame:  # UTF-8 takes at most 4 bytes a character: count them only near the limit
            size = len(message.encode(errors="surrogatepass"))
            if size > self.max_frame:
                raise OverLimit(f"message of {size} bytes exceeds the {self.max_frame}-byte limit (atproto.max_frame_bytes)",
                                time_us_of_head(message[:HEAD_BYTES].encode(errors="surrogatepass")))
        try:
            doc = json.loads(message)
        except (ValueError, RecursionError) as exc:
            raise FrameError(f"message is not JSON: {str(exc)[:120]}") from None
        if not isinstance(doc, dict):
            raise FrameError("message is not a JSON object")
        # Persisting re-encodes the body (cbor.from_json, json.dumps: recursive), where a body json.loads took
        # ~500 deep raised RecursionError in the actor, for ever. Few messages hold enough brackets to be checked.
        if message.count("[") + message.count("{") > MAX_DEPTH and _deeper_than(doc, MAX_DEPTH + 1):
            raise FrameError(f"message nested deeper than {MAX_DEPTH} levels below its {doc.get('kind')!r:.40} object")
        time_us = doc.get("time_us")
        if not isinstance(time_us, int) or isinstance(time_us, bool) or time_us <= 0:
            raise FrameError("message has no valid time_us")
        kind = doc.get("kind")
        if kind not in _KINDS:
            return JetstreamMessage(kind="unknown", time_us=time_us)
        did = doc.get("did")
        if not isinstance(did, str) or not did.startswith("did:"):
            raise FrameError(f"{kind} at time_us {time_us}: no valid DID", time_us)
        body = doc.get(kind)
        if not isinstance(body, dict):
            raise FrameError(f"{kind} at time_us {time_us}: no {kind} object", time_us)
        if not self.keep.wants_repo(kind, did):
            return JetstreamMessage(kind=kind, time_us=time_us, did=did, wanted=False)
        if kind == "commit":
            action, collection, rkey, rev = (body.get(k) for k in ("operation", "collection", "rkey", "rev"))
            if not isinstance(action, str) or action not in ACTIONS:  # a list or object is unhashable: test the type first
                raise FrameError(f"commit at time_us {time_us}: operation {action!r:.100}", time_us)
            if not (isinstance(collection, str) and collection and isinstance(rkey, str) and rkey and isinstance(rev, str) and rev):
                raise FrameError(f"commit at time_us {time_us}: collection, rkey or rev missing", time_us)
            if action != "delete" and not (isinstance(body.get("cid"), str) and isinstance(body.get("record"), dict)):
                raise FrameError(f"commit at time_us {time_us}: {action} without cid and record", time_us)
            if not self.keep.wants_op(action, collection):
                return JetstreamMessage(kind=kind, time_us=time_us, did=did, wanted=False)
        return JetstreamMessage(kind=kind, time_us=time_us, did=did, body=body)

    def _decompress(self, data: bytes) -> str:
        if self._zstd is None:
            dictionary = zstandard.ZstdCompressionDict(self.dictionary) if self.dictionary else None
            self._zstd = zstandard.ZstdDecompressor(dict_data=dictionary) if dictionary else zstandard.ZstdDecompressor()
        try:
            size = zstandard.get_frame_parameters(data).content_size
        except zstandard.ZstdError as exc:  # not even a zstd frame header
            raise FrameError(self._unreadable(data, exc)) from None
        if size == zstandard.CONTENTSIZE_UNKNOWN:
            raw = self._decompress_streamed(data)
        elif size > self.max_frame:
            # decompress() allocates the declared size whatever max_output_size says: refuse it unread
            raise OverLimit(f"zstd frame declares {size} bytes, over the {self.max_frame}-byte limit (atproto.max_frame_bytes)",
                            time_us_of_head(data[:HEAD_BYTES], self.dictionary))
        else:
            try:
                raw = self._zstd.decompress(data)  # zstd fails the frame if its content is not the declared size
            except Exception as exc:  # zstandard.ZstdError and friends
                raise FrameError(self._unreadable(data, exc)) from None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise FrameError("decompressed message is not UTF-8") from None

    def _decompress_streamed(self, data: bytes) -> bytearray:
        """A frame that does not declare its size, fed in slices so the output stops near ``max_frame``.

        A zstd block (4 bytes at least) yields at most 128 KiB, so a slice of n bytes yields at most about
        n * 32 KiB: slices are sized to what is left of the limit, so the output passes it by 384 KiB at most.
        """
        stream = self._zstd.decompressobj()
        raw = bytearray()
        start = 0
        while not stream.eof and start < len(data):
            end = start + max(8, (self.max_frame - len(raw)) // 32768)
            try:
                raw += stream.decompress(data[start:end])
            except Exception as exc:  # zstandard.ZstdError and friends
                raise FrameError(self._unreadable(data, exc)) from None
            if len(raw) > self.max_frame:
                raise OverLimit(f"zstd frame (size not declared) decompresses to more than the {self.max_frame}-byte limit "
                                "(atproto.max_frame_bytes)", time_us_of_head(bytes(raw[:HEAD_BYTES])))
            start = end
        if not stream.eof:
            raise FrameError(f"zstd frame is truncated (size not declared, {len(data)} bytes)")
        return raw

    def _unreadable(self, data: bytes, exc: Exception) -> str:
        """Why a binary message did not decompress: a dictionary mismatch is named by its ids."""
        try:
            wanted = zstandard.get_frame_parameters(data).dict_id
        except zstandard.ZstdError:  # not even a zstd frame header
            wanted = 0
        loaded = zstandard.ZstdCompressionDict(self.dictionary).dict_id() if self.dictionary else None
        if wanted and wanted != loaded:
            have = "no dictionary is loaded" if loaded is None else f"the loaded one has id {loaded}"
            return f"zstd frame was compressed with dictionary id {wanted}, but {have} (atproto.zstd_dictionary)"
        return f"binary message is not a zstd frame this decoder can read: {str(exc)[:120]}"


def time_us_of_head(head: bytes, dictionary: bytes | None = None) -> int | None:
    """The ``time_us`` of a message from its first bytes only (a message too large to keep whole),
    or None. Jetstream writes ``time_us`` right after ``did``; a zstd message's head is decompressed
    as far as it goes, to at most :data:`HEAD_TEXT_BYTES`."""
    if head[:4] == b"\x28\xb5\x2f\xfd":  # a zstd frame
        decompressor = (zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary)) if dictionary
                        else zstandard.ZstdDecompressor())
        text = bytearray()
        try:
            with decompressor.stream_reader(io.BytesIO(head)) as reader:
                while len(text) < HEAD_TEXT_BYTES and (piece := reader.read(HEAD_TEXT_BYTES - len(text))):
                    text += piece
        except zstandard.ZstdError:
            pass  # the head ends mid-frame: what came out so far is what there is
        head = bytes(text)
    match = _TIME_US.search(head, 0, HEAD_TEXT_BYTES)
    if match is None:
        return None
    value = int(match.group(1))
    return value if value > 0 else None
