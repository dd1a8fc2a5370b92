package dev.weir.drivers;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import redis.clients.jedis.DefaultJedisClientConfig;
import redis.clients.jedis.HostAndPort;
import redis.clients.jedis.Jedis;
import redis.clients.jedis.JedisPubSub;
import redis.clients.jedis.Pipeline;
import redis.clients.jedis.Protocol;
import redis.clients.jedis.RedisProtocol;
import redis.clients.jedis.Response;
import redis.clients.jedis.Transaction;
import redis.clients.jedis.exceptions.JedisException;
import redis.clients.jedis.util.KeyValue;

/**
 * Runs the Redis client checks through weir's RESP listener with Jedis, over RESP2 and RESP3.
 *
 * <p>Each protocol runs several clients at once; each client logs in as an ACL user, reads a hash
 * back in the protocol's shape (a map only over RESP3), sends a pipeline, runs an optimistic
 * transaction that a second connection breaks, wakes a blocked BLPOP, receives a Pub/Sub message,
 * works in another database and fails to log in with a wrong password. Prints {@code ok jedis respN} per protocol and exits non-zero on a failure.
 */
public final class JedisCheck {
    static final String CLIENT = "jedis";
    static final int CLIENTS = 4;
    static final int PIPELINED = 100;
    static final int OTHER_DB = 2;
    static final int POP_TIMEOUT_SECONDS = 30;
    static final long RUN_TIMEOUT_SECONDS = 120;
    static final long POLL_MILLIS = 5;

    private final HostAndPort address;
    private final String user;
    private final String password;
    private final RedisProtocol protocol;

    private JedisCheck(HostAndPort address, String user, String password, RedisProtocol protocol) {
        this.address = address;
        this.user = user;
        this.password = password;
        this.protocol = protocol;
    }

    public static void main(String[] args) throws Exception {
        HostAndPort address =
                new HostAndPort(System.getenv("WEIR_HOST"), Integer.parseInt(System.getenv("WEIR_PORT")));
        boolean failed = false;
        for (RedisProtocol protocol : new RedisProtocol[] {RedisProtocol.RESP2, RedisProtocol.RESP3}) {
            JedisCheck check =
                    new JedisCheck(address, System.getenv("WEIR_USER"), System.getenv("WEIR_PASSWORD"), protocol);
            String name = protocol == RedisProtocol.RESP3 ? "resp3" : "resp2";
            ExecutorService pool = Executors.newFixedThreadPool(CLIENTS);
            List<Future<?>> runs = new ArrayList<>();
            for (int i = 0; i < CLIENTS; i++) {
                String tag = CLIENT + ":" + name + ":" + i;
                runs.add(pool.submit(() -> {
                    check.run(tag);
                    return null;
                }));
            }
            List<String> failures = new ArrayList<>();
            for (Future<?> run : runs) {
                try {
                    run.get(RUN_TIMEOUT_SECONDS, TimeUnit.SECONDS);
                } catch (Exception e) {
                    failures.add(String.valueOf(e.getCause() != null ? e.getCause() : e));
                }
            }
            pool.shutdownNow();
            if (failures.isEmpty()) {
                System.out.println("ok " + CLIENT + " " + name);
            } else {
                System.err.println("FAIL " + CLIENT + " " + name + ": " + String.join("\n", failures));
                failed = true;
            }
        }
        System.exit(failed ? 1 : 0);
    }

    private Jedis connect(int db, String password) {
        return new Jedis(address, DefaultJedisClientConfig.builder()
                .user(user)
                .password(password)
                .database(db)
                .protocol(protocol)
                .build());
    }

    /** Every step for one client whose keys start with {@code tag}. */
    private void run(String tag) {
        try (Jedis jedis = connect(0, password)) {
            expect(tag + ": AUTH and PING", "PONG", jedis.ping());
            replyProtocol(jedis, tag);
            pipeline(jedis, tag);
            transaction(jedis, tag);
            blockingPop(jedis, tag);
            pubSub(jedis, tag);
            otherDatabase(jedis, tag);
            wrongPassword(tag);
        }
    }

    /** A hash comes back as a RESP3 map over RESP3 and as a flat array over RESP2. */
    private void replyProtocol(Jedis jedis, String tag) {
        String key = tag + ":h";
        jedis.hset(key, "f", "v");
        Object reply = jedis.sendCommand(Protocol.Command.HGETALL, key);
        boolean isMap = reply instanceof List<?> list && !list.isEmpty() && list.get(0) instanceof KeyValue;
        if (isMap != (protocol == RedisProtocol.RESP3)) {
            throw new IllegalStateException(tag + ": HGETALL over " + protocol + " answered " + reply);
        }
    }

    /** SET, GET and INCR for 100 keys in one pipeline, each reply checked in order. */
    private void pipeline(Jedis jedis, String tag) {
        jedis.del(tag + ":n");
        Pipeline pipe = jedis.pipelined();
        List<Response<String>> gets = new ArrayList<>();
        List<Response<Long>> incrs = new ArrayList<>();
        for (int i = 0; i < PIPELINED; i++) {
            String key = tag + ":p" + i;
            pipe.set(key, Integer.toString(i));
            gets.add(pipe.get(key));
            incrs.add(pipe.incr(tag + ":n"));
        }
        pipe.sync();
        for (int i = 0; i < PIPELINED; i++) {
            expect(tag + ": pipelined GET " + i, Integer.toString(i), gets.get(i).get());
            expect(tag + ": pipelined INCR " + i, (long) (i + 1), incrs.get(i).get());
        }
    }

    /** A write by another connection between WATCH and EXEC makes EXEC return nil. */
    private void transaction(Jedis jedis, String tag) {
        String key = tag + ":w";
        jedis.set(key, "0");
        jedis.watch(key);
        try (Jedis writer = connect(0, password)) {
            writer.set(key, "writer");
        }
        Transaction tx = jedis.multi();
        tx.set(key, "tx");
        expect(tag + ": EXEC after a conflicting write", null, tx.exec());
        expect(tag + ": the key after the aborted EXEC", "writer", jedis.get(key));
        jedis.watch(key);
        tx = jedis.multi();
        tx.set(key, "tx");
        expect(tag + ": EXEC without a conflict", List.of("OK"), tx.exec());
        expect(tag + ": the key after EXEC", "tx", jedis.get(key));
    }

    /** A BLPOP that is blocked (INFO shows a blocked client) is woken by a producer. */
    private void blockingPop(Jedis jedis, String tag) {
        String queue = tag + ":q";
        ExecutorService consumer = Executors.newSingleThreadExecutor();
        try (Jedis blocking = connect(0, password)) {
            Future<List<String>> popped = consumer.submit(() -> blocking.blpop(POP_TIMEOUT_SECONDS, queue));
            while (blockedClients(jedis) == 0 && !popped.isDone()) {
                Thread.sleep(POLL_MILLIS);
            }
            jedis.rpush(queue, "job");
            expect(tag + ": BLPOP", List.of(queue, "job"), popped.get(POP_TIMEOUT_SECONDS, TimeUnit.SECONDS));
        } catch (Exception e) {
            throw new IllegalStateException(tag + ": BLPOP: " + e, e);
        } finally {
            consumer.shutdownNow();
        }
    }

    private static int blockedClients(Jedis jedis) {
        for (String line : jedis.info("clients").split("\r?\n")) {
            if (line.startsWith("blocked_clients:")) {
                return Integer.parseInt(line.substring("blocked_clients:".length()).trim());
            }
        }
        throw new IllegalStateException("no blocked_clients in INFO clients");
    }

    /** A message published once the subscription is confirmed reaches the subscriber. */
    private void pubSub(Jedis jedis, String tag) {
        String channel = tag + ":chan";
        List<String> received = new ArrayList<>();
        long[] receivers = {-1};
        try (Jedis subscriber = connect(0, password)) {
            subscriber.subscribe(new JedisPubSub() {
                @Override
                public void onSubscribe(String ch, int count) {
                    receivers[0] = jedis.publish(channel, "hello");
                }

                @Override
                public void onMessage(String ch, String message) {
                    received.add(ch + " " + message);
                    unsubscribe();
                }
            }, channel);
        }
        expect(tag + ": PUBLISH receivers", 1L, receivers[0]);
        expect(tag + ": Pub/Sub message", List.of(channel + " hello"), received);
    }

    /** A key set in database 2 is seen there and not in database 0. */
    private void otherDatabase(Jedis jedis, String tag) {
        String key = tag + ":db";
        try (Jedis db2 = connect(OTHER_DB, password)) {
            db2.set(key, "in-2");
            expect(tag + ": GET in database 2", "in-2", db2.get(key));
        }
        expect(tag + ": GET in database 0", null, jedis.get(key));
        jedis.select(OTHER_DB);
        expect(tag + ": GET after SELECT 2", "in-2", jedis.get(key));
        jedis.select(0);
    }

    /** Logging in with a wrong password fails with Redis's WRONGPASS error. */
    private void wrongPassword(String tag) {
        try (Jedis bad = connect(0, password + "-wrong")) {
            bad.ping();
            throw new IllegalStateException(tag + ": a wrong password was accepted");
        } catch (JedisException e) {
            if (e.getMessage() == null || !e.getMessage().startsWith("WRONGPASS")) {
                throw new IllegalStateException(tag + ": want WRONGPASS, got " + e, e);
            }
        }
    }

    private static void expect(String what, Object expected, Object actual) {
        if (expected == null ? actual != null : !expected.equals(actual)) {
            throw new IllegalStateException(what + ": expected " + expected + ", got " + actual);
        }
    }
}
