"""docs/delivery.svg: how `weir deliver` moves entries from Redis to a target, drawn from this
description.

    python tools/delivery_diagram.py            # writes docs/delivery.svg
    python tools/delivery_diagram.py --check    # exits 1 if the committed SVG differs from it

The target kinds are read from weir (weir/deliver/settings.py), so a new target fails the check
until it is drawn; tests/test_architecture_diagram.py checks the committed SVG is this output.
"""

from __future__ import annotations

from pathlib import Path

from svg_boxes import (ACTOR, EXTERNAL, PLAIN, PROCESS, REDIS, SUPERVISOR, Arrow, Box, Diagram, Group, 
                       diagram_main)

from weir.deliver.settings import TARGET_KINDS

SVG = Path(__file__).resolve().parent.parent / "docs" / "delivery.svg"


# What each target makes durable before the core may acknowledge (docs/delivery.md, Guarantees).
TARGETS = {
    "parquet": Box("parquet", "Parquet files", ["<source>/<partition>/<hour>/", "written to a temporary file,",
                                                 "fsynced, renamed: then XACK;", "exactly once per entry id"],
                   style=EXTERNAL),
    "nats": Box("nats", "NATS JetStream", ["publish acknowledged: XACK;", "Nats-Msg-Id = entry identity,",
                                           "replays dropped in the", "duplicate window: exactly once"], style=EXTERNAL),
    "webhook": Box("webhook", "webhook endpoint", ["signed JSON POST (HMAC-SHA256);", "2xx: XACK; 5xx/timeout: retried",
                                                   "with backoff, breaker per endpoint;", "at least once, stable",
                                                   "Weir-Idempotency-Key"], style=EXTERNAL),
}


def diagram() -> Diagram:
    missing = set(TARGET_KINDS) - set(TARGETS)
    if missing:
        raise SystemExit(f"targets not drawn: {', '.join(sorted(missing))} (tools/delivery_diagram.py)")
    redis = Group("redis-side", "", direction="column", gap=30, style=PLAIN, padding=0, children=[
        Box("run", "weir run", ["ingestion (docs/architecture.svg)"], style=EXTERNAL),
        Box("redis", "Redis", ["{weir:<source>:<partition>}:", ":events stream, read by", "consumer group <group>",
                               "(one per pipeline;", "a webhook endpoint has its own)", "",
                               ":undelivered:<group> stream:", "entries given up, with reason"], style=REDIS),
    ])
    pipeline = Group("pipeline", "one pipeline × partition · supervised · nursery", direction="row", gap=56,
                     style=SUPERVISOR, children=[
                         Box("read", "read", ["XREADGROUP new entries", "(one batch ahead);",
                                              "XAUTOCLAIM entries idle", "past claim_idle (a dead", "instance's)"],
                             style=ACTOR),
                         Box("core", "deliver core", ["skip what the target", "already holds; offer;",
                                                      "refused past", "max_deliveries: dead", "letter + XACK (MULTI)"],
                             style=ACTOR),
                         Box("target", "target", ["prepare, then commit", "only while every entry", "is still pending to",
                                                  "this consumer (XPENDING)"], style=ACTOR),
                     ])
    deliver = Group("deliver", "weir deliver process (or inside weir run: deliver.with_run)", direction="column",
                    style=PROCESS, bottom=36, children=[pipeline])
    targets = Group("targets", "", direction="column", gap=18, style=PLAIN, padding=0,
                    children=[TARGETS[kind] for kind in TARGETS])
    root = Group("diagram", "", direction="row", gap=110, style=PLAIN, padding=0, children=[redis, deliver, targets])

    def left_gap(offset: float):
        return lambda layout: layout.right("redis-side") + offset

    def right_gap(offset: float):
        return lambda layout: layout.right("deliver") + offset

    def under_pipeline(layout):
        return layout.bottom("pipeline") + 18

    arrows = [
        Arrow("run", "bottom", "redis", "top"),
        Arrow("redis", "right", "read", "left", label="entries", lanes=[left_gap(50)], start_shift=-20),
        Arrow("read", "right", "core", "left"),
        Arrow("core", "right", "target", "left"),
        Arrow("target", "right", "parquet", "left", lanes=[right_gap(30)], start_shift=-12),
        # the lower target takes the nearer lane, so that no two arrows cross
        Arrow("target", "right", "nats", "left", lanes=[right_gap(80)]),
        Arrow("target", "right", "webhook", "left", lanes=[right_gap(55)], start_shift=12),
        Arrow("target", "bottom", "redis", "right", lanes=[under_pipeline, left_gap(25)], dashed=True,
              label="XACK once durable", label_at=1, label_dy=13, end_shift=20),
    ]
    notes = [
        "An entry leaves the group's pending list only by XACK after its target made it durable, or into the",
        "delivery dead-letter stream in the same MULTI as its XACK. Several instances share a group; a dead",
        "one's entries are claimed after claim_idle and looked up in the target before they are written again.",
        "Solid arrows: entries. Dashed: acknowledgements.",
    ]
    return Diagram("weir deliver: from Redis streams to targets", root, arrows, notes)


def main(argv: list[str] | None = None) -> int:
    return diagram_main(diagram, SVG, "tools/delivery_diagram.py", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
