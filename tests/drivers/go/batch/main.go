// Command pgxbatch runs pgx v5 batches (pipelined extended protocol: several queries, one
// Sync) through the Weir pooler from several clients over few server connections.
//
// Every client uses pgx's default statement cache with room for two statements, so pgx
// prepares, executes by name and closes statements as batches go; each round sends a batch of
// five shapes, a batch with an error in the middle, and a batch with a parameter larger than
// the pooler's packet buffer. Reports `ok pgx-batch <queries> queries` or every failure.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	driver  = "pgx-batch"
	clients = 6
	rounds  = 20
	big     = 200_000
	timeout = 2 * time.Minute
)

func connString() string {
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s statement_cache_capacity=2",
		os.Getenv("WEIR_HOST"), os.Getenv("WEIR_PORT"), os.Getenv("WEIR_USER"),
		os.Getenv("WEIR_PASSWORD"), os.Getenv("WEIR_DB"))
}

func client(ctx context.Context, n int, queries *int) error {
	conn, err := pgx.Connect(ctx, connString())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	for r := 0; r < rounds; r++ {
		// Five shapes over a cache of two: pgx closes statements between batches.
		b := &pgx.Batch{}
		for i := 0; i < 5; i++ {
			b.Queue(fmt.Sprintf("SELECT $1::int + %d", i), n*100+r)
		}
		res := conn.SendBatch(ctx, b)
		for i := 0; i < 5; i++ {
			var v int
			if err := res.QueryRow().Scan(&v); err != nil {
				return fmt.Errorf("round %d batch row %d: %w", r, i, err)
			}
			if v != n*100+r+i {
				return fmt.Errorf("round %d batch row %d: got %d", r, i, v)
			}
		}
		if err := res.Close(); err != nil {
			return fmt.Errorf("round %d batch close: %w", r, err)
		}
		*queries += 5

		// An error in the middle: the first result arrives, the error is the second's,
		// the rest of the batch is not run.
		b = &pgx.Batch{}
		b.Queue("SELECT $1::int", 1)
		b.Queue("SELECT 1 / $1::int", 0)
		b.Queue("SELECT $1::int", 3)
		res = conn.SendBatch(ctx, b)
		var v int
		if err := res.QueryRow().Scan(&v); err != nil || v != 1 {
			return fmt.Errorf("round %d before the error: %d, %v", r, v, err)
		}
		err = res.QueryRow().Scan(&v)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
			return fmt.Errorf("round %d: expected division by zero, got %v", r, err)
		}
		_ = res.Close()
		*queries += 3
		if err := conn.QueryRow(ctx, "SELECT $1::int", n).Scan(&v); err != nil || v != n {
			return fmt.Errorf("round %d after the failed batch: %d, %v", r, v, err)
		}
		*queries++

		// A parameter larger than pkt_buf, between two small queries.
		b = &pgx.Batch{}
		b.Queue("SELECT $1::int", r)
		b.Queue("SELECT length($1::text)", strings.Repeat("x", big))
		b.Queue("SELECT $1::int * 2", r)
		res = conn.SendBatch(ctx, b)
		want := []int{r, big, r * 2}
		for i, w := range want {
			if err := res.QueryRow().Scan(&v); err != nil || v != w {
				return fmt.Errorf("round %d big batch row %d: %d, %v", r, i, v, err)
			}
		}
		if err := res.Close(); err != nil {
			return fmt.Errorf("round %d big batch close: %w", r, err)
		}
		*queries += 3
	}
	return nil
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	errs := make([]error, clients)
	counts := make([]int, clients)
	var wg sync.WaitGroup
	for n := 0; n < clients; n++ {
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			errs[n] = client(ctx, n, &counts[n])
		}(n)
	}
	wg.Wait()
	failed := false
	total := 0
	for n, err := range errs {
		total += counts[n]
		if err != nil {
			failed = true
			fmt.Fprintf(os.Stderr, "FAIL %s client %d: %v\n", driver, n, err)
		}
	}
	if failed {
		os.Exit(1)
	}
	fmt.Printf("ok %s %d queries\n", driver, total)
}
