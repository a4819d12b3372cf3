#!/usr/bin/env python
"""A naive but reasonable Python ingester: grpcio's generated stub, redis-py, XADD pipelined per 100.

What a Python developer would write in an afternoon from the Snapchain protos: the messages protoc
generates (``grpc_tools.protoc``; the protobuf package decodes in C), one ``Subscribe`` from event
id 0 on one shard with Shuttle's default event types, and per event an ``XADD`` of the event's
bytes with the event id as the entry id, sent to Redis in a pipeline every 100 events together
with a ``SET`` of the cursor. The call is grpcio's unary-stream call without a response
deserializer, so the bytes stored are the node's own (a re-encoded HubEvent may order fields
differently); each event is decoded for its id. Run by ``run.py``:

    python naive.py --stubs DIR --hub HOST:PORT --redis REDIS_URL --shard 1 --events N

``DIR`` holds the generated ``*_pb2.py`` (``run.py`` generates them). After
``N`` events it flushes, prints one JSON line and waits to be stopped (the benchmark reads its CPU
time and peak RSS first).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

BATCH = 100
# MERGE_MESSAGE, PRUNE_MESSAGE, REVOKE_MESSAGE, MERGE_USERNAME_PROOF, MERGE_ON_CHAIN_EVENT: Shuttle's default
EVENT_TYPES = (1, 2, 3, 6, 9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stubs", required=True, help="directory of the protoc-generated modules")
    parser.add_argument("--hub", required=True, help="HOST:PORT of the node")
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    parser.add_argument("--shard", type=int, default=1)
    parser.add_argument("--events", type=int, required=True, help="stop after this many events")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.stubs)

    import grpc
    import hub_event_pb2
    import redis
    import request_response_pb2

    stream_key = f"naive:{args.shard}:events"
    cursor_key = f"naive:{args.shard}:cursor"
    client = redis.Redis.from_url(args.redis)
    channel = grpc.insecure_channel(args.hub)
    subscribe = channel.unary_stream(
        "/HubService/Subscribe", request_serializer=request_response_pb2.SubscribeRequest.SerializeToString
    )
    parse = hub_event_pb2.HubEvent.FromString
    request = request_response_pb2.SubscribeRequest(event_types=EVENT_TYPES, from_id=0, shard_index=args.shard)
    pipe = client.pipeline(transaction=False)
    count = 0
    for data in subscribe(request):
        event = parse(data)
        pipe.xadd(stream_key, {"data": data}, id=f"{event.id}-0")
        count += 1
        if count % BATCH == 0 or count == args.events:
            pipe.set(cursor_key, event.id)
            pipe.execute()
        if count == args.events:
            break
    print(json.dumps({"events": count, "stream": stream_key, "cursor": cursor_key}), flush=True)
    signal.pause()  # until the benchmark stops it
    return 0


if __name__ == "__main__":
    sys.exit(main())
