"""The Python API (docs/embedding.md): the documented example run as it is, a user's filter, a
user's network, and ``import weir`` staying light.

The example and the service run against a real redis-server and the Snapchain simulator over a
real socket; the toy network is a user's own source, which is what registering one means.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import weir
from weir.actors.filter import all_of
from weir.codecs.farcaster_keys import scan_hub_event
from weir.config import load_config
from weir.events import Chunk, Event
from weir.networks import enabled_networks, register_network, unregister_network
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sinks.keys import partition_keys

from helpers import assert_exact, cursor_position, offered, running_service, stream_entries, wait_for

DOC = Path(__file__).parent.parent / "docs" / "embedding.md"
TIMEOUT = 30.0


def example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "docs/embedding.md should hold exactly one example"
    return blocks[0]


def load_example(tmp_path: Path) -> tuple[Path, dict]:
    """The example written to a file, and its module's globals (loaded, not run as a script)."""
    path = tmp_path / "ingest_some_users.py"
    path.write_text(example_source())
    return path, runpy.run_path(str(path), run_name="example")


def split_by_fid(simulation: SnapchainSimConfig) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """Everything the simulated shard 1 offers, and the part the example's filter keeps (computed here)."""
    everything = offered(simulation, 1)
    chosen = [(id_, payload) for id_, payload in everything if (fid := scan_hub_event(payload).fid) and fid % 3 == 0]
    return everything, chosen


@pytest.mark.integration
async def test_the_documented_example_persists_only_the_chosen_users_and_ends_at_the_last_event(
        redis_server, redis_client, tmp_path):
    _, example = load_example(tmp_path)
    everything, chosen = split_by_fid(example["SIMULATION"])
    assert 0 < len(chosen) < len(everything) // 2  # the filter has something to keep and something to drop

    service = await example["ingest"](redis_server.url, str(tmp_path / "unused"))

    assert_exact(await stream_entries(redis_client, 1), chosen, shard=1)
    assert await cursor_position(redis_client, 1) == everything[-1][0]  # past the dropped events too
    shard = service.partitions[0]
    assert shard.sink.appended == len(chosen)
    assert shard.sink.filtered == len(everything) - len(chosen)


@pytest.mark.integration
def test_the_documented_example_runs_as_a_script(tmp_path):
    path, example = load_example(tmp_path)
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    everything, chosen = split_by_fid(example["SIMULATION"])
    kept = len(chosen)
    assert done.stdout.strip() == (f"farcaster/1: {kept} events kept, {len(everything) - kept} filtered out, "
                                   f"cursor at {everything[-1][0]}")
    assert (tmp_path / "weir-data").is_dir()  # the embedded Redis kept its data where the doc says


# -- a network of the user's own -------------------------------------------------------------

TOY_EVENTS = 300
TOY_READ = 40


@attrs.define
class ToyStats:
    received: int = 0
    last_id: int | None = None
    connected: bool = False


class ToyNetwork:
    """Counts 1..TOY_EVENTS on two partitions, resuming after the cursor; keeps even numbers."""

    name = "toy"

    def __init__(self, config: weir.Config, context: weir.NetworkContext) -> None:
        self.config = config

    @staticmethod
    def enabled(config: weir.Config) -> bool:
        return True

    async def partitions(self) -> list[str]:
        return ["a", "b"]

    def new_source_stats(self) -> ToyStats:
        return ToyStats()

    def source(self, partition, *, read_cursor, read_since, stats):
        async def count(stopping: trio.Event, *, send, task_status=trio.TASK_STATUS_IGNORED) -> None:
            cursor = await read_cursor()
            task_status.started()
            stats.connected = True
            first = 1 if cursor is None else cursor.position + 1
            for start in range(first, TOY_EVENTS + 1, TOY_READ):
                positions = range(start, min(start + TOY_READ, TOY_EVENTS + 1))
                events = [Event(source=self.name, partition=partition, position=n, kind="tick", payload=b"%d" % n,
                                fields={"n": n}) for n in positions]
                await send.send(Chunk(partition=partition, events=events, through=positions[-1]))
                stats.received += len(events)
                stats.last_id = positions[-1]
            await stopping.wait()

        return count

    def predicate(self):
        return lambda event: event.fields["n"] % 2 == 0


def toy_config(redis_url: str) -> weir.Config:
    return load_config(environ={}, overrides={
        "redis.url": redis_url, "farcaster.enabled": "false", "metrics.enabled": "false",
        "supervision.backoff_initial": "0.01", "supervision.backoff_max": "0.2", "log_level": "WARNING",
    })


async def run_toy(config: weir.Config, redis_client, **serve_options) -> list[int]:
    """Serve until both toy partitions are durable up to the last number; what the user filter was asked."""
    asked: list[int] = []

    def multiples_of_three(event: Event) -> bool:
        asked.append(event.fields["n"])
        return event.fields["n"] % 3 == 0

    async with running_service(config, event_filter=multiples_of_three, **serve_options) as (service, _):
        assert [view.name for view in service.partitions] == ["toy/a", "toy/b"]
        await wait_for(lambda: all(view.sink.cursor == TOY_EVENTS for view in service.partitions),
                       timeout=TIMEOUT, what="both toy partitions to be durable up to the last number")
    for partition in ("a", "b"):
        keys = partition_keys("toy", partition)
        entries = await redis_client("XRANGE", keys.events, "-", "+")
        assert [entry_id for entry_id, _ in entries] == [b"%d-0" % n for n in range(6, TOY_EVENTS + 1, 6)]
        assert [fields[b"data"] for _, fields in entries] == [b"%d" % n for n in range(6, TOY_EVENTS + 1, 6)]
        assert int(await redis_client("HGET", keys.cursor, "position")) == TOY_EVENTS
    return asked


@pytest.mark.integration
async def test_a_registered_network_runs_when_enabled_with_the_users_filter_after_its_own(redis_server, redis_client):
    register_network("toy", ToyNetwork)
    try:
        config = toy_config(redis_server.url)
        assert enabled_networks(config) == [ToyNetwork]
        asked = await run_toy(config, redis_client)
    finally:
        unregister_network("toy")
    assert sorted(asked) == sorted(list(range(2, TOY_EVENTS + 1, 2)) * 2)  # only what the network's own filter kept
    assert enabled_networks(config) == []


@pytest.mark.integration
async def test_a_network_passed_in_runs_instead_of_those_the_config_enables(redis_server, redis_client):
    config = attrs.evolve(toy_config(redis_server.url), farcaster=weir.Config().farcaster)  # mainnet: not run
    await run_toy(config, redis_client, networks=[ToyNetwork])


def test_register_network_refuses_a_builtin_name_a_taken_name_and_a_mismatched_one():
    class Other(ToyNetwork):
        pass

    class Farcaster(ToyNetwork):
        name = "farcaster"

    with pytest.raises(ValueError, match="built in"):
        register_network("farcaster", Farcaster)
    with pytest.raises(ValueError, match="its class's name is 'toy'"):
        register_network("other", ToyNetwork)
    with pytest.raises(ValueError, match="Redis key"):
        register_network("to{y}", ToyNetwork)
    register_network("toy", ToyNetwork)
    try:
        assert register_network("toy", ToyNetwork) is ToyNetwork  # the same class again: a no-op
        with pytest.raises(ValueError, match="already registered"):
            register_network("toy", Other)
    finally:
        unregister_network("toy")
    with pytest.raises(ValueError, match="built in"):
        unregister_network("farcaster")


# -- the filter chain ------------------------------------------------------------------------


@given(st.lists(st.one_of(st.none(), st.frozensets(st.integers(0, 9))), max_size=5), st.integers(0, 9))
def test_all_of_keeps_what_every_predicate_keeps_and_asks_them_in_order_until_one_refuses(sets, value):
    asked: list[int] = []

    def member_of(index: int, accepted: frozenset[int]):
        def keep(event: Event) -> bool:
            asked.append(index)
            return event.position in accepted
        return keep

    predicates = [None if accepted is None else member_of(i, accepted) for i, accepted in enumerate(sets)]
    combined = all_of(*predicates)
    chain = [(i, accepted) for i, accepted in enumerate(sets) if accepted is not None]
    if not chain:
        assert combined is None
        return
    event = Event(source="s", partition="p", position=value, kind="k", payload=b"")
    assert combined(event) == all(value in accepted for _, accepted in chain)
    refusing = next((i for i, accepted in chain if value not in accepted), None)
    assert asked == [i for i, _ in chain if refusing is None or i <= refusing]


# -- the module ------------------------------------------------------------------------------


def test_import_weir_loads_none_of_the_heavy_dependencies_and_every_export_resolves():
    heavy = ("trio", "trio_asyncio", "redis", "eth_abi", "grpclib", "weir.app", "weir.config")
    code = f"import sys, weir; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    for name in weir.__all__:
        value = getattr(weir, name)
        assert name == "__version__" or value.__doc__, f"weir.{name} has no docstring"
    with pytest.raises(AttributeError):
        weir.no_such_name  # noqa: B018
