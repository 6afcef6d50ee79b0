package runner

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
)

// A deployment made before tombstones (no votr.tombstones, no votr_tombstone
// triggers, no votr.tombstone()) is drift: plan repairs each region's
// schema, and apply creates them. The run that follows converges with
// ballots deleted by a plain SQL client on a spoke and on the hub while the
// sinks run: every region ends with the same rows, none of the deleted
// ballots, and their tombstones. (count(ballots) = sum(totals) is not
// asserted: totals count the votes cast, and a client deleting a ballot
// does not take its vote back, so the deletes break that invariant by
// design.)
func TestTombstonesUpgradeAndDeletesConverge(t *testing.T) {
	ctx, pg, topo, r, out := deployedAndRun(t)
	dbs := []string{"votr_0", "votr_1", "votr_2"}
	for _, db := range dbs {
		pgtest.Exec(t, pg.DSN(db),
			`DROP TRIGGER votr_tombstone ON ballots`, `DROP TRIGGER votr_tombstone_move ON ballots`,
			`DROP TRIGGER votr_tombstone ON totals`, `DROP TRIGGER votr_tombstone_move ON totals`,
			`DROP TRIGGER votr_tombstone ON candidates`, `DROP TRIGGER votr_tombstone_move ON candidates`,
			`DROP FUNCTION votr.tombstone()`, `DROP TABLE votr.tombstones`)
	}
	plan, err := r.Plan(ctx, topo)
	if err != nil {
		t.Fatal(err)
	}
	key := topo.Hub.ServerKey()
	lines := planLines(plan)
	for _, db := range dbs {
		if !slices.Contains(lines, "~ schema "+db+" on "+key) {
			t.Errorf("plan does not repair %s's schema:\n%s", db, strings.Join(lines, "\n"))
		}
	}
	var text strings.Builder
	plan.WriteText(&text)
	for _, w := range []string{"table votr.tombstones", "function votr.tombstone()", "trigger votr_tombstone on public.ballots", "trigger votr_tombstone_move on public.candidates"} {
		if !strings.Contains(text.String(), w) {
			t.Errorf("plan text lacks %q:\n%s", w, text.String())
		}
	}

	// While the next run's sinks run: once the schema is back and region 1's
	// workers are voting again, delete 5 of region 1's ballots on spoke 1
	// and 5 of region 2's on the hub.
	before := pgtest.QueryInt(t, pg.DSN("votr_1"), `SELECT count(*) FROM ballots WHERE src = 1`)
	type result struct {
		keys []string
		err  error
	}
	deleted := make(chan result, 1)
	go func() {
		keys, err := deleteDuringRun(ctx, pg.DSN("votr_0"), pg.DSN("votr_1"), before)
		deleted <- result{keys, err}
	}()
	_, err = r.Apply(ctx, topo, &RunOptions{Duration: 4 * time.Second, RateLimit: 30, StatusEvery: time.Second})
	if err != nil {
		t.Fatalf("apply after the upgrade: %v\n%s", err, out)
	}
	d := <-deleted
	if d.err != nil {
		t.Fatalf("the deletes did not run while the sinks ran: %v\n%s", d.err, out)
	}
	gone := d.keys
	if len(gone) != 10 {
		t.Fatalf("deleted %d ballots, want 10: %v", len(gone), gone)
	}
	var first string
	for _, db := range dbs {
		state := pgtest.Query(t, pg.DSN(db), `SELECT
			(SELECT count(*) FROM ballots),
			(SELECT md5(string_agg(b::text, ',' ORDER BY candidate, ballot)) FROM ballots b),
			(SELECT md5(string_agg(x::text, ',' ORDER BY candidate)) FROM totals x),
			(SELECT md5(string_agg(c::text, ',' ORDER BY candidate)) FROM candidates c)`)[0]
		if first == "" {
			first = state
		} else if state != first {
			t.Errorf("%s differs from votr_0: %s vs %s", db, state, first)
		}
		if n := pgtest.QueryInt(t, pg.DSN(db), `SELECT count(*) FROM ballots WHERE ballot::text = ANY($1)`, gone); n != 0 {
			t.Errorf("%s still holds %d deleted ballots", db, n)
		}
		if n := pgtest.QueryInt(t, pg.DSN(db), `SELECT count(*) FROM votr.tombstones WHERE tbl = 'public.ballots' AND key ->> 1 = ANY($1)`, gone); n != 10 {
			t.Errorf("%s has %d tombstones of the 10 deleted ballots", db, n)
		}
	}
	if plan, err := r.Plan(ctx, topo); err != nil || !plan.Empty() {
		t.Errorf("plan after the upgrade: %v %v", err, planLines(plan))
	}
}

// deleteDuringRun waits until the schema is back on the hub and spoke 1
// and spoke 1's workers have voted more than 5 times since before, then
// deletes, as a plain SQL client, 5 of region 1's ballots on spoke 1 and 5
// of region 2's on the hub, and returns their ids.
func deleteDuringRun(ctx context.Context, hubDSN, spokeDSN string, before int64) ([]string, error) {
	hub, err := pgx.Connect(ctx, hubDSN)
	if err != nil {
		return nil, err
	}
	defer hub.Close(context.WithoutCancel(ctx))
	spoke, err := pgx.Connect(ctx, spokeDSN)
	if err != nil {
		return nil, err
	}
	defer spoke.Close(context.WithoutCancel(ctx))
	const del = `WITH d AS (DELETE FROM ballots WHERE ballot IN (SELECT ballot FROM ballots WHERE src = $1 AND ballot::text = ANY($2) ORDER BY ballot LIMIT 5) RETURNING ballot)
		SELECT ballot::text FROM d`
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var votes, hubTriggers, spokeTriggers int64
		q := `SELECT count(*) FROM pg_trigger WHERE tgname = 'votr_tombstone'`
		if err := spoke.QueryRow(ctx, `SELECT count(*) FROM ballots WHERE src = 1`).Scan(&votes); err != nil {
			return nil, err
		}
		if err := hub.QueryRow(ctx, q).Scan(&hubTriggers); err != nil {
			return nil, err
		}
		if err := spoke.QueryRow(ctx, q).Scan(&spokeTriggers); err != nil {
			return nil, err
		}
		if votes <= before+5 || hubTriggers != 3 || spokeTriggers != 3 {
			continue
		}
		rows, err := hub.Query(ctx, `SELECT ballot::text FROM ballots WHERE src IN (1, 2)`)
		if err != nil {
			return nil, err
		}
		hubHeld, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, err
		}
		// Only ballots the hub already holds: a ballot inserted and deleted
		// on spoke 1 before the hub applied either folds into one change at
		// the hub, which then writes its tombstone but no row and no delete
		// that the other spokes would see; they never hold the row, nor its
		// tombstone.
		var keys []string
		for _, c := range []struct {
			conn *pgx.Conn
			src  int
		}{{spoke, 1}, {hub, 2}} {
			rows, err := c.conn.Query(ctx, del, c.src, hubHeld)
			if err != nil {
				return nil, err
			}
			ks, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return nil, err
			}
			keys = append(keys, ks...)
		}
		return keys, nil
	}
	return nil, errors.New("spoke 1's workers did not vote, or the schema did not come back, within 2 minutes")
}
