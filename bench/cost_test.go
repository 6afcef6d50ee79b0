package main

import (
	"math"
	"testing"
	"time"
)

func TestCostOf(t *testing.T) {
	w := window{spokes: 4, elapsed: 10 * time.Second, txns: 1000, ballots: 10_000, cpu: map[string]float64{
		"bench process (sinks, workers)": 0.25, "sink sessions": 0.25, "walsenders": 0.25, "worker sessions": 0.15,
	}, wal: walRates{records: 20_000, reads: 160_000}}
	c, ok := costOf(w, 2)
	if !ok {
		t.Fatal("no cost for a window with transactions and CPU")
	}
	// 90% of 2 CPUs over 100 transactions/s: 18 ms each, 4.5 ms per region
	// that applies it; 2 CPUs allow 111 transactions/s, 10 ballots each.
	for _, tc := range []struct {
		name      string
		got, want float64
	}{
		{"total", c.total, 18},
		{"walsenders", c.ms["walsenders"], 5},
		{"per region", c.perRegion, 4.5},
		{"ceiling", c.ceiling, 2000.0 / 18 * 10},
		// PostgreSQL's part: walsenders 5 ms and worker sessions 3 ms.
		{"ceiling without the bench process and sink sessions", c.postgresCeiling, 2000.0 / 8 * 10},
		// 20,000 records/s and 160,000 reads/s over 100 transactions/s.
		{"WAL records per transaction", c.walRecords, 200},
		{"record reads per transaction", c.walReads, 1600},
	} {
		if math.Abs(tc.got-tc.want) > 1e-9 {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	for _, empty := range []window{
		{spokes: 1, elapsed: time.Second, cpu: w.cpu},             // no transactions
		{spokes: 1, elapsed: time.Second, txns: 10, ballots: 100}, // no CPU figures
	} {
		if _, ok := costOf(empty, 2); ok {
			t.Errorf("costOf(%+v) gave a cost", empty)
		}
	}
}

// A window's record reads are each server's new records times its
// walsenders: one server of 8 spokes' regions reads each record 16 times;
// a server per region, the hub's 8 times and a spoke's once.
func TestWalRatesOf(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after []walCount
		d             time.Duration
		want          walRates
	}{
		{"one server, 16 walsenders", []walCount{{records: 1000}}, []walCount{{records: 3000, senders: 16}}, 2 * time.Second,
			walRates{records: 1000, reads: 16_000}},
		{"hub and two spokes on their own servers",
			[]walCount{{records: 0}, {records: 0}, {records: 0}},
			[]walCount{{records: 100, senders: 2}, {records: 300, senders: 1}, {records: 500, senders: 1}}, time.Second,
			walRates{records: 900, reads: 1000}},
		{"no time passed", []walCount{{}}, []walCount{{records: 5, senders: 1}}, 0, walRates{}},
		{"a server more at the end", []walCount{{}}, []walCount{{}, {}}, time.Second, walRates{}},
	} {
		if got := walRatesOf(tc.before, tc.after, tc.d); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
