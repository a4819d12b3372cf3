"""The ``[deliver]`` section and its ``[[deliver.pipelines]]`` (docs/delivery.md, Configuration).

Values only: weir.config reads and validates them, weir.deliver.service runs them.
"""

from __future__ import annotations

import attrs

#: Target kinds weir knows; a new target adds its name here and its options class below.
TARGET_KINDS = ("parquet", "nats", "webhook")
PARQUET_COMPRESSIONS = ("zstd", "snappy", "gzip", "none")


@attrs.frozen(kw_only=True)
class DeliverPipelineSettings:
    """One delivery pipeline: a TOML ``[[deliver.pipelines]]`` table.

    One delivery actor runs per partition stream of ``source``; every instance of ``weir deliver``
    configured with the same ``group`` shares the work of it.
    """

    name: str = ""  # names the pipeline in logs and supervision; default "<source>-<target>"
    source: str = ""  # the network whose streams are read (farcaster, atproto, ethereum, …)
    partitions: tuple[str, ...] = ()  # empty: every partition stream of the source found at start
    group: str = ""  # the Redis consumer group; default: the pipeline's name
    start: str = "0"  # where a new group begins: "0" (the whole stream) or "$" (entries from now)
    target: str = "parquet"
    # Parquet target (target = "parquet")
    directory: str = "./weir-parquet"
    compression: str = "zstd"
    row_group_rows: int = 10_000  # rows per row group
    file_rows: int = 1_000_000  # a file is committed once it holds this many rows …
    file_age: float = 10.0  # … or was opened this many seconds ago (also bounds delivery latency)
    # NATS JetStream target (target = "nats"); the URL may carry credentials: it is never shown unredacted
    url: str = "nats://127.0.0.1:4222"
    subject: str = "weir.{source}.{partition}.{kind}"  # fields: {source}, {partition}, {kind}
    stream: str = "WEIR"  # created at start if missing; checked (subjects, duplicate_window) if present
    stream_subjects: tuple[str, ...] = ()  # default: the subject's literal leading tokens + ">" ("weir.>")
    duplicate_window: float = 300.0  # seconds JetStream remembers a Nats-Msg-Id (replays inside it are dropped)
    in_flight: int = 5000  # publishes sent before their acknowledgements are awaited
    ack_timeout: float = 5.0  # seconds to wait for a window's acknowledgements before sending again
    # Webhook target (target = "webhook"): url is the endpoint's http:// or https:// URL (docs/delivery.md, Webhooks)
    secret: str = attrs.field(default="", repr=False)  # the HMAC-SHA256 key; never shown anywhere
    secret_env: str = ""  # or the environment variable holding it (read when the service starts)
    timeout: float = 10.0  # seconds one request may take, from connecting to the response's status
    concurrency: int = 8  # requests in flight to the endpoint at most (all partitions together)
    attempts: int = 3  # tries of an entry per offer (5xx, 408, 429, timeout, connection lost) before it is left pending
    retry_initial: float = 0.5  # backoff between tries: full jitter, its cap doubling from this …
    retry_max: float = 5.0  # … up to this (seconds)
    breaker_failures: int = 5  # consecutive failed tries that open the endpoint's circuit breaker
    breaker_reset: float = 5.0  # seconds it stays open before one trial request (doubling after a failed trial …
    breaker_max_reset: float = 30.0  # … up to this)
    events_per_request: int = 1  # 1: one event per POST, its object the body; N > 1: up to N as {"events": [...]}
    # Which entries go to the endpoint (every non-empty filter must match; within one, any value)
    kinds: tuple[str, ...] = ()  # the entry's kind (MERGE_MESSAGE, commit, log, retract, …)
    fids: tuple[int, ...] = ()  # Farcaster: the fid field
    collections: tuple[str, ...] = ()  # AT Protocol: an NSID (app.bsky.feed.post) or a prefix (app.bsky.*)
    contracts: tuple[str, ...] = ()  # Ethereum: the log's address (any case)
    events: tuple[str, ...] = ()  # Ethereum: the decoded event's name (Transfer, …)

    def nats_stream_subjects(self) -> tuple[str, ...]:
        """The stream's subjects: as configured, or derived from the subject template."""
        from weir.deliver.nats_messages import default_stream_subjects

        return self.stream_subjects or default_stream_subjects(self.subject) or ()


@attrs.frozen(kw_only=True)
class DeliverSettings:
    """Settings shared by every delivery pipeline of this process."""

    consumer: str = ""  # this instance's consumer name; default "<hostname>-<pid>"
    # Entries pending (delivered, not acknowledged) for longer than this are claimed from their
    # consumer, which is taken for dead (XAUTOCLAIM); must be at least 3 x file_age.
    claim_idle: float = 60.0
    claim_interval: float = 5.0  # seconds between XAUTOCLAIM passes
    max_deliveries: int = 5  # an entry delivered this many times without being accepted is dead-lettered
    read_count: int = 5000  # entries per XREADGROUP / XAUTOCLAIM
    block_ms: int = 1000  # how long one XREADGROUP waits for new entries
    # `weir run` also runs these pipelines, as one more child of its root supervisor (pipelines
    # without partitions then deliver the partitions weir ingests).
    with_run: bool = False
    pipelines: tuple[DeliverPipelineSettings, ...] = ()

    def consumer_name(self) -> str:
        if self.consumer:
            return self.consumer
        import os
        import socket

        return f"{socket.gethostname()}-{os.getpid()}"
