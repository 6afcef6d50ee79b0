package main

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/votr-dev/votr/sink"
)

// Lock contention the bench counts over every topology it starts: the
// server's deadlocks (pg_stat_database.deadlocks, summed over its
// databases) and the sinks' group retries caused by a lock error.

// sinkLockRetries reads a sink's retries caused by a lock error from its
// status. The field (sink.Status.LockRetries) is added by the change to
// the sink that removes the hot-row locking; until it is in the tree this
// reports false and the bench says the count is not available. Reading it
// by name keeps the bench compiling on either side of that change; once
// it is merged this can become `return st.LockRetries, true`.
func sinkLockRetries(st sink.Status) (int64, bool) {
	f := reflect.ValueOf(st).FieldByName("LockRetries")
	if !f.IsValid() || !f.CanInt() {
		return 0, false
	}
	return f.Int(), true
}

// serverDeadlocks is the server's deadlock count so far, all databases.
func (t *topology) serverDeadlocks(ctx context.Context) (int64, error) {
	var n int64
	err := queryRow(ctx, t.srv.DSN("postgres"), `SELECT COALESCE(sum(deadlocks), 0)::bigint FROM pg_stat_database`, nil, &n)
	return n, err
}

// lockRetries sums the feeds' lock retries so far (false: not counted by
// this sink).
func (t *topology) lockRetries() (int64, bool) {
	var sum int64
	for _, f := range t.feeds {
		n, ok := sinkLockRetries(f.sink.Status())
		if !ok {
			return 0, false
		}
		sum += n
	}
	return sum, true
}

// settleStats waits (at most a few seconds) until no session but the
// bench's own is left on the server: a backend flushes its statistics when
// it exits, so the deadlock count read after that is complete.
func (t *topology) settleStats(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		var n int
		err := queryRow(ctx, t.srv.DSN("postgres"), `SELECT count(*) FROM pg_stat_activity
			WHERE backend_type IN ('client backend', 'walsender') AND pid <> pg_backend_pid()`, nil, &n)
		if err != nil || n == 0 || !sleepCtx(ctx, 50*time.Millisecond) {
			return
		}
	}
}

// contention is the tally over every topology of one bench run.
type contention struct {
	mu          sync.Mutex
	deadlocks   []namedCount // per topology, in the order they ran
	retries     int64
	retriesSeen bool // some sink reported its lock retries
	retriesMiss bool // some sink did not
	errs        []string
}

type namedCount struct {
	name string
	n    int64
}

func (c *contention) add(name string, deadlocks int64, retries int64, retriesOK bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadlocks = append(c.deadlocks, namedCount{name, deadlocks})
	if retriesOK {
		c.retries += retries
		c.retriesSeen = true
	} else {
		c.retriesMiss = true
	}
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
	switch {
	case !c.retriesSeen:
		rt = "sink lock retries: n/a (this sink's Status has no LockRetries)"
	case c.retriesMiss:
		rt += " (some sinks did not report them)"
	}
	return []string{dl, rt}
}
