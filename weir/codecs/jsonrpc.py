"""JSON-RPC 2.0 framing, sans-IO: text in, events out; calls in, text out.

Client side (:class:`JsonRpcClientProtocol`): numbers requests, encodes single and batch calls,
and turns each received WebSocket message into :class:`Response`, :class:`ErrorReply` and
:class:`Notification` events. Replies of a batch may come in any order (and a server may answer a
batch element by element); they are matched by id only. Server side (used by the simulator):
:func:`parse_requests` and :func:`encode_reply` / :func:`encode_error`.

Faults have a small vocabulary: :class:`JsonRpcError` is the peer's answer "no" to one call (with
its code), :class:`ProtocolError` is a malformed or unexpected message (whose fault it is is in the
message).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

# JSON-RPC error codes (spec) and the ones Ethereum providers use for "result too large".
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
LIMIT_EXCEEDED = -32005  # EIP-1474 "limit exceeded"; geth/Infura/Alchemy use it for eth_getLogs caps

# How providers word "the range or its result is too large" (lower case, matched as substrings):
# geth/Infura "query returned more than 10000 results", reth "query exceeds max results 20000",
# Alchemy "Log response size exceeded ...", QuickNode "... limited to a 10,000 blocks range",
# Infura "range 1000000 exceeds limit of 10000", Ankr "block range is too wide", Tenderly "range
# 9009594 is bigger than range limit 2000", Nethermind "Too many logs requested", ...
_TOO_LARGE_HINTS = (
    "returned more than", "max results", "maximum results", "response size", "response too large",
    "response is too big", "too many logs", "too many blocks", "too many results", "block range",
    "blocks range", "blocks distance", "range limit", "range is too", "range too", "exceeds limit",
    "exceeds the range", "max range", "limited to", "limit the query", "smaller than size", "limit exceeded",
    "query timeout",
)
# ... and how they word a rate limit, which -32005 ("limit exceeded") also carries: splitting the
# range would only make more requests.
_RATE_HINTS = ("rate limit", "request rate", "rate-limit", "per second", "daily request", "compute units",
               "too many requests", "capacity")


class ProtocolError(Exception):
    """A message that is not valid JSON-RPC, or one that answers nothing we asked."""


class JsonRpcError(Exception):
    """The server answered a call with an error object.

    Attributes:
        code: the JSON-RPC error code.
        message: the server's message.
        data: the optional ``data`` member (None when absent).
        method: the method that was called, when known.
    """

    def __init__(self, code: int, message: str, data: Any = None, method: str | None = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}JSON-RPC error {code}: {message}")

    @property
    def too_large(self) -> bool:
        """The provider refused because the range or its result is too large (split the range and retry).

        Providers disagree on the code (-32005, -32602, -32600, -32000, ...), so the message (and
        ``data``, where some put it) is read too; a rate limit is never "too large".
        """
        text = f"{self.message} {self.data if self.data is not None else ''}".lower()
        if any(hint in text for hint in _RATE_HINTS):
            return False
        return self.code == LIMIT_EXCEEDED or any(hint in text for hint in _TOO_LARGE_HINTS)


@attrs.frozen(kw_only=True)
class Response:
    """A successful reply to our call ``id``."""

    id: int
    method: str
    result: Any


@attrs.frozen(kw_only=True)
class ErrorReply:
    """An error reply to our call ``id`` (``error.method`` names the call)."""

    id: int
    error: JsonRpcError


@attrs.frozen(kw_only=True)
class Notification:
    """A server push (no id): for ``eth_subscription``, ``params`` is ``{subscription, result}``."""

    method: str
    params: Any


RpcEvent = Response | ErrorReply | Notification


@attrs.define(eq=False)
class JsonRpcClientProtocol:
    """Client half of JSON-RPC 2.0 over a message transport (a WebSocket): no I/O.

    Args:
        max_message: largest message accepted from the peer, in bytes or characters.
    """

    max_message: int = 64 << 20
    _next_id: int = 1
    _pending: dict[int, str] = attrs.Factory(dict)  # id -> method

    @property
    def pending(self) -> int:
        """Calls sent and not answered yet."""
        return len(self._pending)

    def request(self, method: str, params: Sequence[Any] | dict[str, Any] = ()) -> tuple[int, str]:
        """Encode one call; returns its id and the text to send."""
        id_, obj = self._call(method, params)
        return id_, json.dumps(obj, separators=(",", ":"))

    def batch(self, calls: Iterable[tuple[str, Sequence[Any] | dict[str, Any]]]) -> tuple[list[int], str]:
        """Encode several calls as one batch message; returns their ids (in call order) and the text."""
        ids: list[int] = []
        objs: list[dict[str, Any]] = []
        for method, params in calls:
            id_, obj = self._call(method, params)
            ids.append(id_)
            objs.append(obj)
        if not objs:
            raise ValueError("a JSON-RPC batch needs at least one call")
        return ids, json.dumps(objs, separators=(",", ":"))

    def forget(self, ids: Iterable[int]) -> None:
        """Stop expecting replies to ``ids`` (calls abandoned after a timeout); late replies are dropped."""
        for id_ in ids:
            self._pending.pop(id_, None)

    def receive(self, message: str | bytes) -> list[RpcEvent]:
        """Parse one received message into events (a batch reply gives one event per element).

        Raises:
            ProtocolError: not JSON, not JSON-RPC 2.0, too large.
        """
        if len(message) > self.max_message:
            raise ProtocolError(f"peer sent a {len(message)}-byte message, above the {self.max_message}-byte limit")
        try:
            decoded = json.loads(message)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the stack
            raise ProtocolError(f"peer sent invalid JSON: {exc}") from None
        if isinstance(decoded, list):
            if not decoded:
                raise ProtocolError("peer sent an empty batch reply")
            return [event for item in decoded if (event := self._one(item)) is not None]
        event = self._one(decoded)
        return [] if event is None else [event]

    def _call(self, method: str, params: Sequence[Any] | dict[str, Any]) -> tuple[int, dict[str, Any]]:
        id_ = self._next_id
        self._next_id += 1
        self._pending[id_] = method
        return id_, {"jsonrpc": "2.0", "id": id_, "method": method, "params": params if isinstance(params, dict) else list(params)}

    def _one(self, obj: Any) -> RpcEvent | None:
        if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
            raise ProtocolError(f"peer sent a message that is not JSON-RPC 2.0: {_excerpt(obj)}")
        if "id" not in obj or obj["id"] is None:
            if "error" in obj:  # an error about a request the server could not even parse
                code, message, data = _error_fields(obj["error"])
                raise ProtocolError(f"peer rejected a message it could not read: error {code}: {message}")
            method = obj.get("method")
            if not isinstance(method, str):
                raise ProtocolError(f"peer sent a notification without a method: {_excerpt(obj)}")
            return Notification(method=method, params=obj.get("params"))
        id_ = obj["id"]
        if type(id_) is not int:
            raise ProtocolError(f"peer sent a reply with id {id_!r}; we only send integer ids")
        method = self._pending.pop(id_, None)
        if method is None:
            return None  # a reply to a call we abandoned (timed out): not an error
        if "error" in obj:
            code, message, data = _error_fields(obj["error"])
            return ErrorReply(id=id_, error=JsonRpcError(code, message, data, method))
        if "result" not in obj:
            raise ProtocolError(f"peer's reply to {method} (id {id_}) has neither result nor error")
        return Response(id=id_, method=method, result=obj["result"])


def _error_fields(error: Any) -> tuple[int, str, Any]:
    if not isinstance(error, dict) or type(error.get("code")) is not int:
        raise ProtocolError(f"peer sent a malformed error object: {_excerpt(error)}")
    return error["code"], str(error.get("message", "")), error.get("data")


def _excerpt(obj: Any, limit: int = 120) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- server side (the simulator) -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Request:
    """One call received by a server; ``id`` is None for a notification (no reply expected)."""

    id: Any
    method: str
    params: Any


def parse_requests(message: str | bytes) -> tuple[list[Request | JsonRpcError], bool]:
    """Parse a received message into requests; returns them and whether it was a batch.

    A malformed element of a batch becomes a :class:`JsonRpcError` in its place (answer it with
    id null). Raises :class:`JsonRpcError` (``PARSE_ERROR`` / ``INVALID_REQUEST``) when the whole
    message is unusable.
    """
    try:
        decoded = json.loads(message)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the stack
        raise JsonRpcError(PARSE_ERROR, f"parse error: {exc}") from None
    if isinstance(decoded, list):
        if not decoded:
            raise JsonRpcError(INVALID_REQUEST, "empty batch")
        return [_request(item) for item in decoded], True
    one = _request(decoded)
    if isinstance(one, JsonRpcError):
        raise one
    return [one], False


def _request(obj: Any) -> Request | JsonRpcError:
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0" or not isinstance(obj.get("method"), str):
        return JsonRpcError(INVALID_REQUEST, "invalid request")
    params = obj.get("params", [])
    if not isinstance(params, (list, dict)):
        return JsonRpcError(INVALID_PARAMS, "params must be an array or an object")
    return Request(id=obj.get("id"), method=obj["method"], params=params)


def reply_object(id_: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "result": result}


def error_object(id_: Any, error: JsonRpcError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return {"jsonrpc": "2.0", "id": id_, "error": body}


def encode(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def notification_text(method: str, params: Any) -> str:
    return encode({"jsonrpc": "2.0", "method": method, "params": params})


# --- Ethereum quantities -------------------------------------------------------------------------


def to_quantity(value: int) -> str:
    """An Ethereum QUANTITY: ``0x``-prefixed hex without leading zeros (``0x0`` for zero)."""
    if value < 0:
        raise ValueError(f"quantity {value} is negative")
    return hex(value)


def from_quantity(value: Any, what: str = "quantity") -> int:
    """Parse a QUANTITY (``"0x1a"``); raises :class:`ProtocolError` naming ``what`` when it is not one."""
    # int() alone would also take "0x1 ", "0x_1" and non-ASCII digits: only hex digits may follow.
    if isinstance(value, str) and value[:2] in ("0x", "0X") and len(value) > 2 and value.isascii() and value[2:].isalnum():
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise ProtocolError(f"{what}: expected a 0x-prefixed hex quantity, got {_excerpt(value)}")
