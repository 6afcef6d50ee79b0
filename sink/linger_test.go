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
// expected within its wait: its source commits that fast, the group before
// was taken just before, the group is a few whole transactions, and groups
// may hold more than a handful. Where groups are slow to apply, it waits
// longer (up to maxBusyLinger) and grows larger.
func TestBusyLingerOnlyWhereMoreAreExpected(t *testing.T) {
	now := time.Now()
	partial := wholeTxns(1)
	partial.partial = true
	fast := 2 / busyLinger.Seconds() // two transactions per linger
	slow := 0.5 / busyLinger.Seconds()
	fastApply := busyLinger / 8 // groups applied well within the wait
	slowApply := busyLinger / 2 // 4× is twice busyLinger
	stuckApply := maxBusyLinger // 4× is past the bound
	for _, tc := range []struct {
		name    string
		perS    float64
		last    time.Duration // since the group before was taken
		apply   time.Duration // the groups' average apply time
		seg     *segment
		maxTxns int
		inTxn   bool
		want    time.Duration
	}{
		{"fast source, one transaction", fast, busyLinger, fastApply, wholeTxns(1), 1000, false, busyLinger},
		{"fast source, three transactions", fast, busyLinger, fastApply, wholeTxns(3), 1000, false, busyLinger},
		{"fast source, four transactions already", fast, busyLinger, fastApply, wholeTxns(4), 1000, false, 0},
		{"slow source", slow, busyLinger, fastApply, wholeTxns(1), 1000, false, 0},
		{"no rate measured yet", 0, busyLinger, fastApply, wholeTxns(1), 1000, false, 0},
		{"no apply measured yet", fast, busyLinger, 0, wholeTxns(1), 1000, false, busyLinger},
		{"first group after a pause", fast, time.Second, fastApply, wholeTxns(1), 1000, false, 0},
		{"ending inside a large transaction", fast, busyLinger, fastApply, partial, 1000, false, 0},
		{"the last chunk of a large transaction, its earlier chunks open", fast, busyLinger, fastApply, wholeTxns(1), 1000, true, 0},
		{"only markers (echoes)", fast, busyLinger, fastApply, wholeTxns(0), 1000, false, 0},
		{"groups of a few transactions at most", fast, busyLinger, fastApply, wholeTxns(1), 4, false, 0},
		{"slow applies: a longer wait", fast, busyLinger, slowApply, wholeTxns(1), 1000, false, 2 * busyLinger},
		{"slow applies: a larger group", fast, busyLinger, slowApply, wholeTxns(100), 1000, false, 2 * busyLinger},
		{"slow applies: up to a quarter of the largest group", fast, busyLinger, slowApply, wholeTxns(250), 1000, false, 0},
		{"slow applies: 249 transactions of at most 1000", fast, busyLinger, slowApply, wholeTxns(249), 1000, false, 2 * busyLinger},
		{"slow applies, small groups: still up to 4", fast, busyLinger, slowApply, wholeTxns(3), 8, false, 2 * busyLinger},
		{"slow applies, a source too slow for busyLinger but not for the longer wait", 0.8 / busyLinger.Seconds(), busyLinger, slowApply, wholeTxns(1), 1000, false, 2 * busyLinger},
		{"slow applies, a source too slow even for the longer wait", 0.4 / busyLinger.Seconds(), busyLinger, slowApply, wholeTxns(1), 1000, false, 0},
		{"stuck applies: the wait is bounded", fast, busyLinger, stuckApply, wholeTxns(1), 1000, false, maxBusyLinger},
		{"slow applies, the group before taken within five waits", fast, 9 * busyLinger, slowApply, wholeTxns(1), 1000, false, 2 * busyLinger},
		{"slow applies, the group before taken longer ago", fast, 11 * busyLinger, slowApply, wholeTxns(1), 1000, false, 0},
	} {
		r := txnRate{perS: tc.perS, last: now.Add(-tc.last), apply: tc.apply}
		if got := r.busy([]*segment{tc.seg}, tc.maxTxns, tc.inTxn, now); got != tc.want {
			t.Errorf("%s: busy = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The apply time is a moving average: one stalled group (a lock retry)
// counts for at most what makes the wait its longest, and a few groups
// later the wait is back at busyLinger. A first sample is taken as it is,
// within the same bound.
func TestTxnRateAverageApply(t *testing.T) {
	now := time.Now()
	fast := 2 / busyLinger.Seconds()
	wait := func(r txnRate) time.Duration {
		r.perS, r.last = fast, now
		return r.busy([]*segment{wholeTxns(1)}, 1000, false, now)
	}
	var r txnRate
	r.applied(10 * time.Second)
	if r.apply != maxBusyLinger/4 {
		t.Fatalf("a first group of 10s: average %v, want %v", r.apply, maxBusyLinger/4)
	}
	r = txnRate{}
	r.applied(time.Millisecond)
	if got := wait(r); got != busyLinger {
		t.Fatalf("groups of 1ms: wait %v, want %v", got, busyLinger)
	}
	r.applied(10 * time.Second)
	if r.apply > maxBusyLinger/4 || wait(r) <= busyLinger {
		t.Fatalf("after a stalled group: average %v (want at most %v), wait %v (want over %v)", r.apply, maxBusyLinger/4, wait(r), busyLinger)
	}
	for range 4 {
		r.applied(time.Millisecond)
	}
	if got := wait(r); got != busyLinger {
		t.Fatalf("four groups of 1ms after the stall: average %v, wait %v, want %v", r.apply, got, busyLinger)
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
