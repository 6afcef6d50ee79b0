package runner

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
)

// A running apply takes an edited topology (SIGHUP in the command line):
// spoke 3 joins (created, backfilled from the hub, then its feeds and
// workers start; a first reload is refused, its database not being votr's,
// and the next one, once that is gone, starts it) and later spoke 1 leaves
// (its last ballots drained to the hub, its feeds removed), while the other
// spokes keep casting ballots. The run converges with every ballot, spoke
// 1's included, in every remaining region exactly once, and nothing of the
// removed feeds is left on the server: no slot, no origin, no publication,
// no checkpoint. The same with the hub's outbound feeds through one slot
// (sink.sharedHubSlot): the joining feed reads its own slot, the leaving
// one's membership goes.
func TestSpokesJoinAndLeaveDuringRun(t *testing.T) {
	t.Run("a slot per feed", func(t *testing.T) { spokesJoinAndLeave(t, false) })
	t.Run("one slot for the hub's outbound feeds", func(t *testing.T) { spokesJoinAndLeave(t, true) })
}

func spokesJoinAndLeave(t *testing.T, shared bool) {
	ctx, pg, dir, url := onOwnServer(t)
	topo := topology(t, dir, 16, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url})
	fast := func(t *config.Topology) *config.Topology {
		t.Workload.Interval = 0
		t.Sink.SharedHubSlot = shared
		return t
	}
	fast(topo)
	out := &testlog.Buffer{}
	interrupt := make(chan struct{})
	reload := make(chan struct{})
	r := newRunner(t, filepath.Join(dir, "state"), out, func(o *Options) {
		o.Interrupt, o.Reload = interrupt, reload
		o.Load = func(path string) (*config.Topology, error) {
			t, err := config.Load(path, os.LookupEnv)
			if err != nil {
				return nil, err
			}
			return fast(t), nil
		}
	})
	done := applyInBackground(ctx, r, topo, &RunOptions{RateLimit: 30, StatusEvery: time.Second})
	count := func(db, sql string) int64 { return tryCount(pg.DSN(db), sql) }
	waitFor(t, func() bool { return count("votr_0", `SELECT count(*) FROM ballots WHERE src = 1`) > 0 })

	// Spoke 3 joins while spokes 1 and 2 cast ballots: first refused (its
	// database is someone else's), then, once that is dropped, started by
	// the next reload of the same file.
	pgtest.Exec(t, pg.DSN("postgres"), `CREATE DATABASE votr_3`)
	topology(t, dir, 16, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url}, region{id: 3, connect: url})
	reload <- struct{}{}
	waitFor(t, func() bool { return strings.Contains(out.String(), "Reload FAILED") })
	if !strings.Contains(out.String(), "database votr_3 on") || !strings.Contains(out.String(), "was not created by votr") {
		t.Errorf("the refused join does not say why:\n%s", out)
	}
	pgtest.Exec(t, pg.DSN("postgres"), `DROP DATABASE votr_3`)
	reload <- struct{}{}
	waitFor(t, func() bool {
		return strings.Count(out.String(), "Reload complete") == 1 && count("votr_0", `SELECT count(*) FROM ballots WHERE src = 3`) > 0
	})
	for _, want := range []string{"+ database votr_3", "+ slot votr_0_to_3", "+ backfill votr_3", "spoke joined the run"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("joining spoke 3: output lacks %q", want)
		}
	}

	// Spoke 1 leaves.
	topology(t, dir, 16, region{connect: url}, region{id: 2, connect: url}, region{id: 3, connect: url})
	reload <- struct{}{}
	waitFor(t, func() bool { return strings.Count(out.String(), "Reload complete") == 2 })
	time.Sleep(time.Second)
	close(interrupt)
	res := <-done
	if testing.Verbose() {
		t.Log(out)
	}
	run := wantRunOK(t, res, out)
	for _, id := range []int{1, 2, 3} {
		if run.Committed[id] == 0 {
			t.Errorf("spoke %d committed nothing: %v", id, run.Committed)
		}
	}
	assertConverged(t, pg.DSN, []string{"votr_0", "votr_2", "votr_3"}, run.Committed)

	slots := pgtest.Query(t, pg.DSN("postgres"), `SELECT slot_name FROM pg_replication_slots ORDER BY 1`)
	want := []string{"votr_0_to_2", "votr_0_to_3", "votr_2_to_0", "votr_3_to_0"}
	if shared {
		// A feed reads its own slot until it is handed over (looked at
		// every 10 s of a fanout that each join and leave restarts).
		want = []string{"votr_0_out", "votr_2_to_0", "votr_3_to_0"}
		slots = slices.DeleteFunc(slots, func(s string) bool { return s == "votr_0_to_2" || s == "votr_0_to_3" })
		if got := pgtest.Query(t, pg.DSN("votr_0"), `SELECT feed FROM votr.slot_members WHERE feed = '0:1'`); len(got) != 0 {
			t.Errorf("the leaving spoke's feed is still recorded as reading the shared slot")
		}
	}
	if !slices.Equal(slots, want) {
		t.Errorf("slots: %v, want %v", slots, want)
	}
	for _, o := range pgtest.Query(t, pg.DSN("postgres"), `SELECT roname FROM pg_replication_origin`) {
		if strings.HasPrefix(o, "votr_1_") || strings.HasSuffix(o, "_from_1") {
			t.Errorf("origin %s of spoke 1's feeds is left", o)
		}
	}
	if got := pgtest.Query(t, pg.DSN("votr_1"), `SELECT (SELECT count(*) FROM pg_publication), (SELECT count(*) FROM votr.checkpoints), (SELECT count(*) FROM ballots) > 0`); got[0] != "0|0|true" {
		t.Errorf("spoke 1's database (publications, checkpoints, has ballots): %v, want 0|0|true", got)
	}
	final := fast(topology(t, dir, 16, region{connect: url}, region{id: 2, connect: url}, region{id: 3, connect: url}))
	if plan, err := r.Plan(context.Background(), final); err != nil || !plan.Empty() {
		t.Errorf("plan after the run: %v %v", err, planLines(plan))
	}
}

// tryCount runs a count query, -1 when it fails (a database apply has not
// created yet).
func tryCount(dsn, sql string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return -1
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		return -1
	}
	return n
}
