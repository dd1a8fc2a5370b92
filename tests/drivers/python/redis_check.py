"""redis-py through weir's Redis listener: plain commands, a pipeline, an optimistic
transaction (WATCH/MULTI/EXEC), a blocking pop, Pub/Sub, and the same over RESP3.

Usage: redis_check.py PORT. Prints one line per check and exits non-zero on the first failure.
"""
import sys

import redis


def check(protocol, port):
    r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol, decode_responses=True)
    tag = f"resp{protocol}"
    assert r.ping()
    r.set(f"{tag}:k", "v")
    assert r.get(f"{tag}:k") == "v"

    with r.pipeline(transaction=False) as p:
        for i in range(100):
            p.set(f"{tag}:p{i}", i)
            p.get(f"{tag}:p{i}")
        replies = p.execute()
    assert replies[1::2] == [str(i) for i in range(100)], replies[:6]

    r.set(f"{tag}:counter", 0)
    with r.pipeline() as p:
        p.watch(f"{tag}:counter")
        n = int(p.get(f"{tag}:counter"))
        p.multi()
        p.set(f"{tag}:counter", n + 1)
        assert p.execute() == [True]
    assert r.get(f"{tag}:counter") == "1"

    r.rpush(f"{tag}:q", "job")
    assert list(r.blpop([f"{tag}:q"], timeout=1)) == [f"{tag}:q", "job"]
    assert r.blpop([f"{tag}:empty"], timeout=0.05) is None

    ps = r.pubsub()
    ps.subscribe(f"{tag}:chan")
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    assert r.publish(f"{tag}:chan", "hello") == 1
    message = ps.get_message(timeout=5)
    assert message["type"] == "message" and message["data"] == "hello", message
    ps.close()
    print(f"redis-py {redis.__version__} {tag}: ok")


def main():
    port = int(sys.argv[1])
    for protocol in (2, 3):
        check(protocol, port)


if __name__ == "__main__":
    main()
