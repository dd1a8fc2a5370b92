"""Runs the Redis client checks through weir's RESP listener with redis-py, over RESP2 and RESP3.

Each protocol runs several clients at once (threads); each client logs in as an ACL user, reads
a hash back in the protocol's shape (a map only over RESP3), sends a pipeline, runs an
optimistic transaction that a second connection breaks, wakes a blocked BLPOP, receives a
Pub/Sub message, works in another database and fails to log in with a wrong password. Prints `ok redis-py respN` per protocol and exits non-zero on a failure.

Usage: WEIR_HOST=127.0.0.1 WEIR_PORT=6379 WEIR_USER=alice WEIR_PASSWORD=pw redis_check.py
"""
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

CLIENT = "redis-py"
CLIENTS = 4
PIPELINED = 100
OTHER_DB = 2
POP_TIMEOUT_SECONDS = 30
POLL_SECONDS = 0.005


def connect(protocol, db=0, password=None):
    # Without WEIR_USER the client sends no AUTH (a weir that needs none).
    user = os.environ.get("WEIR_USER")
    return redis.Redis(
        host=os.environ["WEIR_HOST"],
        port=int(os.environ["WEIR_PORT"]),
        username=user,
        password=(password or os.environ["WEIR_PASSWORD"]) if user else None,
        db=db,
        protocol=protocol,
        decode_responses=True,
        # Fail rather than retry, so an error shows at its step (a wrong password included).
        retry=Retry(NoBackoff(), 0),
    )


def expect(what, expected, actual):
    if expected != actual:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def reply_protocol(r, protocol, tag):
    """A hash comes back as a RESP3 map over RESP3 and as a flat array over RESP2 (read
    without redis-py's reply callbacks, which would make a dict of either)."""
    key = f"{tag}:h"
    r.hset(key, "f", "v")
    connection = r.connection_pool.get_connection()
    try:
        connection.send_command("HGETALL", key)
        reply = connection.read_response()
    finally:
        r.connection_pool.release(connection)
    if isinstance(reply, dict) != (protocol == 3):
        raise AssertionError(f"HGETALL over RESP{protocol} answered {reply!r}")


def pipeline(r, tag):
    """SET, GET and INCR for 100 keys in one pipeline, each reply checked in order."""
    r.delete(f"{tag}:n")
    with r.pipeline(transaction=False) as p:
        for i in range(PIPELINED):
            p.set(f"{tag}:p{i}", i)
            p.get(f"{tag}:p{i}")
            p.incr(f"{tag}:n")
        replies = p.execute()
    expected = [x for i in range(PIPELINED) for x in (True, str(i), i + 1)]
    expect("pipeline", expected, replies)


def transaction(r, protocol, tag):
    """A write by another connection between WATCH and EXEC makes EXEC return nil."""
    key = f"{tag}:w"
    r.set(key, "0")
    with r.pipeline() as p:
        p.watch(key)
        connect(protocol).set(key, "writer")
        p.multi()
        p.set(key, "tx")
        try:
            p.execute()
            raise AssertionError("EXEC after a conflicting write succeeded")
        except redis.WatchError:
            pass
    expect("the key after the aborted EXEC", "writer", r.get(key))
    with r.pipeline() as p:
        p.watch(key)
        p.multi()
        p.set(key, "tx")
        expect("EXEC without a conflict", [True], p.execute())
    expect("the key after EXEC", "tx", r.get(key))


def blocking_pop(r, protocol, tag):
    """A BLPOP that is blocked (INFO shows a blocked client) is woken by a producer."""
    queue = f"{tag}:q"
    result = {}
    consumer = threading.Thread(
        target=lambda: result.update(popped=connect(protocol).blpop([queue], POP_TIMEOUT_SECONDS))
    )
    consumer.start()
    while r.info("clients")["blocked_clients"] == 0 and consumer.is_alive():
        time.sleep(POLL_SECONDS)
    r.rpush(queue, "job")
    consumer.join()
    expect("BLPOP", [queue, "job"], list(result.get("popped") or []))


def pub_sub(r, tag):
    """A message published once the subscription is confirmed reaches the subscriber."""
    channel = f"{tag}:chan"
    ps = r.pubsub()
    ps.subscribe(channel)
    expect("subscription", "subscribe", ps.get_message(timeout=30)["type"])
    expect("PUBLISH receivers", 1, r.publish(channel, "hello"))
    message = ps.get_message(timeout=30)
    expect("Pub/Sub message", ("message", channel, "hello"),
           (message["type"], message["channel"], message["data"]))
    ps.close()


def other_database(r, protocol, tag):
    """A key set in database 2 is seen there and not in database 0."""
    key = f"{tag}:db"
    db2 = connect(protocol, db=OTHER_DB)
    db2.set(key, "in-2")
    expect("GET in database 2", "in-2", db2.get(key))
    expect("GET in database 0", None, r.get(key))


def wrong_password(protocol):
    """Logging in with a wrong password fails with Redis's WRONGPASS error (AuthenticationError:
    redis-py turns the error code into the class and keeps the rest of the message)."""
    try:
        connect(protocol, password=os.environ["WEIR_PASSWORD"] + "-wrong").ping()
    except redis.AuthenticationError as err:
        if "invalid username-password pair" not in str(err):
            raise AssertionError(f"want WRONGPASS, got {err}")
        return
    raise AssertionError("a wrong password was accepted")


def check(protocol, tag):
    r = connect(protocol)
    steps = [
        ("AUTH and PING", lambda: expect("PING", True, r.ping())),
        ("protocol", lambda: reply_protocol(r, protocol, tag)),
        ("pipeline", lambda: pipeline(r, tag)),
        ("WATCH/MULTI/EXEC", lambda: transaction(r, protocol, tag)),
        ("BLPOP", lambda: blocking_pop(r, protocol, tag)),
        ("Pub/Sub", lambda: pub_sub(r, tag)),
        ("SELECT", lambda: other_database(r, protocol, tag)),
        ("wrong password", lambda: wrong_password(protocol)),
    ]
    for name, step in steps:
        try:
            step()
        except Exception as err:
            raise AssertionError(f"{tag}: {name}: {err!r}") from err


def main():
    failed = False
    for protocol in (2, 3):
        with ThreadPoolExecutor(CLIENTS) as pool:
            runs = [pool.submit(check, protocol, f"{CLIENT}:resp{protocol}:{i}") for i in range(CLIENTS)]
            failures = [str(run.exception()) for run in runs if run.exception()]
        if failures:
            print(f"FAIL {CLIENT} resp{protocol}: " + "\n".join(failures), file=sys.stderr)
            failed = True
        else:
            print(f"ok {CLIENT} resp{protocol}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
