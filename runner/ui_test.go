package runner

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/votr-dev/votr/report"
	"github.com/votr-dev/votr/ui"
)

func TestRateMeter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var m rateMeter
	for _, tc := range []struct {
		at   time.Duration
		n    int64
		want float64
	}{
		{0, 100, 0},                 // one reading: no rate yet
		{time.Second, 200, 100},     // 100 in 1 s
		{time.Second, 200, 100},     // the same reading again: unchanged
		{2 * time.Second, 400, 150}, // 300 in 2 s
		{4 * time.Second, 500, 100}, // the window drops the oldest: 300 in 3 s
		{10 * time.Second, 400, 0},  // nothing for longer than the window
		{11 * time.Second, 300, 0},  // a counter that went down is no negative rate
	} {
		if got := m.rate(1, tc.n, t0.Add(tc.at)); got != tc.want {
			t.Errorf("at %s, n %d: rate %v, want %v", tc.at, tc.n, got, tc.want)
		}
	}
	if m.last(1) != 300 || m.last(2) != 0 {
		t.Errorf("last: %d %d", m.last(1), m.last(2))
	}
}

func TestReportCache(t *testing.T) {
	var c reportCache
	reads := 0
	read := func(context.Context) (*report.Report, error) {
		reads++
		if reads == 2 {
			return nil, errors.New("unreachable")
		}
		return &report.Report{HubID: reads}, nil
	}
	ctx := context.Background()
	if rep, _ := c.get(ctx, read); rep.HubID != 1 {
		t.Fatalf("first read: %+v", rep)
	}
	if rep, _ := c.get(ctx, read); rep.HubID != 1 || reads != 1 {
		t.Fatalf("read again before it was due: %d reads", reads)
	}
	c.next = time.Now() // due
	if rep, _ := c.get(ctx, read); rep.HubID != 1 || reads != 2 {
		t.Fatalf("a failed read must keep the last report: %+v, %d reads", rep, reads)
	}
}

func TestFeedFromReport(t *testing.T) {
	commit := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	applied := commit.Add(250 * time.Millisecond)
	rep := &report.Report{Feeds: []report.FeedReport{
		{Name: "1:0", SourceID: 1, TargetID: 0, SlotActive: true, LagBytes: 100, PendingDeadLetters: 2,
			Checkpoint: &report.Checkpoint{Rows: 50, Conflicts: 3, SourceCommit: &commit, AppliedAt: &applied}},
		{Name: "0:1", SourceID: 0, TargetID: 1, SlotActive: true, LagBytes: ui.BehindBytes + 1},
		{Name: "2:0", SourceID: 2, TargetID: 0, SlotActive: false, LagBytes: 0},
	}}
	for _, tc := range []struct {
		name, health string
	}{{"1:0", ui.HealthConnected}, {"0:1", ui.HealthBehind}, {"2:0", ui.HealthStopped}, {"3:0", ui.HealthStopped}} {
		var rows rateMeter
		got := feedFromReport(rep, ui.LiveFeed{Name: tc.name, LagBytes: -1}, &rows, time.Now())
		if got.Health != tc.health {
			t.Errorf("feed %s: health %s, want %s", tc.name, got.Health, tc.health)
		}
		if tc.name == "1:0" && (got.LagMS != 250 || got.Rows != 50 || got.Conflicts != 3 || got.DeadLettered != 2 || got.LagBytes != 100) {
			t.Errorf("feed 1:0: %+v", got)
		}
	}
}
