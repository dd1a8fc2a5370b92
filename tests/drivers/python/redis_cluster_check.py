"""redis-py's plain client (redis.Redis, not RedisCluster) through weir in front of a Redis
Cluster: redis_check.py's protocol, pipeline, WATCH/MULTI/EXEC and Pub/Sub checks (its BLPOP
check watches INFO, which reaches one master, and SELECT and AUTH do not apply to this cluster),
then hash-tagged transactions, a pipeline across shards, and the CROSSSLOT error for keys of
different slots.

Usage: redis_cluster_check.py PORT. Exits non-zero on the first failure.
"""
import os
import sys

import redis

from redis_check import connect, pipeline, pub_sub, reply_protocol, transaction


def check(protocol, tag):
    r = connect(protocol)
    assert r.ping()
    reply_protocol(r, protocol, tag)
    pipeline(r, tag)
    transaction(r, protocol, tag)
    pub_sub(r, tag)


def cluster_checks(port):
    r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    for i in range(200):
        r.set(f"spread:{i}", i)
    with r.pipeline(transaction=True) as p:
        p.set("{order:1}:state", "paid")
        p.incr("{order:1}:version")
        assert p.execute() == [True, 1]
    with r.pipeline(transaction=False) as p:
        for i in range(200):
            p.get(f"spread:{i}")
        assert p.execute() == [str(i) for i in range(200)]
    try:
        r.mset({"a": 1, "b": 2})
    except redis.exceptions.ClusterCrossSlotError:
        # redis-py recognises Redis Cluster's own CROSSSLOT error.
        pass
    else:
        raise AssertionError("MSET across slots was not refused")
    print("redis-py cluster: ok")


def main():
    port = int(sys.argv[1])
    os.environ["WEIR_HOST"] = "127.0.0.1"
    os.environ["WEIR_PORT"] = str(port)
    for protocol in (2, 3):
        check(protocol, f"resp{protocol}")
    cluster_checks(port)


if __name__ == "__main__":
    main()
