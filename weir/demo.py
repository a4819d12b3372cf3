"""``weir demo``: a simulated Snapchain network -> weir -> an embedded Redis, with live progress."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from weir.config import Config, ConfigError, load_config
from weir.live_line import LiveLine, apart_from_logs
from weir.redact import redact_text, redact_url
from weir.sim.farcaster_data import SnapchainSimConfig
from weir.sim.process import open_snapchain_sim

EXIT_USAGE = 2
PROGRESS_INTERVAL = 0.5
CHECK_INTERVAL = 0.05  # completion is checked more often than progress is printed
DELIVERY_TIMEOUT = 60.0  # once ingestion is complete, delivery has this long to catch up before the summary
DEMO_FILE_AGE = 1.0  # seconds a demo Parquet file stays open: files land while one watches


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@asynccontextmanager
async def _open_simulation(args: argparse.Namespace) -> AsyncIterator[tuple[dict[str, str], Callable[[Any], bool]]]:
    """Start the chosen network's simulator; yield the config overrides and a completion check."""
    if args.network == "atproto":
        from weir.sim.atproto_data import AtprotoSimConfig, generate_history
        from weir.sim.process import open_atproto_sim

        sim_config = AtprotoSimConfig(seed=args.seed, total=args.events, rate=args.rate)
        # Generating the history takes a while (~2 s for 20,000 events): say so first.
        print(f"weir demo: simulating an AT Protocol relay with {args.events} events at "
              f"{'full speed' if not args.rate else f'{args.rate:g} events/s'} (seed {args.seed}); "
              "generating its history...", file=sys.stderr, flush=True)
        last_seq = generate_history(sim_config)[-1].seq
        print("weir demo: 'received' counts relay frames, 'persisted' records: "
              "one commit frame carries one or more records", file=sys.stderr)
        async with open_atproto_sim(sim_config) as url:
            overrides = {"farcaster.enabled": "false", "atproto.enabled": "true", "atproto.url": url,
                         "atproto.jetstream_url": url, "atproto.start": "oldest"}
            yield overrides, lambda p: p.sink.cursor == last_seq
        return
    sim_config = SnapchainSimConfig(shards=args.shards, seed=args.seed, rate=args.rate, total=args.events)
    print(f"weir demo: simulating {args.shards} Snapchain shards x {args.events} events at "
          f"{'full speed' if not args.rate else f'{args.rate:g} events/s per shard'} (seed {args.seed})", file=sys.stderr)
    async with open_snapchain_sim(sim_config) as sim:
        overrides = {"farcaster.url": sim.url, "farcaster.start": "oldest", "farcaster.idle_timeout": "10",
                     "farcaster.shards": ",".join(str(shard) for shard in range(1, args.shards + 1))}
        yield overrides, lambda p: p.source.received >= args.events and p.sink.cursor == p.source.last_id


async def run_demo(config: Config, args: argparse.Namespace) -> int:
    from weir.cli import serve_until_signalled

    with tempfile.TemporaryDirectory(prefix="weir-demo-") as scratch:
        data_dir = config.redis.data_dir if "--data-dir" in sys.argv else str(Path(scratch) / "redis")
        deliver_dir = args.deliver_dir or str(Path(data_dir) / "parquet")
        async with _open_simulation(args) as (network_overrides, partition_done):
            try:
                demo_config = load_config(
                    args.config,
                    overrides={
                        **{f"redis.{k}": str(v) for k, v in (("url", config.redis.url), ("data_dir", data_dir)) if v},
                        **network_overrides,
                        **(_delivery_overrides(args, deliver_dir) if args.deliver else {}),
                        "log_level": config.log_level,
                        "metrics.port": "0",  # any free port (printed below); --set metrics.port=N picks one
                        **{item.partition("=")[0].strip(): item.partition("=")[2] for item in args.set},
                    },
                    origins={**{key: f"weir demo --network {args.network}" for key in network_overrides},
                             **{key: "weir demo --deliver" for key in _delivery_overrides(args, deliver_dir) if args.deliver},
                             **{item.partition("=")[0].strip(): "command line --set" for item in args.set}},
                )
            except ConfigError as exc:  # the --set values valid alone, not with the demo's own (e.g. no network left)
                print(f"weir: config error: {redact_text(str(exc))}", file=sys.stderr)
                return EXIT_USAGE
            summary: dict[str, object] = {}

            async def watch(service, stopping: trio.Event) -> None:
                shown = redact_url(service.redis_url)
                print(f"weir demo: Redis at {shown} (redis-cli -u {shown})", file=sys.stderr)
                if service.observability is not None:
                    print(f"weir demo: metrics at {service.observability.url}/metrics", file=sys.stderr)
                start = trio.current_time()
                line = LiveLine(sys.stderr)
                ingested: list[float] = []  # when ingestion was complete, once it is
                summary["deliveries"] = service.deliveries
                try:
                    with apart_from_logs(line):
                        summary["caught_up"] = await _show_progress(service, partition_done, line, ingested)
                    summary["complete"] = True
                finally:  # also when a signal stopped the demo early: the counts once drained
                    line.end()  # the shell's prompt starts on a line of its own
                    summary.update(_summary(service, (ingested[0] if ingested else trio.current_time()) - start))
                stopping.set()

            code = await serve_until_signalled(demo_config, on_started=watch)
    if summary:
        complete = "" if summary.get("complete") else "stopped early: "
        print(
            f"weir demo: {complete}{summary['persisted']:,} events persisted in {summary['elapsed']:.1f} s "
            f"({summary['rate']:,.0f} events/s); latency receipt->durable p50 {summary['p50'] * 1000:.1f} ms, "
            f"p99 {summary['p99'] * 1000:.1f} ms; dead letters {summary['dead']}; gaps {summary['gaps']}; "
            f"restarts {summary['restarts']}",
            file=sys.stderr,
        )
    if summary.get("deliveries") is not None:
        print(_what_was_delivered(summary, deliver_dir, kept=args.deliver_dir is not None or args.data_dir is not None),
              file=sys.stderr)
    print(_where_the_data_went(config, args), file=sys.stderr)
    return code


def _delivery_overrides(args: argparse.Namespace, deliver_dir: str) -> dict[str, str]:
    """Delivery inside the service (deliver.with_run): the demo's network to Parquet files."""
    pipeline = {"source": args.network, "target": args.deliver, "directory": deliver_dir, "file_age": DEMO_FILE_AGE}
    return {"deliver.with_run": "true", "deliver.pipelines": json.dumps([pipeline])}


def _what_was_delivered(summary: dict[str, object], deliver_dir: str, *, kept: bool) -> str:
    """The delivery line: rows and files of this run, where they are, one DuckDB query over them."""
    views = list(summary["deliveries"])  # type: ignore[call-overload]
    rows = sum(view.stats.delivered for view in views)
    files = sum(view.stats.commits for view in views)
    late = "" if summary.get("caught_up", True) else f"(delivery had not caught up {DELIVERY_TIMEOUT:g} s after ingestion) "
    counts = f"weir demo: {late}{rows:,} rows delivered to {files:,} Parquet files"
    if not kept:
        return (f"{counts} in a temporary directory, now deleted; to keep them, add --data-dir weir-data "
                "(or --deliver-dir DIR)")
    query = f"SELECT count(*) FROM read_parquet('{deliver_dir}/**/*.parquet', hive_partitioning = true)"
    # In double quotes it reads as SQL; a path that needs quoting for the shell gets shlex's.
    command = f'"{query}"' if shlex.quote(deliver_dir) == deliver_dir else shlex.quote(query)
    return f"{counts} in {shlex.quote(deliver_dir)}; query them with DuckDB: duckdb -c {command}"


async def _show_progress(service, partition_done: Callable[[Any], bool], line: LiveLine, ingested: list[float]) -> bool:
    """Print a progress line every PROGRESS_INTERVAL until every partition is done (``ingested``
    gets the time it was) and, with delivery, delivery caught up or DELIVERY_TIMEOUT passed.

    Returns whether delivery caught up (True without delivery).
    """
    last_time, last_done = trio.current_time(), 0
    next_print = last_time + PROGRESS_INTERVAL
    while True:
        await trio.sleep(CHECK_INTERVAL)
        now = trio.current_time()
        if not ingested and all(partition_done(p) for p in service.partitions):
            ingested.append(now)
        caught_up = bool(ingested) and _delivered_all(service, since=ingested[0])
        complete = caught_up or (bool(ingested) and now - ingested[0] > DELIVERY_TIMEOUT)
        if now < next_print and not complete:
            continue
        next_print = now + PROGRESS_INTERVAL
        received = sum(getattr(p.source, "received", 0) for p in service.partitions)
        persisted = sum(p.sink.appended for p in service.partitions)
        durable = sum(p.sink.appended + p.sink.skipped for p in service.partitions)
        rate = (durable - last_done) / (now - last_time)
        last_time, last_done = now, durable
        latencies = [x for p in service.partitions for x in p.sink.latencies[-2000:]]
        text = (f"{received:>9,} received  {persisted:>9,} persisted  {rate:>8,.0f} ev/s  "
                f"lag {max(0, received - durable - _filtered(service)):>6,}  "
                f"p50 {_percentile(latencies, 0.5) * 1000:5.1f} ms  restarts {service.restarts()}")
        if service.deliveries is not None:
            text += f"  delivered {sum(view.stats.delivered for view in service.deliveries):>9,}"
        line.show(text)
        if complete:
            return caught_up


def _delivered_all(service, *, since: float) -> bool:
    """Every entry persisted by ``since`` delivered: each group sampled after it with nothing
    pending and nothing left to read (where Redis cannot tell the lag: as many taken as persisted)."""
    if service.deliveries is None:
        return True
    appended = {view.name: view.sink.appended for view in service.partitions}
    views = list(service.deliveries)
    return bool(views) and all(
        view.sampled_at is not None and view.sampled_at > since and view.pending == 0 and (
            view.lag == 0 if view.lag is not None else
            view.stats.delivered + view.stats.skipped + view.stats.dead_lettered
            >= appended.get(f"{view.source}/{view.partition}", 0))
        for view in views)


def _summary(service, elapsed: float) -> dict[str, object]:
    persisted = sum(p.sink.appended for p in service.partitions)
    latencies = [x for p in service.partitions for x in p.sink.latencies]
    return {"persisted": persisted, "elapsed": elapsed, "rate": persisted / elapsed if elapsed else 0.0,
            "p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99),
            "dead": sum(p.sink.dead_appended for p in service.partitions),
            "gaps": sum(getattr(p.source, "gaps", 0) for p in service.partitions), "restarts": service.restarts()}


def _where_the_data_went(config: Config, args: argparse.Namespace) -> str:
    """The demo's last line: where its events are now, and the command that reads them."""
    source = "" if args.network == "farcaster" else f" --source {args.network}"
    if config.redis.url:
        shown = redact_url(config.redis.url)
        return f"weir demo: the events are in the Redis at {shown}; read them with: weir tail --redis-url {shown}{source} --count 5"
    if args.data_dir is not None:
        data_dir = shlex.quote(args.data_dir)
        return f"weir demo: the data is kept in {data_dir}; read it with: weir tail --data-dir {data_dir}{source} --count 5"
    return ("weir demo: its Redis data was in a temporary directory, now deleted; to keep it, run "
            f"weir demo --data-dir weir-data, then: weir tail --data-dir weir-data{source} --count 5")


def _filtered(service) -> int:
    return sum(p.sink.filtered + getattr(p.source, "filtered", 0) for p in service.partitions)
