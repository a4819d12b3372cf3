#!/usr/bin/env python
"""Peer benchmark: weir, Shuttle and a naive Python pipeline on the same simulated Snapchain node.

    python benchmarks/peers/run.py                               # 200,000 events, 3 reps (a few minutes)
    python benchmarks/peers/run.py --events 400000 --reps 6
    python benchmarks/peers/run.py --framings one --systems weir,shuttle --weir-set farcaster.verify=true

Every run is one system ingesting one shard from event id 0 with one hub framing (``one`` gRPC
message per HTTP/2 DATA frame, or ``packed``), on a fresh redis-server (weir's embedded one, AOF
everysec) and a fresh hub process (``python -m weir.sim snapchain``, all events pregenerated and
released). Runs are interleaved: each repetition runs every framing × system, the order of the
systems rotating between repetitions. The systems (README.md says more):

weir     ``weir run --config <toml>`` (a subprocess; start-up included), the same event types as
         Shuttle, ``farcaster.verify = false`` (the peers check no signature; ``--weir-set``
         changes any setting).
shuttle  @farcaster/shuttle 0.3.3's ``EventStreamHubSubscriber`` + ioredis, driven by
         ``shuttle/ingest.js`` on the machine's Node (``npm ci`` in ``shuttle/`` first).
naive    ``naive.py``: grpcio + the protobuf package (protoc-generated messages) + redis-py, XADD
         pipelined per 100 events.

Clock: from starting the system's process until its Redis stream holds every expected event (polled
every 10 ms). CPU seconds of the client (``/proc/<pid>/stat`` utime + stime, children included, live
ones too: weir's verification workers), of the hub and of redis-server over the same window,
divided by the events persisted; peak RSS is the client's ``VmHWM`` (plus its live children's). Then every persisted event is checked against what the hub offered
(``checks.py``, one checker per system's Redis layout). Prints a table with ratios and writes JSON.
Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHUTTLE_DIR = HERE / "shuttle"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "peers.json"
SYSTEMS = ("weir", "shuttle", "naive")
FRAMINGS = ("one", "packed")
SHARD = 1
# Shuttle's DEFAULT_EVENT_TYPES; weir and naive ask the hub for the same (weir adds BLOCK_CONFIRMED,
# which it reads for gap detection and does not persist).
EVENT_TYPES = ("MERGE_MESSAGE", "PRUNE_MESSAGE", "REVOKE_MESSAGE", "MERGE_USERNAME_PROOF", "MERGE_ON_CHAIN_EVENT")
WEIR_DEFAULTS = {"farcaster.verify": "false"}
POLL = 0.01
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- /proc -----------------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process and its waited-for children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def proc_peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def live_descendants(pid: int) -> list[int]:
    """Processes a client started and still runs (weir's verification workers): their CPU is the
    client's too, but /proc/<pid>/stat counts a child only once it has been waited for."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except FileNotFoundError:
            continue
        for child in children:
            found += [child, *live_descendants(child)]
    return found


def _over_tree(pid: int, measure):
    """``measure`` of a process plus that of each live descendant (one that ended meanwhile is
    skipped: its CPU time went to its parent's waited-for count)."""
    total = measure(pid)
    for child in live_descendants(pid):
        try:
            total += measure(child)
        except FileNotFoundError:
            pass
    return total


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its waited-for children and its live descendants."""
    return _over_tree(pid, proc_cpu_s)


def tree_peak_rss_kib(pid: int) -> int:
    """Peak RSS of a process plus that of each live descendant (an upper bound of their sum)."""
    return _over_tree(pid, proc_peak_rss_kib)


# -- preparation -----------------------------------------------------------------------------------


def generate_stubs(out: Path) -> Path:
    """protoc's Python modules for the Snapchain protos (for naive.py and the Shuttle checker)."""
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        raise SystemExit('the peer benchmark needs the bench extra: pip install -e ".[bench]"') from None
    out.mkdir(parents=True, exist_ok=True)
    protos = REPO / "protos"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{protos}", f"--python_out={out}",
                    *sorted(str(p) for p in protos.glob("*.proto"))], check=True)
    return out


def byte_compile(paths: list[Path]) -> None:
    """Byte-compile the Python sources the clients import, as pip does when it installs a package.

    An editable checkout run with PYTHONDONTWRITEBYTECODE set (as on the benchmark machine) would
    otherwise compile every weir module again in every run (~0.05 s of CPU, counted as start-up).
    """
    import compileall

    for path in paths:
        compileall.compile_dir(path, quiet=1) if path.is_dir() else compileall.compile_file(path, quiet=1)


def prepare_shuttle() -> str:
    """The Node version; installs shuttle/node_modules from the lock file if missing."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit("Shuttle needs Node.js (node) on PATH; or leave it out: --systems weir,naive")
    if not (SHUTTLE_DIR / "node_modules" / "@farcaster" / "shuttle").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=SHUTTLE_DIR, check=True)
    return subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def expected_events(sim_config) -> tuple[list[tuple[int, bytes]], int]:
    """The offered events of EVENT_TYPES on the shard, in order, and how many the hub offers in all."""
    from weir.codecs.farcaster_keys import HUB_EVENT_TYPE_BY_NAME, scan_hub_event
    from weir.sim.farcaster_data import generate_offered

    wanted = {HUB_EVENT_TYPE_BY_NAME[name] for name in EVENT_TYPES}
    offered = generate_offered(sim_config, SHARD, sim_config.total)
    return [(i, p) for i, p in offered if scan_hub_event(p).event_type in wanted], len(offered)


def weir_toml(hub_url: str, redis_url: str, overrides: dict[str, str]) -> str:
    settings = {
        "farcaster.url": json.dumps(hub_url),
        "farcaster.shards": f"[{SHARD}]",
        "farcaster.start": '"oldest"',
        "farcaster.event_types": json.dumps(list(EVENT_TYPES)),
        "redis.url": json.dumps(redis_url),
        "metrics.port": "0",  # the endpoint runs, as for a user, on a free port
    }
    settings.update({key: _toml_value(value) for key, value in overrides.items()})
    sections: dict[str, list[str]] = {}
    for key, value in settings.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append(f"{name} = {value}")
    body = ['log_level = "WARNING"']
    for section, lines in sections.items():
        body += ["", f"[{section}]", *lines]
    return "\n".join(body) + "\n"


def _toml_value(text: str) -> str:
    if text in ("true", "false") or text.lstrip("-").replace(".", "", 1).isdigit() or text.startswith(("[", '"')):
        return text
    return json.dumps(text)


# -- one run ---------------------------------------------------------------------------------------


def client_command(system: str, hub_host: str, hub_port: int, redis_url: str, count: int, work: Path,
                   stubs: Path, weir_overrides: dict[str, str]) -> tuple[list[str], str, dict]:
    """(argv, the stream it writes, the checker's keyword arguments)."""
    if system == "weir":
        config = work / "weir.toml"
        config.write_text(weir_toml(f"http://{hub_host}:{hub_port}", redis_url, weir_overrides))
        from weir.sinks.keys import partition_keys

        return [sys.executable, "-m", "weir", "run", "--config", str(config)], partition_keys("farcaster", str(SHARD)).events, {"shard": SHARD}
    if system == "shuttle":
        # keys as Shuttle names them: hub:<host>:evt:msg:<shardKey>, hub:<host>:<shardKey> for the cursor
        host = f"{hub_host}:{hub_port}"
        stream = f"hub:{host}:evt:msg:{SHARD}"
        argv = ["node", str(SHUTTLE_DIR / "ingest.js"), host, redis_url, str(SHARD), str(count)]
        return argv, stream, {"stream": stream, "cursor": f"hub:{host}:{SHARD}:last-hub-event-id", "stubs": str(stubs)}
    stream = f"naive:{SHARD}:events"
    argv = [sys.executable, str(HERE / "naive.py"), "--stubs", str(stubs), "--hub", f"{hub_host}:{hub_port}",
            "--redis", redis_url, "--shard", str(SHARD), "--events", str(count)]
    return argv, stream, {"stream": stream, "cursor": f"naive:{SHARD}:cursor"}


async def run_one(system: str, framing: str, args: argparse.Namespace, expected: list[tuple[int, bytes]],
                  work: Path, stubs: Path) -> dict:
    import redis
    import trio

    import checks
    from weir.sim.process import open_snapchain_sim
    from weir.sinks.embedded_redis import RedisServerConfig, open_embedded_redis

    work.mkdir(parents=True)
    async with open_embedded_redis(RedisServerConfig(data_dir=work / "redis", appendfsync="everysec")) as server, \
            open_snapchain_sim(sim_config(args, framing), ready_timeout=600) as hub:
        argv, stream, check_keys = client_command(system, hub.host, hub.port, server.url, len(expected), work, stubs,
                                                  args.weir_overrides)
        client = redis.Redis.from_url(server.url)
        log_path = work / f"{system}.log"
        with open(log_path, "wb") as log:
            peers0 = {"hub": proc_cpu_s(hub.pid), "redis": proc_cpu_s(server.pid)}
            t0 = trio.current_time()
            process = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(work))
            try:
                t_first = first_count = None
                with trio.fail_after(args.timeout):
                    while (persisted := client.xlen(stream)) < len(expected):
                        if t_first is None and persisted:
                            t_first, first_count = trio.current_time(), persisted
                        if process.poll() is not None:
                            raise RuntimeError(f"{system} exited ({process.returncode}) after {persisted:,} events; see {log_path}")
                        await trio.sleep(POLL)
                t1 = trio.current_time()
                client_cpu = tree_cpu_s(process.pid)
                client_main_cpu = proc_cpu_s(process.pid)  # without live children (weir's verification workers)
                client_rss = tree_peak_rss_kib(process.pid)
                peers1 = {"hub": proc_cpu_s(hub.pid), "redis": proc_cpu_s(server.pid)}
                peak = {"hub": proc_peak_rss_kib(hub.pid), "redis": proc_peak_rss_kib(server.pid)}
            finally:
                with trio.CancelScope(shield=True):
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                        with trio.move_on_after(10):
                            await process.wait()
                        if process.poll() is None:
                            process.kill()
                            await process.wait()
        verify = await trio.to_thread.run_sync(lambda: getattr(checks, f"check_{system}")(client, expected, **check_keys))
        client.close()
    n = verify["persisted"]
    elapsed = t1 - t0
    if t_first is None:  # everything arrived between two polls
        t_first, first_count = t1, 0
    return {
        "system": system,
        "framing": framing,
        "events": n,
        "elapsed_s": elapsed,
        "events_per_s": n / elapsed,
        "events_per_s_after_first_write": (n - first_count) / (t1 - t_first) if t1 > t_first else None,
        "first_write_s": t_first - t0,
        "cpu_s": {"client": client_cpu, "hub": peers1["hub"] - peers0["hub"], "redis": peers1["redis"] - peers0["redis"]},
        "cpu_us_per_event": {
            "client": client_cpu / n * 1e6,
            "client_main_process": client_main_cpu / n * 1e6,
            "hub": (peers1["hub"] - peers0["hub"]) / n * 1e6,
            "redis": (peers1["redis"] - peers0["redis"]) / n * 1e6,
        },
        "peak_rss_mib": {"client": client_rss / 1024, **{k: v / 1024 for k, v in peak.items()}},
        "load_average": os.getloadavg(),
        "verify": verify,
    }


def sim_config(args: argparse.Namespace, framing: str):
    from weir.sim.farcaster_data import SnapchainSimConfig

    return SnapchainSimConfig(shards=1, seed=args.seed, rate=0, history=args.events, total=args.events,
                              pregenerate=True, framing=framing)


# -- the whole benchmark ---------------------------------------------------------------------------


async def driver(args: argparse.Namespace) -> dict:
    import trio

    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="weir-peers-"))
    stubs = generate_stubs(scratch / "stubs")
    byte_compile([REPO / "weir", stubs])
    node = prepare_shuttle() if "shuttle" in args.systems else None
    expected, offered = await trio.to_thread.run_sync(expected_events, sim_config(args, "packed"))
    log(f"hub offers {offered:,} events on shard {SHARD}; {len(expected):,} of the types asked for "
        f"({', '.join(EVENT_TYPES)}); load average {os.getloadavg()[0]:.2f}")
    results: dict = {
        "machine": _machine(node),
        "command": " ".join(["python", "benchmarks/peers/run.py", *sys.argv[1:]]),
        "parameters": {"events_offered": offered, "events_expected": len(expected), "reps": args.reps,
                       "framings": args.framings, "systems": args.systems, "seed": args.seed,
                       "event_types": list(EVENT_TYPES), "weir_settings": args.weir_overrides},
        "load_average_start": os.getloadavg(),
        "runs": [],
    }
    for rep in range(args.reps):
        order = args.systems[rep % len(args.systems):] + args.systems[:rep % len(args.systems)]
        for framing in args.framings:
            for system in order:
                work = scratch / f"{rep}-{framing}-{system}"
                r = await run_one(system, framing, args, expected, work, stubs)
                r["rep"] = rep
                results["runs"].append(r)
                v = r["verify"]
                log(f"rep {rep + 1}/{args.reps} {framing:6} {system:7} {r['events_per_s']:9,.0f} ev/s  "
                    f"client {r['cpu_us_per_event']['client']:5.1f} µs/ev  rss {r['peak_rss_mib']['client']:4.0f} MiB  "
                    f"verify {'OK' if v['ok'] else v['problems']}")
                if not args.keep_data:
                    shutil.rmtree(work, ignore_errors=True)
    results["load_average_end"] = os.getloadavg()
    results["summary"] = summarise(results["runs"], args.framings, args.systems)
    results["total_seconds"] = time.perf_counter() - started
    if not args.keep_data:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        log(f"data kept in {scratch}")
    return results


def summarise(runs: list[dict], framings: list[str], systems: list[str]) -> dict:
    """Per framing and system: medians over the repetitions; per framing: weir's ratios to each peer."""
    summary: dict = {}
    for framing in framings:
        rows = {}
        for system in systems:
            mine = [r for r in runs if r["framing"] == framing and r["system"] == system]
            if not mine:
                continue
            rows[system] = {
                "runs": len(mine),
                "events_per_s": statistics.median(r["events_per_s"] for r in mine),
                "events_per_s_range": [min(r["events_per_s"] for r in mine), max(r["events_per_s"] for r in mine)],
                "events_per_s_after_first_write": statistics.median(r["events_per_s_after_first_write"] or 0 for r in mine),
                "cpu_us_per_event": {p: statistics.median(r["cpu_us_per_event"][p] for r in mine) for p in ("client", "hub", "redis")},
                "client_peak_rss_mib": max(r["peak_rss_mib"]["client"] for r in mine),
                "verified": all(r["verify"]["ok"] for r in mine),
                "persisted": sum(r["verify"]["persisted"] for r in mine),
                "expected": sum(r["verify"]["expected"] for r in mine),
            }
        ratios = {}
        if "weir" in rows:
            weir = rows["weir"]
            for peer in (s for s in systems if s != "weir" and s in rows):
                other = rows[peer]
                ratios[peer] = {
                    "events_per_s": weir["events_per_s"] / other["events_per_s"],
                    "client_cpu_per_event": weir["cpu_us_per_event"]["client"] / other["cpu_us_per_event"]["client"],
                    "client_peak_rss": weir["client_peak_rss_mib"] / other["client_peak_rss_mib"],
                }
        summary[framing] = {"systems": rows, "weir_over": ratios}
    return summary


FRAMING_LABEL = {"one": "one message per DATA frame", "packed": "packed DATA frames"}
SYSTEM_LABEL = {"weir": "weir run", "shuttle": "Shuttle 0.3.3", "naive": "naive Python"}


def render(results: dict) -> str:
    head = ("hub framing", "system", "events/s (median, min–max)", "ev/s after 1st write",
            "CPU µs/event client / hub / redis", "client peak RSS", "verified")
    rows = []
    ratio_lines = []
    for framing, part in results["summary"].items():
        for system, s in part["systems"].items():
            lo, hi = s["events_per_s_range"]
            cpu = s["cpu_us_per_event"]
            rows.append((FRAMING_LABEL[framing], SYSTEM_LABEL[system], f"{s['events_per_s']:,.0f} ({lo:,.0f}–{hi:,.0f})",
                         f"{s['events_per_s_after_first_write']:,.0f}",
                         f"{cpu['client']:.1f} / {cpu['hub']:.1f} / {cpu['redis']:.1f}",
                         f"{s['client_peak_rss_mib']:.0f} MiB",
                         f"{s['persisted']:,} / {s['expected']:,}" + ("" if s["verified"] else " FAILED")))
        for peer, ratio in part["weir_over"].items():
            ratio_lines.append(f"{FRAMING_LABEL[framing]}: weir / {SYSTEM_LABEL[peer]}: events/s {ratio['events_per_s']:.2f}×, "
                               f"client CPU per event {ratio['client_cpu_per_event']:.2f}×, peak RSS {ratio['client_peak_rss']:.2f}×")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines + [""] + ratio_lines)


def _machine(node: str | None) -> dict:
    from weir.sinks.embedded_redis import find_server_binary

    redis_version = subprocess.run([str(find_server_binary().path), "--version"], capture_output=True, text=True).stdout
    return {"cores": os.cpu_count(), "python": platform.python_version(), "node": node,
            "redis_server": redis_version.split(" sha")[0].strip(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events the hub offers on the shard (default 200,000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every framing × system (default 3)")
    parser.add_argument("--framings", default=",".join(FRAMINGS), help="comma-separated: one, packed")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: weir, shuttle, naive")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weir-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a weir setting for its TOML, e.g. farcaster.verify=true (default: farcaster.verify=false)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one run may take")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    parser.add_argument("--keep-data", action="store_true", help="keep every run's Redis data and client log")
    args = parser.parse_args(argv)
    args.framings = [f for f in args.framings.split(",") if f]
    args.systems = [s for s in args.systems.split(",") if s]
    if set(args.framings) - set(FRAMINGS) or set(args.systems) - set(SYSTEMS) or not args.framings or not args.systems:
        parser.error(f"framings are {', '.join(FRAMINGS)}; systems are {', '.join(SYSTEMS)}")
    args.weir_overrides = {**WEIR_DEFAULTS, **dict(item.split("=", 1) for item in args.weir_set)}
    sys.path.insert(0, str(HERE))  # checks.py

    import trio

    results = trio.run(driver, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    p, m = results["parameters"], results["machine"]
    print(f"\nweir peer benchmark: {m['cores']} cores, Python {m['python']}, Node {m['node']}, {m['redis_server']}; "
          f"{p['events_expected']:,} of {p['events_offered']:,} offered events per run, {p['reps']} reps; "
          f"load average {results['load_average_start'][0]:.2f} -> {results['load_average_end'][0]:.2f}")
    print(f"command: {results['command']}\n")
    print(render(results))
    print(f"\nresults: {out} (total {results['total_seconds']:.0f} s)")
    return 0 if all(r["verify"]["ok"] for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
