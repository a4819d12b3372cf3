"""The built-in delivery scenarios: ``weir deliver`` beside ``weir run`` under the Farcaster load.

Each runs the ingesting ``weir run`` (two simulated Snapchain shards) and one ``weir deliver``
into a target, faults on the deliverer, the target or Redis while entries flow, and ends with the
ingestion checks of every scenario plus the delivery checker (:mod:`weir.chaos.delivery`,
:mod:`weir.chaos.delivery_check`): every entry of both partition streams in the target exactly
once, nothing else, nothing pending in the group, no delivery dead letters. Kept short (a few
seconds of load at 500 events/s per shard) so CI runs them all; docs/resilience.md has the figures.
"""

from __future__ import annotations

from weir.chaos.delivery import Delivery
from weir.chaos.delivery_targets import NATS, PARQUET, WEBHOOK
from weir.chaos.scenario import REDIS_OUTAGE_LOGS, Scenario, fault
from weir.chaos.schedule import Schedule

__all__ = ["scenarios"]

#: Two kills of the deliverer, each landing while it holds entries (waited for), down 0.3 s: the
#: second lands before the first one's entries were claimed (claim_idle 3 s), so two dead
#: consumers' entries are taken over by the third instance.
_KILLS = (fault("deliver", "kill", 1.0, 0.3), fault("deliver", "kill", 2.0, 0.3))
#: A lighter load for webhooks (one POST per entry: a few hundred a second on the 2-core CI machine),
#: read 200 at a time so that an offer fits in its time (claim_idle / 3) rather than giving entries back.
_WEBHOOK_RATE, _WEBHOOK_HISTORY = 100.0, 200
_WEBHOOK_SETTINGS = ("deliver.read_count=200",)


def scenarios() -> list[Scenario]:
    """Every delivery scenario."""
    return [
        Scenario(
            name="deliver-parquet-kill",
            label="weir deliver kill -9 ×2 mid-file (Parquet), restarted 0.3 s later",
            description="weir deliver writes Parquet files (file_age 0.3 s) while entries flow and is killed (SIGKILL) "
                        "twice with a file open and entries read but not acknowledged; each restart has a new "
                        "consumer name, so the dead consumers' entries are claimed and their temporary files deleted.",
            schedule=Schedule(seed=41, faults=list(_KILLS)),
            rate=500.0,
            delivery=Delivery(target=PARQUET, expect=("deliver_temp_removed", "deliver_claimed")),
            max_restarts=0,
        ),
        Scenario(
            name="deliver-nats-kill",
            label="weir deliver kill -9 ×2 mid-publish (NATS JetStream), restarted 0.3 s later",
            description="weir deliver publishes to JetStream while entries flow and is killed (SIGKILL) twice with "
                        "entries read and not acknowledged (published or in flight); they are claimed and published "
                        "again, and JetStream drops the repeats by Nats-Msg-Id.",
            schedule=Schedule(seed=42, faults=list(_KILLS)),
            rate=500.0,
            delivery=Delivery(target=NATS, expect=("deliver_claimed",)),
            max_restarts=0,
        ),
        Scenario(
            name="deliver-nats-restart",
            label="nats-server kill -9 ×2 (down 0.5 s), same port and store",
            description="The nats-server of the JetStream target is killed (SIGKILL) twice under load and started "
                        "again 0.5 s later on the same port and store directory; weir deliver publishes again what "
                        "was not acknowledged, and JetStream's deduplication keeps each entry once.",
            schedule=Schedule(seed=43, faults=[fault("nats", "kill", 1.0, 0.5), fault("nats", "kill", 2.5, 0.5)]),
            rate=500.0,
            delivery=Delivery(target=NATS, expect=("deliver_nats_disconnected",)),
            max_restarts=0,
        ),
        Scenario(
            name="deliver-redis-hang",
            label="redis_link timeout (hang) 3.5 s under ingestion and Parquet delivery",
            description="The Redis link holds every byte for 3.5 s — longer than claim_idle (3 s) — while weir run "
                        "ingests and weir deliver has files open: reads, acknowledgements and the commit checks all "
                        "hang; what was held may look abandoned, and must still be in exactly one file.",
            schedule=Schedule(seed=44, faults=[fault("redis_link", "timeout", 1.0, 3.5)]),
            rate=500.0,
            expect=REDIS_OUTAGE_LOGS,
            delivery=Delivery(target=PARQUET, expect=("deliver_redis_unavailable",)),
        ),
        Scenario(
            name="deliver-webhook-kill",
            label="weir deliver kill -9 ×2 mid-request (webhook), restarted 0.3 s later",
            description="weir deliver POSTs every entry to an HTTP receiver the run serves and is killed (SIGKILL) "
                        "twice holding entries the receiver already answered 200 and Redis has not had acknowledged; "
                        "they are claimed and POSTed again under the same Weir-Idempotency-Key, each request's "
                        "signature verified.",
            schedule=Schedule(seed=45, faults=list(_KILLS)),
            rate=_WEBHOOK_RATE, history=_WEBHOOK_HISTORY, tail=1.0,
            delivery=Delivery(target=WEBHOOK, settings=_WEBHOOK_SETTINGS, expect=("deliver_claimed",)),
            max_restarts=0,
        ),
        Scenario(
            name="deliver-webhook-faults",
            label="webhook endpoint answers 500, hangs, closes early (0.5 s each, 0.3 s apart)",
            description="The receiving endpoint answers every request 500, then reads requests and never answers "
                        "(past the 0.5 s timeout), then closes connections before answering; weir deliver retries, "
                        "leaves what still failed pending and delivers it again after claim_idle under the same "
                        "idempotency key.",
            schedule=Schedule(seed=46, faults=[fault("endpoint", "error_500", 1.0, 0.5), fault("endpoint", "hang", 1.8, 0.5),
                                               fault("endpoint", "close_early", 2.6, 0.5)]),
            rate=_WEBHOOK_RATE, history=_WEBHOOK_HISTORY, tail=1.0,
            delivery=Delivery(target=WEBHOOK, settings=_WEBHOOK_SETTINGS, expect=("deliver_webhook_given_back",)),
            max_restarts=0,
        ),
    ]
