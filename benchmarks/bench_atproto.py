"""Firehose frames/s decoded into per-op events: weir's reader vs the ``atproto`` SDK, same frames.

    pip install -e '.[bench]'          # the atproto SDK, for the comparison only
    python benchmarks/bench_atproto.py [--events 3000] [--repeat 5]

Frames: the simulator's history (real DAG-CBOR, CAR and CIDs; ~1.5 ops per commit, some identity /
account / sync) and, when ``../shared/fixtures`` exists, the 12 frames recorded from Bluesky's relay.

- weir: ``FirehoseReader.read`` (libipld decode, filter on the ops, CAR index, sha-256 check of each
  kept record against its CID, one ``Event`` per kept op with the record's original bytes).
- SDK: ``Frame.from_bytes`` + ``parse_subscribe_repos_message`` (typed Commit model) + ``CAR.from_bytes``
  + the record of each kept op looked up by CID — its documented firehose recipe, minus the typed
  record models (weir does not build those either). With the filter the SDK also skips the CAR of a
  commit with no wanted op. The SDK does not verify CIDs.

Best of ``--repeat`` runs; one core. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from weir.actors.atproto import AtprotoStats, FirehoseReader
from weir.codecs.atproto_firehose import RecordFilter
from weir.sim.atproto_data import AtprotoSimConfig, generate_history

COLLECTION = "app.bsky.feed.post"


def fixture_frames() -> list[bytes]:
    root = Path(os.environ.get("WEIR_FIXTURES") or Path(__file__).resolve().parents[1].parent / "shared" / "fixtures")
    folder = root / "atproto" / "frames"
    return [p.read_bytes() for p in sorted(folder.glob("*.bin"))] if folder.is_dir() else []


def weir_decode(frames: list[bytes], keep: RecordFilter, passes: int) -> int:
    """``passes`` > 1: the frames are one recording repeated; each pass gets a fresh reader (seqs repeat)."""
    events = 0
    per_pass = len(frames) // passes
    for first in range(0, len(frames), per_pass):
        reader = FirehoseReader(partition="bench", stats=AtprotoStats(), keep=keep)
        for start in range(first, first + per_pass, 256):  # the actor reads lists of up to read_batch frames
            chunk = reader.read(frames[start : min(start + 256, first + per_pass)], 0.0)
            events += len(chunk.events) if chunk else 0
    return events


def sdk_decode(frames: list[bytes], collection: str | None) -> int:
    from atproto import CAR, firehose_models, models, parse_subscribe_repos_message

    events = 0
    for data in frames:
        message = parse_subscribe_repos_message(firehose_models.Frame.from_bytes(data))
        if not isinstance(message, models.ComAtprotoSyncSubscribeRepos.Commit):
            events += collection is None
            continue
        ops = [op for op in message.ops if collection is None or op.path.split("/", 1)[0] == collection]
        if not ops:
            continue
        car = CAR.from_bytes(message.blocks) if any(op.cid for op in ops) else None
        for op in ops:
            if op.cid is not None:
                car.blocks.get(op.cid)
            events += 1
    return events


def best(fn, repeat: int) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    sets = {"simulated": ([e.frame for e in generate_history(AtprotoSimConfig(seed=1, total=args.events))], 1)}
    recorded = fixture_frames()
    if recorded:
        sets["recorded x100"] = (recorded * 100, 100)
    try:
        import atproto  # noqa: F401

        have_sdk = True
    except ImportError:
        have_sdk = False
        print("(atproto SDK not installed: pip install -e '.[bench]' for the comparison)")
    print("| frames | filter | weir frames/s | weir events | SDK frames/s | SDK events | weir / SDK |")
    print("|---|---|---|---|---|---|---|")
    for name, (frames, passes) in sets.items():
        for label, keep, collection in (("none", RecordFilter(), None),
                                        (COLLECTION, RecordFilter.build(collections=[COLLECTION], kinds=["commit"]), COLLECTION)):
            t_weir, n_weir = best(lambda: weir_decode(frames, keep, passes), args.repeat)
            row = f"| {name} ({len(frames)}) | {label} | {len(frames) / t_weir:,.0f} | {n_weir:,} |"
            if have_sdk:
                t_sdk, n_sdk = best(lambda: sdk_decode(frames, collection), args.repeat)
                row += f" {len(frames) / t_sdk:,.0f} | {n_sdk:,} | {t_sdk / t_weir:.2f}x |"
            else:
                row += " – | – | – |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
