package main

import (
	"math"
	"testing"
	"time"
)

func TestCostOf(t *testing.T) {
	w := window{spokes: 4, elapsed: 10 * time.Second, txns: 1000, ballots: 10_000, cpu: map[string]float64{
		"bench process (sinks, workers)": 0.25, "sink sessions": 0.25, "walsenders": 0.25, "worker sessions": 0.15,
	}}
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
