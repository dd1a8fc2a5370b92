// Command pgxcheck runs the client-driver compatibility checklist through the Weir pooler with
// pgx v5.
//
// pgx is used in its default statement cache mode: each parameterised query is prepared once
// per connection as a named server-side statement and then executed by name, so in transaction
// mode its statements are executed on server connections other than the one they were
// prepared on.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	driver       = "pgx"
	clients      = 20
	loopQueries  = 1000
	insertEvery  = 20
	bigRows      = 10240 // 10240 rows of 1 KiB text make 10 MiB of payload
	bigWidth     = 1024
	bigBytes     = 10 * 1024 * 1024
	runTimeout   = 10 * time.Minute
	divByZero    = "22012"
	inFailedTx   = "25P02"
	table        = "weir_check_pgx"
	insertStep   = "INSERT INTO " + table + " (client, step, n) VALUES ($1, $2, 0)"
	countStep    = "SELECT count(*)::int FROM " + table + " WHERE client = $1 AND step = $2"
	settingsSQL  = "SELECT current_setting('application_name'), current_setting('TimeZone')"
	divideSQL    = "SELECT 1 / $1::int"
	echoSQL      = "SELECT $1::int"
	bigSQL       = "SELECT g, repeat(chr(65 + mod(g, 26)), $1::int) FROM generate_series(1, $2::int) AS g"
	createTable  = "CREATE TABLE " + table + " (client int NOT NULL, step text NOT NULL, n int NOT NULL)"
	dropTable    = "DROP TABLE IF EXISTS " + table
	loopInsert   = "INSERT INTO " + table + " (client, step, n) VALUES ($1, 'loop', $2)"
	loopCount    = "SELECT count(*)::int FROM " + table + " WHERE client = $1 AND step = 'loop'"
	loopSum      = "SELECT $1::int + $2::int"
	loopConcat   = "SELECT $1::text || ':' || $2::text"
	loopSeries   = "SELECT count(*)::int FROM generate_series(1, $1::int)"
	savepointSQL = "SAVEPOINT before_error"
	rollbackTo   = "ROLLBACK TO SAVEPOINT before_error"
)

// checkFailed is a result that differs from what the checklist expects.
type checkFailed struct{ msg string }

func (e *checkFailed) Error() string { return e.msg }

func failf(format string, args ...any) error {
	return &checkFailed{fmt.Sprintf(format, args...)}
}

func expect[T comparable](what string, actual, expected T) error {
	if actual != expected {
		return failf("%s: expected %v, got %v", what, expected, actual)
	}
	return nil
}

// expectServerError checks that err is a server error carrying sqlstate.
func expectServerError(what string, err error, sqlstate string) error {
	var pgErr *pgconn.PgError
	if err == nil {
		return failf("%s: succeeded, expected SQLSTATE %s", what, sqlstate)
	}
	if !errors.As(err, &pgErr) || pgErr.Code != sqlstate {
		return failf("%s: expected SQLSTATE %s, got %v", what, sqlstate, err)
	}
	return nil
}

type settings struct {
	host, user, password, db, mode string
	port                           uint16
	// TLS as libpq names it (WEIR_SSLMODE, WEIR_SSLROOTCERT); empty leaves pgx's defaults.
	sslmode, sslrootcert string
}

func settingsFromEnv() (settings, error) {
	var missing []string
	get := func(name string) string {
		value := os.Getenv(name)
		if value == "" {
			missing = append(missing, name)
		}
		return value
	}
	s := settings{
		host:        get("WEIR_HOST"),
		user:        get("WEIR_USER"),
		password:    get("WEIR_PASSWORD"),
		db:          get("WEIR_DB"),
		mode:        os.Getenv("WEIR_MODE"),
		sslmode:     os.Getenv("WEIR_SSLMODE"),
		sslrootcert: os.Getenv("WEIR_SSLROOTCERT"),
	}
	port := get("WEIR_PORT")
	if len(missing) > 0 {
		return s, fmt.Errorf("missing environment variables: %s", strings.Join(missing, ", "))
	}
	parsed, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return s, fmt.Errorf("WEIR_PORT=%q: %w", port, err)
	}
	s.port = uint16(parsed)
	if s.mode == "" {
		s.mode = "unknown"
	}
	return s, nil
}

func connect(ctx context.Context, s settings) (*pgx.Conn, error) {
	// An empty connection string gives the defaults; the fields below replace what matters.
	// TLS goes through the connection string, so that pgx applies libpq's sslmode rules.
	// The host is in it too: pgx derives the TLS server name from the parsed host.
	conn := ""
	if s.sslmode != "" {
		conn = fmt.Sprintf("host=%s port=%d sslmode=%s sslrootcert=%s",
			s.host, s.port, s.sslmode, s.sslrootcert)
	}
	config, err := pgx.ParseConfig(conn)
	if err != nil {
		return nil, err
	}
	config.Host, config.Port = s.host, s.port
	config.User, config.Password, config.Database = s.user, s.password, s.db
	return pgx.ConnectConfig(ctx, config)
}

func applicationName(client int) string { return fmt.Sprintf("weir-%s-%d", driver, client) }
func timeZone(client int) string        { return fmt.Sprintf("Etc/GMT-%d", client%14+1) }
func quoteLiteral(text string) string   { return "'" + strings.ReplaceAll(text, "'", "''") + "'" }

// loopStep is one query of the parameterised loop, the same plan every driver program follows.
type loopStep struct {
	sql      string
	args     []any
	expected any // nil for the insert, which returns no row
}

func loopPlan(client int) []loopStep {
	plan := make([]loopStep, 0, loopQueries)
	inserted := 0
	for i := 0; i < loopQueries; i++ {
		switch {
		case i%4 == 0:
			plan = append(plan, loopStep{loopSum, []any{i, client}, i + client})
		case i%4 == 1:
			c, q := fmt.Sprintf("c%d", client), fmt.Sprintf("q%d", i)
			plan = append(plan, loopStep{loopConcat, []any{c, q}, c + ":" + q})
		case i%4 == 2:
			k := i%50 + 1
			plan = append(plan, loopStep{loopSeries, []any{k}, k})
		case i%insertEvery == 3:
			inserted++
			plan = append(plan, loopStep{loopInsert, []any{client, i}, nil})
		default:
			plan = append(plan, loopStep{loopCount, []any{client}, inserted})
		}
	}
	return plan
}

func loopInserts() int {
	count := 0
	for _, step := range loopPlan(0) {
		if step.expected == nil {
			count++
		}
	}
	return count
}

// client is one connection working through the checklist.
type client struct {
	n       int
	conn    *pgx.Conn
	step    string
	queries int
}

func (c *client) exec(ctx context.Context, sql string, args ...any) error {
	c.queries++
	_, err := c.conn.Exec(ctx, sql, args...)
	return err
}

// intValue runs a query returning one int.
func (c *client) intValue(ctx context.Context, sql string, args ...any) (int, error) {
	c.queries++
	var v int
	err := c.conn.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

func (c *client) expectInt(ctx context.Context, what string, expected int, sql string, args ...any) error {
	v, err := c.intValue(ctx, sql, args...)
	if err != nil {
		return err
	}
	return expect(what, v, expected)
}

func (c *client) checkSession(ctx context.Context, what string) error {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	var app, tz string
	c.queries++
	if err := tx.QueryRow(ctx, settingsSQL).Scan(&app, &tz); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	return expect(what, app+" "+tz, applicationName(c.n)+" "+timeZone(c.n))
}

func (c *client) runLoop(ctx context.Context) error {
	for _, step := range loopPlan(c.n) {
		if step.expected == nil {
			if err := c.exec(ctx, step.sql, step.args...); err != nil {
				return err
			}
			continue
		}
		c.queries++
		row := c.conn.QueryRow(ctx, step.sql, step.args...)
		switch expected := step.expected.(type) {
		case int:
			var v int
			if err := row.Scan(&v); err != nil {
				return err
			}
			if err := expect(fmt.Sprintf("%q%v", step.sql, step.args), v, expected); err != nil {
				return err
			}
		case string:
			var v string
			if err := row.Scan(&v); err != nil {
				return err
			}
			if err := expect(fmt.Sprintf("%q%v", step.sql, step.args), v, expected); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *client) rolledBack(ctx context.Context) error {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // the explicit rollback below is what is checked
	c.queries += 2
	if _, err := tx.Exec(ctx, insertStep, c.n, "rolled-back"); err != nil {
		return err
	}
	var inside int
	if err := tx.QueryRow(ctx, countStep, c.n, "rolled-back").Scan(&inside); err != nil {
		return err
	}
	if err := expect("own insert inside the transaction", inside, 1); err != nil {
		return err
	}
	if err := tx.Rollback(ctx); err != nil {
		return err
	}
	return c.expectInt(ctx, "rows after the rollback", 0, countStep, c.n, "rolled-back")
}

func (c *client) savepointRecovery(ctx context.Context) error {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	c.queries += 5
	if _, err := tx.Exec(ctx, insertStep, c.n, "before-error"); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, savepointSQL); err != nil {
		return err
	}
	var v int
	err = tx.QueryRow(ctx, divideSQL, 0).Scan(&v)
	if err := expectServerError("division by zero", err, divByZero); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, rollbackTo); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, insertStep, c.n, "after-error"); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	for _, step := range []string{"before-error", "after-error"} {
		if err := c.expectInt(ctx, "committed "+step+" rows", 1, countStep, c.n, step); err != nil {
			return err
		}
	}
	return nil
}

func (c *client) errorThenRollback(ctx context.Context) error {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // the explicit rollback below is what is checked
	c.queries += 3
	if _, err := tx.Exec(ctx, insertStep, c.n, "doomed"); err != nil {
		return err
	}
	var v int
	err = tx.QueryRow(ctx, divideSQL, 0).Scan(&v)
	if err := expectServerError("division by zero", err, divByZero); err != nil {
		return err
	}
	err = tx.QueryRow(ctx, echoSQL, c.n).Scan(&v)
	if err := expectServerError("a statement after the error", err, inFailedTx); err != nil {
		return err
	}
	if err := tx.Rollback(ctx); err != nil {
		return err
	}
	if err := c.expectInt(ctx, "rows of the failed transaction", 0, countStep, c.n, "doomed"); err != nil {
		return err
	}
	return c.expectInt(ctx, "work after the rollback", c.n, echoSQL, c.n)
}

func (c *client) bigResult(ctx context.Context) error {
	c.queries++
	rows, err := c.conn.Query(ctx, bigSQL, bigWidth, bigRows)
	if err != nil {
		return err
	}
	defer rows.Close()
	count, total := 0, 0
	for rows.Next() {
		var g int
		var text string
		if err := rows.Scan(&g, &text); err != nil {
			return err
		}
		count++
		if err := expect("large result row number", g, count); err != nil {
			return err
		}
		if text != strings.Repeat(string(rune(65+g%26)), bigWidth) {
			return failf("large result row %d: wrong text of length %d", g, len(text))
		}
		total += len(text)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if err := expect("large result rows", count, bigRows); err != nil {
		return err
	}
	if total < bigBytes {
		return failf("large result: %d bytes, expected at least %d", total, bigBytes)
	}
	return nil
}

func (c *client) run(ctx context.Context, s settings) error {
	c.step = "connect"
	conn, err := connect(ctx, s)
	if err != nil {
		return err
	}
	c.conn = conn
	defer conn.Close(context.Background())

	c.step = "session SET"
	if err := c.exec(ctx, "SET application_name = "+quoteLiteral(applicationName(c.n))); err != nil {
		return err
	}
	if err := c.exec(ctx, "SET TIME ZONE "+quoteLiteral(timeZone(c.n))); err != nil {
		return err
	}
	if err := c.checkSession(ctx, "settings in the next transaction"); err != nil {
		return err
	}
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"parameterised query loop", c.runLoop},
		{"rolled-back transaction", c.rolledBack},
		{"error inside a transaction, recovered by a savepoint", c.savepointRecovery},
		{"error inside a transaction, then rollback", c.errorThenRollback},
		{"large result", c.bigResult},
	}
	for _, step := range steps {
		c.step = step.name
		if err := step.run(ctx); err != nil {
			return err
		}
	}
	c.step = "session settings at the end"
	if err := c.checkSession(ctx, "settings after all the work"); err != nil {
		return err
	}
	if err := c.expectInt(ctx, "loop rows", loopInserts(), countStep, c.n, "loop"); err != nil {
		return err
	}
	c.step = "done"
	return nil
}

func setup(ctx context.Context, s settings) error {
	conn, err := connect(ctx, s)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, dropTable); err != nil {
		return err
	}
	_, err = conn.Exec(ctx, createTable)
	return err
}

func main() {
	s, err := settingsFromEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL %s: %v\n", driver, err)
		os.Exit(1)
	}
	label := fmt.Sprintf("%s (%s mode)", driver, s.mode)
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	if err := setup(ctx, s); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL %s: setup: %v\n", label, err)
		os.Exit(1)
	}

	workers := make([]*client, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	for n := range workers {
		workers[n] = &client{n: n, step: "start"}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[n] = workers[n].run(ctx, s)
		}()
	}
	wg.Wait()

	failures, queries := 0, 0
	for n, err := range errs {
		queries += workers[n].queries
		if err != nil {
			failures++
			var check *checkFailed
			kind := ""
			if !errors.As(err, &check) {
				kind = fmt.Sprintf("%T: ", err)
			}
			fmt.Fprintf(os.Stderr, "FAIL %s client %d at %s: %s%v\n", label, n, workers[n].step, kind, err)
		}
	}
	if failures > 0 {
		fmt.Fprintf(os.Stderr, "FAIL %s: %d of %d clients failed\n", label, failures, clients)
		os.Exit(1)
	}
	fmt.Printf("ok %s %d queries\n", driver, queries)
}
