"""weir's configuration: one typed object, loaded from TOML, then environment, then flags.

Precedence: built-in defaults < ``weir.toml`` < ``WEIR_<SECTION>_<KEY>`` environment variables <
command-line ``--set section.key=value`` (and the named flags the CLI maps onto them). Every value is
validated here, at the edge; a bad one raises :class:`ConfigError` with a one-line message that names
the field and where the value came from.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import attrs

from weir.codecs.farcaster_keys import HUB_EVENT_TYPE_BY_NAME, MESSAGE_TYPE_BY_NAME
from weir.deliver.decisions import partition_problem
from weir.deliver.settings import PARQUET_COMPRESSIONS, TARGET_KINDS, DeliverPipelineSettings, DeliverSettings
from weir.sinks.keys import validate_name, validate_prefix
from weir.redact import redact_url
from weir.supervision.breaker import CircuitBreaker

_GRPC_LENGTH_MAX = 2**32 - 1
MAINNET_SNAPCHAIN_URL = "https://snapchain.farcaster.xyz:3383"
BSKY_RELAY_URL = "wss://bsky.network"
BSKY_JETSTREAM_URL = "wss://jetstream2.us-east.bsky.network"
# The zstd dictionary Bluesky's Jetstream servers compress with, as published in the Jetstream repository.
JETSTREAM_ZSTD_DICTIONARY_URL = "https://raw.githubusercontent.com/bluesky-social/jetstream/main/pkg/models/zstd_dictionary"
ENV_PREFIX = "WEIR_"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and its origin."""


@attrs.frozen(kw_only=True)
class RedisSettings:
    url: str = ""  # empty: start the embedded redis-server
    data_dir: str = "./weir-data"
    appendfsync: str = "everysec"
    prefix: str = "weir"
    socket_timeout: float = 5.0


@attrs.frozen(kw_only=True)
class BatchSettings:
    max_events: int = 500
    max_bytes: int = 1 << 20
    max_age_ms: int = 50
    eager: bool = True


@attrs.frozen(kw_only=True)
class SupervisionSettings:
    max_restarts: int = 5
    period: float = 30.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    breaker_failures: int = 5
    breaker_reset: float = 1.0
    breaker_reset_max: float = 30.0  # each failed trial doubles the wait, up to this

    def breaker(self, name: str) -> CircuitBreaker:
        """A circuit breaker for one external dependency, with these settings."""
        return CircuitBreaker(name, failure_threshold=self.breaker_failures, reset_timeout=self.breaker_reset,
                              max_reset_timeout=self.breaker_reset_max)


def default_verify_workers() -> int:
    """farcaster.verify_workers (per shard): 2 where there is a second core, else 0 (in the reader).

    At most as many verifications as cores run at once, whatever the number of shards
    (trio-parallel's default limiter), so more workers per shard would add processes, not speed.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return 0 if cores < 2 else 2


@attrs.frozen(kw_only=True)
class FarcasterSettings:
    enabled: bool = True
    url: str = MAINNET_SNAPCHAIN_URL
    shards: tuple[int, ...] = ()  # empty: discover with GetInfo
    # Where to begin when a shard has no cursor yet: "live" (from now), "oldest" (all retained), or an event id.
    start: str = "live"
    # Sent in SubscribeRequest (server-side); BLOCK_CONFIRMED is always added, for gap detection.
    event_types: tuple[str, ...] = ()  # empty: every type
    # Local filters, on scanned keys (no decoding). Empty: keep all.
    fids: frozenset[int] = frozenset()
    message_types: tuple[str, ...] = ()
    idle_timeout: float = 30.0
    connect_timeout: float = 10.0
    # Seconds between two GetInfo calls while streaming, for the shard's height (the progress head).
    head_refresh: float = 10.0
    read_batch: int = 512
    # What weir trusts of a node (docs/security.md): the hash and signature of every message that
    # passes the filter; the largest HubEvent taken (a larger one is dead-lettered with its first
    # dead_letter_bytes); how far past the node's announced height (GetInfo, then the blocks
    # received) an event id may point; implausible ids in a row before the node is disconnected.
    verify: bool = True
    # Processes per shard that verify in parallel (weir/actors/verify_workers.py); 0: in the reader.
    verify_workers: int = attrs.Factory(default_verify_workers)
    max_message_bytes: int = 4 * 1024 * 1024
    dead_letter_bytes: int = 1024
    max_block_jump: int = 1000
    max_bad_positions: int = 10


@attrs.frozen(kw_only=True)
class AtprotoSettings:
    """The AT Protocol source (docs/atproto.md): the relay firehose or Jetstream, one partition."""

    enabled: bool = False
    mode: str = "firehose"  # firehose (com.atproto.sync.subscribeRepos, DAG-CBOR) | jetstream (JSON)
    url: str = BSKY_RELAY_URL  # the firehose relay (mode = firehose)
    jetstream_url: str = BSKY_JETSTREAM_URL  # the Jetstream server (mode = jetstream)
    partition: str = ""  # empty: "<mode>-<host>"; the cursor unit (seq vs time_us) differs per mode
    # Where to begin without a cursor: "live", "oldest" (all retained), or a seq / time_us.
    start: str = "live"
    # Filters, applied before records are decoded (Jetstream also gets collections and DIDs).
    collections: tuple[str, ...] = ()  # exact NSIDs or "prefix.*"; empty: all
    dids: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()  # create, update, delete
    kinds: tuple[str, ...] = ()  # commit, identity, account, sync; empty: all
    record_format: str = "dag-cbor"  # payload of record events: dag-cbor (original bytes) | json
    compress: bool = False  # Jetstream zstd
    # A file path or an http(s) URL (fetched once, cached under redis.data_dir); empty with
    # compress = true: JETSTREAM_ZSTD_DICTIONARY_URL, the dictionary Bluesky's servers use.
    zstd_dictionary: str = ""
    # What weir trusts of a relay (docs/security.md). Size limits: a firehose frame or a Jetstream
    # message (decompressed); a commit's ops and its CAR of blocks (the protocol's own limits). An
    # item over one is dead-lettered with its first dead_letter_bytes, and the stream goes on.
    max_frame_bytes: int = 5_000_000
    max_ops: int = 200
    max_blocks_bytes: int = 2_000_000
    dead_letter_bytes: int = 1024
    max_bad_frames: int = 20  # malformed frames in a row before the connection is dropped and reopened
    # Positions: how far above the last accepted firehose seq a seq may be (unless the relay says
    # OutdatedCursor); how many seconds past the wall clock a Jetstream time_us may be; implausible
    # positions in a row before the relay is disconnected and reported.
    max_seq_jump: int = 1_000_000
    max_future_skew: float = 300.0
    max_bad_positions: int = 10
    rev_cache: int = 1_000_000  # DIDs whose last rev is remembered (for the stale-rev check)
    # Jetstream: seconds of time_us a connection resumes before the cursor, and for which the
    # identities of persisted events are remembered (late events around the replay-to-live cutover).
    jetstream_rewind: float = 2.0
    idle_timeout: float = 60.0
    connect_timeout: float = 10.0
    read_batch: int = 256


@attrs.frozen(kw_only=True)
class MetricsSettings:
    """The HTTP endpoint for /metrics, /healthz and /readyz (docs/observability.md)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464  # 0: any free port (the bound one is logged and on Service.observability)
    # /readyz fails for a partition with events pending and no durable write for this long.
    stale_after: float = 30.0
    # Limits that keep the endpoint from being exhausted (docs/security.md): connections open at
    # once (one more gets 503 and is closed at once), seconds before a request must begin, and
    # seconds from its first byte until it must be complete.
    max_connections: int = 64
    idle_timeout: float = 5.0
    request_timeout: float = 5.0


@attrs.frozen(kw_only=True)
class ProgressSettings:
    """How far behind the network's head each partition is (docs/observability.md, "Progress")."""

    # Seconds between two ``progress`` log events while weir runs.
    log_interval: float = 10.0
    # Seconds over which the catch-up rate (and the head's growth) is averaged for the ETA.
    window: float = 30.0
    # ``weir run`` shows a live progress line on stderr when it is a terminal (false: never).
    terminal: bool = True


@attrs.frozen(kw_only=True)
class EthereumChainSettings:
    """One Ethereum-family chain (docs/ethereum.md): a TOML ``[[ethereum.chains]]`` table."""

    chain_id: int = 0  # checked against eth_chainId; the partition name
    url: str = ""  # ws:// or wss:// JSON-RPC endpoint
    addresses: tuple[str, ...] = ()  # eth_getLogs address filter; empty: every contract
    # eth_getLogs topics, by position: each a tuple of alternatives (OR), or None (any). Configured
    # as a list of topic0 alternatives, or positionally: [["0xddf2…"], null, ["0x…"]] (null or []: any).
    topics: tuple[tuple[str, ...] | None, ...] = ()
    confirmations: int = 0  # emit a block's logs when this many blocks are on top of it
    start: str = "latest"  # without a cursor: "latest" (the current head) or a block number
    block_time: float = 12.0  # seconds, expected
    idle_blocks: float = 5.0  # no head for idle_blocks x block_time: ask eth_blockNumber, reconnect
    max_reorg_depth: int = 64  # deepest reorg that is retracted exactly (blocks kept in memory)
    backfill_blocks: int = 1000  # blocks per eth_getLogs range when catching up (halved when refused)
    gap_fetch: int = 16  # a gap up to this many blocks is filled block by block, above by ranges
    # The largest JSON-RPC reply (one WebSocket message) weir reads. A range above it is split; one
    # block's logs above it are dead-lettered, the block applied without them (docs/security.md).
    max_reply_bytes: int = 64 << 20
    max_logs_per_block: int = 100_000  # more matching logs in one block: dead-lettered as one (docs/security.md)
    request_timeout: float = 10.0
    connect_timeout: float = 10.0


@attrs.frozen(kw_only=True)
class EthereumSettings:
    """Ethereum-family chains: one pipeline per chain, partition = chain id."""

    enabled: bool = False
    chains: tuple[EthereumChainSettings, ...] = ()
    # Extra event declarations to decode, e.g. "Approval(address indexed owner, address indexed spender, uint256 value)".
    abis: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Config:
    """Every setting of the service, one section per attribute (``Config()``: the defaults).

    Build one with :func:`load_config` (validated, as the CLI does), or change one with
    ``attrs.evolve(config, farcaster=attrs.evolve(config.farcaster, start="oldest"))``.
    """

    redis: RedisSettings = RedisSettings()
    batch: BatchSettings = BatchSettings()
    supervision: SupervisionSettings = SupervisionSettings()
    farcaster: FarcasterSettings = FarcasterSettings()
    ethereum: EthereumSettings = EthereumSettings()
    atproto: AtprotoSettings = AtprotoSettings()
    metrics: MetricsSettings = MetricsSettings()
    progress: ProgressSettings = ProgressSettings()
    deliver: DeliverSettings = DeliverSettings()  # `weir deliver` (docs/delivery.md)
    log_level: str = "INFO"
    log_format: str = "auto"  # auto | text | json


_SECTIONS: dict[str, type] = {
    "redis": RedisSettings,
    "batch": BatchSettings,
    "supervision": SupervisionSettings,
    "farcaster": FarcasterSettings,
    "ethereum": EthereumSettings,
    "atproto": AtprotoSettings,
    "metrics": MetricsSettings,
    "progress": ProgressSettings,
    "deliver": DeliverSettings,
}
_TOP_LEVEL = {"log_level", "log_format"}


def environment_variables() -> dict[str, list[str]]:
    """Every ``WEIR_*`` variable that sets a setting, by section ("" for the top level)."""
    names = {"": sorted(f"{ENV_PREFIX}{key.upper()}" for key in _TOP_LEVEL)}
    for section, cls in _SECTIONS.items():
        names[section] = [f"{ENV_PREFIX}{section.upper()}_{field.name.upper()}" for field in attrs.fields(cls)]
    return names


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    origins: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from a TOML file, the environment and ``section.key=value`` overrides.

    ``origins`` names where an override came from (``"command line --data-dir"``), by its key;
    an override without one is from ``"command line"``.

    Raises:
        ConfigError: unreadable file, unknown section or key, or an invalid value.
    """
    raw: dict[str, dict[str, tuple[Any, str]]] = {}  # section -> key -> (value, origin)
    if path is not None:
        path = Path(path)
        try:
            document = tomllib.loads(_read_config_file(path))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
        for section, body in document.items():
            if section in _TOP_LEVEL:
                raw.setdefault("", {})[section] = (body, str(path))
                continue
            if not isinstance(body, dict):
                if section not in _SECTIONS:  # `foo = 1` at the top: a misspelt or unknown setting
                    known = ", ".join(sorted(_TOP_LEVEL | {f"[{name}]" for name in _SECTIONS}))
                    raise ConfigError(f"{section}: unknown setting (in {path}); known at the top level: {known}")
                raise ConfigError(f"{section}: expected a [{section}] table in {path}")
            for key, value in body.items():
                if isinstance(value, dict):  # [farcaster.filter]-style sub-tables flatten into the section
                    for sub_key, sub_value in value.items():
                        raw.setdefault(section, {})[sub_key] = (sub_value, str(path))
                else:
                    raw.setdefault(section, {})[key] = (value, str(path))
    for name, value in (os.environ if environ is None else environ).items():
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = name[len(ENV_PREFIX) :].lower()
        section, _, key = dotted.partition("_")
        if section + "_" + key in _TOP_LEVEL:
            raw.setdefault("", {})[section + "_" + key] = (value, f"environment {name}")
        elif section in _SECTIONS and key:
            raw.setdefault(section, {})[key] = (value, f"environment {name}")
    for dotted, value in (overrides or {}).items():
        origin = (origins or {}).get(dotted, "command line")
        section, _, key = dotted.partition(".")
        if not key and section in _TOP_LEVEL:
            raw.setdefault("", {})[section] = (value, origin)
        elif not section or not key:
            raise ConfigError(f"{dotted!r}: expected SECTION.KEY (or log_level, log_format) (from {origin})")
        else:
            raw.setdefault(section, {})[key] = (value, origin)
    return _build(raw)


def require_a_network(config: Config) -> None:
    """``weir run``'s check that ``config`` enables one of weir's networks.

    Not part of :func:`load_config`: a program embedding weir may run only networks of its own
    (docs/embedding.md), with every built-in one disabled.

    Raises:
        ConfigError: no built-in network is enabled.
    """
    if not (config.farcaster.enabled or config.atproto.enabled or config.ethereum.enabled):
        raise ConfigError("farcaster.enabled: no network is enabled: set farcaster.enabled, atproto.enabled "
                          "or ethereum.enabled to true")


def _read_config_file(path: Path) -> str:
    """The file's text; a missing, unreadable or non-UTF-8 file is a ConfigError naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"config file {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); TOML files are UTF-8"
        ) from None


def _build(raw: dict[str, dict[str, tuple[Any, str]]]) -> Config:
    sections: dict[str, Any] = {}
    for section, entries in raw.items():
        if section == "":
            continue
        cls = _SECTIONS.get(section)
        if cls is None:
            origin = next(iter(entries.values()))[1]
            raise ConfigError(f"{section}: unknown section (from {origin}); known: {', '.join(_SECTIONS)}")
        fields = {field.name: field for field in attrs.fields(cls)}
        values: dict[str, Any] = {}
        for key, (value, origin) in entries.items():
            field = fields.get(key)
            if field is None:
                raise ConfigError(f"{section}.{key}: unknown setting (from {origin}); known: {', '.join(fields)}")
            values[key] = _coerce(f"{section}.{key}", value, field.type, origin)
        sections[section] = cls(**values)
    for key, (_value, origin) in raw.get("", {}).items():
        if key not in _TOP_LEVEL:  # only reachable through load_config's callers, not TOML or the environment
            raise ConfigError(f"{key}: unknown setting (from {origin}); known: {', '.join(sorted(_TOP_LEVEL))}")
    top = {key: str(value) for key, (value, _origin) in raw.get("", {}).items()}
    config = Config(**sections, **top)
    _validate(config, raw)
    return config


def _coerce(name: str, value: Any, kind: Any, origin: str) -> Any:
    kind = str(kind)
    if kind.startswith("tuple[EthereumChainSettings"):  # outside the try: its errors are already ConfigErrors
        return _coerce_tables(name, value, EthereumChainSettings, origin)
    if kind.startswith("tuple[DeliverPipelineSettings"):
        return _coerce_tables(name, value, DeliverPipelineSettings, origin)
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, (bool, float)):  # TOML 1.5 for an integer: refused, not truncated
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{name}: expected a finite number, got {value!r} (from {origin})")
            return number
        if kind == "str":
            if not isinstance(value, (str, int)):
                raise ValueError
            return str(value)
        if kind.startswith(("tuple[int", "frozenset[int")):
            items = _as_list(value)
            if any(isinstance(item, (bool, float)) for item in items):
                raise ValueError
            numbers = tuple(int(item) for item in items)
            return frozenset(numbers) if kind.startswith("frozenset") else numbers
        if kind.startswith("tuple[str"):
            return tuple(str(item).strip() for item in _as_list(value) if str(item).strip())
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {_describe(kind)}, got {value!r} (from {origin})") from None
    raise ConfigError(f"{name}: unsupported setting type {kind}")  # a bug in this module, not the user's


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):  # environment / flags: comma-separated, or a JSON array
        if value.lstrip().startswith("["):  # for items that contain commas (event ABIs)
            import json

            items = json.loads(value)  # a JSONDecodeError is a ValueError: "expected a list of ..."
            if not isinstance(items, list):
                raise ValueError
            return items
        return [part for part in value.split(",") if part.strip()]
    raise ValueError


def _describe(kind: str) -> str:
    return {
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "str": "a string",
    }.get(kind, "a list of integers" if "int" in kind else "a list of strings")


_UINT64_MAX = (1 << 64) - 1
_INT64_MAX = (1 << 63) - 1


def _port_parses(parts: SplitResult) -> bool:
    """The URL's port is absent or a number from 0 to 65535 (urllib raises on reading it otherwise)."""
    try:
        _ = parts.port
    except ValueError:
        return False
    return True


def _is_position(text: str, maximum: int) -> bool:
    """``text`` is a decimal cursor (event id, seq, block number) from 0 to ``maximum``."""
    return text.isascii() and text.isdigit() and int(text) <= maximum


def _validate(config: Config, raw: dict[str, dict[str, tuple[Any, str]]]) -> None:
    def fail(name: str, message: str) -> None:
        section, key = name.split(".", 1) if "." in name else ("", name)  # top-level keys live under ""
        origin = raw.get(section, {}).get(key, (None, "defaults"))[1]
        raise ConfigError(f"{name}: {message} (from {origin})")

    def positive(name: str, value: float) -> None:
        if value <= 0:
            fail(name, f"must be positive, got {value}")

    def at_least(name: str, value: int, minimum: int) -> None:
        if value < minimum:
            fail(name, f"must be at least {minimum}, got {value}")

    redis = config.redis
    if redis.url:
        parts = urlsplit(redis.url)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            fail("redis.url", f"expected a redis://, rediss:// or unix:// URL, got {redact_url(redis.url)!r}")
        if not _port_parses(parts):
            fail("redis.url", f"invalid port in {redact_url(redis.url)!r}")
    else:  # the embedded server keeps its data in redis.data_dir
        _validate_data_dir(redis.data_dir, lambda message: fail("redis.data_dir", message))
    if redis.appendfsync not in {"always", "everysec"}:
        fail("redis.appendfsync", f"expected 'always' or 'everysec', got {redis.appendfsync!r}")
    try:
        validate_prefix(redis.prefix)
    except ValueError as exc:
        fail("redis.prefix", str(exc))
    positive("redis.socket_timeout", redis.socket_timeout)
    for key in ("max_events", "max_bytes", "max_age_ms"):
        positive(f"batch.{key}", getattr(config.batch, key))
    sup = config.supervision
    at_least("supervision.max_restarts", sup.max_restarts, 0)
    for key in ("period", "backoff_initial", "backoff_max", "breaker_reset", "breaker_reset_max"):
        positive(f"supervision.{key}", getattr(sup, key))
    if sup.backoff_max < sup.backoff_initial:
        fail("supervision.backoff_max", f"must be at least supervision.backoff_initial ({sup.backoff_initial}), got {sup.backoff_max}")
    if sup.breaker_reset > sup.breaker_reset_max:
        fail("supervision.breaker_reset",
             f"must be at most supervision.breaker_reset_max ({sup.breaker_reset_max:g}, the breaker's longest wait), got {sup.breaker_reset}")
    at_least("supervision.breaker_failures", sup.breaker_failures, 1)
    fc = config.farcaster
    parts = urlsplit(fc.url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        fail("farcaster.url", f"expected http://host:port (plaintext) or https://host:port (TLS), got {redact_url(fc.url)!r}")
    if not _port_parses(parts):
        fail("farcaster.url", f"invalid port in {redact_url(fc.url)!r}")
    if parts.port == 0:
        fail("farcaster.url", f"port 0 in {redact_url(fc.url)!r}: a node listens on a real port")
    for shard in fc.shards:
        if shard < 1:
            fail("farcaster.shards", f"user shards are numbered from 1, got {shard}")
    if fc.start not in {"live", "oldest"} and not _is_position(fc.start, _UINT64_MAX):
        fail("farcaster.start", f"expected 'live', 'oldest' or an event id, got {fc.start!r}")
    for name in fc.event_types:
        if name.upper() not in HUB_EVENT_TYPE_BY_NAME or name.upper() == "NONE":
            fail("farcaster.event_types", f"unknown hub event type {name!r}; known: {', '.join(list(HUB_EVENT_TYPE_BY_NAME)[1:])}")
    for fid in sorted(fc.fids):
        if not 0 <= fid <= _UINT64_MAX:
            fail("farcaster.fids", f"a fid is an integer from 0 to 2**64-1, got {fid}")
    for name in fc.message_types:
        if name.upper() not in MESSAGE_TYPE_BY_NAME:
            fail("farcaster.message_types", f"unknown message type {name!r}; known: {', '.join(MESSAGE_TYPE_BY_NAME)}")
    for key in ("idle_timeout", "connect_timeout", "head_refresh"):
        positive(f"farcaster.{key}", getattr(fc, key))
    at_least("farcaster.read_batch", fc.read_batch, 1)
    at_least("farcaster.verify_workers", fc.verify_workers, 0)
    # A HubEvent's type and id sit in its first bytes: a kept head shorter than 32 could lose them.
    at_least("farcaster.dead_letter_bytes", fc.dead_letter_bytes, 32)
    at_least("farcaster.max_message_bytes", fc.max_message_bytes, fc.dead_letter_bytes)
    if fc.max_message_bytes > _GRPC_LENGTH_MAX:
        fail("farcaster.max_message_bytes", f"a gRPC message length is 32 bits: at most {_GRPC_LENGTH_MAX}, got {fc.max_message_bytes}")
    at_least("farcaster.max_block_jump", fc.max_block_jump, 1)
    at_least("farcaster.max_bad_positions", fc.max_bad_positions, 1)
    _validate_atproto(config.atproto, fail)
    if not 0 <= config.metrics.port <= 65535:
        fail("metrics.port", f"expected 0 (any free port) to 65535, got {config.metrics.port}")
    if not config.metrics.host:
        fail("metrics.host", "must not be empty (0.0.0.0 listens on every interface)")
    for key in ("stale_after", "idle_timeout", "request_timeout"):
        positive(f"metrics.{key}", getattr(config.metrics, key))
    at_least("metrics.max_connections", config.metrics.max_connections, 1)
    for key in ("log_interval", "window"):
        positive(f"progress.{key}", getattr(config.progress, key))
    _validate_ethereum(config.ethereum, fail)
    _validate_deliver(config.deliver, fail)
    if config.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        fail("log_level", f"expected DEBUG, INFO, WARNING or ERROR, got {config.log_level!r}")
    if config.log_format not in {"auto", "text", "json"}:
        fail("log_format", f"expected auto, text or json, got {config.log_format!r}")


def _validate_deliver(deliver: DeliverSettings, fail: Any) -> None:
    """The [deliver] section: each pipeline's problem on one line, naming the pipeline by its index."""
    for key in ("claim_idle", "claim_interval"):
        if getattr(deliver, key) <= 0:
            fail(f"deliver.{key}", f"must be positive, got {getattr(deliver, key)}")
    for key in ("max_deliveries", "read_count", "block_ms"):
        if getattr(deliver, key) < 1:
            fail(f"deliver.{key}", f"must be at least 1, got {getattr(deliver, key)}")
    # Past these, Redis refuses the value (XAUTOCLAIM's min-idle, XREADGROUP's BLOCK) or a batch
    # outgrows memory, and every actor would crash on its first call: one line here instead.
    if 0 < deliver.claim_idle < 1:  # below, commits are dropped as unsafe, again and again
        fail("deliver.claim_idle",
             f"must be at least 1 (a commit, fsync and rename, must fit in a third of it), got {deliver.claim_idle}")
    for key, most, why in (("claim_idle", 31_536_000, "a year"), ("block_ms", 60_000, "the socket waits as long"),
                           ("read_count", 100_000, "a batch is held in memory")):
        if getattr(deliver, key) > most:
            fail(f"deliver.{key}", f"must be at most {most} ({why}), got {getattr(deliver, key)}")
    if deliver.consumer:
        try:
            validate_name("consumer", deliver.consumer)
        except ValueError as exc:
            fail("deliver.consumer", str(exc))
    names: set[str] = set()
    groups: set[tuple[str, str]] = set()
    places: set[tuple[str, str]] = set()
    for i, pipe in enumerate(deliver.pipelines):
        where = f"[{i}]"
        if not pipe.source:
            fail("deliver.pipelines", f"{where}: source: required (the network whose streams are delivered, e.g. farcaster)")
        for what, value in [("source", pipe.source), *(("partition", p) for p in pipe.partitions),
                            *((("group", pipe.group),) if pipe.group else ())]:
            try:
                validate_name(what, value)
            except ValueError as exc:  # the message names the setting and the value
                fail("deliver.pipelines", f"{where}: {exc}")
        for partition in pipe.partitions:  # partition=<it> is a directory of the Parquet files
            problem = partition_problem(partition)
            if problem is not None:
                fail("deliver.pipelines", f"{where}: {problem}")
        name = pipe.name or f"{pipe.source}-{pipe.target}"
        if name in names:
            fail("deliver.pipelines", f"{where}: name {name!r} is used by two pipelines (set name = ... on one)")
        names.add(name)
        group = (pipe.source, pipe.group or name)
        if group in groups:
            # Two targets in one consumer group would split the entries between them.
            fail("deliver.pipelines", f"{where}: group {group[1]!r} already reads {pipe.source} for another pipeline; "
                                      f"give each its own group")
        groups.add(group)
        place = (pipe.source, str(Path(pipe.directory).resolve()))
        if pipe.target == "parquet" and place in places:
            # Each pipeline takes the committed files under its directory for its own deliveries.
            fail("deliver.pipelines", f"{where}: directory: {pipe.directory!r} already receives {pipe.source} "
                                      f"from another pipeline; give each its own directory")
        places.add(place)
        if pipe.start not in {"0", "$"}:
            fail("deliver.pipelines", f"{where}: start: expected '0' (the whole stream) or '$' (from now), got {pipe.start!r}")
        if pipe.target not in TARGET_KINDS:
            fail("deliver.pipelines", f"{where}: target: unknown target {pipe.target!r}; known: {', '.join(TARGET_KINDS)}")
        if pipe.target == "parquet":
            _validate_parquet_pipeline(pipe, deliver, lambda message: fail("deliver.pipelines", f"{where}: {message}"))
        if pipe.target == "nats":
            _validate_nats_pipeline(pipe, lambda message: fail("deliver.pipelines", f"{where}: {message}"))
        if pipe.target == "webhook":
            from weir.deliver.webhook_settings import webhook_problems

            for problem in webhook_problems(pipe, claim_idle=deliver.claim_idle):
                fail("deliver.pipelines", f"{where}: {problem}")


def _validate_parquet_pipeline(pipe: DeliverPipelineSettings, deliver: DeliverSettings, fail: Any) -> None:
    """A ``target = "parquet"`` pipeline: codec, sizes, file age, directory (one line each)."""
    if pipe.compression not in PARQUET_COMPRESSIONS:
        fail(f"compression: expected one of {', '.join(PARQUET_COMPRESSIONS)}, got {pipe.compression!r}")
    for key in ("row_group_rows", "file_rows"):
        if getattr(pipe, key) < 1:
            fail(f"{key}: must be at least 1, got {getattr(pipe, key)}")
    if pipe.file_age <= 0:
        fail(f"file_age: must be positive, got {pipe.file_age}")
    if pipe.file_age * 3 > deliver.claim_idle:
        # An entry waiting in an open file must never look abandoned to another instance.
        fail(f"file_age: must be at most deliver.claim_idle / 3 ({deliver.claim_idle / 3:g}), got {pipe.file_age}")
    _validate_data_dir(pipe.directory, lambda message: fail(f"directory: {message}"))


def _validate_nats_pipeline(pipe: DeliverPipelineSettings, fail: Any) -> None:
    """A ``target = "nats"`` pipeline: its URL, subject template and stream (one line each)."""
    from weir.deliver.nats_messages import covered, template_problem

    if not pipe.url.startswith(("nats://", "tls://")):
        fail(f"url: expected nats://host:port or tls://host:port, got {redact_url(pipe.url)!r}")
    problem = template_problem(pipe.subject)
    if problem is not None:
        fail(f"subject: {problem}")
    if not pipe.stream or not all(c.isalnum() or c in "-_" for c in pipe.stream):
        fail(f"stream: expected a name of letters, digits, '-' and '_', got {pipe.stream!r}")
    subjects = pipe.nats_stream_subjects()
    if not subjects:
        fail(f"stream_subjects: required when subject starts with a field ({pipe.subject!r})")
    if not covered(pipe.subject, subjects):
        fail(f"stream_subjects: {list(subjects)} do not cover the subject {pipe.subject!r}")
    if pipe.duplicate_window <= 0:
        fail(f"duplicate_window: must be positive, got {pipe.duplicate_window}")
    if pipe.in_flight < 1:
        fail(f"in_flight: must be at least 1, got {pipe.in_flight}")
    if pipe.ack_timeout <= 0:
        fail(f"ack_timeout: must be positive, got {pipe.ack_timeout}")


def _validate_data_dir(data_dir: str, fail: Any) -> None:
    """The embedded Redis's directory: a directory, or under one (its nearest existing parent).
    Permissions are not checked here: ``tail`` only reads it and ``demo`` uses its own; the
    embedded server's start says so in one line if it cannot write there."""
    if not data_dir:
        fail("must not be empty")
    path = Path(data_dir)
    if path.exists():
        if not path.is_dir():
            fail(f"{data_dir!r} exists and is not a directory")
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        fail(f"cannot create {data_dir!r}: {str(parent)!r} is not a directory")


_ATPROTO_ACTIONS = ("create", "update", "delete")
_ATPROTO_KINDS = ("commit", "identity", "account", "sync")


def _validate_atproto(at: AtprotoSettings, fail: Any) -> None:
    import re

    if at.mode not in {"firehose", "jetstream"}:
        fail("atproto.mode", f"expected 'firehose' or 'jetstream', got {at.mode!r}")
    for key in ("url", "jetstream_url"):
        parts = urlsplit(getattr(at, key))
        if parts.scheme not in {"ws", "wss"} or not parts.hostname:
            fail(f"atproto.{key}", f"expected ws://host[:port] or wss://host[:port], got {redact_url(getattr(at, key))!r}")
        if not _port_parses(parts):
            fail(f"atproto.{key}", f"invalid port in {redact_url(getattr(at, key))!r}")
    if at.partition and not re.fullmatch(r"[A-Za-z0-9._-]+", at.partition):
        fail("atproto.partition", f"use letters, digits, '.', '_' or '-' only, got {at.partition!r}")
    if at.start not in {"live", "oldest"} and not _is_position(at.start, _INT64_MAX):
        fail("atproto.start", f"expected 'live', 'oldest' or a cursor (seq or time_us), got {at.start!r}")
    for pattern in at.collections:
        if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(\.\*|\.[A-Za-z0-9-]+)", pattern):
            fail("atproto.collections", f"expected an NSID (app.bsky.feed.post) or a prefix (app.bsky.*), got {pattern!r}")
    for did in at.dids:
        if not re.fullmatch(r"did:[a-z]+:[A-Za-z0-9._:%-]+", did):
            fail("atproto.dids", f"expected a DID (did:plc:…), got {did!r}")
    for action in at.actions:
        if action not in _ATPROTO_ACTIONS:
            fail("atproto.actions", f"unknown action {action!r}; known: {', '.join(_ATPROTO_ACTIONS)}")
    for kind in at.kinds:
        if kind not in _ATPROTO_KINDS:
            fail("atproto.kinds", f"unknown kind {kind!r}; known: {', '.join(_ATPROTO_KINDS)}")
    if at.record_format not in {"dag-cbor", "json"}:
        fail("atproto.record_format", f"expected 'dag-cbor' or 'json', got {at.record_format!r}")
    if at.zstd_dictionary:
        parts = urlsplit(at.zstd_dictionary)
        if parts.scheme in {"http", "https"}:
            if not parts.hostname or not _port_parses(parts):
                fail("atproto.zstd_dictionary", f"expected http(s)://host[:port]/path, got {redact_url(at.zstd_dictionary)!r}")
        elif "://" in at.zstd_dictionary:
            fail("atproto.zstd_dictionary", f"expected a file path or an http(s):// URL, got {redact_url(at.zstd_dictionary)!r}")
        elif not Path(at.zstd_dictionary).is_file():
            fail("atproto.zstd_dictionary", f"no such file {at.zstd_dictionary!r}")
    for key in ("max_frame_bytes", "max_ops", "max_blocks_bytes", "max_bad_frames", "max_seq_jump", "max_bad_positions",
                "rev_cache", "read_batch"):
        if getattr(at, key) < 1:
            fail(f"atproto.{key}", f"must be at least 1, got {getattr(at, key)}")
    if not 32 <= at.dead_letter_bytes <= at.max_frame_bytes:
        fail("atproto.dead_letter_bytes", f"must be between 32 and atproto.max_frame_bytes, got {at.dead_letter_bytes}")
    for key in ("idle_timeout", "connect_timeout", "max_future_skew"):
        if getattr(at, key) <= 0:
            fail(f"atproto.{key}", f"must be positive, got {getattr(at, key)}")
    if not 0 <= at.jetstream_rewind <= 3600:
        fail("atproto.jetstream_rewind", f"must be between 0 and 3600 seconds, got {at.jetstream_rewind}")


def _coerce_tables(name: str, value: Any, cls: type, origin: str) -> tuple[Any, ...]:
    """An array of tables (TOML ``[[section.key]]``), or the same as JSON text (environment, flags)."""
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: expected a JSON array of objects, got invalid JSON ({exc}) (from {origin})") from None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(f"{name}: expected an array of tables ([[{name}]]), got {value!r} (from {origin})")
    fields = {field.name: field for field in attrs.fields(cls)}
    items = []
    for i, table in enumerate(value):
        values: dict[str, Any] = {}
        for key, item in table.items():
            field = fields.get(key)
            if field is None:
                raise ConfigError(f"{name}[{i}].{key}: unknown setting (from {origin}); known: {', '.join(fields)}")
            if cls is EthereumChainSettings and key == "topics":  # nested lists and nulls: its own reader
                values[key] = _coerce_topics(f"{name}[{i}].{key}", item, origin)
                continue
            values[key] = _coerce(f"{name}[{i}].{key}", item, field.type, origin)
        items.append(cls(**values))
    return tuple(items)


def _coerce_topics(name: str, value: Any, origin: str) -> tuple[tuple[str, ...] | None, ...]:
    """A chain's ``topics``: a list of strings (topic0 alternatives), or positions, each a string, a
    list of alternatives, or null / [] (any position value, as in eth_getLogs)."""
    if isinstance(value, str):  # environment / flags: comma-separated topic0 alternatives
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ConfigError(f"{name}: expected a list of topics or of topic positions, got {value!r} (from {origin})")
    if all(isinstance(item, str) for item in value):
        alternatives = tuple(topic for topic in (item.strip() for item in value) if topic)
        return (alternatives,) if alternatives else ()
    positions: list[tuple[str, ...] | None] = []
    for item in value:
        if isinstance(item, str):
            item = [item]
        if item is not None and not (isinstance(item, list) and all(isinstance(topic, str) for topic in item)):
            raise ConfigError(f"{name}: a topic position is a hash, a list of hashes or null, got {item!r} (from {origin})")
        positions.append(tuple(topic.strip() for topic in item) if item else None)
    return tuple(positions)


def _validate_ethereum(eth: EthereumSettings, fail: Any) -> None:
    import re

    seen: set[int] = set()
    if eth.enabled and not eth.chains:
        fail("ethereum.chains", "ethereum is enabled but no [[ethereum.chains]] is configured")
    for i, chain in enumerate(eth.chains):
        where = f"[{i}] (chain_id {chain.chain_id})"
        if chain.chain_id < 1:
            fail("ethereum.chains", f"{where}: chain_id must be a positive integer")
        if chain.chain_id in seen:
            fail("ethereum.chains", f"{where}: chain_id configured twice")
        seen.add(chain.chain_id)
        parts = urlsplit(chain.url)
        if parts.scheme not in {"ws", "wss"} or not parts.hostname:
            fail("ethereum.chains", f"{where}: url: expected ws://host[:port][/path] or wss://…, got {redact_url(chain.url)!r}")
        if not _port_parses(parts):
            fail("ethereum.chains", f"{where}: url: invalid port in {redact_url(chain.url)!r}")
        for address in chain.addresses:
            if not re.fullmatch(r"0x[0-9a-fA-F]{40}", address):
                fail("ethereum.chains", f"{where}: addresses: expected 0x + 40 hex digits, got {address!r}")
        if len(chain.topics) > 4:
            fail("ethereum.chains", f"{where}: topics: a log has at most 4 topics, got {len(chain.topics)} positions")
        for topic in (topic for position in chain.topics for topic in position or ()):
            if not re.fullmatch(r"0x[0-9a-fA-F]{64}", topic):
                fail("ethereum.chains", f"{where}: topics: expected 0x + 64 hex digits, got {topic!r}")
        if chain.start != "latest" and not _is_position(chain.start, _INT64_MAX):
            fail("ethereum.chains", f"{where}: start: expected 'latest' or a block number, got {chain.start!r}")
        if chain.confirmations < 0:
            fail("ethereum.chains", f"{where}: confirmations must be 0 or more, got {chain.confirmations}")
        if chain.max_reorg_depth <= chain.confirmations:
            fail("ethereum.chains", f"{where}: max_reorg_depth must exceed confirmations ({chain.confirmations}), "
                                    f"got {chain.max_reorg_depth}")
        for key in ("block_time", "idle_blocks", "request_timeout", "connect_timeout"):
            if getattr(chain, key) <= 0:
                fail("ethereum.chains", f"{where}: {key} must be positive, got {getattr(chain, key)}")
        for key in ("backfill_blocks", "gap_fetch"):
            if getattr(chain, key) < 1:
                fail("ethereum.chains", f"{where}: {key} must be at least 1, got {getattr(chain, key)}")
        if chain.max_logs_per_block < 1:
            fail("ethereum.chains", f"{where}: max_logs_per_block must be at least 1, got {chain.max_logs_per_block}")
        if chain.max_reply_bytes < 4096:
            fail("ethereum.chains", f"{where}: max_reply_bytes must be at least 4096, got {chain.max_reply_bytes}")
    if not eth.abis:
        return
    from weir.codecs.ethereum_logs import EventAbi  # eth-abi: ~0.4 s to import, only when there is an ABI to check

    for text in eth.abis:
        try:
            EventAbi.parse(text)
        except ValueError as exc:
            fail("ethereum.abis", str(exc))
