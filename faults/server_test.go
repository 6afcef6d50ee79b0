package faults_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/runner"
)

// Every region's server, the hub's included, is restarted (fast and
// immediate, i.e. a crash) and stopped for a few seconds while the workers
// and the sinks run. Sinks and workers reconnect on their own, and the run
// ends converged with every committed ballot in every region exactly once.
func TestServerFaults(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	srv := startServers(t, 3) // hub, spoke 1, spoke 2: one server each
	hub, s1, s2 := srv[0], srv[1], srv[2]
	dir := t.TempDir()
	tp := topo{hub: connURL(hub), spokes: []spoke{{id: 1, connect: connURL(s1)}, {id: 2, connect: connURL(s2)}},
		extra: "workload:\n  interval: 0s\n"}
	top := tp.load(t, dir)
	out := &testlog.Buffer{}
	r := newRunner(filepath.Join(dir, "state"), out, nil)

	type fault struct {
		at     time.Duration // after the workers started
		what   string
		server *localpg.Server
		do     func(context.Context, *localpg.Server) error
	}
	restart := func(mode string) func(context.Context, *localpg.Server) error {
		return func(ctx context.Context, s *localpg.Server) error { return s.Restart(ctx, mode) }
	}
	stopFor := func(d time.Duration) func(context.Context, *localpg.Server) error {
		return func(ctx context.Context, s *localpg.Server) error {
			if err := s.Stop(ctx); err != nil {
				return err
			}
			time.Sleep(d)
			return s.Start(ctx)
		}
	}
	faults := []fault{
		{2 * time.Second, "spoke 1 restarted (fast)", s1, restart("fast")},
		{4 * time.Second, "hub restarted (immediate)", hub, restart("immediate")},
		{6 * time.Second, "spoke 2 restarted (immediate)", s2, restart("immediate")},
		{8 * time.Second, "hub stopped for 4s", hub, stopFor(4 * time.Second)},
		{14 * time.Second, "spoke 1 stopped for 3s", s1, stopFor(3 * time.Second)},
	}

	type applied struct {
		res *runner.ApplyResult
		err error
	}
	done := make(chan applied, 1)
	go func() {
		res, err := r.Apply(ctx, top, &runner.RunOptions{Duration: 20 * time.Second, RateLimit: 25, StatusEvery: time.Second})
		done <- applied{res, err}
	}()
	waitFor(t, time.Minute, "both spokes' workers", func() bool { return out.Count("casting ballots") >= 2 })
	start := time.Now()
	for _, f := range faults {
		time.Sleep(time.Until(start.Add(f.at)))
		t.Logf("%5.1fs: %s", time.Since(start).Seconds(), f.what)
		if err := f.do(ctx, f.server); err != nil {
			t.Fatalf("%s: %v", f.what, err)
		}
	}
	a := <-done
	if a.err != nil {
		t.Fatalf("apply: %v\n%s", a.err, out)
	}
	run := a.res.Run
	if !run.OK || !run.CaughtUp || run.Violations != 0 {
		t.Fatalf("run not OK (caught up %v, violations %d, problems %v):\n%s", run.CaughtUp, run.Violations, run.Report.Problems(), out)
	}
	if run.Committed[1] < 50 || run.Committed[2] < 50 {
		t.Errorf("too little work to prove anything: committed %v", run.Committed)
	}
	assertConverged(t, []regionDB{{"hub", hub.DSN("votr_0")}, {"spoke 1", s1.DSN("votr_1")}, {"spoke 2", s2.DSN("votr_2")}}, run.Committed)

	// Each outage is logged when it starts and when it ends: workers once
	// per region and outage, not once per failed attempt.
	log := out.String()
	for _, want := range []string{"feed interrupted; reconnecting", "feed resumed", "region unreachable; workers keep retrying", "region reachable again"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q", want)
		}
	}
	// Spoke 1's server went down twice and spoke 2's once: their workers
	// log one warning per outage, not one per failed attempt.
	if n := strings.Count(log, "region unreachable; workers keep retrying"); n > 3 {
		t.Errorf("workers logged %d outage warnings for 3 outages of spoke servers", n)
	}
	if testing.Verbose() {
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, "resumed") || strings.Contains(l, "reachable again") {
				t.Log(l)
			}
		}
	}
	t.Logf("committed %v in %s, drained in %s", run.Committed, run.Elapsed.Round(time.Millisecond), run.Drain.Round(time.Millisecond))
}
