"""Jetstream's compressed form: zstd frames made with a shared dictionary decode only with it.

A dictionary is trained here on Jetstream-shaped messages (Bluesky's published one is fetched from
the internet, which tests never reach); the mechanism is the same. The loader is exercised against
the simulator's HTTP endpoint and small local servers: fetched once, cached per URL, failures in one
line that names ``atproto.zstd_dictionary`` and the URL.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import zstandard

from weir.actors.atproto import (
    DictionaryUnavailable,
    ZstdDictionary,
    dictionary_cache_path,
    dictionary_source,
    load_zstd_dictionary,
)
from weir.codecs.atproto_firehose import FrameError
from weir.codecs.atproto_jetstream import JetstreamDecoder, dictionary_id
from weir.config import JETSTREAM_ZSTD_DICTIONARY_URL, load_config
from weir.sim.atproto import DICTIONARY_PATH, AtprotoSim
from weir.sim.atproto_data import DICTIONARY_ID, AtprotoSimConfig, jetstream_dictionary


def message(i: int) -> str:
    return json.dumps({
        "did": f"did:plc:user{i % 50:04d}", "time_us": 1_754_850_000_000_000 + i, "kind": "commit",
        "commit": {"rev": f"3l{i:011d}", "operation": "create", "collection": "app.bsky.feed.post",
                   "rkey": f"3k{i:011d}", "cid": f"bafyreib{i:040d}",
                   "record": {"$type": "app.bsky.feed.post", "text": f"post number {i}", "createdAt": "2026-08-10T00:00:00Z"}},
    })


@pytest.fixture(scope="module")
def dictionary() -> bytes:
    return zstandard.train_dictionary(4096, [message(i).encode() for i in range(2000)], dict_id=1234).as_bytes()


def compressed(dictionary: bytes, i: int) -> bytes:
    return zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(dictionary)).compress(message(i).encode())


def test_messages_compressed_with_the_dictionary_decode_with_it(dictionary: bytes) -> None:
    decoder = JetstreamDecoder(dictionary=dictionary)
    for i in range(5000, 5010):
        decoded = decoder.decode(compressed(dictionary, i))
        assert decoded.kind == "commit" and decoded.time_us == 1_754_850_000_000_000 + i
        assert decoded.body["record"]["text"] == f"post number {i}"


def test_without_the_dictionary_the_reason_names_the_id_the_frame_needs(dictionary: bytes) -> None:
    with pytest.raises(FrameError, match=r"compressed with dictionary id 1234, but no dictionary is loaded \(atproto.zstd_dictionary\)"):
        JetstreamDecoder().decode(compressed(dictionary, 7))


def test_a_frame_made_with_another_dictionary_names_both_ids(dictionary: bytes) -> None:
    other = zstandard.train_dictionary(4096, [message(i).encode() for i in range(3000, 5000)], dict_id=99).as_bytes()
    with pytest.raises(FrameError, match=r"compressed with dictionary id 1234, but the loaded one has id 99 \(atproto.zstd_dictionary\)"):
        JetstreamDecoder(dictionary=other).decode(compressed(dictionary, 7))
    with pytest.raises(FrameError, match="not a zstd frame this decoder can read"):  # not a mismatch: not zstd at all
        JetstreamDecoder(dictionary=other).decode(b"\x00\x01\x02\x03")


def test_dictionary_id_reads_the_header_and_refuses_anything_else(dictionary: bytes) -> None:
    assert dictionary_id(dictionary) == 1234
    assert dictionary_id(jetstream_dictionary()) == DICTIONARY_ID
    for junk in (b"", b"<!DOCTYPE html><html>404</html>", dictionary[4:]):
        with pytest.raises(ValueError, match="not a zstd dictionary"):
            dictionary_id(junk)


def test_the_simulator_dictionary_is_the_same_every_time() -> None:
    jetstream_dictionary.cache_clear()
    first = jetstream_dictionary()
    jetstream_dictionary.cache_clear()
    assert jetstream_dictionary() == first and len(first) == 16384


def settings(**overrides: str):
    return load_config(environ={}, overrides={f"atproto.{key}": value for key, value in overrides.items()}).atproto


def test_with_compression_and_no_dictionary_configured_the_published_one_is_used(tmp_path: Path) -> None:
    assert dictionary_source(settings(mode="jetstream", compress="true")) == JETSTREAM_ZSTD_DICTIONARY_URL
    assert JETSTREAM_ZSTD_DICTIONARY_URL == "https://raw.githubusercontent.com/bluesky-social/jetstream/main/pkg/models/zstd_dictionary"
    assert dictionary_source(settings(mode="jetstream", compress="true", zstd_dictionary="http://h/d")) == "http://h/d"
    path = tmp_path / "dict"
    path.write_bytes(b"x")
    assert dictionary_source(settings(mode="jetstream", compress="true", zstd_dictionary=str(path))) == str(path)
    assert dictionary_source(settings(mode="jetstream")) is None  # no compression: no dictionary
    assert dictionary_source(settings(mode="firehose", compress="true")) is None


def test_the_cache_is_keyed_by_url(tmp_path: Path) -> None:
    a = dictionary_cache_path(tmp_path, "https://example.org/a")
    assert a == dictionary_cache_path(tmp_path, "https://example.org/a") != dictionary_cache_path(tmp_path, "https://example.org/b")
    assert a.parent == tmp_path / "atproto"


# ----------------------------------------------------------------------------- fetching over HTTP


@asynccontextmanager
async def serving(sim: AtprotoSim) -> AsyncIterator[AtprotoSim]:
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve)
        yield sim
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def http_server(answer: bytes | None) -> AsyncIterator[str]:
    """A local server that sends ``answer`` to whatever it is asked (None: says nothing, ever)."""
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            if answer is None:
                await trio.sleep_forever()
            await stream.send_all(answer)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/zstd_dictionary"
        nursery.cancel_scope.cancel()


async def test_a_url_is_fetched_once_then_read_from_the_cache(tmp_path: Path) -> None:
    async with serving(AtprotoSim(AtprotoSimConfig(total=5))) as sim:
        first = await load_zstd_dictionary(sim.dictionary_url, tmp_path, timeout=5)
        assert first == sim.dictionary and sim.dictionary_fetches == 1
        assert dictionary_cache_path(tmp_path, sim.dictionary_url).read_bytes() == first
        # the next start (a new loader): from the cache, the server is not asked again
        assert await ZstdDictionary(sim.dictionary_url, tmp_path, timeout=5).get() == first
        assert sim.dictionary_fetches == 1
        # another URL is another cache entry
        assert await load_zstd_dictionary(sim.dictionary_url + "?v=2", tmp_path, timeout=5) == first
        assert sim.dictionary_fetches == 2
        assert len(list((tmp_path / "atproto").iterdir())) == 2


async def test_a_redirect_is_followed(tmp_path: Path) -> None:
    async with serving(AtprotoSim(AtprotoSimConfig(total=5))) as sim:
        moved = b"HTTP/1.1 302 Found\r\nLocation: %b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % sim.dictionary_url.encode()
        async with http_server(moved) as url:
            assert await load_zstd_dictionary(url, tmp_path, timeout=5) == sim.dictionary
        assert sim.dictionary_fetches == 1 and dictionary_cache_path(tmp_path, url).exists()  # cached under the configured URL


async def test_a_damaged_cache_entry_is_fetched_again(tmp_path: Path) -> None:
    async with serving(AtprotoSim(AtprotoSimConfig(total=5))) as sim:
        cached = dictionary_cache_path(tmp_path, sim.dictionary_url)
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"truncated")
        assert await load_zstd_dictionary(sim.dictionary_url, tmp_path, timeout=5) == sim.dictionary
        assert sim.dictionary_fetches == 1 and cached.read_bytes() == sim.dictionary


async def test_a_loader_fetches_once_however_often_it_is_asked(tmp_path: Path) -> None:
    async with serving(AtprotoSim(AtprotoSimConfig(total=5))) as sim:
        loader = ZstdDictionary(sim.dictionary_url, tmp_path, timeout=5)
        dictionary_cache_path(tmp_path, sim.dictionary_url).unlink(missing_ok=True)
        assert await loader.get() == await loader.get() == sim.dictionary
        dictionary_cache_path(tmp_path, sim.dictionary_url).unlink()
        assert await loader.get() == sim.dictionary and sim.dictionary_fetches == 1  # kept in memory


async def test_a_missing_dictionary_is_one_line_naming_the_setting_and_the_url(tmp_path: Path) -> None:
    async with serving(AtprotoSim(AtprotoSimConfig(total=5))) as sim:
        url = sim.dictionary_url.replace(DICTIONARY_PATH, "/no/such/dictionary")
        with pytest.raises(DictionaryUnavailable) as caught:
            await load_zstd_dictionary(url, tmp_path, timeout=5)
    assert str(caught.value) == f"atproto.zstd_dictionary: cannot fetch {url}: HTTP 404 Not Found"
    assert not (tmp_path / "atproto").exists()


async def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with trio.socket.socket() as probe:  # a port nothing listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/zstd_dictionary"
    with pytest.raises(DictionaryUnavailable, match=rf"^atproto.zstd_dictionary: cannot fetch {url}: .*[Rr]efused"):
        await load_zstd_dictionary(url, tmp_path, timeout=5)


async def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    async with http_server(None) as url:
        start = trio.current_time()
        with pytest.raises(DictionaryUnavailable, match=rf"^atproto.zstd_dictionary: cannot fetch {url}: no answer within 0.5s$"):
            await load_zstd_dictionary(url, tmp_path, timeout=0.5)
        assert trio.current_time() - start < 5


async def test_a_body_that_is_no_dictionary_is_refused_and_not_cached(tmp_path: Path) -> None:
    page = b"<!DOCTYPE html><html>rate limited</html>"
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(page), page)
    async with http_server(answer) as url:
        with pytest.raises(DictionaryUnavailable, match=rf"^atproto.zstd_dictionary: {url} did not return a zstd dictionary: "):
            await load_zstd_dictionary(url, tmp_path, timeout=5)
    assert not dictionary_cache_path(tmp_path, url).exists()


async def test_a_path_is_read_as_it_is(tmp_path: Path, dictionary: bytes) -> None:
    path = tmp_path / "zstd_dictionary"
    path.write_bytes(dictionary)
    assert await load_zstd_dictionary(str(path), tmp_path / "cache", timeout=5) == dictionary
    assert not (tmp_path / "cache").exists()  # files are not cached
    with pytest.raises(DictionaryUnavailable, match=r"^atproto.zstd_dictionary: cannot read '.*missing': No such file"):
        await load_zstd_dictionary(str(tmp_path / "missing"), tmp_path, timeout=5)
