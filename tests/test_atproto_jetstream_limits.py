"""Jetstream's byte limit holds for zstd messages before they are decompressed, not after.

A zstd frame may declare its content size (then python-zstandard allocates that much, whatever
``max_output_size`` says) or not (then it is decompressed in slices). Either way a small frame that
expands to far more than ``max_frame`` is refused with a one-line reason, quickly, and without the
memory: tracemalloc sees the bytes objects python-zstandard allocates.
"""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest
import zstandard

from weir.codecs.atproto_firehose import FrameError
from weir.codecs.atproto_jetstream import JetstreamDecoder

LIMIT = 1_000_000
BOMB = 50_000_000


def message(i: int, text: str = "") -> bytes:
    return json.dumps({
        "did": f"did:plc:user{i % 50:04d}", "time_us": 1_754_850_000_000_000 + i, "kind": "commit",
        "commit": {"rev": f"3l{i:011d}", "operation": "create", "collection": "app.bsky.feed.post",
                   "rkey": f"3k{i:011d}", "cid": f"bafyreib{i:040d}",
                   "record": {"$type": "app.bsky.feed.post", "text": text or f"post number {i}", "createdAt": "2026-08-10T00:00:00Z"}},
    }).encode()


def compress(data: bytes, *, declared: bool, dictionary: bytes | None = None) -> bytes:
    kw = {"dict_data": zstandard.ZstdCompressionDict(dictionary)} if dictionary else {}
    return zstandard.ZstdCompressor(write_content_size=declared, **kw).compress(data)


@pytest.fixture(scope="module")
def dictionary() -> bytes:
    return zstandard.train_dictionary(4096, [message(i) for i in range(2000)], dict_id=4321).as_bytes()


@pytest.fixture(scope="module")
def bombs() -> dict[bool, bytes]:
    zeros = bytes(BOMB)
    return {declared: compress(zeros, declared=declared) for declared in (True, False)}


def refuse(frame: bytes) -> tuple[str, float, int]:
    """The reason, the seconds it took and the peak of Python allocations while refusing ``frame``."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(FrameError) as refused:
            JetstreamDecoder(max_frame=LIMIT).decode(frame)
        return str(refused.value), time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_frame_declaring_a_huge_size_is_refused_before_decompressing(bombs: dict[bool, bytes]) -> None:
    frame = bombs[True]
    assert len(frame) < 5000 and zstandard.get_frame_parameters(frame).content_size == BOMB
    reason, seconds, peak = refuse(frame)
    assert reason == f"zstd frame declares {BOMB} bytes, over the {LIMIT}-byte limit (atproto.max_frame_bytes)"
    assert seconds < 1 and peak < 100_000  # nothing was decompressed


def test_a_frame_not_declaring_its_size_stops_near_the_limit(bombs: dict[bool, bytes]) -> None:
    frame = bombs[False]
    assert len(frame) < 5000 and zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    reason, seconds, peak = refuse(frame)
    assert reason == f"zstd frame (size not declared) decompresses to more than the {LIMIT}-byte limit (atproto.max_frame_bytes)"
    assert seconds < 1 and peak < 3 * LIMIT  # the output so far and the last slice's, not 50 MB


@pytest.mark.parametrize("declared", [True, False], ids=["size-declared", "size-not-declared"])
@pytest.mark.parametrize("with_dictionary", [True, False], ids=["dictionary", "no-dictionary"])
def test_normal_messages_decode(dictionary: bytes, declared: bool, with_dictionary: bool) -> None:
    used = dictionary if with_dictionary else None
    decoder = JetstreamDecoder(dictionary=used)
    for i in range(5000, 5010):
        decoded = decoder.decode(compress(message(i), declared=declared, dictionary=used))
        assert decoded.kind == "commit" and decoded.body["record"]["text"] == f"post number {i}"


@pytest.mark.parametrize("declared", [True, False], ids=["size-declared", "size-not-declared"])
def test_the_limit_is_exact(declared: bool) -> None:
    raw = message(7, "x" * 3000)
    frame = compress(raw, declared=declared)
    assert JetstreamDecoder(max_frame=len(raw)).decode(frame).time_us == 1_754_850_000_000_007
    with pytest.raises(FrameError, match=f"over the {len(raw) - 1}-byte limit|more than the {len(raw) - 1}-byte limit"):
        JetstreamDecoder(max_frame=len(raw) - 1).decode(frame)


def test_a_large_message_not_declaring_its_size_decodes_across_many_slices() -> None:
    text = " ".join(f"word{i * 7919 % 100_003}" for i in range(300_000))  # ~3 MB, compresses about 3:1
    raw = message(9, text)
    frame = compress(raw, declared=False)
    assert len(frame) > 100_000
    assert JetstreamDecoder().decode(frame).body["record"]["text"] == text


def test_a_streamed_frame_keeps_the_dictionary_mismatch_reason(dictionary: bytes) -> None:
    frame = compress(message(3), declared=False, dictionary=dictionary)
    with pytest.raises(FrameError, match=r"compressed with dictionary id 4321, but no dictionary is loaded \(atproto.zstd_dictionary\)"):
        JetstreamDecoder().decode(frame)


def test_a_truncated_streamed_frame_is_refused() -> None:
    frame = compress(message(3, "y" * 5000), declared=False)
    with pytest.raises(FrameError, match="zstd frame is truncated"):
        JetstreamDecoder().decode(frame[:-4])
