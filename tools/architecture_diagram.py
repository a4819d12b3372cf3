"""docs/architecture.svg: weir's supervision tree and data flow, drawn from this description.

    python tools/architecture_diagram.py            # writes docs/architecture.svg
    python tools/architecture_diagram.py --check    # exits 1 if the committed SVG differs from it

The channel capacities and strategies are read from weir (weir/actors/pipeline.py, weir/app.py's
root), so the picture follows the code; tests/test_deploy.py checks the committed SVG is this
script's output.
"""

from __future__ import annotations

from pathlib import Path

from svg_boxes import (ACTOR, EXTERNAL, PLAIN, PROCESS, REDIS, SUPERVISOR, Arrow, Box, Diagram, Group, Style, 
                       diagram_main)

from weir.actors.pipeline import BATCH_TO_PERSIST, FILTER_TO_BATCH, SOURCE_TO_FILTER
from weir.supervision import Strategy

SVG = Path(__file__).resolve().parent.parent / "docs" / "architecture.svg"



def pipeline() -> Group:
    """One partition's pipeline, as weir/actors/pipeline.py builds it."""
    return Group(
        "farcaster/1", f"farcaster/1 supervisor · {Strategy.ONE_FOR_ALL.value} · nursery", direction="row", gap=64,
        style=SUPERVISOR, bottom=30,
        children=[
            Box("source", "source", ["Subscribe stream of one", "shard, read in asyncio", "(grpclib) as raw bytes;",
                                     "scans keys, filters,", "dead-letters, detects gaps;", "reconnects with backoff"],
                style=ACTOR),
            Box("filter", "filter", ["network predicate,", "embedder's event_filter;", "counts kept / dropped;",
                                     "empty chunks still carry", "the cursor on"], style=ACTOR),
            Box("batch", "batch", ["flush at max_events,", "max_bytes or max_age,", "or when persist is idle", "(group commit)"],
                style=ACTOR),
            Box("persist", "persist", ["one EVALSHA per batch", "(redis.asyncio); retries", "behind the Redis breaker;",
                                       "nursery: idle check that", "Redis kept the cursor"], style=ACTOR),
        ],
    )


def diagram() -> Diagram:
    networks = Group("networks", "networks", direction="column", gap=18, style=PLAIN, padding=0, children=[
        Box("snapchain", "Snapchain nodes", ["Farcaster, gRPC over HTTP/2", "one stream per user shard"], style=EXTERNAL),
        Box("atproto", "AT Protocol relay", ["firehose (DAG-CBOR) or", "Jetstream (JSON), WebSocket"], style=EXTERNAL),
        Box("ethereum", "Ethereum nodes", ["JSON-RPC over WebSocket,", "one partition per chain"], style=EXTERNAL),
    ])
    tree = Group(
        "root", f"root supervisor · {Strategy.ONE_FOR_ONE.value} · nursery", direction="column", style=SUPERVISOR, children=[
            Box("observability", "observability", ["/metrics /healthz /readyz over HTTP/1.1 (h11): started first, stopped last"],
                style=ACTOR),
            pipeline(),
            Box("farcaster/2", "farcaster/2 …", ["one pipeline per shard: the same four actors and channels"],
                style=SUPERVISOR),
            Box("others", "atproto/<relay>, ethereum/<chain id> …",
                ["the same pipeline; the source is the network's own (weir/networks/)"], style=SUPERVISOR),
        ])
    weir = Group("weir", "weir process: one trio.run", direction="column", style=PROCESS, children=[
        tree,
        Box("bridge", "trio-asyncio loop (weir/bridge.py)",
            ["grpclib and redis.asyncio run here; trio reaches them a batch per crossing"], style=Style(fill="#f6f6f6")),
    ])
    outside = Group("outside", "", direction="column", gap=26, style=PLAIN, padding=0, children=[
        Box("prometheus", "Prometheus, probes", ["GET /metrics (scrape),", "/healthz (liveness),", "/readyz (readiness)"],
            style=EXTERNAL),
        Box("redis", "Redis", ["per partition, hash tag", "{weir:<source>:<partition>}:", ":events stream",
                               ":cursor hash", ":dead stream", "entries + cursor written", "by one atomic script"],
            style=REDIS),
        Box("consumers", "consumers", ["XREAD / XREADGROUP", "on :events;", "weir tail"], style=EXTERNAL),
    ])
    root = Group("diagram", "", direction="row", gap=120, style=PLAIN, padding=0, children=[networks, weir, outside])

    def gap_left(offset: float):
        return lambda layout: layout.right("networks") + offset

    def gap_right(offset: float):
        return lambda layout: layout.right("weir") + offset

    def under_pipeline(layout):
        return layout.bottom("source") + 14

    channel = "chan {}".format
    # lanes chosen so that no two arrows cross (each vertical lane clears the others' horizontals)
    arrows = [
        Arrow("snapchain", "right", "source", "left", lanes=[gap_left(80)]),
        Arrow("atproto", "right", "others", "left", lanes=[gap_left(55)], end_shift=-6),
        Arrow("ethereum", "right", "others", "left", lanes=[gap_left(30)], end_shift=6),
        Arrow("source", "right", "filter", "left", label=channel(SOURCE_TO_FILTER), label_at=1),
        Arrow("filter", "right", "batch", "left", label=channel(FILTER_TO_BATCH), label_at=1),
        Arrow("batch", "right", "persist", "left", label=channel(BATCH_TO_PERSIST), label_at=1),
        Arrow("persist", "right", "redis", "left", lanes=[gap_right(40)], start_shift=-10),
        Arrow("redis", "left", "source", "bottom", lanes=[gap_right(80), under_pipeline], dashed=True,
              label="cursor read at every start: the source resumes at cursor + 1", label_at=3, label_dy=13,
              start_shift=30),
        Arrow("redis", "bottom", "consumers", "top"),
        Arrow("prometheus", "left", "observability", "right", lanes=[gap_right(60)], dashed=True),
    ]
    notes = [
        "Dashed blue border: a supervisor; each child runs as a task in its trio nursery and is restarted by its strategy.",
        "chan N: a trio memory channel holding N chunks (0: a hand-over). The pipeline owns its channels and empties them",
        "before a restart, so a restarted actor gets the same pipes and the source replays from the durable cursor.",
        "Start order persist, batch, filter, source; stop in reverse, the source first, so nothing in flight is dropped.",
        "Solid arrows: events. Dashed: reads (the cursor at every start, scrapes and probes).",
    ]
    return Diagram("weir: supervision tree and data flow", root, arrows, notes)


def main(argv: list[str] | None = None) -> int:
    return diagram_main(diagram, SVG, "tools/architecture_diagram.py", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
