package runner

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
)

// apply runs the workload after converging: a bounded run drains and ends
// with a report that holds, checked here against the databases directly;
// a second apply resumes the feeds and, stopped by an interrupt, converges
// again with every ballot of both runs.
func TestApplyRunsAndResumes(t *testing.T) {
	ctx := ctxT(t)
	pg := pgtest.Start(t)
	dir := t.TempDir()
	url := baseURL(pg)
	topo := topology(t, dir, 16, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url})
	topo.Workload.Interval = 0
	stateDir := filepath.Join(dir, "state")
	out := &testlog.Buffer{}
	r := newRunner(t, stateDir, out)

	res, err := r.Apply(ctx, topo, &RunOptions{Duration: 3 * time.Second, RateLimit: 40, StatusEvery: time.Second})
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	run := res.Run
	if !run.OK || !run.CaughtUp || run.Violations != 0 {
		t.Fatalf("run not OK (caught up %v, violations %d, problems %v):\n%s", run.CaughtUp, run.Violations, run.Report.Problems(), out)
	}
	if run.Txns < 20 {
		t.Errorf("only %d transactions in 3 s at 40/s per spoke", run.Txns)
	}
	for _, want := range []string{"msg=status", "feed=1:0", "rows/s", "Workers committed", "no invariant violation"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	assertConverged(t, pg.DSN, []string{"votr_0", "votr_1", "votr_2"}, run.Committed)

	// Second run, with spoke 3 joining (backfilled from the hub, which has
	// data now), stopped by an interrupt rather than a duration.
	topo = topology(t, dir, 16, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url}, region{id: 3, connect: url})
	topo.Workload.Interval = 0
	interrupt := make(chan struct{})
	r2 := newRunner(t, stateDir, out, func(o *Options) { o.Interrupt = interrupt })
	// Interrupt once the second run has visibly done its work (every
	// spoke's new ballots at the hub), not after a fixed time: on a busy
	// machine the apply's own steps can take longer than any guess.
	go func() {
		defer close(interrupt)
		want := map[int]int64{1: run.Committed[1] + 1, 2: run.Committed[2] + 1, 3: 1}
		waitForBallots(ctx, pg.DSN("votr_0"), want, 3*time.Minute)
	}()
	res, err = r2.Apply(ctx, topo, &RunOptions{RateLimit: 40})
	if err != nil {
		t.Fatalf("second apply: %v\n%s", err, out)
	}
	if !strings.Contains(out.String(), "+ backfill votr_3") {
		t.Errorf("spoke 3 was not backfilled:\n%s", out)
	}
	if !res.Run.OK {
		t.Fatalf("second run not OK: %v", res.Run.Report.Problems())
	}
	for id, n := range run.Committed {
		if res.Run.Committed[id] <= n {
			t.Errorf("region %d: %d ballots after the second run, %d after the first", id, res.Run.Committed[id], n)
		}
	}
	if res.Run.Committed[3] == 0 {
		t.Error("spoke 3 committed nothing")
	}
	assertConverged(t, pg.DSN, []string{"votr_0", "votr_1", "votr_2", "votr_3"}, res.Run.Committed)

	rep, err := r.Check(ctx, topo)
	if err != nil || !rep.OK() {
		t.Fatalf("check after the runs: %v %v", err, rep.Problems())
	}
}

// assertConverged checks, in the databases themselves, that every region
// holds the same ballots and totals, that the invariant holds, and that
// each spoke's committed ballots are in every region exactly once.
func assertConverged(t *testing.T, dsn func(string) string, dbs []string, committed map[int]int64) {
	t.Helper()
	var first string
	for _, db := range dbs {
		state := pgtest.Query(t, dsn(db), `SELECT
			(SELECT count(*) FROM ballots),
			(SELECT sum(total)::bigint FROM totals),
			(SELECT md5(string_agg(candidate::text || ballot::text, ',' ORDER BY candidate, ballot)) FROM ballots),
			(SELECT md5(string_agg(candidate::text || total, ',' ORDER BY candidate)) FROM totals)`)[0]
		if first == "" {
			first = state
		} else if state != first {
			t.Errorf("%s differs from %s: %s vs %s", db, dbs[0], state, first)
		}
		if bad := pgtest.Query(t, dsn(db), `SELECT t.candidate FROM totals t
			LEFT JOIN (SELECT candidate, count(*) n FROM ballots GROUP BY candidate) b USING (candidate)
			WHERE t.total <> coalesce(b.n, 0)`); len(bad) > 0 {
			t.Errorf("%s: invariant violated for %v", db, bad)
		}
		for id, n := range committed {
			got := pgtest.Query(t, dsn(db), `SELECT count(*) FROM ballots WHERE src = $1`, id)[0]
			if got != fmt.Sprint(n) {
				t.Errorf("%s: %s ballots from region %d, workers committed %d", db, got, id, n)
			}
		}
	}
}

// apply --no-sinks with each feed's sink run separately (as `votr sink`
// does): the drain waits on the slots, and the regions converge. With
// sink.sharedHubSlot the hub's outbound feeds run in one `votr sink --feed
// 0:*`, which hands them to the shared slot before the run begins: the
// drain then waits on that slot.
func TestNoSinksWithSeparateSinks(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharedHubSlot %v", shared), func(t *testing.T) { noSinksWithSeparateSinks(t, shared) })
	}
}

func noSinksWithSeparateSinks(t *testing.T, shared bool) {
	ctx := ctxT(t)
	pg := pgtest.Start(t)
	dir := t.TempDir()
	url := baseURL(pg)
	topo := topology(t, dir, 8, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url})
	topo.Workload.Interval = 0
	topo.Sink.SharedHubSlot = shared
	stateDir := filepath.Join(dir, "state")
	out := &testlog.Buffer{}
	r := newRunner(t, stateDir, out)
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatal(err)
	}

	sinkCtx, stopSinks := context.WithCancel(ctx)
	var wg sync.WaitGroup
	names := []string{"1:0", "0:1", "2:0", "0:2"}
	if shared {
		names = []string{"1:0", "2:0", "0:*"}
	}
	for _, name := range names {
		wg.Go(func() {
			if err := newRunner(t, stateDir, out).Sink(sinkCtx, topo, name, ""); err != nil {
				t.Errorf("sink %s: %v", name, err)
			}
		})
	}
	if shared {
		deadline := time.Now().Add(90 * time.Second)
		for len(pgtest.Query(t, pg.DSN("votr_0"), `SELECT feed FROM votr.slot_members`)) < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("the hub's outbound feeds were not handed to the shared slot\n%s", out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	res, err := r.Apply(ctx, topo, &RunOptions{Duration: 3 * time.Second, RateLimit: 40, NoSinks: true, StatusEvery: time.Second})
	stopSinks()
	wg.Wait()
	if err != nil {
		t.Fatalf("apply --no-sinks: %v\n%s", err, out)
	}
	if !res.Run.OK || !res.Run.CaughtUp {
		t.Fatalf("run with separate sinks not OK (caught up %v): %v\n%s", res.Run.CaughtUp, res.Run.Report.Problems(), out)
	}
	if !strings.Contains(out.String(), "sink running") || !strings.Contains(out.String(), "slot_lag_bytes") {
		t.Errorf("output lacks the separate sinks' log or the slot lag status:\n%s", out)
	}
	assertConverged(t, pg.DSN, []string{"votr_0", "votr_1", "votr_2"}, res.Run.Committed)
	if shared {
		if got := pgtest.Query(t, pg.DSN("postgres"), `SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'votr_0_%' ORDER BY 1`); !slices.Equal(got, []string{"votr_0_out"}) {
			t.Errorf("the hub's slots: %v, want only votr_0_out", got)
		}
	}
}

// The feeds `votr sink --feed` runs: one, or the hub's outbound feeds
// together when they share a slot; a hub feed alone while they do, or 0:*
// while they do not, is refused with the way out.
func TestSinkFeeds(t *testing.T) {
	dir := t.TempDir()
	topo := topology(t, dir, 8, region{connect: "local"}, region{id: 1, connect: "local"}, region{id: 2, connect: "local"})
	shared := *topo
	shared.Sink.SharedHubSlot = true
	tests := []struct {
		topo    *config.Topology
		name    string
		want    []string
		wantErr string
	}{
		{topo, "0:1", []string{"0:1"}, ""},
		{topo, "1:0", []string{"1:0"}, ""},
		{topo, "0:*", nil, "sharedHubSlot: true"},
		{&shared, "0:*", []string{"0:1", "0:2"}, ""},
		{&shared, "1:0", []string{"1:0"}, ""},
		{&shared, "0:2", nil, "run them together with --feed 0:*"},
		{&shared, "1:*", nil, "only the hub's outbound feeds run together"},
		{&shared, "0:9", nil, "not in the topology"},
	}
	for _, tt := range tests {
		feeds, err := sinkFeeds(tt.topo, tt.name)
		var got []string
		for _, f := range feeds {
			got = append(got, f.String())
		}
		if !slices.Equal(got, tt.want) || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("sharedHubSlot %v, --feed %s: %v, %v; want %v, an error with %q", tt.topo.Sink.SharedHubSlot, tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

// waitForBallots polls db until it holds at least want[src] ballots from
// each region src, or until the deadline (the caller's assertions then say
// what is missing).
func waitForBallots(ctx context.Context, dsn string, want map[int]int64, deadline time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	for ctx.Err() == nil {
		if ballotsReached(ctx, dsn, want) {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func ballotsReached(ctx context.Context, dsn string, want map[int]int64) bool {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return false
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT src, count(*) FROM ballots GROUP BY src`)
	if err != nil {
		return false
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]int64, error) {
		var v [2]int64
		return v, r.Scan(&v[0], &v[1])
	})
	if err != nil {
		return false
	}
	have := map[int]int64{}
	for _, v := range got {
		have[int(v[0])] = v[1]
	}
	for src, n := range want {
		if have[src] < n {
			return false
		}
	}
	return true
}

// A fixed-size run (maxBallots) ends by itself: a hub and two spokes cast
// 500 ballots in all (not a multiple of the 10 per transaction across two
// spokes' workers racing for the last ones), drain, and every region holds
// exactly 500 ballots.
func TestApplyMaxBallots(t *testing.T) {
	ctx := ctxT(t)
	pg, topo, r, out := onOneServer(t, 16, 2)
	topo.Workload.Interval = 0
	topo.Workers = 2
	res, err := r.Apply(ctx, topo, &RunOptions{MaxBallots: 500, StatusEvery: time.Second})
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	run := res.Run
	if !run.OK || !run.CaughtUp || run.WantBallots != 500 {
		t.Fatalf("run not OK (caught up %v, want ballots %d, problems %v):\n%s", run.CaughtUp, run.WantBallots, run.Report.Problems(), out)
	}
	if got := run.Committed[1] + run.Committed[2]; got != 500 {
		t.Errorf("the spokes committed %v ballots (%d in all), want 500 in all", run.Committed, got)
	}
	if !strings.Contains(out.String(), "every region holds exactly 500 ballots") {
		t.Errorf("output lacks the size check:\n%s", out)
	}
	for _, db := range []string{"votr_0", "votr_1", "votr_2"} {
		if got := pgtest.QueryInt(t, pg.DSN(db), `SELECT count(*) FROM ballots`); got != 500 {
			t.Errorf("%s holds %d ballots, want exactly 500", db, got)
		}
	}
	assertConverged(t, pg.DSN, []string{"votr_0", "votr_1", "votr_2"}, run.Committed)
}

// 2-DC: with one spoke and hubWorkers, both regions cast ballots; each
// region's ballots reach the other, both feeds resolve conflicts on the
// shared totals rows, and the regions converge. With maxBallots the two
// regions' workers share one budget.
func TestTwoRegionsBothWrite(t *testing.T) {
	ctx := ctxT(t)
	pg, topo, r, out := onOneServer(t, 4, 1)
	topo.HubWorkers = true
	topo.Workload.Interval = 0
	topo.Workers = 2
	res, err := r.Apply(ctx, topo, &RunOptions{MaxBallots: 2000, StatusEvery: time.Second})
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	run := res.Run
	if !run.OK || !run.CaughtUp {
		t.Fatalf("run not OK (caught up %v, problems %v):\n%s", run.CaughtUp, run.Report.Problems(), out)
	}
	if !strings.Contains(out.String(), "Workers: 2-DC: both regions") {
		t.Errorf("the plan does not say that both regions run workers:\n%s", out)
	}
	if run.Committed[0] == 0 || run.Committed[1] == 0 || run.Committed[0]+run.Committed[1] != 2000 {
		t.Errorf("committed %v, want ballots from both regions, 2000 in all", run.Committed)
	}
	assertConverged(t, pg.DSN, []string{"votr_0", "votr_1"}, run.Committed)
	for _, f := range run.Report.Feeds {
		if f.Checkpoint == nil || f.Checkpoint.Conflicts == 0 {
			t.Errorf("feed %s resolved no conflict (checkpoint %+v)", f.Name, f.Checkpoint)
		}
	}
}
