package main

import (
	"testing"
	"time"
)

func TestMaxLate(t *testing.T) {
	for _, tc := range []struct{ pairs, want int }{{0, 0}, {1, 0}, {19, 0}, {20, 1}, {100, 5}, {1800, 90}} {
		if got := maxLate(tc.pairs); got != tc.want {
			t.Errorf("maxLate(%d) = %d, want %d", tc.pairs, got, tc.want)
		}
	}
}

// TestProbeLogLate builds probes by hand and checks which end-to-end
// arrivals count as late, with one spoke and with three.
func TestProbeLogLate(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	spokes := []region{{id: 1}, {id: 2}, {id: 3}}
	type arrival struct {
		region int
		after  time.Duration // after the origin's commit
	}
	tests := []struct {
		name   string
		spokes []region
		sent   time.Duration // after t0
		ok     bool
		seen   []arrival
		want   int
	}{
		{"on time everywhere", spokes, 2000 * ms, true, []arrival{{0, 10 * ms}, {2, 50 * ms}, {3, 60 * ms}}, 0},
		{"one spoke late", spokes, 2000 * ms, true, []arrival{{0, 10 * ms}, {2, 50 * ms}, {3, 1500 * ms}}, 1},
		{"not arrived, already past the bound", spokes, 2000 * ms, true, []arrival{{0, 10 * ms}}, 2},
		{"not arrived, still within the bound", spokes, 4500 * ms, true, []arrival{{0, 10 * ms}}, 0},
		{"sent before the window", spokes, 500 * ms, true, []arrival{{0, 10 * ms}}, 0},
		{"not committed", spokes, 2000 * ms, false, nil, 0},
		{"origin's commit not stamped yet", spokes, 2000 * ms, true, []arrival{{-1, 0}}, 0},
		{"one spoke: the hub is the far end", spokes[:1], 2000 * ms, true, []arrival{{0, 1200 * ms}}, 1},
	}
	now := t0.Add(5 * time.Second)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := newProbeLog()
			l.sent("p", 1)
			p := l.probes["p"]
			p.sent, p.ok = t0.Add(tc.sent), tc.ok
			commit := p.sent.Add(5 * ms)
			if len(tc.seen) == 0 || tc.seen[0].region != -1 {
				p.seen[1] = commit
			}
			for _, a := range tc.seen {
				if a.region >= 0 {
					p.seen[a.region] = commit.Add(a.after)
				}
			}
			if got := l.late(t0.Add(time.Second), now, time.Second, 0, tc.spokes); got != tc.want {
				t.Fatalf("late = %d, want %d", got, tc.want)
			}
		})
	}
}

// The probes of a topology stay at most maxProbeRate per second in all.
func TestProbeIntervalCapsTheTopologysProbes(t *testing.T) {
	for _, tc := range []struct {
		every  time.Duration
		spokes int
		want   time.Duration
	}{
		{100 * time.Millisecond, 1, 100 * time.Millisecond},
		{100 * time.Millisecond, 3, 100 * time.Millisecond},
		{100 * time.Millisecond, 4, 133333333 * time.Nanosecond},
		{100 * time.Millisecond, 8, 266666666 * time.Nanosecond},
		{time.Second, 8, time.Second},
	} {
		got := probeInterval(tc.every, tc.spokes)
		if d := got - tc.want; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("probeInterval(%s, %d) = %s, want %s", tc.every, tc.spokes, got, tc.want)
		}
		if rate := float64(tc.spokes) / got.Seconds(); rate > maxProbeRate+0.001 {
			t.Errorf("%d spokes every %s: %.1f probes/s, more than %d", tc.spokes, got, rate, maxProbeRate)
		}
	}
}
