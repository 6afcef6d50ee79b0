package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Lock contention the bench counts over every topology it starts: the
// server's deadlocks (pg_stat_database.deadlocks, summed over its
// databases) and the sinks' group retries caused by a lock error.

// serverDeadlocks is the deadlock count so far of the topology's servers,
// all databases.
func (t *topology) serverDeadlocks(ctx context.Context) (int64, error) {
	var sum int64
	for _, s := range t.servers {
		var n int64
		if err := queryRow(ctx, s.DSN("postgres"), `SELECT COALESCE(sum(deadlocks), 0)::bigint FROM pg_stat_database`, nil, &n); err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// lockRetries sums the feeds' group retries caused by a lock error so far.
func (t *topology) lockRetries() int64 {
	var sum int64
	for _, f := range t.feeds {
		sum += f.sink.Status().LockRetries
	}
	return sum
}

// settleStats waits (at most a few seconds) until no session but the
// bench's own is left on the servers: a backend flushes its statistics
// when it exits, so the deadlock count read after that is complete.
func (t *topology) settleStats(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, s := range t.servers {
		for {
			var n int
			err := queryRow(ctx, s.DSN("postgres"), `SELECT count(*) FROM pg_stat_activity
				WHERE backend_type IN ('client backend', 'walsender') AND pid <> pg_backend_pid()`, nil, &n)
			if err != nil || n == 0 || !sleepCtx(ctx, 50*time.Millisecond) {
				break
			}
		}
	}
}

// contention is the tally over every topology of one bench run.
type contention struct {
	mu        sync.Mutex
	deadlocks []namedCount // per topology, in the order they ran
	retries   int64
	errs      []string
}

type namedCount struct {
	name string
	n    int64
}

func (c *contention) add(name string, deadlocks int64, retries int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadlocks = append(c.deadlocks, namedCount{name, deadlocks})
	c.retries += retries
}

func (c *contention) fail(name string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, fmt.Sprintf("%s: %v", name, err))
}

// lines are the summary lines: `deadlocks: N` and `sink lock retries: N`,
// each with where they came from.
func (c *contention) lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.deadlocks) == 0 && len(c.errs) == 0 {
		return nil
	}
	var total int64
	var parts []string
	for _, d := range c.deadlocks {
		total += d.n
		parts = append(parts, fmt.Sprintf("%s %d", d.name, d.n))
	}
	dl := fmt.Sprintf("deadlocks: %d", total)
	if len(parts) > 0 {
		dl += fmt.Sprintf("   (pg_stat_database deltas per server: %s)", strings.Join(parts, ", "))
	}
	if len(c.errs) > 0 {
		dl += fmt.Sprintf("   NOT COUNTED: %s", strings.Join(c.errs, "; "))
	}
	rt := fmt.Sprintf("sink lock retries: %d", c.retries)
	return []string{dl, rt}
}
