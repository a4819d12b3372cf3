"""Jetstream's compressed form: zstd frames made with a shared dictionary decode only with it.

Bluesky's published dictionary is not available offline, so a dictionary is trained here on
Jetstream-shaped messages; the mechanism (``atproto.zstd_dictionary`` -> JetstreamDecoder) is the same.
"""

from __future__ import annotations

import json

import pytest
import zstandard

from weir.codecs.atproto_firehose import FrameError
from weir.codecs.atproto_jetstream import JetstreamDecoder


def message(i: int) -> str:
    return json.dumps({
        "did": f"did:plc:user{i % 50:04d}", "time_us": 1_754_850_000_000_000 + i, "kind": "commit",
        "commit": {"rev": f"3l{i:011d}", "operation": "create", "collection": "app.bsky.feed.post",
                   "rkey": f"3k{i:011d}", "cid": f"bafyreib{i:040d}",
                   "record": {"$type": "app.bsky.feed.post", "text": f"post number {i}", "createdAt": "2026-08-10T00:00:00Z"}},
    })


@pytest.fixture(scope="module")
def dictionary() -> bytes:
    return zstandard.train_dictionary(4096, [message(i).encode() for i in range(2000)]).as_bytes()


def test_messages_compressed_with_the_dictionary_decode_with_it(dictionary: bytes) -> None:
    compressor = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
    decoder = JetstreamDecoder(dictionary=dictionary)
    for i in range(5000, 5010):
        decoded = decoder.decode(compressor.compress(message(i).encode()))
        assert decoded.kind == "commit" and decoded.time_us == 1_754_850_000_000_000 + i
        assert decoded.body["record"]["text"] == f"post number {i}"


def test_without_the_dictionary_the_message_is_a_clear_error(dictionary: bytes) -> None:
    compressor = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
    frame = compressor.compress(message(7).encode())
    with pytest.raises(FrameError, match="not a zstd frame this decoder can read"):
        JetstreamDecoder().decode(frame)
