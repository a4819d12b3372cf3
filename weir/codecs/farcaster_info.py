"""A Snapchain node's GetInfo reply, read for what weir uses (sans-IO).

weir asks GetInfo at every connect for the shards a node has and each shard's height (the judge's
bound on plausible ids). Read here with the wire reader instead of the betterproto2 models: those,
and pydantic, which betterproto2 imports when it is installed, cost ~50-90 ms of CPU to import,
which ``weir run`` paid at every start for one small reply.

Fields (protos/request_response.proto): GetInfoResponse.num_shards = 8 (uint32), shard_infos = 9
(repeated ShardInfo: shard_id = 1 uint32, max_height = 2 uint64). Everything else is skipped; a
field of another wire type than its declared one is skipped too (an unknown field, as protobuf
parsers read it). uint32 values keep their low 32 bits, as protobuf's parsers do.
"""

from __future__ import annotations

import attrs

from weir.codecs.protowire import LEN, VARINT, iter_fields, read_varint

_U32 = (1 << 32) - 1


@attrs.frozen
class NodeInfo:
    """What GetInfo said: ``num_shards`` (0 when not said) and (shard_id, max_height) in reply order."""

    num_shards: int = 0
    shard_infos: tuple[tuple[int, int], ...] = ()

    def height_of(self, shard: int) -> int | None:
        """The first height announced for ``shard``, None when absent or 0."""
        heights = [height for shard_id, height in self.shard_infos if shard_id == shard]
        return heights[0] if heights and heights[0] else None


def parse_get_info(data: bytes) -> NodeInfo:
    """Read a GetInfoResponse.

    Raises:
        WireError: the bytes are not a well-formed protobuf message.
    """
    num_shards = 0
    shards: list[tuple[int, int]] = []
    for field, wire_type, start, end in iter_fields(data):
        if field == 8 and wire_type == VARINT:
            num_shards = read_varint(data, start, end)[0] & _U32
        elif field == 9 and wire_type == LEN:
            shard_id = max_height = 0
            for inner, inner_type, value_start, value_end in iter_fields(data, start, end):
                if inner == 1 and inner_type == VARINT:
                    shard_id = read_varint(data, value_start, value_end)[0] & _U32
                elif inner == 2 and inner_type == VARINT:
                    max_height = read_varint(data, value_start, value_end)[0]
            shards.append((shard_id, max_height))
    return NodeInfo(num_shards, tuple(shards))
