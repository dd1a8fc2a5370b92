package dev.weir.drivers;

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * Runs the client-driver compatibility checklist through the Weir pooler with the PostgreSQL
 * JDBC driver.
 *
 * <p>With {@code prepareThreshold=1} the driver turns a statement into a named server-side
 * prepared statement on its first execution and keeps it in the connection's statement cache,
 * so in transaction mode its statements are executed on server connections other than the one
 * they were prepared on.
 */
public final class JdbcCheck {
    static final String DRIVER = "jdbc";
    static final int CLIENTS = 20;
    static final int LOOP_QUERIES = 1000;
    static final int INSERT_EVERY = 20;
    /** 10240 rows of 1 KiB text make 10 MiB of payload. */
    static final int BIG_ROWS = 10240;
    static final int BIG_WIDTH = 1024;
    static final int BIG_BYTES = 10 * 1024 * 1024;
    static final long RUN_TIMEOUT_SECONDS = 600;
    static final String DIVISION_BY_ZERO = "22012";
    static final String IN_FAILED_SQL_TRANSACTION = "25P02";

    static final String TABLE = "weir_check_jdbc";
    static final String INSERT_STEP =
            "INSERT INTO " + TABLE + " (client, step, n) VALUES (?, ?, 0)";
    static final String COUNT_STEP =
            "SELECT count(*)::int FROM " + TABLE + " WHERE client = ? AND step = ?";
    static final String SETTINGS_SQL =
            "SELECT current_setting('application_name'), current_setting('TimeZone')";
    static final String DIVIDE_SQL = "SELECT 1 / ?::int";
    static final String ECHO_SQL = "SELECT ?::int";
    static final String BIG_SQL = "SELECT g, repeat(chr(65 + mod(g, 26)), ?::int)"
            + " FROM generate_series(1, ?::int) AS g";
    static final String LOOP_SUM = "SELECT ?::int + ?::int";
    static final String LOOP_CONCAT = "SELECT ?::text || ':' || ?::text";
    static final String LOOP_SERIES = "SELECT count(*)::int FROM generate_series(1, ?::int)";
    static final String LOOP_INSERT =
            "INSERT INTO " + TABLE + " (client, step, n) VALUES (?, 'loop', ?)";
    static final String LOOP_COUNT =
            "SELECT count(*)::int FROM " + TABLE + " WHERE client = ? AND step = 'loop'";

    private JdbcCheck() {}

    /** A result that differs from what the checklist expects. */
    static final class CheckFailed extends Exception {
        CheckFailed(String message) {
            super(message);
        }
    }

    static void expect(String what, Object actual, Object expected) throws CheckFailed {
        if (!expected.equals(actual)) {
            throw new CheckFailed(what + ": expected " + expected + ", got " + actual);
        }
    }

    /** The parameterised-query action whose failure {@link #expectServerError} checks. */
    interface SqlAction {
        void run() throws SQLException, CheckFailed;
    }

    static void expectServerError(String what, String sqlState, SqlAction action)
            throws CheckFailed {
        try {
            action.run();
        } catch (SQLException err) {
            expect(what + " (" + err.getMessage() + ")", err.getSQLState(), sqlState);
            return;
        }
        throw new CheckFailed(what + ": succeeded, expected SQLSTATE " + sqlState);
    }

    record Settings(String url, Properties props, String mode) {
        static Settings fromEnv(Map<String, String> env) {
            List<String> missing = new ArrayList<>();
            List<String> required =
                    List.of("WEIR_HOST", "WEIR_PORT", "WEIR_USER", "WEIR_PASSWORD", "WEIR_DB");
            for (String name : required) {
                if (env.getOrDefault(name, "").isEmpty()) {
                    missing.add(name);
                }
            }
            if (!missing.isEmpty()) {
                throw new IllegalArgumentException(
                        "missing environment variables: " + String.join(", ", missing));
            }
            String url = "jdbc:postgresql://" + env.get("WEIR_HOST") + ":" + env.get("WEIR_PORT")
                    + "/" + env.get("WEIR_DB");
            Properties props = new Properties();
            props.setProperty("user", env.get("WEIR_USER"));
            props.setProperty("password", env.get("WEIR_PASSWORD"));
            props.setProperty("prepareThreshold", "1");
            // TLS as libpq names it; pgjdbc reads a PEM root certificate for verify-full.
            String sslmode = env.getOrDefault("WEIR_SSLMODE", "");
            if (!sslmode.isEmpty()) {
                props.setProperty("sslmode", sslmode);
                props.setProperty("sslrootcert", env.getOrDefault("WEIR_SSLROOTCERT", ""));
            }
            return new Settings(url, props, env.getOrDefault("WEIR_MODE", "unknown"));
        }

        Connection connect() throws SQLException {
            return DriverManager.getConnection(url, props);
        }
    }

    static String applicationName(int client) {
        return "weir-" + DRIVER + "-" + client;
    }

    static String timeZone(int client) {
        return "Etc/GMT-" + (client % 14 + 1);
    }

    static String quoteLiteral(String text) {
        return "'" + text.replace("'", "''") + "'";
    }

    /** One query of the parameterised loop, the same plan every driver program follows. */
    record LoopStep(String sql, Object[] args, Object expected) {}

    static List<LoopStep> loopPlan(int client) {
        List<LoopStep> plan = new ArrayList<>(LOOP_QUERIES);
        int inserted = 0;
        for (int i = 0; i < LOOP_QUERIES; i++) {
            if (i % 4 == 0) {
                plan.add(new LoopStep(LOOP_SUM, new Object[] {i, client}, i + client));
            } else if (i % 4 == 1) {
                String c = "c" + client;
                String q = "q" + i;
                plan.add(new LoopStep(LOOP_CONCAT, new Object[] {c, q}, c + ":" + q));
            } else if (i % 4 == 2) {
                int k = i % 50 + 1;
                plan.add(new LoopStep(LOOP_SERIES, new Object[] {k}, k));
            } else if (i % INSERT_EVERY == 3) {
                inserted++;
                plan.add(new LoopStep(LOOP_INSERT, new Object[] {client, i}, null));
            } else {
                plan.add(new LoopStep(LOOP_COUNT, new Object[] {client}, inserted));
            }
        }
        return plan;
    }

    static int loopInserts() {
        return (int) loopPlan(0).stream().filter(step -> step.expected() == null).count();
    }

    /** One connection working through the checklist. */
    static final class Client {
        final int n;
        volatile String step = "start";
        volatile int queries;
        Connection conn;

        Client(int n) {
            this.n = n;
        }

        /** Runs a statement, returning its first row's first column, or null without rows. */
        Object query(String sql, Object... args) throws SQLException {
            queries++;
            try (PreparedStatement stmt = conn.prepareStatement(sql)) {
                for (int i = 0; i < args.length; i++) {
                    stmt.setObject(i + 1, args[i]);
                }
                if (!stmt.execute()) {
                    return null;
                }
                try (ResultSet rows = stmt.getResultSet()) {
                    return rows.next() ? rows.getObject(1) : null;
                }
            }
        }

        void sessionSql(String sql) throws SQLException {
            queries++;
            try (Statement stmt = conn.createStatement()) {
                stmt.execute(sql);
            }
        }

        void checkSession(String what) throws SQLException, CheckFailed {
            conn.setAutoCommit(false);
            queries++;
            String actual;
            try (PreparedStatement stmt = conn.prepareStatement(SETTINGS_SQL);
                    ResultSet rows = stmt.executeQuery()) {
                rows.next();
                actual = rows.getString(1) + " " + rows.getString(2);
            }
            conn.commit();
            conn.setAutoCommit(true);
            expect(what, actual, applicationName(n) + " " + timeZone(n));
        }

        void run(Settings settings) throws SQLException, CheckFailed {
            step = "connect";
            try (Connection c = settings.connect()) {
                conn = c;
                step = "session SET";
                sessionSql("SET application_name = " + quoteLiteral(applicationName(n)));
                sessionSql("SET TIME ZONE " + quoteLiteral(timeZone(n)));
                checkSession("settings in the next transaction");

                step = "parameterised query loop";
                for (LoopStep s : loopPlan(n)) {
                    Object actual = query(s.sql(), s.args());
                    if (s.expected() != null) {
                        expect(s.sql() + List.of(s.args()), actual, s.expected());
                    }
                }

                step = "rolled-back transaction";
                conn.setAutoCommit(false);
                query(INSERT_STEP, n, "rolled-back");
                expect("own insert inside the transaction", query(COUNT_STEP, n, "rolled-back"), 1);
                conn.rollback();
                conn.setAutoCommit(true);
                expect("rows after the rollback", query(COUNT_STEP, n, "rolled-back"), 0);

                step = "error inside a transaction, recovered by a savepoint";
                conn.setAutoCommit(false);
                query(INSERT_STEP, n, "before-error");
                Savepoint savepoint = conn.setSavepoint("before_error");
                expectServerError("division by zero", DIVISION_BY_ZERO, () -> query(DIVIDE_SQL, 0));
                conn.rollback(savepoint);
                query(INSERT_STEP, n, "after-error");
                conn.commit();
                conn.setAutoCommit(true);
                for (String name : List.of("before-error", "after-error")) {
                    expect("committed " + name + " rows", query(COUNT_STEP, n, name), 1);
                }

                step = "error inside a transaction, then rollback";
                conn.setAutoCommit(false);
                query(INSERT_STEP, n, "doomed");
                expectServerError("division by zero", DIVISION_BY_ZERO, () -> query(DIVIDE_SQL, 0));
                expectServerError("a statement after the error", IN_FAILED_SQL_TRANSACTION,
                        () -> query(ECHO_SQL, n));
                conn.rollback();
                conn.setAutoCommit(true);
                expect("rows of the failed transaction", query(COUNT_STEP, n, "doomed"), 0);
                expect("work after the rollback", query(ECHO_SQL, n), n);

                step = "large result";
                bigResult();

                step = "session settings at the end";
                checkSession("settings after all the work");
                expect("loop rows", query(COUNT_STEP, n, "loop"), loopInserts());
                step = "done";
            }
        }

        void bigResult() throws SQLException, CheckFailed {
            queries++;
            int count = 0;
            long total = 0;
            try (PreparedStatement stmt = conn.prepareStatement(BIG_SQL)) {
                stmt.setInt(1, BIG_WIDTH);
                stmt.setInt(2, BIG_ROWS);
                try (ResultSet rows = stmt.executeQuery()) {
                    while (rows.next()) {
                        count++;
                        int g = rows.getInt(1);
                        String text = rows.getString(2);
                        expect("large result row number", g, count);
                        if (!text.equals(String.valueOf((char) (65 + g % 26)).repeat(BIG_WIDTH))) {
                            throw new CheckFailed("large result row " + g
                                    + ": wrong text of length " + text.length());
                        }
                        total += text.length();
                    }
                }
            }
            expect("large result rows", count, BIG_ROWS);
            if (total < BIG_BYTES) {
                throw new CheckFailed(
                        "large result: " + total + " bytes, expected at least " + BIG_BYTES);
            }
        }
    }

    static void setup(Settings settings) throws SQLException {
        try (Connection conn = settings.connect(); Statement stmt = conn.createStatement()) {
            stmt.execute("DROP TABLE IF EXISTS " + TABLE);
            stmt.execute("CREATE TABLE " + TABLE
                    + " (client int NOT NULL, step text NOT NULL, n int NOT NULL)");
        }
    }

    public static void main(String[] args) throws InterruptedException {
        Settings settings;
        try {
            settings = Settings.fromEnv(System.getenv());
        } catch (IllegalArgumentException err) {
            System.err.println("FAIL " + DRIVER + ": " + err.getMessage());
            System.exit(1);
            return;
        }
        String label = DRIVER + " (" + settings.mode() + " mode)";
        try {
            setup(settings);
        } catch (SQLException err) {
            System.err.println("FAIL " + label + ": setup: " + err.getMessage());
            System.exit(1);
        }

        ExecutorService pool = Executors.newFixedThreadPool(CLIENTS);
        List<Client> clients = new ArrayList<>();
        List<Future<?>> results = new ArrayList<>();
        for (int n = 0; n < CLIENTS; n++) {
            Client client = new Client(n);
            clients.add(client);
            results.add(pool.submit(() -> {
                client.run(settings);
                return null;
            }));
        }
        pool.shutdown();
        if (!pool.awaitTermination(RUN_TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
            System.err.println(
                    "FAIL " + label + ": not finished within " + RUN_TIMEOUT_SECONDS + " s");
            System.exit(1);
        }

        int failures = 0;
        int queries = 0;
        for (int n = 0; n < CLIENTS; n++) {
            queries += clients.get(n).queries;
            try {
                results.get(n).get(0, TimeUnit.SECONDS);
            } catch (ExecutionException err) {
                failures++;
                Throwable cause = err.getCause();
                String kind =
                        cause instanceof CheckFailed ? "" : cause.getClass().getSimpleName() + ": ";
                System.err.println("FAIL " + label + " client " + n + " at " + clients.get(n).step
                        + ": " + kind + cause.getMessage());
            } catch (TimeoutException err) {
                failures++;
                System.err.println("FAIL " + label + " client " + n + " did not finish");
            }
        }
        if (failures > 0) {
            System.err.println(
                    "FAIL " + label + ": " + failures + " of " + CLIENTS + " clients failed");
            System.exit(1);
        }
        System.out.println("ok " + DRIVER + " " + queries + " queries");
    }
}
