package runner

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
)

// Drift: what was changed behind votr's back is repaired by the next apply.
// A slot dropped by hand is re-created and its target re-synced (the
// hub's writes made while the slot was gone reach the spoke only through
// that copy); a dropped trigger is re-created, and a trigger function with
// another votr's body replaced; a dropped table is re-created
// and its region re-synced from the hub. The next run converges.
func TestDriftRepaired(t *testing.T) {
	ctx, pg, topo, r, out := deployedAndRun(t)

	pgtest.Exec(t, pg.DSN("postgres"), `SELECT pg_drop_replication_slot('votr_0_to_1')`)
	// Written at the hub by any SQL client while feed 0:1 has no slot.
	pgtest.Exec(t, pg.DSN("votr_0"),
		`UPDATE totals SET total = total + 3 WHERE candidate = (SELECT candidate FROM candidates ORDER BY candidate LIMIT 1)`,
		`INSERT INTO ballots (candidate) SELECT (SELECT candidate FROM candidates ORDER BY candidate LIMIT 1) FROM generate_series(1, 3)`)
	pgtest.Exec(t, pg.DSN("votr_2"), `DROP TRIGGER votr_stamp ON totals`, `DROP TABLE ballots`)
	// A trigger function as another votr made it (here: the body with a
	// line more): apply puts this votr's back.
	pgtest.Exec(t, pg.DSN("votr_1"), `DO $$ DECLARE b text; BEGIN
		SELECT prosrc INTO b FROM pg_proc WHERE oid = 'votr.tombstone()'::regprocedure;
		EXECUTE format('CREATE OR REPLACE FUNCTION votr.tombstone() RETURNS trigger LANGUAGE plpgsql AS %L', '-- an older votr' || chr(10) || b);
	END $$`)

	plan, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	key := topo.Hub.ServerKey()
	want := []string{
		"- checkpoint 0:1 in votr_1 on " + key,
		"- checkpoint 0:2 in votr_2 on " + key,
		"~ schema votr_1 on " + key,
		"~ schema votr_2 on " + key,
		"+ slot votr_0_to_1 on " + key,
		"+ backfill votr_1 on " + key,
		"- slot votr_0_to_2 on " + key,
		"+ slot votr_0_to_2 on " + key,
		"+ backfill votr_2 on " + key,
	}
	if got := planLines(plan); !slices.Equal(got, want) {
		t.Fatalf("plan after drift:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var text strings.Builder
	plan.WriteText(&text)
	for _, w := range []string{"its slot votr_0_to_1 is gone", "region 2 lost table public.ballots", "trigger votr_stamp on public.totals", "replace function votr.tombstone() (another votr's body)", "re-sync"} {
		if !strings.Contains(text.String(), w) {
			t.Errorf("plan text lacks %q:\n%s", w, text.String())
		}
	}

	res, err := r.Apply(ctx, topo, &RunOptions{Duration: 2 * time.Second, RateLimit: 30, StatusEvery: time.Second})
	if err != nil {
		t.Fatalf("apply after drift: %v\n%s", err, out)
	}
	if !res.Run.OK {
		t.Fatalf("run after drift not OK: %v\n%s", res.Run.Report.Problems(), out)
	}
	assertConverged(t, pg.DSN, []string{"votr_0", "votr_1", "votr_2"}, res.Run.Committed)
	for _, db := range []string{"votr_1", "votr_2"} {
		if n := pgtest.QueryInt(t, pg.DSN(db), `SELECT count(*) FROM ballots WHERE src = 0`); n != 3 {
			t.Errorf("%s holds %d of the hub's 3 ballots", db, n)
		}
	}
	if n := pgtest.QueryInt(t, pg.DSN("votr_2"), `SELECT count(*) FROM pg_trigger WHERE tgname = 'votr_stamp' AND tgrelid = 'public.totals'::regclass`); n != 1 {
		t.Errorf("trigger on votr_2's totals not re-created")
	}
	if n := pgtest.QueryInt(t, pg.DSN("votr_1"), `SELECT count(*) FROM pg_proc WHERE oid = 'votr.tombstone()'::regprocedure AND prosrc LIKE '%an older votr%'`); n != 0 {
		t.Errorf("votr_1's outdated votr.tombstone() not replaced")
	}
	if plan, err := r.Plan(ctx, topo); err != nil || !plan.Empty() {
		t.Errorf("plan after the repair: %v %v", err, planLines(plan))
	}
}

// Slot safety: a slot retaining more WAL than sink.slotWarnBytes is shown
// in the live status with a warning in the log, in the check report and
// in the plan's notes; an invalidated one is a problem of the report that
// says how to recover.
func TestSlotWarnings(t *testing.T) {
	ctx, pg, dir, url := onOwnServer(t)
	topo := topology(t, dir, 4, region{connect: url}, region{id: 1, connect: url})
	topo.Sink.SlotWarnBytes = 1024
	out := &testlog.Buffer{}
	r := newRunner(t, filepath.Join(dir, "state"), out)
	if _, err := r.Apply(ctx, topo, &RunOptions{Duration: 2500 * time.Millisecond, RateLimit: 20, StatusEvery: time.Second}); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	for _, want := range []string{"retained_bytes=", "level=WARN msg=\"SLOT RETAINS", "more than sink.slotWarnBytes (1.0 KiB)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("run output lacks %q", want)
		}
	}
	rep, err := r.Check(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Warnings) != 2 || !strings.Contains(rep.Warnings[0], "more than sink.slotWarnBytes") {
		t.Errorf("check warnings: %q", rep.Warnings)
	}
	var text strings.Builder
	rep.WriteText(&text)
	if !strings.Contains(text.String(), "warning: feed 1:0: replication slot votr_1_to_0 retains") {
		t.Errorf("check report text:\n%s", text.String())
	}
	plan, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(plan.Notes, "\n"), "replication slot votr_1_to_0 (feed 1:0) retains") {
		t.Errorf("plan notes: %q", plan.Notes)
	}

	// Invalidated: the report says so, and what to do.
	pgtest.Exec(t, pg.DSN("votr_1"), `INSERT INTO ballots (candidate) SELECT candidate FROM candidates`)
	pgtest.Exec(t, pg.DSN("postgres"), `ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`, `SELECT pg_reload_conf()`)
	waitFor(t, func() bool {
		pgtest.Exec(t, pg.DSN("postgres"), `CREATE TABLE IF NOT EXISTS filler (x text)`,
			`INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)`, `SELECT pg_switch_wal()`, `CHECKPOINT`)
		return len(pgtest.Query(t, pg.DSN("postgres"), `SELECT 1 FROM pg_replication_slots WHERE slot_name = 'votr_1_to_0' AND wal_status = 'lost'`)) == 1
	})
	pgtest.Exec(t, pg.DSN("postgres"), `ALTER SYSTEM RESET max_slot_wal_keep_size`, `SELECT pg_reload_conf()`)
	if rep, err = r.Check(ctx, topo); err != nil {
		t.Fatal(err)
	}
	if ps := strings.Join(rep.Problems(), "\n"); !strings.Contains(ps, "votr_1_to_0 was invalidated by PostgreSQL") || !strings.Contains(ps, "re-syncs region 0") {
		t.Errorf("report problems for a lost slot:\n%s", ps)
	}
}
