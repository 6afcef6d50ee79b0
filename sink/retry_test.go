package sink

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/schema"
)

// slotPid is the pid of the walsender streaming the feed's slot: a sink
// that reconnects gets a new one.
func slotPid(t testing.TB, src region, dst int) int64 {
	t.Helper()
	return queryInt(t, src.dsn, `SELECT COALESCE(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1`, schema.Slot(src.db, dst))
}

// waitStreaming waits until the sink streams its slot and returns the
// walsender's pid.
func waitStreaming(t testing.TB, r *running, src region, dst int) int64 {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if pid := slotPid(t, src, dst); pid != 0 && r.s.Status().Connected {
			return pid
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the sink never streamed its slot (status %+v)", r.s.Status())
	return 0
}

// flakyScript's totals merge throws for candidate FLAKY on its first 3
// calls and always for candidate BROKEN; otherwise it applies the change.
const flakyScript = `
let flaky = 0;
export const tables = {
  totals: { merge: (op: any) => {
    const c = op.proposed ? op.proposed.candidate : op.before.candidate;
    if (c === "FLAKY" && flaky < 3) { flaky++; throw new Error("flaky " + flaky); }
    if (c === "BROKEN") throw new Error("always broken");
    return { apply: op.proposed };
  } },
};
`

// A merge that fails is retried alone, inside the open target
// transaction: the feed keeps its stream (the slot's walsender is the
// same), a merge that fails 3 times lands on the 4th call (retries: 3),
// one that always fails is parked in votr.dead_letters, and the rest of
// its source transaction and of its group is applied.
func TestFailingMergeRetriedInPlace(t *testing.T) {
	cands := schema.Candidates(testCandidates)
	flaky, broken := cands[0].ID, cands[1].ID
	prog := compileScript(t, strings.NewReplacer("FLAKY", flaky, "BROKEN", broken).Replace(flakyScript))
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	createSlot(t, src, dst.id)
	// The target's own writes make the source's updates of both conflict.
	pgtest.Exec(t, dst.dsn, `UPDATE totals SET total = total + 100 WHERE candidate IN ('`+flaky+`', '`+broken+`')`)

	r := start(t, feedConfig(t, src, dst, prog, options(1000, 1000, 3)))
	pid := waitStreaming(t, r, src, dst.id)
	pgtest.Exec(t, src.dsn, `BEGIN;
		UPDATE totals SET total = total + 1 WHERE candidate = '`+cands[2].ID+`';
		UPDATE totals SET total = total + 2 WHERE candidate = '`+flaky+`';
		UPDATE totals SET total = total + 3 WHERE candidate = '`+broken+`';
		INSERT INTO ballots (candidate) VALUES ('`+cands[3].ID+`');
		COMMIT`)
	pgtest.Exec(t, src.dsn, `UPDATE totals SET total = total + 4 WHERE candidate = '`+cands[4].ID+`'`)
	waitCaughtUp(t, r, src.dsn, time.Minute)

	if got := slotPid(t, src, dst.id); got != pid {
		t.Errorf("the feed reconnected to retry (walsender %d, then %d)", pid, got)
	}
	for c, want := range map[string]int64{cands[2].ID: 1, flaky: 2, broken: 100, cands[4].ID: 4} {
		if got := queryInt(t, dst.dsn, `SELECT total FROM totals WHERE candidate = $1`, c); got != want {
			t.Errorf("candidate %s: total %d, want %d", c, got, want)
		}
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM ballots WHERE candidate = $1`, cands[3].ID); got != 1 {
		t.Errorf("the ballot of the failing change's transaction was not applied")
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.dead_letters WHERE feed = '1:0' AND tbl = 'totals' AND op = 'update'
		AND proposed->>'candidate' = $1 AND (proposed->>'total')::int = 3 AND (target->>'total')::int = 100
		AND reason LIKE '%always broken%'`, broken); got != 1 {
		t.Errorf("%d dead letters for the broken change, want 1", got)
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.dead_letters`); got != 1 {
		t.Errorf("%d dead letters, want 1", got)
	}
	if got := queryInt(t, dst.dsn, `SELECT dead_lettered FROM votr.checkpoints WHERE feed = '1:0'`); got != 1 {
		t.Errorf("checkpoint counts %d dead letters, want 1", got)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// A statement the target refuses every time (a CHECK constraint the
// source does not have) does not stall the feed: after the retries the
// change is parked with the SQL error as its reason, the rest of its
// transaction and the transactions after it are applied, and the feed
// never reconnected.
func TestTargetConstraintDeadLettered(t *testing.T) {
	cands := schema.Candidates(testCandidates)
	bad := cands[6].ID
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	createSlot(t, src, dst.id)
	pgtest.Exec(t, dst.dsn, `ALTER TABLE ballots ADD CONSTRAINT target_only_check CHECK (candidate <> '`+bad+`')`)

	r := start(t, feedConfig(t, src, dst, votrScript(t), options(1000, 1000, 2)))
	pid := waitStreaming(t, r, src, dst.id)
	pgtest.Exec(t, src.dsn, `BEGIN;
		INSERT INTO ballots (candidate) VALUES ('`+cands[5].ID+`');
		INSERT INTO ballots (candidate) VALUES ('`+bad+`');
		INSERT INTO ballots (candidate) VALUES ('`+cands[7].ID+`');
		COMMIT`)
	pgtest.Exec(t, src.dsn, `INSERT INTO ballots (candidate) VALUES ('`+cands[8].ID+`')`)
	waitCaughtUp(t, r, src.dsn, time.Minute)

	if got := slotPid(t, src, dst.id); got != pid {
		t.Errorf("the feed reconnected (walsender %d, then %d)", pid, got)
	}
	for _, c := range []string{cands[5].ID, cands[7].ID, cands[8].ID} {
		if got := queryInt(t, dst.dsn, `SELECT count(*) FROM ballots WHERE candidate = $1`, c); got != 1 {
			t.Errorf("candidate %s: %d ballots, want 1", c, got)
		}
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.dead_letters WHERE feed = '1:0' AND tbl = 'ballots' AND op = 'insert'
		AND proposed->>'candidate' = $1 AND before IS NULL AND reason LIKE '%failed 3 times%target_only_check%'`, bad); got != 1 {
		t.Errorf("%d dead letters for the refused ballot, want 1", got)
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.dead_letters`); got != 1 {
		t.Errorf("%d dead letters, want 1", got)
	}
	if got := queryInt(t, dst.dsn, `SELECT txns FROM votr.checkpoints WHERE feed = '1:0'`); got != 2 {
		t.Errorf("checkpoint counts %d transactions, want 2", got)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// A backfill whose merge fails for one row retries that row, not the
// copy: one attempt, the row parked, every other row copied.
func TestBackfillRetriesTheChangeNotTheCopy(t *testing.T) {
	cands := schema.Candidates(testCandidates)
	broken := cands[1].ID
	prog := compileScript(t, strings.NewReplacer("FLAKY", cands[0].ID, "BROKEN", broken).Replace(flakyScript))
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 0)
	dst := newRegion(t, srv, 3)
	pgtest.Exec(t, src.dsn, `UPDATE totals SET total = total + 5`)
	pgtest.Exec(t, dst.dsn, `UPDATE totals SET total = total + 100 WHERE candidate IN ('`+cands[0].ID+`', '`+broken+`')`)
	snap, closeSnap := exportSlot(t, src, dst.id)
	defer closeSnap()
	res, err := Backfill(context.Background(), feedConfig(t, src, dst, prog, options(1000, 500, 3)), snap, nil)
	if err != nil {
		t.Fatalf("backfill: %v", err)
	}
	if res.Attempts != 1 || res.DeadLettered != 1 {
		t.Errorf("backfill result %+v, want 1 attempt and 1 dead letter", res)
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM totals WHERE total = 5`); got != testCandidates-1 {
		t.Errorf("%d totals copied, want %d", got, testCandidates-1)
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.dead_letters WHERE proposed->>'candidate' = $1 AND reason LIKE '%always broken%'`, broken); got != 1 {
		t.Errorf("%d dead letters for the broken row, want 1", got)
	}
}
