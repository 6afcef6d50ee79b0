package runner

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
)

// With sink.sharedHubSlot, apply creates each new outbound feed of the hub
// its own slot and the shared slot votr_0_out; the run hands each feed to
// the shared slot once it has caught up (its own slot dropped, its
// membership recorded), and converges with every ballot in every region
// exactly once; the next plan has nothing to do. Turned off again, apply
// gives each feed a copy of the shared slot, drops the shared slot, and the
// next run converges too.
func TestSharedHubSlot(t *testing.T) {
	ctx, pg, dir, url := onOwnServer(t)
	topo := topology(t, dir, 16, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url})
	topo.Workload.Interval = 0
	topo.Sink.SharedHubSlot = true
	out := &testlog.Buffer{}
	interrupt := make(chan struct{})
	r := newRunner(t, filepath.Join(dir, "state"), out, func(o *Options) { o.Interrupt = interrupt })
	slots := func() []string {
		return pgtest.Query(t, pg.DSN("postgres"), `SELECT slot_name FROM pg_replication_slots ORDER BY 1`)
	}
	members := func() []string {
		return pgtest.Query(t, pg.DSN("votr_0"), `SELECT feed || ' ' || slot FROM votr.slot_members ORDER BY 1`)
	}

	done := applyInBackground(ctx, r, topo, &RunOptions{RateLimit: 30, StatusEvery: time.Second})
	// Handovers are looked at 2 s after the start, then every 10 s; a
	// loaded machine may need more.
	deadline := time.Now().Add(90 * time.Second)
	for !slices.Equal(slots(), []string{"votr_0_out", "votr_1_to_0", "votr_2_to_0"}) ||
		tryCount(pg.DSN("votr_1"), `SELECT count(*) FROM ballots WHERE src = 2`) <= 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the hub's outbound feeds were not handed to the shared slot: slots %v, members %v\n%s", slots(), members(), out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got, want := members(), []string{"0:1 votr_0_out", "0:2 votr_0_out"}; !slices.Equal(got, want) {
		t.Errorf("members of the shared slot: %v, want %v", got, want)
	}
	for _, want := range []string{"+ slot votr_0_to_1", "+ slot votr_0_out", "feed handed back to the shared slot"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	time.Sleep(time.Second) // ballots through the shared slot
	close(interrupt)
	run := wantRunOK(t, <-done, out)
	assertConverged(t, pg.DSN, []string{"votr_0", "votr_1", "votr_2"}, run.Committed)
	if p, err := r.Plan(context.Background(), topo); err != nil || !p.Empty() {
		t.Errorf("plan after the run: %v %v", err, planLines(p))
	}

	// Off again: copies of the shared slot, which goes.
	topo.Sink.SharedHubSlot = false
	p, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	on := " on " + topo.Hub.ServerKey()
	if got, want := planLines(p), []string{"+ slot votr_0_to_1" + on, "+ slot votr_0_to_2" + on, "- slot votr_0_out" + on}; !slices.Equal(got, want) {
		t.Errorf("plan with sharedHubSlot off:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	r = newRunner(t, filepath.Join(dir, "state"), out) // the first one's interrupt is closed
	res2, err := r.Apply(ctx, topo, &RunOptions{RateLimit: 30, Duration: 2 * time.Second})
	if err != nil {
		t.Fatalf("apply with sharedHubSlot off: %v\n%s", err, out)
	}
	if run := res2.Run; !run.OK || !run.CaughtUp || run.Violations != 0 {
		t.Fatalf("run with sharedHubSlot off not OK: %v\n%s", run.Report.Problems(), out)
	}
	if got, want := slots(), []string{"votr_0_to_1", "votr_0_to_2", "votr_1_to_0", "votr_2_to_0"}; !slices.Equal(got, want) {
		t.Errorf("slots with sharedHubSlot off: %v, want %v", got, want)
	}
	if got := members(); len(got) != 0 {
		t.Errorf("members of a shared slot left: %v", got)
	}
}
