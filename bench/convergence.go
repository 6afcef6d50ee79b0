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

// pollers are one connection per region for waitConverged, opened before
// the workers stop so that connecting is not counted as convergence time.
type pollers []*pgx.Conn

func (t *topology) openPollers(ctx context.Context) (pollers, error) {
	var conns pollers
	for _, r := range t.regions() {
		c, err := connectBench(ctx, r.dsn)
		if err != nil {
			conns.close(ctx)
			return nil, err
		}
		conns = append(conns, c)
		// The first query of a session loads catalogs and prepares the
		// statement: do it now, outside the timing.
		var sum int64
		var md5 string
		if err := c.QueryRow(ctx, totalsDigestSQL).Scan(&sum, &md5); err != nil {
			conns.close(ctx)
			return nil, err
		}
	}
	return conns, nil
}

// totalsDigestSQL is a region's sum of totals and a digest of all of them.
const totalsDigestSQL = `SELECT COALESCE(sum(total), 0)::bigint,
	md5(string_agg(candidate::text || ':' || total, ',' ORDER BY candidate)) FROM public.totals`

func (p pollers) close(ctx context.Context) {
	for _, c := range p {
		c.Close(context.WithoutCancel(ctx))
	}
}

// waitConverged polls until the regions' totals agree and sum to what was
// committed, and returns the time since last (the last worker commit).
func (t *topology) waitConverged(ctx context.Context, conns pollers, last time.Time, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
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
			if err := c.QueryRow(ctx, totalsDigestSQL).Scan(&got[i].sum, &got[i].md5); err != nil {
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
