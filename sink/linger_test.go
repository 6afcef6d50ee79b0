package sink

import (
	"testing"
	"time"
)

// A caught-up feed's small group waits for more only where more are
// expected within busyLinger: its source commits that fast, the group is a
// few whole transactions, and groups may hold more than a handful.
func TestBusyLingerOnlyWhereMoreAreExpected(t *testing.T) {
	whole := func(txns int) []*segment {
		s := &segment{}
		for range txns {
			s.commits = append(s.commits, commit{})
		}
		return []*segment{s}
	}
	partial := whole(1)
	partial[0].partial = true
	fast := 2 / busyLinger.Seconds() // two transactions per linger
	slow := 0.5 / busyLinger.Seconds()
	for _, tc := range []struct {
		name    string
		perS    float64
		segs    []*segment
		maxTxns int
		want    bool
	}{
		{"fast source, one transaction", fast, whole(1), 1000, true},
		{"fast source, three transactions", fast, whole(3), 1000, true},
		{"fast source, four transactions already", fast, whole(4), 1000, false},
		{"slow source", slow, whole(1), 1000, false},
		{"no rate measured yet", 0, whole(1), 1000, false},
		{"inside a large transaction", fast, partial, 1000, false},
		{"only markers (echoes)", fast, whole(0), 1000, false},
		{"groups of a few transactions at most", fast, whole(1), 4, false},
	} {
		r := txnRate{perS: tc.perS}
		if got := r.busy(tc.segs, tc.maxTxns); got != tc.want {
			t.Errorf("%s: busy = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The rate is measured over about a second of groups.
func TestTxnRateMeasuresArrivals(t *testing.T) {
	var r txnRate
	seg := &segment{commits: make([]commit, 5)}
	r.add([]*segment{seg})
	if r.perS != 0 {
		t.Fatalf("rate %.1f before a second passed", r.perS)
	}
	r.since = r.since.Add(-2 * time.Second) // as if the first group came 2 s ago
	r.add([]*segment{seg})
	if r.perS < 4 || r.perS > 5.1 {
		t.Errorf("10 transactions over 2 s: rate %.2f/s, want 5", r.perS)
	}
}
