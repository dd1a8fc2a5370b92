// Runs the Redis client checks through weir's RESP listener with node-redis (@redis/client),
// over RESP2 and over RESP3.
//
// Each protocol runs several clients at once; each client logs in as an ACL user, reads a hash
// back in the protocol's shape (a map only over RESP3), sends a pipeline, runs an optimistic
// transaction that a second connection breaks, wakes a blocked BLPOP, receives a Pub/Sub
// message, works in another database and fails to log in with a wrong password. Prints `ok node-redis respN` per protocol and exits non-zero on a failure.
//
// Usage: WEIR_HOST=127.0.0.1 WEIR_PORT=6379 WEIR_USER=alice WEIR_PASSWORD=pw node redis-check.js

import { createClient, WatchError } from "@redis/client";

const CLIENT = "node-redis";
const CLIENTS = 4;
const PIPELINED = 100;
const OTHER_DB = 2;
const POP_TIMEOUT_SECONDS = 30;
const POLL_MS = 5;

const target = {
  host: process.env.WEIR_HOST,
  port: Number(process.env.WEIR_PORT),
  user: process.env.WEIR_USER,
  password: process.env.WEIR_PASSWORD,
};

function expect(what, expected, actual) {
  if (JSON.stringify(expected) !== JSON.stringify(actual)) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

/** A connected client; no reconnecting, so an error shows at its step. */
async function connect(resp, database = 0, password = target.password) {
  const client = createClient({
    socket: { host: target.host, port: target.port, reconnectStrategy: false },
    username: target.user,
    password,
    database,
    RESP: resp,
  });
  client.on("error", () => {});
  await client.connect();
  return client;
}

/** A hash comes back as a RESP3 map (an object) over RESP3 and as a flat array over RESP2. */
async function replyProtocol(client, resp, tag) {
  const key = `${tag}:h`;
  await client.hSet(key, "f", "v");
  const reply = await client.sendCommand(["HGETALL", key]);
  if (Array.isArray(reply) !== (resp === 2)) {
    throw new Error(`HGETALL over RESP${resp} answered ${JSON.stringify(reply)}`);
  }
}

/** SET, GET and INCR for 100 keys in one pipeline, each reply checked in order. */
async function pipeline(client, tag) {
  await client.del(`${tag}:n`);
  const pipe = client.multi();
  for (let i = 0; i < PIPELINED; i++) {
    pipe.set(`${tag}:p${i}`, String(i)).get(`${tag}:p${i}`).incr(`${tag}:n`);
  }
  const replies = await pipe.execAsPipeline();
  for (let i = 0; i < PIPELINED; i++) {
    expect(`pipelined SET ${i}`, "OK", replies[3 * i]);
    expect(`pipelined GET ${i}`, String(i), replies[3 * i + 1]);
    expect(`pipelined INCR ${i}`, i + 1, replies[3 * i + 2]);
  }
}

/** A write by another connection between WATCH and EXEC makes EXEC return nil. */
async function transaction(client, resp, tag) {
  const key = `${tag}:w`;
  await client.set(key, "0");
  await client.watch(key);
  const writer = await connect(resp);
  await writer.set(key, "writer");
  await writer.close();
  try {
    await client.multi().set(key, "tx").exec();
    throw new Error("EXEC after a conflicting write succeeded");
  } catch (err) {
    if (!(err instanceof WatchError)) throw err;
  }
  expect("the key after the aborted EXEC", "writer", await client.get(key));
  await client.watch(key);
  expect("EXEC without a conflict", ["OK"], await client.multi().set(key, "tx").exec());
  expect("the key after EXEC", "tx", await client.get(key));
}

/** blocked_clients from INFO clients. */
async function blockedClients(client) {
  const info = await client.info("clients");
  const line = info.split(/\r?\n/).find((l) => l.startsWith("blocked_clients:"));
  if (line === undefined) throw new Error("no blocked_clients in INFO clients");
  return Number(line.slice("blocked_clients:".length));
}

/** A BLPOP that is blocked (INFO shows a blocked client) is woken by a producer. */
async function blockingPop(client, resp, tag) {
  const queue = `${tag}:q`;
  const consumer = await connect(resp);
  let settled = false;
  const popped = consumer.blPop(queue, POP_TIMEOUT_SECONDS).finally(() => {
    settled = true;
  });
  while (!settled && (await blockedClients(client)) === 0) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  await client.rPush(queue, "job");
  expect("BLPOP", { key: queue, element: "job" }, await popped);
  await consumer.close();
}

/** A message published once the subscription is confirmed reaches the subscriber. */
async function pubSub(client, resp, tag) {
  const channel = `${tag}:chan`;
  const subscriber = await connect(resp);
  let deliver;
  const received = new Promise((resolve) => {
    deliver = resolve;
  });
  await subscriber.subscribe(channel, (message, from) => deliver([from, message]));
  expect("PUBLISH receivers", 1, await client.publish(channel, "hello"));
  expect("Pub/Sub message", [channel, "hello"], await received);
  await subscriber.close();
}

/** A key set in database 2 is seen there and not in database 0. */
async function otherDatabase(client, resp, tag) {
  const key = `${tag}:db`;
  const db2 = await connect(resp, OTHER_DB);
  await db2.set(key, "in-2");
  expect("GET in database 2", "in-2", await db2.get(key));
  await db2.close();
  expect("GET in database 0", null, await client.get(key));
}

/** Logging in with a wrong password fails with Redis's WRONGPASS error. */
async function wrongPassword(resp) {
  let client;
  try {
    client = await connect(resp, 0, `${target.password}-wrong`);
  } catch (err) {
    if (!String(err.message).startsWith("WRONGPASS")) {
      throw new Error(`want WRONGPASS, got ${err}`);
    }
    return;
  }
  await client.close();
  throw new Error("a wrong password was accepted");
}

async function check(resp, tag) {
  const client = await connect(resp);
  const steps = [
    ["AUTH and PING", async () => expect("PING", "PONG", await client.ping())],
    ["protocol", () => replyProtocol(client, resp, tag)],
    ["pipeline", () => pipeline(client, tag)],
    ["WATCH/MULTI/EXEC", () => transaction(client, resp, tag)],
    ["BLPOP", () => blockingPop(client, resp, tag)],
    ["Pub/Sub", () => pubSub(client, resp, tag)],
    ["SELECT", () => otherDatabase(client, resp, tag)],
    ["wrong password", () => wrongPassword(resp)],
  ];
  for (const [name, step] of steps) {
    try {
      await step();
    } catch (err) {
      throw new Error(`${tag}: ${name}: ${err.message}`);
    }
  }
  await client.close();
}

let failed = false;
for (const resp of [2, 3]) {
  const runs = [];
  for (let i = 0; i < CLIENTS; i++) runs.push(check(resp, `${CLIENT}:resp${resp}:${i}`));
  const failures = (await Promise.allSettled(runs)).filter((r) => r.status === "rejected");
  if (failures.length === 0) {
    console.log(`ok ${CLIENT} resp${resp}`);
  } else {
    console.error(`FAIL ${CLIENT} resp${resp}: ${failures.map((f) => f.reason.message).join("\n")}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
