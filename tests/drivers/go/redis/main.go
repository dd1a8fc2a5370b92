// Command goredischeck runs the Redis client checks through weir's RESP listener with
// go-redis v9, over RESP2 and over RESP3 (go-redis's default, sent as HELLO 3).
//
// Each protocol runs several clients at once; each client logs in as an ACL user, reads a hash
// back in the protocol's shape (a map only over RESP3), sends a pipeline, runs an optimistic
// transaction that a second connection breaks, wakes a blocked BLPOP, receives a Pub/Sub
// message, works in another database and fails to log in with a wrong password. Prints `ok go-redis respN` per protocol and exits non-zero on a failure.
//
// Usage: WEIR_HOST=127.0.0.1 WEIR_PORT=6379 WEIR_USER=alice WEIR_PASSWORD=pw goredischeck
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

	"github.com/redis/go-redis/v9"
)

const (
	client      = "go-redis"
	clients     = 4
	pipelined   = 100
	otherDB     = 2
	runTimeout  = 2 * time.Minute
	popTimeout  = 30 * time.Second
	pollBlocked = 5 * time.Millisecond
)

type target struct{ addr, user, password string }

func (t target) connect(protocol, db int, password string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:     t.addr,
		Username: t.user,
		Password: password,
		Protocol: protocol,
		DB:       db,
		// Fail rather than retry, so an error shows at its step.
		MaxRetries: -1,
	})
}

func main() {
	t := target{
		addr:     os.Getenv("WEIR_HOST") + ":" + os.Getenv("WEIR_PORT"),
		user:     os.Getenv("WEIR_USER"),
		password: os.Getenv("WEIR_PASSWORD"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	failed := false
	for _, protocol := range []int{2, 3} {
		var wg sync.WaitGroup
		errs := make([]error, clients)
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = check(ctx, t, protocol, fmt.Sprintf("%s:resp%d:%d", client, protocol, i))
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL %s resp%d: %v\n", client, protocol, err)
			failed = true
			continue
		}
		fmt.Printf("ok %s resp%d\n", client, protocol)
	}
	if failed {
		os.Exit(1)
	}
}

// check runs every step for one client whose keys start with tag.
func check(ctx context.Context, t target, protocol int, tag string) error {
	rdb := t.connect(protocol, 0, t.password)
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%s: AUTH and PING: %w", tag, err)
	}
	steps := []struct {
		name string
		run  func() error
	}{
		{"protocol", func() error { return replyProtocol(ctx, rdb, protocol, tag) }},
		{"pipeline", func() error { return pipeline(ctx, rdb, tag) }},
		{"WATCH/MULTI/EXEC", func() error { return transaction(ctx, t, rdb, protocol, tag) }},
		{"BLPOP", func() error { return blockingPop(ctx, t, rdb, protocol, tag) }},
		{"Pub/Sub", func() error { return pubSub(ctx, rdb, tag) }},
		{"SELECT", func() error { return otherDatabase(ctx, t, rdb, protocol, tag) }},
		{"wrong password", func() error { return wrongPassword(ctx, t, protocol) }},
	}
	for _, s := range steps {
		if err := s.run(); err != nil {
			return fmt.Errorf("%s: %s: %w", tag, s.name, err)
		}
	}
	return nil
}

// replyProtocol: a hash comes back as a RESP3 map over RESP3 and as a flat array over RESP2.
func replyProtocol(ctx context.Context, rdb *redis.Client, protocol int, tag string) error {
	key := tag + ":h"
	if err := rdb.HSet(ctx, key, "f", "v").Err(); err != nil {
		return err
	}
	reply, err := rdb.Do(ctx, "HGETALL", key).Result()
	if err != nil {
		return err
	}
	_, isMap := reply.(map[interface{}]interface{})
	if isMap != (protocol == 3) {
		return fmt.Errorf("HGETALL over RESP%d answered %T", protocol, reply)
	}
	return nil
}

// pipeline sends SET, GET and INCR for 100 keys in one pipeline and checks each reply in order.
func pipeline(ctx context.Context, rdb *redis.Client, tag string) error {
	counter := tag + ":n"
	if err := rdb.Del(ctx, counter).Err(); err != nil {
		return err
	}
	pipe := rdb.Pipeline()
	gets := make([]*redis.StringCmd, pipelined)
	incrs := make([]*redis.IntCmd, pipelined)
	for i := range pipelined {
		key := fmt.Sprintf("%s:p%d", tag, i)
		pipe.Set(ctx, key, i, 0)
		gets[i] = pipe.Get(ctx, key)
		incrs[i] = pipe.Incr(ctx, counter)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for i := range pipelined {
		if got := gets[i].Val(); got != strconv.Itoa(i) {
			return fmt.Errorf("GET %d answered %q", i, got)
		}
		if got := incrs[i].Val(); got != int64(i+1) {
			return fmt.Errorf("INCR %d answered %d", i, got)
		}
	}
	return nil
}

// transaction: a write by another connection between WATCH and EXEC makes EXEC return nil;
// without one the transaction commits.
func transaction(ctx context.Context, t target, rdb *redis.Client, protocol int, tag string) error {
	key := tag + ":w"
	if err := rdb.Set(ctx, key, "0", 0).Err(); err != nil {
		return err
	}
	writer := t.connect(protocol, 0, t.password)
	defer writer.Close()
	err := rdb.Watch(ctx, func(tx *redis.Tx) error {
		if err := writer.Set(ctx, key, "writer", 0).Err(); err != nil {
			return err
		}
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, key, "tx", 0)
			return nil
		})
		return err
	}, key)
	if !errors.Is(err, redis.TxFailedErr) {
		return fmt.Errorf("EXEC after a conflicting write: want nil, got %v", err)
	}
	if got := rdb.Get(ctx, key).Val(); got != "writer" {
		return fmt.Errorf("after the aborted EXEC the key is %q", got)
	}
	err = rdb.Watch(ctx, func(tx *redis.Tx) error {
		_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, key, "tx", 0)
			return nil
		})
		return err
	}, key)
	if err != nil {
		return fmt.Errorf("EXEC without a conflict: %w", err)
	}
	if got := rdb.Get(ctx, key).Val(); got != "tx" {
		return fmt.Errorf("after EXEC the key is %q", got)
	}
	return nil
}

// blockingPop: a BLPOP that is blocked (INFO shows a blocked client) is woken by a producer.
func blockingPop(ctx context.Context, t target, rdb *redis.Client, protocol int, tag string) error {
	queue := tag + ":q"
	consumer := t.connect(protocol, 0, t.password)
	defer consumer.Close()
	popped := make(chan []string, 1)
	failed := make(chan error, 1)
	go func() {
		got, err := consumer.BLPop(ctx, popTimeout, queue).Result()
		if err != nil {
			failed <- err
			return
		}
		popped <- got
	}()
	for {
		n, err := blockedClients(ctx, rdb)
		if err != nil {
			return err
		}
		if n > 0 {
			break
		}
		select {
		case err := <-failed:
			return fmt.Errorf("BLPOP before the push: %w", err)
		case <-time.After(pollBlocked):
		}
	}
	if err := rdb.RPush(ctx, queue, "job").Err(); err != nil {
		return err
	}
	select {
	case err := <-failed:
		return err
	case got := <-popped:
		if len(got) != 2 || got[0] != queue || got[1] != "job" {
			return fmt.Errorf("BLPOP answered %q", got)
		}
	}
	return nil
}

// blockedClients reads blocked_clients from INFO clients.
func blockedClients(ctx context.Context, rdb *redis.Client) (int, error) {
	info, err := rdb.Info(ctx, "clients").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "blocked_clients:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, fmt.Errorf("no blocked_clients in INFO clients: %q", info)
}

// pubSub: a message published after the subscription is confirmed reaches the subscriber.
func pubSub(ctx context.Context, rdb *redis.Client, tag string) error {
	channel := tag + ":chan"
	sub := rdb.Subscribe(ctx, channel)
	defer sub.Close()
	confirm, err := sub.Receive(ctx)
	if err != nil {
		return err
	}
	if s, ok := confirm.(*redis.Subscription); !ok || s.Kind != "subscribe" {
		return fmt.Errorf("the subscription was confirmed by %#v", confirm)
	}
	receivers, err := rdb.Publish(ctx, channel, "hello").Result()
	if err != nil {
		return err
	}
	if receivers != 1 {
		return fmt.Errorf("PUBLISH reached %d subscribers", receivers)
	}
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		return err
	}
	if msg.Channel != channel || msg.Payload != "hello" {
		return fmt.Errorf("received %#v", msg)
	}
	return nil
}

// otherDatabase: a key set in database 2 is seen there and not in database 0.
func otherDatabase(ctx context.Context, t target, rdb *redis.Client, protocol int, tag string) error {
	key := tag + ":db"
	db2 := t.connect(protocol, otherDB, t.password)
	defer db2.Close()
	if err := db2.Set(ctx, key, "in-2", 0).Err(); err != nil {
		return err
	}
	if got, err := db2.Get(ctx, key).Result(); err != nil || got != "in-2" {
		return fmt.Errorf("GET in database 2: %q, %v", got, err)
	}
	if err := rdb.Get(ctx, key).Err(); !errors.Is(err, redis.Nil) {
		return fmt.Errorf("GET in database 0: want nil, got %v", err)
	}
	return nil
}

// wrongPassword: logging in with a wrong password fails with Redis's WRONGPASS error.
func wrongPassword(ctx context.Context, t target, protocol int) error {
	bad := t.connect(protocol, 0, t.password+"-wrong")
	defer bad.Close()
	err := bad.Ping(ctx).Err()
	if err == nil || !strings.HasPrefix(err.Error(), "WRONGPASS") {
		return fmt.Errorf("want WRONGPASS, got %v", err)
	}
	return nil
}
