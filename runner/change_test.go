package runner

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	planpkg "github.com/votr-dev/votr/plan"
)

// Editing the topology: a spoke added to a hub that has data is backfilled
// before its feeds start; a spoke removed loses its feeds (slots,
// checkpoints, origins) but keeps its database until destroy.
func TestTopologyChange(t *testing.T) {
	ctx, pg, dir, url := onOwnServer(t)
	stateDir := filepath.Join(dir, "state")
	out := &testlog.Buffer{}
	r := newRunner(t, stateDir, out)

	two := topology(t, dir, 6, region{connect: url}, region{id: 1, connect: url})
	if _, err := r.Apply(ctx, two, nil); err != nil {
		t.Fatal(err)
	}
	// Writes at the hub and at spoke 1, as any SQL client would make them
	// (the triggers stamp whence and src). No sinks run: the hub's own data
	// is what a joining spoke must be given.
	for _, db := range []string{"votr_0", "votr_1"} {
		pgtest.Exec(t, pg.DSN(db),
			`UPDATE totals SET total = total + 3 WHERE candidate = (SELECT candidate FROM candidates ORDER BY candidate LIMIT 1)`,
			`INSERT INTO ballots (candidate) SELECT (SELECT candidate FROM candidates ORDER BY candidate LIMIT 1) FROM generate_series(1, 3)`,
			`UPDATE candidates SET version = version + 1, mood = 'elated' WHERE candidate = (SELECT candidate FROM candidates ORDER BY candidate DESC LIMIT 1)`)
	}

	three := topology(t, dir, 6, region{connect: url}, region{id: 1, connect: url}, region{id: 2, connect: url})
	plan, err := r.Plan(ctx, three)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"+ database votr_2 on " + three.Hub.ServerKey(),
		"+ schema votr_2 on " + three.Hub.ServerKey(),
		"+ seed votr_2 on " + three.Hub.ServerKey(),
		"+ slot votr_0_to_2 on " + three.Hub.ServerKey(),
		"+ backfill votr_2 on " + three.Hub.ServerKey(),
		"+ slot votr_2_to_0 on " + three.Hub.ServerKey(),
		"+ checkpoint 2:0 in votr_0 on " + three.Hub.ServerKey(),
	}
	if got := planLines(plan); !slices.Equal(got, want) {
		t.Fatalf("plan adding spoke 2:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// An apply that stops right after creating the slot with the exported
	// snapshot (so the snapshot is gone before the copy): the next plan
	// replaces the slot to copy from a new snapshot.
	k := slices.IndexFunc(plan.Actions, func(a planpkg.Action) bool { return a.Kind == planpkg.KindSlot && a.Snapshot }) + 1
	if _, err := newRunner(t, stateDir, out, func(o *Options) { o.FailAfter = k }).Apply(ctx, three, nil); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("apply stopped after the slot: %v", err)
	}
	plan, err = r.Plan(ctx, three)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{
		"- slot votr_0_to_2 on " + three.Hub.ServerKey(),
		"+ slot votr_0_to_2 on " + three.Hub.ServerKey(),
		"+ backfill votr_2 on " + three.Hub.ServerKey(),
		"+ slot votr_2_to_0 on " + three.Hub.ServerKey(),
		"+ checkpoint 2:0 in votr_0 on " + three.Hub.ServerKey(),
	}
	if got := planLines(plan); !slices.Equal(got, want) || !strings.Contains(plan.Actions[0].Detail, "no checkpoint") {
		t.Fatalf("plan after an apply stopped before the backfill:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := r.Apply(ctx, three, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	for _, want := range []string{"msg=\"backfill progress\" feed=0:2", "of_about=", "msg=backfilled feed=0:2", "rows/s="} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("apply's output lacks the backfill's %q", want)
		}
	}
	hub := pgtest.Query(t, pg.DSN("votr_0"), `SELECT candidate, total, whence::text FROM totals`)
	if got := pgtest.Query(t, pg.DSN("votr_2"), `SELECT candidate, total, whence::text FROM totals`); !slices.Equal(got, hub) {
		t.Errorf("spoke 2's totals after backfill:\n%v\nhub:\n%v", got, hub)
	}
	for _, q := range []string{`SELECT candidate, ballot, whence::text, src FROM ballots`, `SELECT candidate, name, mood, version, whence::text, src FROM candidates`} {
		if got, want := pgtest.Query(t, pg.DSN("votr_2"), q), pgtest.Query(t, pg.DSN("votr_0"), q); !slices.Equal(got, want) {
			t.Errorf("%s: spoke 2 %v, hub %v", q, got, want)
		}
	}
	// Backfilling again (from another snapshot, as a re-sync would)
	// changes no row: the merges absorb what the target already has.
	in, err := r.inspect(ctx, three, three.Regions(), nil, &State{}, true)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := three.ParseFeed("0:2")
	before := withoutCheckpoints(serverSnapshot(t, pg))
	exp, err := createSlotExport(ctx, in.servers[three.Hub.ServerKey()], "votr_0", "votr_test_export")
	if err != nil {
		t.Fatal(err)
	}
	err = r.backfill(ctx, three, in, f, exp)
	exp.close(ctx)
	pgtest.Exec(t, pg.DSN("postgres"), `SELECT pg_drop_replication_slot('votr_test_export')`)
	if err != nil {
		t.Fatal(err)
	}
	if after := withoutCheckpoints(serverSnapshot(t, pg)); after != before {
		t.Errorf("a second backfill changed the data:\n%s\n%s", before, after)
	}

	// Remove spoke 1: its feeds go, its database stays.
	pgtest.Exec(t, pg.DSN("postgres"), `SELECT pg_replication_origin_create('votr_0_from_1')`, `SELECT pg_replication_origin_create('votr_1_from_0')`)
	withoutOne := topology(t, dir, 6, region{connect: url}, region{id: 2, connect: url})
	plan, err = r.Plan(ctx, withoutOne)
	if err != nil {
		t.Fatal(err)
	}
	key := three.Hub.ServerKey()
	want = []string{
		// What spoke 1 committed reaches the hub before its feed goes.
		"~ drain feed 1:0 into votr_0 on " + key,
		"- slot votr_0_to_1 on " + key,
		"- slot votr_1_to_0 on " + key,
		"- origin votr_0_from_1 on " + key,
		"- origin votr_1_from_0 on " + key,
		"- checkpoint 1:0 in votr_0 on " + key,
		"- checkpoint 0:1 in votr_1 on " + key,
		"- publication votr in votr_1 on " + key,
	}
	if got := planLines(plan); !slices.Equal(got, want) {
		t.Fatalf("plan removing spoke 1:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(plan.Notes) == 0 || !strings.Contains(strings.Join(plan.Notes, "\n"), "region 1 is no longer in the topology: its database votr_1") {
		t.Errorf("plan notes: %v", plan.Notes)
	}
	if _, err := r.Apply(ctx, withoutOne, nil); err != nil {
		t.Fatal(err)
	}
	if plan, err = r.Plan(ctx, withoutOne); err != nil || !plan.Empty() {
		t.Fatalf("plan after removing spoke 1: %v %v", err, planLines(plan))
	}
	if got := pgtest.Query(t, pg.DSN("postgres"), `SELECT slot_name FROM pg_replication_slots`); !slices.Equal(got, []string{"votr_0_to_2", "votr_2_to_0"}) {
		t.Errorf("slots: %v", got)
	}
	if got := pgtest.Query(t, pg.DSN("postgres"), `SELECT datname FROM pg_database WHERE datname LIKE 'votr%'`); len(got) != 3 {
		t.Errorf("databases: %v (votr_1 must stay until destroy)", got)
	}

	// destroy with the current file still removes spoke 1's database: the
	// state remembers it.
	if _, err := r.Destroy(ctx, withoutOne); err != nil {
		t.Fatal(err)
	}
	wantNoRows(t, pg.DSN("postgres"), "databases after destroy", `SELECT datname FROM pg_database WHERE datname LIKE 'votr%'`)
	wantNoRows(t, pg.DSN("postgres"), "origins after destroy", `SELECT roname FROM pg_replication_origin`)
}

// A slot PostgreSQL invalidated (it kept more WAL than allowed) is replaced,
// and the feed's target is backfilled with what it missed.
func TestLostSlotReplaced(t *testing.T) {
	ctx, pg, dir, url := onOwnServer(t)
	out := &testlog.Buffer{}
	r := newRunner(t, filepath.Join(dir, "state"), out)
	topo := topology(t, dir, 4, region{connect: url}, region{id: 1, connect: url})
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatal(err)
	}
	// Spoke 1 votes while no sink runs, then its slots are invalidated.
	pgtest.Exec(t, pg.DSN("votr_1"),
		`UPDATE totals SET total = total + 2 WHERE candidate = (SELECT candidate FROM candidates ORDER BY candidate LIMIT 1)`,
		`INSERT INTO ballots (candidate) SELECT (SELECT candidate FROM candidates ORDER BY candidate LIMIT 1) FROM generate_series(1, 2)`)
	pgtest.Exec(t, pg.DSN("postgres"), `ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`, `SELECT pg_reload_conf()`)
	waitFor(t, func() bool {
		pgtest.Exec(t, pg.DSN("postgres"), `CREATE TABLE IF NOT EXISTS filler (x text)`,
			`INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)`, `SELECT pg_switch_wal()`, `CHECKPOINT`)
		return len(pgtest.Query(t, pg.DSN("postgres"), `SELECT 1 FROM pg_replication_slots WHERE slot_name = 'votr_1_to_0' AND wal_status = 'lost'`)) == 1
	})
	pgtest.Exec(t, pg.DSN("postgres"), `ALTER SYSTEM RESET max_slot_wal_keep_size`, `SELECT pg_reload_conf()`)

	plan, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	key := topo.Hub.ServerKey()
	lines := planLines(plan)
	for _, want := range []string{
		"- slot votr_1_to_0 on " + key,
		"- checkpoint 1:0 in votr_0 on " + key,
		"+ slot votr_1_to_0 on " + key,
		"+ backfill votr_0 on " + key,
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("plan lacks %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	if _, err := r.Apply(ctx, topo, nil); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if got := pgtest.Query(t, pg.DSN("votr_0"), `SELECT count(*), (SELECT sum(total)::bigint FROM totals) FROM ballots WHERE src = 1`); !slices.Equal(got, []string{"2|2"}) {
		t.Errorf("hub after the backfill: %v, want spoke 1's 2 ballots", got)
	}
	if plan, err := r.Plan(ctx, topo); err != nil || !plan.Empty() {
		t.Errorf("plan after replacing the slot: %v %v", err, planLines(plan))
	}
}

// withoutCheckpoints drops the checkpoint lines of a serverSnapshot.
func withoutCheckpoints(snap string) string {
	var keep []string
	for _, l := range strings.Split(snap, "\n") {
		if !strings.Contains(l, " checkpoints: ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
