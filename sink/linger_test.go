package sink

import (
	"testing"
	"time"
)

func wholeTxns(n int) *segment {
	s := &segment{}
	for range n {
		s.commits = append(s.commits, commit{})
	}
	return s
}

// A caught-up feed's small group waits for more only where more are
// expected within busyLinger: its source commits that fast, the group
// before was taken just before, the group is a few whole transactions, and
// groups may hold more than a handful.
func TestBusyLingerOnlyWhereMoreAreExpected(t *testing.T) {
	now := time.Now()
	partial := wholeTxns(1)
	partial.partial = true
	fast := 2 / busyLinger.Seconds() // two transactions per linger
	slow := 0.5 / busyLinger.Seconds()
	for _, tc := range []struct {
		name    string
		perS    float64
		last    time.Duration // since the group before was taken
		seg     *segment
		maxTxns int
		inTxn   bool
		want    bool
	}{
		{"fast source, one transaction", fast, busyLinger, wholeTxns(1), 1000, false, true},
		{"fast source, three transactions", fast, busyLinger, wholeTxns(3), 1000, false, true},
		{"fast source, four transactions already", fast, busyLinger, wholeTxns(4), 1000, false, false},
		{"slow source", slow, busyLinger, wholeTxns(1), 1000, false, false},
		{"no rate measured yet", 0, busyLinger, wholeTxns(1), 1000, false, false},
		{"first group after a pause", fast, time.Second, wholeTxns(1), 1000, false, false},
		{"ending inside a large transaction", fast, busyLinger, partial, 1000, false, false},
		{"the last chunk of a large transaction, its earlier chunks open", fast, busyLinger, wholeTxns(1), 1000, true, false},
		{"only markers (echoes)", fast, busyLinger, wholeTxns(0), 1000, false, false},
		{"groups of a few transactions at most", fast, busyLinger, wholeTxns(1), 4, false, false},
	} {
		r := txnRate{perS: tc.perS, last: now.Add(-tc.last)}
		if got := r.busy([]*segment{tc.seg}, tc.maxTxns, tc.inTxn, now); got != tc.want {
			t.Errorf("%s: busy = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The rate is measured over about a second of caught-up groups; a group
// taken far behind the source restarts the count.
func TestTxnRateMeasuresArrivals(t *testing.T) {
	var r txnRate
	t0 := time.Now()
	r.add([]*segment{wholeTxns(5)}, false, t0)
	if r.perS != 0 {
		t.Fatalf("rate %.1f before a second passed", r.perS)
	}
	r.add([]*segment{wholeTxns(5)}, false, t0.Add(2*time.Second))
	if r.perS != 5 {
		t.Errorf("10 transactions over 2 s: rate %.2f/s, want 5", r.perS)
	}
	r.add([]*segment{wholeTxns(1000)}, true, t0.Add(3*time.Second))
	r.add([]*segment{wholeTxns(1)}, false, t0.Add(5*time.Second))
	if r.perS != 0.5 {
		t.Errorf("after catching up, 1 transaction over 2 s: rate %.2f/s, want 0.5 (the catch-up group must not count)", r.perS)
	}
}

// After the busy linger the group takes only whole transactions: the
// first chunk of a large one would hold its commit back until that
// transaction's last chunk.
func TestTakeMoreWholeStopsBeforeALargeTransaction(t *testing.T) {
	lim := groupBounds{txns: 1000, rows: 1000, bytes: 1 << 30}
	for _, whole := range []bool{true, false} {
		q := newQueue(1000, 1<<30)
		chunk := wholeTxns(0)
		chunk.partial = true
		for _, s := range []*segment{wholeTxns(1), wholeTxns(1), chunk} {
			if err := q.push(s); err != nil {
				t.Fatal(err)
			}
		}
		segs, err := q.take(nil, groupBounds{txns: 1, rows: 1000, bytes: 1 << 30})
		if err != nil || len(segs) != 1 {
			t.Fatalf("take: %d segments, %v", len(segs), err)
		}
		if segs, err = q.takeMore(segs, lim, whole); err != nil {
			t.Fatal(err)
		}
		want := 3
		if whole {
			want = 2
		}
		if len(segs) != want || whole && segs[len(segs)-1].partial {
			t.Errorf("takeMore(whole %v): %d segments (last partial %v), want %d", whole, len(segs), segs[len(segs)-1].partial, want)
		}
	}
}
