"""The Ethereum scenarios: one simulated chain (:mod:`weir.chaos.ethereum`) under faults and reorgs.

Every run is judged by replaying the chain's stream against the node's final canonical chain
(:func:`~weir.chaos.checker.compare_chain`): nothing lost, nothing held twice, nothing held that is
not canonical, and no retraction of a block of the final canonical chain. Load: 400 logs/s (a
block of 8 logs every 20 ms) after a history of 500 logs, unless a scenario says otherwise.
"""

from __future__ import annotations

from weir.chaos.ethereum import EthereumSource
from weir.chaos.scenario import REDIS_OUTAGE_LOGS, Scenario, fault
from weir.chaos.schedule import Schedule

__all__ = ["scenarios"]

RATE = 400.0  # logs/s: a block every 20 ms

PLAIN = EthereumSource()
REORGING = EthereumSource(reorg_every=6, max_reorg_depth=3)  # a reorg of 1..3 blocks every ~6 blocks


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            name="eth-reorg-while-redis-down",
            label="redis-server kill -9 (down 1 s) with reorgs of 1 and 3 blocks meanwhile",
            description="redis-server is killed under load; while it is down the node replaces its top block, then "
                        "its top 3 blocks. weir retracts what it emitted of the orphans once Redis is back: the "
                        "retractions wait in the pipeline like any entry, nothing canonical is retracted.",
            source=PLAIN,
            schedule=Schedule(seed=101, faults=[
                fault("redis", "kill", 1.0, 1.0),
                fault("node", "reorg", 1.3, depth=1),
                fault("node", "reorg", 1.7, depth=3),
            ]),
            rate=RATE,
            expect=("reorg",) + REDIS_OUTAGE_LOGS,
            max_restarts=0,
        ),
        Scenario(
            name="eth-deep-reorg",
            label="reorg of 5 blocks under 2 confirmations (the node replaces blocks weir emitted as confirmed)",
            description="With confirmations = 2 a reorg of up to 2 blocks touches only blocks weir has not emitted; "
                        "this one replaces 5, so 3 emitted blocks are retracted and the reorg is logged at ERROR "
                        "(deep). Then a reorg of 2 blocks, which must retract nothing.",
            source=EthereumSource(confirmations=2, weir_max_reorg_depth=16),
            schedule=Schedule(seed=102, faults=[fault("node", "reorg", 1.0, depth=5), fault("node", "reorg", 2.0, depth=2)]),
            rate=RATE,
            expect=("reorg:deep~True",),
            max_restarts=0,
        ),
        Scenario(
            name="eth-reorg-beyond-window",
            label="reorg of 8 blocks on a follower that keeps 4: weir stops (exit 3), nothing wrong written",
            description="weir keeps max_reorg_depth (4 here) emitted blocks to retract from; the node replaces 8. "
                        "weir will not guess what to retract: the chain's pipeline retries within its restart "
                        "intensity, then weir stops with one `fatal:` line naming the blocks (ReorgTooDeep) and "
                        "exit code 3, instead of crash-looping. The stream then holds exactly the branch its cursor "
                        "names, each log once.",
            source=EthereumSource(weir_max_reorg_depth=4, judge_at_cursor=True),
            schedule=Schedule(seed=109, faults=[fault("node", "reorg", 1.0, depth=8)]),
            rate=RATE,
            exits=3,
            expect=("fatal:error~ReorgTooDeep",),
            drain_timeout=20.0,
        ),
        Scenario(
            name="eth-reannounce-on-subscribe",
            label="node re-announces its last 32 heads after every subscribe; drops ×4, weir kill -9",
            description="A load-balanced provider announces its recent heads again after each eth_subscribe: blocks "
                        "weir holds, at and below its cursor. Each drop makes weir resubscribe; the repeats must "
                        "change nothing (weir_ignored_heads_total{reason=repeat}), and a weir restart (kill -9) "
                        "with only the cursor kept must not retract them either (issue 9's defect).",
            source=EthereumSource(reannounce=32),
            schedule=Schedule(seed=103, faults=[
                fault("node", "drop", 0.5), fault("node", "drop", 1.0), fault("weir", "kill", 1.5, 0.2),
                fault("node", "drop", 2.5), fault("node", "drop", 3.0),
            ]),
            rate=RATE,
            expect=("disconnect",),
            max_restarts=0,
        ),
        Scenario(
            name="eth-lagging-backend",
            label="two backends behind one URL, one 6 blocks behind; connections dropped ×4, reorgs",
            description="A load balancer sends every second connection to a backend 6 blocks behind: after a drop "
                        "weir may land on it, where its cursor's block does not exist yet, heads are below its tip "
                        "and ranges end early. weir waits for it (NodeBehind) or follows the other backend; it never "
                        "retracts a canonical block and misses none.",
            source=EthereumSource(lagging_backend=6, reorg_every=8, max_reorg_depth=2, reannounce=2),
            schedule=Schedule(seed=104, faults=[
                fault("node", "drop", 0.5), fault("node", "drop", 1.2), fault("node", "drop", 1.9),
                fault("node", "drop", 2.6),
            ]),
            rate=RATE,
            expect=("disconnect",),
            max_restarts=0,
        ),
        Scenario(
            name="eth-kill-during-retraction",
            label="weir kill -9 ×4 on a chain that reorgs every ~6 blocks (1-3 deep)",
            description="The weir process is killed four times while the node reorganises often, so kills land "
                        "between a reorg's retractions and its new branch; each restart resumes from the cursor "
                        "(the retracted block's parent) and finishes the reorg exactly once.",
            source=REORGING,
            schedule=Schedule(seed=105, faults=[
                fault("redis_link", "latency", 0.0, 4.2, ms=5),
                fault("weir", "kill", 0.8, 0.2), fault("weir", "kill", 1.7, 0.2),
                fault("weir", "kill", 2.6, 0.2), fault("weir", "kill", 3.5, 0.2),
            ]),
            rate=RATE,
            max_restarts=0,  # weir itself is started again (the process level); no supervisor acts
        ),
        Scenario(
            name="eth-backfill-cut",
            label="node_link reset ×3 while weir backfills 8,000 logs of history by ranges of 20 blocks",
            description="weir starts 1,000 blocks behind and catches up by eth_getLogs ranges; the link is reset "
                        "three times in the middle of it. Each reconnect resubscribes and backfills again from the "
                        "cursor; nothing is fetched twice into the stream.",
            source=EthereumSource(backfill_blocks=20),
            schedule=Schedule(seed=106, faults=[
                fault("node_link", "reset_peer", 0.1, 0.05), fault("node_link", "reset_peer", 0.4, 0.05),
                fault("node_link", "reset_peer", 0.7, 0.05),
            ]),
            rate=RATE,
            history=8000,
            expect=("disconnect", "backfill"),
            max_restarts=0,
        ),
        Scenario(
            name="eth-range-refused",
            label="provider refuses eth_getLogs ranges over 5 blocks; node silent 2 s (idle watchdog)",
            description="The node answers -32005 to any range of more than 5 blocks, so the backfill halves its ranges "
                        "down to what is accepted; then the link holds every byte for 2 s without closing, which "
                        "only the idle watchdog notices (1 s here), and weir reconnects.",
            source=EthereumSource(max_range=5),
            schedule=Schedule(seed=107, faults=[fault("node_link", "timeout", 1.5, 2.0)]),
            rate=RATE,
            history=2000,
            expect=("backfill:range_splits", "disconnect"),
            max_restarts=0,
        ),
        Scenario(
            name="eth-redis-hang",
            label="redis_link timeout (hang) 3 s on a reorging chain",
            description="The Redis link holds every byte for 3 s while the chain keeps reorganising: the persist "
                        "actor retries the same batch behind the breaker; the source is slowed by the full pipeline.",
            source=REORGING,
            schedule=Schedule(seed=108, faults=[fault("redis_link", "timeout", 1.0, 3.0)]),
            rate=RATE,
            expect=REDIS_OUTAGE_LOGS,
            max_restarts=0,
        ),
    ]
