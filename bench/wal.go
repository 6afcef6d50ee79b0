package main

import (
	"context"
	"time"
)

// What the walsenders read. A walsender of a logical slot reads every
// record of its server's WAL, whichever database wrote it, one turn of its
// loop per record (a non-blocking read of its client's socket included),
// and decodes and sends only its own database's. On one server with N
// spokes, (N+1) databases' records are read by 2N walsenders: the term of
// the cost that grows fastest with N. BENCHMARKS.md fits the walsenders'
// CPU to the records read and the records decoded.

// walReadNote says, under the cost table, what the record reads are.
const walReadNote = "Every walsender reads every record of its server's WAL and decodes its own database's: on one server, N spokes' N+1 databases' records are read by 2N walsenders."

// walCount is one server's WAL records so far (pg_stat_wal) and its
// walsenders now.
type walCount struct {
	records, senders int64
}

// walSnapshot reads every server's walCount at one moment.
func (t *topology) walSnapshot(ctx context.Context) ([]walCount, time.Time, error) {
	out := make([]walCount, len(t.servers))
	for i, s := range t.servers {
		err := queryRow(ctx, s.DSN("postgres"), `SELECT (SELECT wal_records FROM pg_stat_wal)::bigint,
			(SELECT count(*) FROM pg_stat_replication)::bigint`, nil, &out[i].records, &out[i].senders)
		if err != nil {
			return nil, time.Time{}, err
		}
	}
	return out, time.Now(), nil
}

// walRates are a window's WAL records per second, over all servers, and
// the walsenders' record reads per second (each server's records times
// its walsenders at the window's end).
type walRates struct {
	records, reads float64
}

func walRatesOf(a, b []walCount, d time.Duration) walRates {
	var r walRates
	if d <= 0 || len(a) != len(b) {
		return r
	}
	for i := range a {
		n := float64(b[i].records - a[i].records)
		r.records += n
		r.reads += n * float64(b[i].senders)
	}
	r.records /= d.Seconds()
	r.reads /= d.Seconds()
	return r
}
