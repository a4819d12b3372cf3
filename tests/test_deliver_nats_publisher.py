"""weir's publish-only NATS client (weir/deliver/nats_publisher.py) against a real nats-server: the
paths the delivery tests (tests/test_deliver_nats_e2e.py) do not take — a refused password, a
duplicate acknowledged, a subject no stream takes, TLS, a connection replaced after idling."""

from __future__ import annotations

import ssl

import nats
import pytest
import trustme

from tests.nats_server import NatsServer, running_nats
from weir.bridge import call_asyncio
from weir.deliver.nats_messages import Message
from weir.deliver.nats_publisher import IDLE_REFRESH, NatsPublisher

pytestmark = pytest.mark.integration


def window(subject: str = "weir.farcaster.1.MERGE_MESSAGE", count: int = 50) -> list[Message]:
    return [Message(subject=subject, payload=b"x" * n, headers={"Nats-Msg-Id": f"farcaster/1/{n}-0", "Weir-kind": "k"})
            for n in range(count)]


async def stream_messages(url: str, **options: object) -> int:
    """Creates the stream WEIR (weir.>) if it is not there; its message count."""

    async def count() -> int:
        client = await nats.connect(url, **options)
        try:
            js = client.jetstream()
            await js.add_stream(name="WEIR", subjects=["weir.>"])
            return (await js.stream_info("WEIR")).state.messages
        finally:
            await client.close()

    return await call_asyncio(count)


async def test_a_refused_password_is_said_redacted_and_a_duplicate_is_acknowledged_like_a_store(asyncio_loop, tmp_path):
    async with running_nats(tmp_path, user="weir", password="s3cret-Pa55") as server:
        await stream_messages(server.url)
        wrong = NatsPublisher(server.url.replace("s3cret-Pa55", "wr0ng-Pa55"), name="t", ack_timeout=5)
        failed, reason = await wrong.settle(await wrong.send(window()))
        assert len(failed) == 50 and "Authorization Violation" in reason and "Pa55" not in reason

        publisher = NatsPublisher(server.url, name="t", ack_timeout=5)
        try:
            for _ in range(2):  # stored, then the same Msg-Ids again: JetStream's duplicates
                failed, reason = await publisher.settle(await publisher.send(window()))
                assert (failed, reason) == ([], "")
            assert await stream_messages(server.url) == 50

            elsewhere = window("elsewhere.x", count=3)  # no stream takes it: told at once, not after ack_timeout
            failed, reason = await publisher.settle(await publisher.send(elsewhere))
            assert failed == elsewhere and "no stream takes the subject" in reason
        finally:
            await publisher.aclose()


async def test_tls_when_the_server_requires_it(asyncio_loop, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    server = NatsServer(store=tmp_path / "js", log_path=tmp_path / "nats.log", tls=(tmp_path / "cert.pem", tmp_path / "key.pem"))
    async with running_nats(tmp_path, server=server):
        await stream_messages(server.url, tls=trusting)
        untrusting = NatsPublisher(server.url, name="t", ack_timeout=5)
        failed, reason = await untrusting.settle(await untrusting.send(window()))
        assert len(failed) == 50 and "CERTIFICATE_VERIFY_FAILED" in reason
        publisher = NatsPublisher(server.url.replace("nats://", "tls://"), name="t", ack_timeout=5, ssl_context=trusting)
        try:
            assert await publisher.settle(await publisher.send(window())) == ([], "")
        finally:
            await publisher.aclose()
        assert await stream_messages(server.url, tls=trusting) == 50


async def test_a_connection_idle_too_long_is_replaced_before_the_next_window(asyncio_loop, tmp_path):
    now = [0.0]
    async with running_nats(tmp_path) as server:
        await stream_messages(server.url)
        publisher = NatsPublisher(server.url, name="t", ack_timeout=5, clock=lambda: now[0])
        try:
            sent = await publisher.send(window(count=5))
            assert await publisher.settle(sent) == ([], "")
            now[0] += IDLE_REFRESH + 1
            later = await publisher.send(window(count=10))
            assert later.connection is not sent.connection
            assert await publisher.settle(later) == ([], "")
        finally:
            await publisher.aclose()
        assert await stream_messages(server.url) == 10
