package sink

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/schema"
)

// Replay puts a parked change through the script again, in one target
// transaction with marking it: a script that still throws changes
// nothing, one that dead-letters it again leaves it parked, and a fixed
// one writes its result and marks the change replayed, once.
func TestReplay(t *testing.T) {
	ctx := context.Background()
	cands := schema.Candidates(testCandidates)
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	createSlot(t, src, dst.id)
	// As in TestThrowingMerge: candidate 0's totals update conflicts
	// (target total 1, change 0 → 2) and is parked.
	pgtest.Exec(t, dst.dsn, `UPDATE totals SET total = total + 1 WHERE candidate = '`+cands[0].ID+`'`)
	pgtest.Exec(t, src.dsn, `UPDATE totals SET total = total + 2 WHERE candidate = '`+cands[0].ID+`'`)
	throwing := compileScript(t, throwingScript)
	r := start(t, feedConfig(t, src, dst, throwing, options(1000, 10000, 1)))
	waitCaughtUp(t, r, src.dsn, 30*time.Second)
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	parked := `SELECT count(*) FROM votr.dead_letters WHERE feed = '1:0' AND replayed_at IS NULL`
	if got := queryInt(t, dst.dsn, parked); got != 1 {
		t.Fatalf("%d parked changes, want 1", got)
	}
	total := func() int64 {
		return queryInt(t, dst.dsn, `SELECT total FROM totals WHERE candidate = $1`, cands[0].ID)
	}

	// Still throwing: an error naming the dead letter, nothing changed.
	_, err := Replay(ctx, feedConfig(t, src, dst, throwing, DefaultOptions()))
	if err == nil || !strings.Contains(err.Error(), "feed 1:0: replay: dead letter") || !strings.Contains(err.Error(), "boom on totals") ||
		!strings.Contains(err.Error(), "nothing was replayed") {
		t.Fatalf("replay with the throwing script: err %v", err)
	}
	if got := queryInt(t, dst.dsn, parked); got != 1 || total() != 1 {
		t.Fatalf("a failed replay changed something: %d parked, total %d", got, total())
	}

	// Dead-lettered again: it stays parked, unmarked.
	again := compileScript(t, `export const tables = { totals: { merge: (op: any) => ({ deadLetter: "not yet" }) } };`)
	res, err := Replay(ctx, feedConfig(t, src, dst, again, DefaultOptions()))
	if err != nil {
		t.Fatalf("replay that parks again: %v", err)
	}
	if res != (ReplayResult{StillParked: 1}) {
		t.Errorf("replay that parks again: %+v", res)
	}
	if got := queryInt(t, dst.dsn, parked); got != 1 || total() != 1 {
		t.Fatalf("after parking again: %d parked, total %d", got, total())
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.dead_letters`); got != 1 {
		t.Errorf("parking again added dead letters: %d rows", got)
	}

	// Fixed: the merge sees before 0, proposed 2 and the target's 1, and
	// adds the change's delta to the target.
	fixed := compileScript(t, `export const tables = { totals: { merge: (op: any) => {
		if (op.before.total !== 0 || op.proposed.total !== 2 || op.target.total !== 1 || op.meta.source !== 1 || op.meta.target !== 0) {
			throw new Error("unexpected op " + JSON.stringify(op));
		}
		return { apply: { ...op.target, total: op.target.total + op.proposed.total - op.before.total } };
	} } };`)
	res, err = Replay(ctx, feedConfig(t, src, dst, fixed, DefaultOptions()))
	if err != nil {
		t.Fatalf("replay with the fixed script: %v", err)
	}
	if res != (ReplayResult{Replayed: 1, Applied: 1}) {
		t.Errorf("replay with the fixed script: %+v", res)
	}
	if got := total(); got != 3 {
		t.Errorf("total %d after the replay, want 3", got)
	}
	if got := queryInt(t, dst.dsn, parked); got != 0 {
		t.Errorf("%d changes still parked", got)
	}
	// Nothing is replayed twice.
	res, err = Replay(ctx, feedConfig(t, src, dst, fixed, DefaultOptions()))
	if err != nil || res != (ReplayResult{}) {
		t.Errorf("second replay: %+v, %v", res, err)
	}
	if got := total(); got != 3 {
		t.Errorf("total %d after the second replay, want 3", got)
	}
}
