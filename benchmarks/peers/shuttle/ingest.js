"use strict";
// Shuttle's own ingestion path, as its example app wires it: EventStreamHubSubscriber reads the
// hub's Subscribe stream (@farcaster/hub-nodejs over grpc-js) and writes every event to a Redis
// stream through EventStreamConnection (ioredis). Run by benchmarks/peers/run.py:
//
//     node ingest.js HOST:PORT REDIS_URL SHARD EVENTS
//
// Subscribes from event id 0 on one shard with Shuttle's default event types; after EVENTS events
// it writes the partial batch Shuttle would hold until more events come (it writes per 100), prints
// one JSON line and stays up (the benchmark reads its CPU and peak RSS, then stops it).
const { EventStreamConnection, EventStreamHubSubscriber, RedisClient, getHubClient } = require("@farcaster/shuttle");
const { HubEvent } = require("@farcaster/hub-nodejs");

const [hubHost, redisUrl, shardText, eventsText] = process.argv.slice(2);
const shard = Number(shardText);
const events = Number(eventsText);
if (!hubHost || !redisUrl || !(shard > 0) || !(events > 0)) {
  console.error("usage: node ingest.js HOST:PORT REDIS_URL SHARD EVENTS");
  process.exit(2);
}

const quiet = { debug() {}, info() {}, warn() {}, error: (...args) => console.error(...args) };

class CountingSubscriber extends EventStreamHubSubscriber {
  seen = 0;

  async processHubEvent(event) {
    await super.processHubEvent(event);
    this.seen += 1;
    if (this.seen === events) {
      // Shuttle's own loop (processHubEvent), for the last partial batch
      let lastEventId;
      for (const evt of this.eventsToAdd) {
        await this.eventStream.add(this.streamKey, Buffer.from(HubEvent.encode(evt).finish()));
        lastEventId = evt.id;
      }
      if (lastEventId) {
        await this.redis.setLastProcessedEvent(this.redisKey, lastEventId);
      }
      this.eventsToAdd = [];
      console.log(JSON.stringify({ events: this.seen, stream: this.streamKey, cursor: `hub:${this.redisKey}:last-hub-event-id` }));
    }
    return true;
  }
}

async function main() {
  const redis = RedisClient.create(redisUrl);
  const eventStream = new EventStreamConnection(RedisClient.create(redisUrl).client);
  const hub = getHubClient(hubHost, { ssl: false });
  const subscriber = new CountingSubscriber("bench", hub, eventStream, redis, String(shard), quiet, undefined, undefined, shard);
  await subscriber.start();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
