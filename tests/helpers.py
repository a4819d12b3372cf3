"""Helpers for the end-to-end tests: condition waits, reading what weir persisted, exact comparisons."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from weir.app import Service, serve
from weir.config import Config, load_config
from weir.logs import JsonFormatter
from weir.sim.farcaster_data import SnapchainSimConfig, generate_offered
from weir.sim.in_process import open_snapchain_sim_in_process
from weir.sinks.keys import partition_keys
from weir.sinks.server_binary import ServerBinary, server_binaries

POLL = 0.02

#: Every server binary installed, in weir's search order (tests marked every_server run on each).
SERVER_BINARIES = server_binaries()


def server_binary_id(binary: ServerBinary) -> str:
    return binary.origin if binary.origin != "PATH" else f"PATH-{binary.path.name}"


def keys(shard: int | str):
    return partition_keys("farcaster", str(shard))


async def wait_for(condition: Callable[[], Awaitable[bool] | bool], *, timeout: float, what: str) -> None:
    """Poll ``condition`` (sync or async) every few ms until it holds; fail after ``timeout`` s."""
    try:
        with trio.fail_after(timeout):
            while True:
                result = condition()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await trio.sleep(POLL)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def e2e_config(redis_url: str, farcaster_url: str, *, shards: str = "1,2", **overrides: str) -> Config:
    """A service config for tests: fast backoff, small timeouts, replay from the oldest event."""
    values = {
        "redis.url": redis_url,
        "redis.socket_timeout": "1",
        "farcaster.url": farcaster_url,
        "farcaster.shards": shards,
        "farcaster.start": "oldest",
        "farcaster.idle_timeout": "5",
        "farcaster.connect_timeout": "2",
        "supervision.backoff_initial": "0.01",
        "supervision.backoff_max": "0.2",
        "supervision.breaker_reset": "0.2",
        "supervision.max_restarts": "50",
        "log_level": "WARNING",
        "metrics.port": "0",  # any free port: tests (and concurrent test runs) never collide
    }
    values.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_config(environ={}, overrides=values)


@asynccontextmanager
async def running_service(config: Config, *, stop_timeout: float = 10.0,
                          **serve_options: Any) -> AsyncIterator[tuple[Service, trio.Event]]:
    """Run ``serve(config, **serve_options)`` for the block; on exit ask it to stop (ordered drain)
    and wait for it.

    Fails if the drain takes longer than ``stop_timeout`` seconds.
    """
    stopping = trio.Event()
    with trio.CancelScope() as bound:
        async with trio.open_nursery() as nursery:
            service = await nursery.start(functools.partial(serve, config, stopping=stopping, **serve_options))
            try:
                yield service, stopping
            finally:
                stopping.set()
                bound.deadline = trio.current_time() + stop_timeout
    if bound.cancelled_caught:
        raise AssertionError(f"the service did not stop within {stop_timeout} s of being asked to")


# The simulator in this process (it opens the asyncio loop itself if the test has none).
in_process_sim = open_snapchain_sim_in_process


async def stream_entries(client: Any, shard: int | str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return await client("XRANGE", keys(shard).events, "-", "+")


async def dead_entries(client: Any, shard: int | str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return await client("XRANGE", keys(shard).dead, "-", "+")


async def cursor_position(client: Any, shard: int | str) -> int | None:
    value = await client("HGET", keys(shard).cursor, "position")
    return None if value is None else int(value)


def offered(config: SnapchainSimConfig, shard: int, count: int | None = None) -> list[tuple[int, bytes]]:
    """What the simulator offers on ``shard`` (all of ``total`` by default)."""
    n = count if count is not None else config.total
    assert n is not None
    return generate_offered(config, shard, n)


def assert_exact(entries: list[tuple[bytes, Mapping[bytes, bytes]]], expected: list[tuple[int, bytes]], *, shard: int | str) -> None:
    """The stream holds exactly ``expected``: each once, in order, id ``<event id>-0``, data byte-identical."""
    got_ids = [entry_id for entry_id, _ in entries]
    want_ids = [b"%d-0" % id_ for id_, _ in expected]
    if got_ids != want_ids:
        got, want = set(got_ids), set(want_ids)
        raise AssertionError(
            f"shard {shard}: {len(got_ids)} entries, expected {len(want_ids)}; "
            f"duplicates {len(got_ids) - len(got)}, missing {sorted(want - got)[:5]}, "
            f"unexpected {sorted(got - want)[:5]}"
        )
    for (entry_id, fields), (_, payload) in zip(entries, expected):
        assert fields[b"data"] == payload, f"shard {shard}: data of {entry_id!r} differs from what was offered"


class LogCapture:
    """JSON lines written by weir's loggers while active, parsed on demand."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text().splitlines()]

    def of(self, event: str) -> list[dict]:
        return [line for line in self.lines() if line.get("event") == event]


@contextmanager
def capture_json_logs() -> Iterator[LogCapture]:
    """Weir's log records at INFO and above, as JSON lines, for the block."""
    capture = LogCapture()
    handler = logging.StreamHandler(capture.stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("weir")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


FIXTURES = Path(__file__).parent / "fixtures"  # real-world data, in the repository: see its README.md


def fixture_file(path: Path | str) -> Path:
    """A fixture file (``path`` relative to tests/fixtures/, or absolute); a missing one fails the test."""
    found = FIXTURES / path
    if not found.is_file():
        pytest.fail(f"fixture file {found} is missing (tests/fixtures/README.md lists every file and its origin)",
                    pytrace=False)
    return found


ROOT = Path(__file__).resolve().parents[1]


def copy_package_source(destination: Path) -> Path:
    """What ``pip install`` of the checkout builds from (pyproject.toml, README.md, weir/), copied to
    ``destination``: the build's files land there, not in the checkout. Returns ``destination``."""
    destination.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, destination / name)
    shutil.copytree(ROOT / "weir", destination / "weir", ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def weir_args(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "weir", command, *args]


@asynccontextmanager
async def weir_process(args: list[str], log_path: Path, *, cwd: Path | None = None,
                       environ: Mapping[str, str] | None = None) -> AsyncIterator[trio.Process]:
    """Start ``weir``; on exit kill it if it is still running (only this process, by its handle).

    WEIR_* variables of the test's environment are not passed on: the command line and ``environ``
    (added to the environment) are the whole config.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIR_")} | dict(environ or {})
    with open(log_path, "ab") as log:
        process = await trio.lowlevel.open_process(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=dict(env, PYTHONUNBUFFERED="1"), cwd=cwd
        )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()


async def metrics_url_from(log_path: Path, *, timeout: float = 30.0) -> str:
    """The endpoint's URL, from the ``metrics_listening`` line of a ``weir run``'s JSON log."""
    found: list[str] = []

    def listening() -> bool:
        for line in log_path.read_text().splitlines():
            if '"metrics_listening"' in line:
                found.append(json.loads(line)["url"])
                return True
        return False

    await wait_for(listening, timeout=timeout, what="the metrics endpoint to listen")
    return found[0]


def fatal_run_args(redis_url: str, *args: str, max_restarts: int = 2) -> list[str]:
    """``weir run`` against ``redis_url`` with fast restarts and JSON logs, for runs expected to stop
    on their own (a fatal error): ``args`` say what to ingest."""
    return weir_args(
        "run", "--redis-url", redis_url, *args,
        "--set", "supervision.backoff_initial=0.01", "--set", "supervision.backoff_max=0.05",
        "--set", f"supervision.max_restarts={max_restarts}", "--set", "metrics.port=0", "--log-format", "json",
    )  # fmt: skip


async def run_until_exit(args: list[str], log_path: Path, *, timeout: float) -> tuple[int, list[dict]]:
    """Run ``weir`` until it exits by itself; its exit code and its JSON log events."""
    async with weir_process(args, log_path) as process:
        with trio.fail_after(timeout):
            code = await process.wait()
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    return code, events
