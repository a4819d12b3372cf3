"""Ethereum JSON-RPC values (block headers, logs) and event decoding, sans-IO.

:func:`parse_header` and :func:`parse_log` validate what a node sent and raise a one-line
:class:`~weir.codecs.jsonrpc.ProtocolError` naming the field when it is malformed. :class:`LogDecoder`
decodes known events (ERC-20 / ERC-721 ``Transfer``, ERC-1155 ``TransferSingle`` /
``TransferBatch``) and user-supplied event signatures with eth-abi.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import attrs
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak

from weir.codecs.jsonrpc import ProtocolError, from_quantity

_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HEX = re.compile(r"^0x(?:[0-9a-fA-F]{2})*$")


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
    return json.dumps(log.raw, separators=(",", ":"), sort_keys=True).encode()


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

        Raises:
            ValueError: a one-line message naming the declaration and what is wrong.
        """
        match = re.fullmatch(r"\s*(?:event\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*;?\s*", text)
        if not match:
            raise ValueError(f"event ABI {text!r}: expected 'Name(type [indexed] [name], ...)'")
        name, body = match.groups()
        params: list[EventParam] = []
        for i, part in enumerate(p.strip() for p in body.split(",") if p.strip()):
            words = part.split()
            kind, rest = words[0], words[1:]
            indexed = bool(rest) and rest[0] == "indexed"
            if indexed:
                rest = rest[1:]
            if len(rest) > 1 or not re.fullmatch(r"[a-z]+[0-9]*(\[[0-9]*\])*", kind):
                raise ValueError(f"event ABI {text!r}: cannot read parameter {i} {part!r}")
            params.append(EventParam(name=rest[0] if rest else f"arg{i}", type=kind, indexed=indexed))
        if sum(p.indexed for p in params) > 3:
            raise ValueError(f"event ABI {text!r}: at most 3 parameters can be indexed")
        abi = cls(name=name, params=tuple(params), standard=standard)
        try:  # the types must be ones eth-abi knows
            abi_decode([p.type for p in params if not p.indexed], b"\x00" * 32 * 64, strict=False)
        except Exception as exc:
            if "type" in str(exc).lower() or "parse" in str(exc).lower():
                raise ValueError(f"event ABI {text!r}: {exc}") from None
        return abi


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

_DYNAMIC = re.compile(r"^(string|bytes|.*\[\d*\])$")


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
        self._by_topic: dict[tuple[str, int], EventAbi] = {}
        for abi in (*BUILTIN_EVENTS, *extra):
            self._by_topic[(abi.topic0, abi.n_indexed + 1)] = abi

    def decode(self, log: Log) -> Decoded | None:
        if not log.topics:
            return None
        abi = self._by_topic.get((log.topics[0], len(log.topics)))
        if abi is None:
            return None
        try:
            return _decode_with(abi, log)
        except (DecodingError, ValueError, OverflowError):
            return None


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
        if param.type == "address":
            value = value.lower()  # eth-abi gives EIP-55 checksummed text; identities here are lowercase
        args[param.name] = value
    return Decoded(event=abi.name, standard=abi.standard, args=args)
