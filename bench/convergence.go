package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Part 3, convergence: the time from the last worker commit to all regions
// identical. The sinks apply whole source transactions, so once every
// region's totals (128 small rows, cheap to poll) are equal and add up to
// every ballot committed anywhere, every ballot has arrived everywhere too.
// The full convergence report (package report: ballots, totals and
// candidates digests, ballots per origin, invariant, dead letters) then
// confirms it.

const convergePoll = 20 * time.Millisecond

// waitConverged polls until the regions' totals agree and sum to what was
// committed, and returns the time since last (the last worker commit).
func (t *topology) waitConverged(ctx context.Context, last time.Time, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var conns []*pgx.Conn
	defer func() {
		for _, c := range conns {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	for _, r := range t.regions() {
		c, err := connectBench(ctx, r.dsn)
		if err != nil {
			return 0, err
		}
		conns = append(conns, c)
	}
	var want int64
	for _, n := range t.committed() {
		want += n
	}
	// A worker that lost its connection during COMMIT may or may not have
	// committed: then only agreement counts.
	unknown := t.stats.Unknown.Load() > 0
	type totals struct {
		sum int64
		md5 string
	}
	got := make([]totals, len(conns))
	for {
		for i, c := range conns {
			if err := c.QueryRow(ctx, `SELECT COALESCE(sum(total), 0)::bigint,
				md5(string_agg(candidate::text || ':' || total, ',' ORDER BY candidate)) FROM public.totals`).Scan(&got[i].sum, &got[i].md5); err != nil {
				if ctx.Err() != nil {
					break
				}
				return 0, err
			}
		}
		done := ctx.Err() == nil && (got[0].sum == want || unknown)
		for _, g := range got[1:] {
			done = done && g == got[0]
		}
		if done {
			return time.Since(last), nil
		}
		if err := t.sinkFailure(); err != nil {
			return 0, err
		}
		if !sleepCtx(ctx, convergePoll) {
			var sums []string
			for i, r := range t.regions() {
				sums = append(sums, fmt.Sprintf("region %d: %d", r.id, got[i].sum))
			}
			return 0, fmt.Errorf("regions did not converge within %s of the last commit (want %d ballots; sum of totals %s)",
				timeout, want, strings.Join(sums, ", "))
		}
	}
}
