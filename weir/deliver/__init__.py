"""Delivery downstream: ``weir deliver`` reads the partition streams weir writes through Redis
consumer groups and hands each entry to a target (Parquet files, NATS JetStream), acknowledging an entry only
once the target has durably accepted it (docs/delivery.md).

    settings.py   the [deliver] configuration values
    decisions.py  sans-IO rules: which claimed entries to dead-letter, when to roll a file, hours
    group.py      the Redis consumer-group calls (over weir.bridge)
    target.py     the Target interface every target implements
    parquet_rows.py / parquet.py   the Parquet target: rows per source, files, commit protocol
    nats_messages.py / jetstream.py   the NATS JetStream target: messages of entries, publishing
    actor.py      one partition's delivery loop (a thin shell over the above)
    service.py    the supervision tree of ``weir deliver``
"""
