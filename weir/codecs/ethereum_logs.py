"""Ethereum JSON-RPC values (block headers, logs) and event decoding, sans-IO.

:func:`parse_header` and :func:`parse_log` validate what a node sent and raise a one-line
:class:`~weir.codecs.jsonrpc.ProtocolError` naming the field when it is malformed. :class:`LogDecoder`
decodes known events (ERC-20 / ERC-721 ``Transfer``, ERC-1155 ``TransferSingle`` /
``TransferBatch``) and user-supplied event signatures with eth-abi.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import attrs
from eth_abi import decode as abi_decode
from eth_abi.exceptions import ABITypeError, DecodingError, MultipleEntriesFound, NoEntriesFound, ParseError
from eth_abi.grammar import ABIType, TupleType, normalize, parse as parse_abi_type
from eth_abi.registry import registry as abi_registry
from eth_utils import keccak

from weir.codecs.jsonrpc import ProtocolError, from_quantity

# \Z, not $: "$" also matches before a final newline, which would let "0x…\n" through as a hash.
_HASH = re.compile(r"^0x[0-9a-fA-F]{64}\Z")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}\Z")
_HEX = re.compile(r"^0x(?:[0-9a-fA-F]{2})*\Z")


@attrs.frozen(kw_only=True)
class Header:
    """The part of a block header chain following needs."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int = 0

    @property
    def token(self) -> str:
        """``"number:hash"``: the cursor token of this block."""
        return f"{self.number}:{self.hash}"


@attrs.frozen(kw_only=True)
class Log:
    """One log as the node returned it (``raw``), with its identity and routing keys parsed.

    Identity: ``(chain id, block_hash, log_index)``; the block number alone is not stable under
    reorgs.
    """

    block_number: int
    block_hash: str
    log_index: int
    tx_hash: str
    address: str
    topics: tuple[str, ...]
    data: str
    raw: dict[str, Any] = attrs.field(eq=False, repr=False)

    @property
    def identity(self) -> tuple[str, int]:
        return (self.block_hash, self.log_index)


def _hash(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HASH.match(value):
        raise ProtocolError(f"{what}: expected a 32-byte 0x hash, got {value!r}"[:200])
    return value.lower()


def parse_header(obj: Any, where: str = "block") -> Header:
    """A header from ``newHeads`` or ``eth_getBlockBy*`` (null → ProtocolError: unknown block)."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: expected a block object, got {obj!r}"[:200])
    return Header(
        number=from_quantity(obj.get("number"), f"{where}.number"),
        hash=_hash(obj.get("hash"), f"{where}.hash"),
        parent_hash=_hash(obj.get("parentHash"), f"{where}.parentHash"),
        timestamp=from_quantity(obj["timestamp"], f"{where}.timestamp") if "timestamp" in obj else 0,
    )


def parse_log(obj: Any, where: str = "log") -> Log:
    """A log from ``eth_getLogs`` (or a receipt); validates every field it keeps."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: expected a log object, got {obj!r}"[:200])
    address = obj.get("address")
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise ProtocolError(f"{where}.address: expected a 20-byte 0x address, got {address!r}"[:200])
    topics = obj.get("topics")
    if not isinstance(topics, list) or len(topics) > 4:
        raise ProtocolError(f"{where}.topics: expected a list of at most 4 hashes, got {topics!r}"[:200])
    data = obj.get("data")
    if not isinstance(data, str) or not _HEX.match(data):
        raise ProtocolError(f"{where}.data: expected 0x-prefixed hex bytes, got {data!r}"[:200])
    return Log(
        block_number=from_quantity(obj.get("blockNumber"), f"{where}.blockNumber"),
        block_hash=_hash(obj.get("blockHash"), f"{where}.blockHash"),
        log_index=from_quantity(obj.get("logIndex"), f"{where}.logIndex"),
        tx_hash=_hash(obj.get("transactionHash"), f"{where}.transactionHash"),
        address=address.lower(),
        topics=tuple(_hash(t, f"{where}.topics[{i}]") for i, t in enumerate(topics)),
        data=data.lower(),
        raw=obj,
    )


def raw_log_bytes(log: Log) -> bytes:
    """The log object as compact JSON: what an entry's ``data`` field holds."""
    return raw_bytes(log.raw)


def raw_bytes(obj: Any) -> bytes:
    """A JSON value received from the node as compact JSON with sorted keys (a dead letter's ``data``)."""
    try:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    except (TypeError, ValueError):
        return repr(obj).encode()


@attrs.frozen(kw_only=True)
class Malformed:
    """A log or header the node sent that does not parse: kept for the dead-letter stream.

    Attributes:
        payload: the item as compact JSON with sorted keys (:func:`raw_bytes`).
        reason: why it was refused (the parser's one-line message, naming where it came from).
    """

    payload: bytes
    reason: str


# --- event decoding --------------------------------------------------------------------------------


def topic_of(signature: str) -> str:
    """topic0 of a canonical event signature such as ``Transfer(address,address,uint256)``."""
    return "0x" + keccak(text=signature).hex()


@attrs.frozen(kw_only=True)
class EventParam:
    name: str
    type: str
    indexed: bool


@attrs.frozen(kw_only=True)
class EventAbi:
    """An event declaration; ``standard`` tags the built-in token events (``erc20`` …)."""

    name: str
    params: tuple[EventParam, ...]
    standard: str = ""

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(p.type for p in self.params)})"

    @property
    def topic0(self) -> str:
        return topic_of(self.signature)

    @property
    def n_indexed(self) -> int:
        return sum(p.indexed for p in self.params)

    @classmethod
    def parse(cls, text: str, standard: str = "") -> EventAbi:
        """Parse ``"Name(type [indexed] [name], ...)"`` (Solidity-like, ``event`` keyword optional).

        Types are checked with eth-abi's own grammar and decoder registry, and written canonically
        (``uint`` is ``uint256``: topic0 hashes the canonical signature). A struct is a tuple,
        ``(address a, uint256 b)`` or ``tuple(address,uint256)``, arrays of them included.

        Raises:
            ValueError: a one-line message naming the declaration and what is wrong.
        """
        match = re.fullmatch(r"\s*(?:event\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*;?\s*", text, re.DOTALL)
        if not match:
            raise ValueError(f"event ABI {text!r}: expected 'Name(type [indexed] [name], ...)'")
        name, body = match.groups()
        try:
            parts = _split_params(body)
        except ValueError as exc:
            raise ValueError(f"event ABI {text!r}: {exc}") from None
        params: list[EventParam] = []
        for i, part in enumerate(parts):
            try:
                kind, rest = _param_type(part)
            except ValueError as exc:
                raise ValueError(f"event ABI {text!r}: parameter {i} {part.strip()!r}: {exc}") from None
            indexed = rest[:1] == ["indexed"]
            if indexed:
                rest = rest[1:]
            if len(rest) > 1 or (rest and not re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$]*", rest[0])):
                raise ValueError(f"event ABI {text!r}: cannot read parameter {i} {part.strip()!r}")
            params.append(EventParam(name=rest[0] if rest else f"arg{i}", type=kind, indexed=indexed))
        if sum(p.indexed for p in params) > 3:
            raise ValueError(f"event ABI {text!r}: at most 3 parameters can be indexed")
        return cls(name=name, params=tuple(params), standard=standard)


def _split_params(body: str) -> list[str]:
    """``body`` split at its top-level commas (a tuple's own commas stay); [] when blank."""
    if not body.strip():
        return []
    parts, depth, start = [], 0, 0
    for i, char in enumerate(body):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise ValueError("unbalanced ')'")
        if char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    if depth:
        raise ValueError("unbalanced '('")
    return [*parts, body[start:]]


def _param_type(part: str) -> tuple[str, list[str]]:
    """A parameter's canonical type (checked by eth-abi) and the words after it (``indexed``, name)."""
    part = part.strip()
    if not part:
        raise ValueError("empty parameter")
    if part.startswith("tuple("):
        part = part[len("tuple"):]
    if part.startswith("("):
        close, depth = 0, 0
        for close, char in enumerate(part):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
        # Components may be named like parameters; only their types make the tuple's type.
        components = [_param_type(c)[0] for c in _split_params(part[1:close])]
        suffix = re.match(r"(\[[0-9]*\])*", part[close + 1 :])
        assert suffix is not None
        kind, rest = f"({','.join(components)}){suffix.group(0)}", part[close + 1 + suffix.end() :].split()
    else:
        kind, *rest = part.split()
    return _canonical_type(kind), rest


def _canonical_type(kind: str) -> str:
    """``kind`` as eth-abi writes it, if eth-abi can decode it; else ValueError saying why."""
    try:
        parsed = parse_abi_type(normalize(kind))
        parsed.validate()
        canonical = parsed.to_type_str()
        abi_registry.get_decoder(canonical)
    except (ParseError, ABITypeError, NoEntriesFound, MultipleEntriesFound) as exc:
        reason = " ".join(str(exc).split())  # one line
        if isinstance(exc, NoEntriesFound):
            reason = "not an ABI type eth-abi can decode"
        raise ValueError(f"type {kind!r}: {reason}") from None
    return canonical


ERC20_TRANSFER = EventAbi.parse("Transfer(address indexed from, address indexed to, uint256 value)", "erc20")
ERC721_TRANSFER = EventAbi.parse("Transfer(address indexed from, address indexed to, uint256 indexed tokenId)", "erc721")
ERC1155_SINGLE = EventAbi.parse(
    "TransferSingle(address indexed operator, address indexed from, address indexed to, uint256 id, uint256 value)", "erc1155"
)
ERC1155_BATCH = EventAbi.parse(
    "TransferBatch(address indexed operator, address indexed from, address indexed to, uint256[] ids, uint256[] values)",
    "erc1155",
)
BUILTIN_EVENTS = (ERC20_TRANSFER, ERC721_TRANSFER, ERC1155_SINGLE, ERC1155_BATCH)
TRANSFER_TOPIC = ERC20_TRANSFER.topic0

# Indexed values of these types are stored as their keccak hash: strings, bytes, arrays, structs.
_DYNAMIC = re.compile(r"^(string|bytes|\(.*|.*\[\d*\])$")


@attrs.frozen(kw_only=True)
class Decoded:
    """A decoded log: event name, the standard it belongs to (``""`` for user events), arguments."""

    event: str
    standard: str
    args: dict[str, Any]

    def to_json(self) -> str:
        """Arguments as JSON; integers as decimal strings (uint256 does not fit a JSON number)."""
        return json.dumps({"event": self.event, "standard": self.standard, "args": _jsonable(self.args)}, separators=(",", ":"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Decimal):  # fixed<M>x<N> values: exact, as text like integers
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class LogDecoder:
    """Decodes logs whose topic0 and indexed-topic count match a known event ABI.

    Events with the same topic0 (ERC-20 and ERC-721 ``Transfer``) are told apart by the number of
    topics. A log that matches no ABI, or whose data does not decode, gives None (it is still
    persisted, raw).
    """

    def __init__(self, extra: Iterable[EventAbi] = ()) -> None:
        self._by_topic: dict[tuple[str, int], tuple[EventAbi, _Plan | None]] = {}
        for abi in (*BUILTIN_EVENTS, *extra):
            self._by_topic[(abi.topic0, abi.n_indexed + 1)] = (abi, _plan(abi))

    def decode(self, log: Log) -> Decoded | None:
        if not log.topics:
            return None
        found = self._by_topic.get((log.topics[0], len(log.topics)))
        if found is None:
            return None
        abi, plan = found
        try:
            return _decode_fast(abi, plan, log) if plan is not None else _decode_with(abi, log)
        except (DecodingError, ValueError, OverflowError):
            return None


# Fast path: events whose decoded values are all one-word static types (every token standard's
# events) are decoded word by word here, as eth-abi would (same values, same refusals: non-zero
# padding, out-of-range integers, booleans other than 0/1, too little data; trailing data is
# ignored), at a tenth of its cost. tests/test_ethereum_decode.py checks both agree.

_ZERO = bytes(32)
_WordDecoder = Callable[[bytes], Any]


def _address(word: bytes) -> str:
    if word[:12] != _ZERO[:12]:
        raise ValueError("address padding is not zero")
    return "0x" + word[12:].hex()


def _bool(word: bytes) -> bool:
    if word[:31] != _ZERO[:31] or word[31] > 1:
        raise ValueError("bool is neither 0 nor 1")
    return word[31] == 1


def _uint(bits: int) -> _WordDecoder:
    def decode(word: bytes) -> int:
        value = int.from_bytes(word, "big")
        if value >> bits:
            raise ValueError(f"uint{bits} out of range")
        return value
    return decode


def _int(bits: int) -> _WordDecoder:
    low, high = -(1 << (bits - 1)), 1 << (bits - 1)
    def decode(word: bytes) -> int:
        value = int.from_bytes(word, "big", signed=True)
        if not low <= value < high:
            raise ValueError(f"int{bits} out of range")
        return value
    return decode


def _fixed_bytes(size: int) -> _WordDecoder:
    def decode(word: bytes) -> bytes:
        if word[size:] != _ZERO[size:]:
            raise ValueError(f"bytes{size} padding is not zero")
        return word[:size]
    return decode


def _word_decoder(type_: str) -> _WordDecoder | None:
    if type_ == "address":
        return _address
    if type_ == "bool":
        return _bool
    match = re.fullmatch(r"(u?int)([0-9]+)|bytes([0-9]+)", type_)
    if match is None:
        return None
    if match.group(3) is not None:
        size = int(match.group(3))
        return _fixed_bytes(size) if 1 <= size <= 32 and match.group(3) == str(size) else None
    bits = int(match.group(2))
    if not (8 <= bits <= 256 and bits % 8 == 0 and match.group(2) == str(bits)):
        return None
    return _uint(bits) if match.group(1) == "uint" else _int(bits)


@attrs.frozen
class _Plan:
    params: tuple[tuple[EventParam, _WordDecoder | None], ...]  # None: a dynamic indexed value (its hash)
    n_data: int


def _plan(abi: EventAbi) -> _Plan | None:
    """How to decode ``abi`` word by word; None when a type needs eth-abi."""
    params = []
    for param in abi.params:
        if param.indexed and _DYNAMIC.match(param.type):
            params.append((param, None))
            continue
        decoder = _word_decoder(param.type)
        if decoder is None:
            return None
        params.append((param, decoder))
    return _Plan(params=tuple(params), n_data=sum(not p.indexed for p in abi.params))


def _decode_fast(abi: EventAbi, plan: _Plan, log: Log) -> Decoded:
    data = bytes.fromhex(log.data[2:])
    if plan.n_data == 0 and data:
        raise ValueError("unexpected data")
    if len(data) < 32 * plan.n_data:
        raise ValueError(f"{len(data)} bytes of data, {plan.n_data} words expected")
    args: dict[str, Any] = {}
    topic_at = data_at = 0
    topics = log.topics
    for param, decoder in plan.params:
        if param.indexed:
            topic_at += 1
            topic = topics[topic_at]
            args[param.name] = topic if decoder is None else decoder(bytes.fromhex(topic[2:]))
        else:
            args[param.name] = decoder(data[data_at : data_at + 32])  # type: ignore[misc]
            data_at += 32
    return Decoded(event=abi.name, standard=abi.standard, args=args)


def _decode_with(abi: EventAbi, log: Log) -> Decoded:
    args: dict[str, Any] = {}
    topics = iter(log.topics[1:])
    data_params = [p for p in abi.params if not p.indexed]
    data_values = abi_decode([p.type for p in data_params], bytes.fromhex(log.data[2:])) if data_params else ()
    if not data_params and len(log.data) > 2:
        raise ValueError("unexpected data")
    data_iter = iter(data_values)
    for param in abi.params:
        if param.indexed:
            topic = next(topics)
            # Dynamic indexed values are stored as their keccak hash: only the hash can be given.
            value: Any = topic if _DYNAMIC.match(param.type) else abi_decode([param.type], bytes.fromhex(topic[2:]))[0]
        else:
            value = next(data_iter)
        args[param.name] = value if param.indexed and _DYNAMIC.match(param.type) else _lower_addresses(param.type, value)
    return Decoded(event=abi.name, standard=abi.standard, args=args)


def _lower_addresses(type_: str | ABIType, value: Any) -> Any:
    """``value`` with every address in it lower case (eth-abi gives EIP-55 checksummed text;
    identities here are lower case), inside arrays and tuples too."""
    parsed = parse_abi_type(type_) if isinstance(type_, str) else type_
    if parsed.is_array:
        return tuple(_lower_addresses(parsed.item_type, item) for item in value)
    if isinstance(parsed, TupleType):
        return tuple(_lower_addresses(component, item) for component, item in zip(parsed.components, value))
    return value.lower() if parsed.to_type_str() == "address" else value
