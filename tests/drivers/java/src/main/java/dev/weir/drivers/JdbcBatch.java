package dev.weir.drivers;

import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Runs JDBC batches (the driver pipelines a batch's statements before one Sync) through the
 * Weir pooler from several clients over few server connections.
 *
 * <p>With {@code prepareThreshold=1} and a statement cache of two, statements are named,
 * prepared and closed by the driver as batches go. Each round: a batch of inserts, a batch
 * with a failing row in the middle (the whole batch rolls back), and a batch with a value
 * larger than the pooler's packet buffer. Prints {@code ok jdbc-batch <queries> queries}.
 */
public final class JdbcBatch {
    static final String DRIVER = "jdbc-batch";
    static final int CLIENTS = 6;
    static final int ROUNDS = 20;
    static final int ROWS = 20;
    static final int BIG = 200_000;
    static final String TABLE = "weir_batch_jdbc";

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + System.getenv("WEIR_HOST") + ":"
                + System.getenv("WEIR_PORT") + "/" + System.getenv("WEIR_DB");
        Properties props = new Properties();
        props.setProperty("user", System.getenv("WEIR_USER"));
        props.setProperty("password", System.getenv("WEIR_PASSWORD"));
        props.setProperty("prepareThreshold", "1");
        props.setProperty("preparedStatementCacheQueries", "2");
        try (Connection c = DriverManager.getConnection(url, props);
                Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS " + TABLE);
            s.execute("CREATE TABLE " + TABLE
                    + " (client int NOT NULL, n int NOT NULL CHECK (n >= 0), note text)");
        }
        AtomicInteger queries = new AtomicInteger();
        ExecutorService pool = Executors.newFixedThreadPool(CLIENTS);
        List<Future<?>> futures = new ArrayList<>();
        for (int n = 0; n < CLIENTS; n++) {
            final int client = n;
            futures.add(pool.submit(() -> {
                run(url, props, client, queries);
                return null;
            }));
        }
        pool.shutdown();
        int failures = 0;
        for (int n = 0; n < CLIENTS; n++) {
            try {
                futures.get(n).get(120, TimeUnit.SECONDS);
            } catch (Exception e) {
                failures++;
                System.err.println("FAIL " + DRIVER + " client " + n + ": " + e);
            }
        }
        if (failures > 0) {
            System.exit(1);
        }
        System.out.println("ok " + DRIVER + " " + queries.get() + " queries");
        System.exit(0);
    }

    static void run(String url, Properties props, int client, AtomicInteger queries)
            throws SQLException {
        String insert = "INSERT INTO " + TABLE + " (client, n, note) VALUES (?, ?, ?)";
        String count = "SELECT count(*)::int FROM " + TABLE + " WHERE client = ?";
        String other = "SELECT ?::int + 1";
        try (Connection c = DriverManager.getConnection(url, props)) {
            int expected = 0;
            for (int r = 0; r < ROUNDS; r++) {
                try (PreparedStatement ps = c.prepareStatement(insert)) {
                    for (int i = 0; i < ROWS; i++) {
                        ps.setInt(1, client);
                        ps.setInt(2, i);
                        ps.setString(3, "r" + r);
                        ps.addBatch();
                    }
                    ps.executeBatch();
                    expected += ROWS;
                    queries.addAndGet(ROWS);
                }
                // A failing row in the middle: the batch runs as one transaction.
                try (PreparedStatement ps = c.prepareStatement(insert)) {
                    for (int i = 0; i < ROWS; i++) {
                        ps.setInt(1, client);
                        ps.setInt(2, i == ROWS / 2 ? -1 : i);
                        ps.setString(3, "doomed");
                        ps.addBatch();
                    }
                    try {
                        ps.executeBatch();
                        throw new IllegalStateException("a row violating the check went in");
                    } catch (BatchUpdateException e) {
                        if (!"23514".equals(e.getSQLState())) {
                            throw e;
                        }
                    }
                    queries.addAndGet(ROWS);
                }
                // A third statement text, so the cache of two closes one.
                try (PreparedStatement ps = c.prepareStatement(other)) {
                    ps.setInt(1, r);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check("other", rs.getInt(1), r + 1);
                    }
                    queries.incrementAndGet();
                }
                try (PreparedStatement ps = c.prepareStatement(insert)) {
                    String big = "x".repeat(BIG);
                    for (int i = 0; i < 3; i++) {
                        ps.setInt(1, client);
                        ps.setInt(2, i);
                        ps.setString(3, i == 1 ? big : "small");
                        ps.addBatch();
                    }
                    ps.executeBatch();
                    expected += 3;
                    queries.addAndGet(3);
                }
                try (PreparedStatement ps = c.prepareStatement(count)) {
                    ps.setInt(1, client);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check("rows after round " + r, rs.getInt(1), expected);
                    }
                    queries.incrementAndGet();
                }
            }
        }
    }

    static void check(String what, int actual, int expected) {
        if (actual != expected) {
            throw new IllegalStateException(what + ": expected " + expected + ", got " + actual);
        }
    }
}
