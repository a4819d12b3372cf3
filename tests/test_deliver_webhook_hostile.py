"""A hostile or broken webhook endpoint, over a real socket: a raw HTTP/1.1 server on 127.0.0.1
answers with bytes scripted here. Nothing it sends is decompressed (a small compressed answer
must not expand in memory), a bad answer is a retry rather than a crash, and once a 2xx head is
in, a body that stalls or breaks does not turn the delivery into a failure.
"""

from __future__ import annotations

import gzip
import json
import random

import pytest
import trio

from weir.config import load_config
from weir.deliver.webhook import Endpoint, WebhookTarget
from weir.deliver.webhook_outcome import Verdict

pytestmark = pytest.mark.integration

STALL, CLOSE = "stall", "close"


async def serve_once(listener: trio.SocketListener, answer: bytes, after: str, heads: list[bytes]) -> None:
    """Read one request, write ``answer``, then stall or close."""
    stream = await listener.accept()
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(body) < length:
            body += await stream.receive_some(65536)
        heads.append(head)
        await stream.send_all(answer)
        if after == STALL:
            await trio.sleep_forever()


async def post_against(answer: bytes, after: str = CLOSE, timeout: float = 1.0):
    """The outcome of one signed POST to a server that answers ``answer``; the request's head."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    pipe = load_config(environ={}, overrides={"deliver.pipelines": json.dumps([{
        "source": "farcaster", "target": "webhook", "url": f"http://127.0.0.1:{port}/hook", "secret": "SECRET-k",
        "timeout": timeout}])}).deliver.pipelines[0]
    target = WebhookTarget(Endpoint(pipe, "hook"), source="farcaster", partition="1", offer_within=5.0,
                           rng=random.Random(1))
    heads: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_once, listeners[0], answer, after, heads)
        await target.recover()
        with trio.fail_after(timeout + 5):
            outcome = await target._post("farcaster/1/5-0", b'{"id": "farcaster/1/5-0"}')
        nursery.cancel_scope.cancel()
    await target.aclose()
    for listener in listeners:
        await listener.aclose()
    return outcome, heads[0]


async def test_a_compressed_refusal_is_never_expanded():
    bomb = gzip.compress(b"A" * 50_000_000)  # ~50 kB on the wire, 50 MB once expanded
    answer = b"HTTP/1.1 400 Bad Request\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(bomb), bomb)
    outcome, head = await post_against(answer)
    assert outcome.verdict is Verdict.REFUSED and outcome.reason.startswith("HTTP 400")
    assert "AAAA" not in outcome.reason  # the reason quotes the bytes as sent, never the expansion
    assert b"accept-encoding: identity" in head.lower()


async def test_an_answer_that_says_gzip_over_plain_bytes_is_still_an_answer():
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nplain"
    outcome, _ = await post_against(answer)
    assert outcome.verdict is Verdict.DELIVERED


@pytest.mark.parametrize("after", [STALL, CLOSE])
async def test_a_2xx_whose_body_stalls_or_breaks_is_delivered(after):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok"
    outcome, _ = await post_against(answer, after=after, timeout=0.5)
    assert outcome.verdict is Verdict.DELIVERED


async def test_a_malformed_answer_is_retried_not_raised():
    outcome, _ = await post_against(b"NOT HTTP AT ALL\r\n\r\n")
    assert outcome.verdict is Verdict.RETRY
