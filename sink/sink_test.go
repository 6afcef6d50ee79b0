package sink

import (
	"context"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/schema"
)

// A stream of VOTR transactions replicates from a spoke to the hub and
// the two converge, row for row.
func TestReplicateConverges(t *testing.T) {
	src, dst := feedOnOneServer(t)

	for _, batch := range []int{200, 1} {
		stop := make(chan struct{})
		done := writers(t, src.dsn, 3, uint64(batch), stop, 0)
		r := start(t, feedConfig(t, src, dst, votrScript(t), options(batch, 10000, 3)))
		time.Sleep(1500 * time.Millisecond)
		close(stop)
		n := done()
		waitCaughtUp(t, r, src.dsn, 30*time.Second)
		if err := r.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		st := r.s.Status()
		t.Logf("batch %d: %d source txns; status %+v", batch, n, st)
		if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
			t.Fatalf("target differs from source:\n got %s\nwant %s", got, want)
		}
		checkInvariant(t, dst.dsn)
		if st.Txns == 0 || st.Rows == 0 {
			t.Errorf("status counts nothing: %+v", st)
		}
		if st.Conflicts != 0 {
			t.Errorf("one-way feed had %d conflicts", st.Conflicts)
		}
		// The sink keeps up with a few writers: its last transaction
		// arrived soon after the source committed it (a stall in the
		// stream, e.g. a TCP window that stops opening, shows here).
		if st.Lag > 2*time.Second {
			t.Errorf("lag of the last applied transaction %s, want well under 2s", st.Lag)
		}
		// The checkpoint holds the last applied commit.
		ck := queryInt(t, dst.dsn, `SELECT source_lsn - '0/0' FROM votr.checkpoints WHERE feed = '1:0'`)
		if ck != int64(st.AppliedLSN) {
			t.Errorf("checkpoint %d, status AppliedLSN %d", ck, st.AppliedLSN)
		}
	}
	_ = context.Background
}

// bigVote is one source transaction of n ballots for one candidate, with
// its totals update, so the invariant tells a half-applied one apart.
func bigVote(t testing.TB, dsn string, n int) {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	c := schema.Candidates(testCandidates)[0].ID
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE totals SET total = total + $2 WHERE candidate = $1`, c, n); err != nil {
		t.Fatal(err)
	}
	// The rows are stamped here rather than by the clock trigger, which
	// would dominate the time of a huge transaction; a trigger-less write
	// replicates like any other.
	if _, err := tx.Exec(ctx, `SET LOCAL session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO ballots (candidate, ballot, whence, src)
		SELECT $1, gen_random_uuid(), '{"1": 1}', 1 FROM generate_series(1, $2::int)`, c, n); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// Killing the sink at random moments (cancelled, its target connections
// terminated, the target server crashed) while the source keeps writing
// applies every source transaction exactly once: the checkpoint counts as
// many transactions as the source committed, nothing ever conflicts (a
// transaction applied twice would), and the regions converge.
func TestExactlyOnceAcrossKills(t *testing.T) {
	srcSrv, dstSrv := pgtest.Start(t), pgtest.Start(t)
	src := newRegion(t, srcSrv, 1)
	dst := newRegion(t, dstSrv, 0)
	createSlot(t, src, dst.id)

	// No script: a transaction applied twice would show as conflicts
	// instead of being merged away.
	cfg := feedConfig(t, src, dst, nil, options(20, 1000, 0))
	var logs testlog.Buffer
	cfg.Logger = keptLogger(t, &logs)
	bigVote(t, src.dsn, 20000) // applied in chunks: kills land inside it
	stop := make(chan struct{})
	done := writers(t, src.dsn, 2, 7, stop, 2*time.Millisecond)
	rng := rand.New(rand.NewPCG(1, 2))
	var window int
	ctx := context.Background()
	for i := 0; i < 9; i++ {
		r := start(t, cfg)
		// Kill at a random moment; except for plain cancels (which then
		// land anywhere, the large transaction's chunks included), only
		// once it has committed something.
		for deadline := time.Now().Add(30 * time.Second); i%3 != 0 && r.s.Status().Txns == 0; {
			if time.Now().After(deadline) {
				t.Fatalf("sink applied nothing in 30s: %+v", r.s.Status())
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
		switch i % 3 {
		case 0:
		case 1:
			resumed := logs.Count("feed resumed")
			pgtest.Exec(t, dst.dsn, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'votr-sink'`)
			// The writers go on: the outage ends with the next group the
			// sink commits, and the log says so then, not when the
			// session that ended it ends.
			waitFor(t, "feed resumed in the log of the running sink", func() bool { return logs.Count("feed resumed") > resumed })
			time.Sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
		case 2:
			// Unflushed asynchronous commits of the sink are lost; the
			// slot must not have been told they were applied.
			if err := dstSrv.Restart(ctx, "immediate"); err != nil {
				t.Fatalf("restart target: %v", err)
			}
			time.Sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
		}
		if err := r.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		// Applied on the target but not yet confirmed to the slot: the
		// restart must resume from the checkpoint, not from the slot.
		ck := queryInt(t, dst.dsn, `SELECT source_lsn - '0/0' FROM votr.checkpoints WHERE feed = '1:0'`)
		confirmed := queryInt(t, src.dsn, `SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = $1`, schema.Slot(src.db, dst.id))
		if confirmed < ck {
			window++
		}
		checkInvariant(t, dst.dsn)
	}
	close(stop)
	n := done()
	r := start(t, cfg)
	waitCaughtUp(t, r, src.dsn, 60*time.Second)
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
		t.Fatalf("target differs from source:\n got %s\nwant %s", got, want)
	}
	checkInvariant(t, dst.dsn)
	txns := queryInt(t, dst.dsn, `SELECT txns FROM votr.checkpoints WHERE feed = '1:0'`)
	conflicts := queryInt(t, dst.dsn, `SELECT conflicts FROM votr.checkpoints WHERE feed = '1:0'`)
	t.Logf("source txns %d, applied %d, conflicts %d; %d of 9 kills left applied transactions unconfirmed", n+1, txns, conflicts, window)
	if txns != n+1 {
		t.Errorf("applied %d source transactions, the source committed %d", txns, n+1)
	}
	if conflicts != 0 {
		t.Errorf("%d conflicts: some change was applied twice", conflicts)
	}
	if window == 0 {
		t.Errorf("no kill fell between a target commit and its confirmation: the test did not exercise that window")
	}
}

// A source transaction of 400,000 rows applies in chunks inside one
// target transaction, with the sink's heap below 60 MB (25.8 MB was seen at
// 1,000,000 rows): the changes as pgoutput sends them take over 100 bytes
// a row, so a sink that held them all would pass it. The bench's memory
// part does the same with 1,000,000 rows.
func TestHugeTransactionBoundedMemory(t *testing.T) {
	src, dst := feedOnOneServer(t)
	const rows = 400000
	t0 := time.Now()
	bigVote(t, src.dsn, rows)
	t.Logf("source transaction of %d rows written in %s", rows, time.Since(t0).Round(time.Millisecond))

	runtime.GC()
	var peak uint64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stopSampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t0 = time.Now()
	r := start(t, feedConfig(t, src, dst, votrScript(t), options(200, 10000, 3)))
	waitCaughtUp(t, r, src.dsn, 3*time.Minute)
	elapsed := time.Since(t0)
	close(stopSampling)
	<-sampled
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("applied in %s (%.0f rows/s); peak heap in use %.1f MB; process peak RSS %s",
		elapsed.Round(time.Millisecond), rows/elapsed.Seconds(), float64(peak)/(1<<20), peakRSS())
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM ballots`); got != rows {
		t.Fatalf("target has %d ballots, want %d", got, rows)
	}
	checkInvariant(t, dst.dsn)
	if peak > 60<<20 {
		t.Errorf("peak heap in use %.1f MB, want < 60 MB", float64(peak)/(1<<20))
	}
}

// peakRSS reads the process's high-water resident set size.
func peakRSS() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "VmHWM:"))
		}
	}
	return "unknown"
}

const throwingScript = `
export const tables = {
  totals: { merge: (op: any) => { throw new Error("boom on " + op.meta.table); } },
};
`

// A merge that always throws: with onScriptError=deadletter the change
// lands in votr.dead_letters (the rest of its transaction and the ones
// around it are applied), with stop the feed stops with an error naming
// the feed, table and position, and the checkpoint stays before it.
func TestThrowingMerge(t *testing.T) {
	prog := compileScript(t, throwingScript)
	cands := schema.Candidates(testCandidates)
	for _, mode := range []OnScriptError{DeadLetter, StopFeed} {
		t.Run(string(mode), func(t *testing.T) {
			src, dst := feedOnOneServer(t)
			// The target's own write makes the source's totals update of
			// candidate 0 conflict.
			pgtest.Exec(t, dst.dsn, `UPDATE totals SET total = total + 1 WHERE candidate = '`+cands[0].ID+`'`,
				`INSERT INTO ballots (candidate) VALUES ('`+cands[0].ID+`')`)
			for _, c := range []int{1, 0, 2} {
				pgtest.Exec(t, src.dsn, `UPDATE totals SET total = total + 2 WHERE candidate = '`+cands[c].ID+`'`)
			}
			pgtest.Exec(t, src.dsn, `INSERT INTO ballots (candidate) VALUES ('`+cands[3].ID+`')`)

			o := options(200, 1000, 2)
			o.OnScriptError = mode
			cfg := feedConfig(t, src, dst, prog, o)
			r := start(t, cfg)
			if mode == StopFeed {
				var err error
				select {
				case err = <-r.done:
					close(r.done)
				case <-time.After(30 * time.Second):
					t.Fatalf("feed did not stop (status %+v)", r.s.Status())
				}
				if err == nil {
					t.Fatal("Run returned nil, want the script error")
				}
				for _, want := range []string{"1:0", "table totals", "boom on totals", "source LSN 0/"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not mention %q", err, want)
					}
				}
				// Only the transaction before the failing one is applied.
				if got := queryInt(t, dst.dsn, `SELECT txns FROM votr.checkpoints WHERE feed = '1:0'`); got != 1 {
					t.Errorf("checkpoint counts %d transactions, want 1", got)
				}
				if got := queryInt(t, dst.dsn, `SELECT total FROM totals WHERE candidate = $1`, cands[2].ID); got != 0 {
					t.Errorf("the transaction after the failing one was applied (total %d)", got)
				}
				if got := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.dead_letters`); got != 0 {
					t.Errorf("%d dead letters with onScriptError=stop", got)
				}
				return
			}
			waitCaughtUp(t, r, src.dsn, 30*time.Second)
			if err := r.stop(t); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := queryInt(t, dst.dsn, `SELECT txns FROM votr.checkpoints WHERE feed = '1:0'`); got != 4 {
				t.Errorf("checkpoint counts %d transactions, want 4", got)
			}
			if got := queryInt(t, dst.dsn, `SELECT dead_lettered FROM votr.checkpoints WHERE feed = '1:0'`); got != 1 {
				t.Errorf("checkpoint counts %d dead letters, want 1", got)
			}
			if got := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.dead_letters
				WHERE feed = '1:0' AND tbl = 'totals' AND op = 'update' AND reason LIKE '%boom on totals%'
				  AND (proposed->>'total')::int = 2 AND (before->>'total')::int = 0 AND (target->>'total')::int = 1`); got != 1 {
				t.Errorf("%d matching dead letters, want 1", got)
			}
			for c, want := range map[int]int64{1: 2, 0: 1, 2: 2} {
				if got := queryInt(t, dst.dsn, `SELECT total FROM totals WHERE candidate = $1`, cands[c].ID); got != want {
					t.Errorf("candidate %d: total %d, want %d", c, got, want)
				}
			}
			if got := queryInt(t, dst.dsn, `SELECT count(*) FROM ballots WHERE candidate = $1`, cands[3].ID); got != 1 {
				t.Errorf("the last transaction was not applied")
			}
		})
	}
}

// voteXid runs one VOTR transaction and returns its transaction id.
func voteXid(t testing.TB, dsn string) int64 {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := schema.Candidates(testCandidates)[5].ID
	var xid int64
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::xid::text::bigint`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE totals SET total = total + 3 WHERE candidate = $1`, c); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO ballots (candidate) SELECT $1 FROM generate_series(1, 3)`, c); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return xid
}

// convergedDigest is digest without totals.src, which the totals merge
// treats as informational (it may differ after concurrent updates).
func convergedDigest(t testing.TB, dsn string) string {
	t.Helper()
	conn := connect(t, dsn)
	defer conn.Close(context.Background())
	var out []string
	for _, q := range []string{
		`SELECT count(*) || ':' || md5(string_agg(b::text, ',' ORDER BY candidate, ballot)) FROM ballots b`,
		`SELECT count(*) || ':' || md5(string_agg(candidate::text || total || whence::text, ',' ORDER BY candidate)) FROM totals`,
		`SELECT count(*) || ':' || md5(string_agg(c::text, ',' ORDER BY candidate)) FROM candidates c`,
	} {
		var s string
		if err := conn.QueryRow(context.Background(), q).Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

// settle waits until both feeds have processed both regions' WAL and the
// regions hold the same rows.
func settle(t testing.TB, hub, spoke region, up, down *running) {
	t.Helper()
	for i := 0; i < 10; i++ {
		waitCaughtUp(t, up, spoke.dsn, time.Minute)
		waitCaughtUp(t, down, hub.dsn, time.Minute)
		if convergedDigest(t, hub.dsn) == convergedDigest(t, spoke.dsn) {
			return
		}
	}
	t.Fatalf("hub and spoke do not converge:\nhub   %s\nspoke %s", convergedDigest(t, hub.dsn), convergedDigest(t, spoke.dsn))
}

// quiesce waits until both feeds have caught up with their sources and a
// further round finds nothing more to apply.
func quiesce(t testing.TB, hub, spoke region, up, down *running) {
	t.Helper()
	prev := int64(-1)
	for i := 0; i < 20; i++ {
		waitCaughtUp(t, up, spoke.dsn, time.Minute)
		waitCaughtUp(t, down, hub.dsn, time.Minute)
		n := up.s.Status().Txns + down.s.Status().Txns
		if n == prev {
			return
		}
		prev = n
	}
	t.Fatalf("the feeds kept applying transactions after the writers stopped (%d)", prev)
}

// Hub and spoke both take writes while both feeds run: they converge, the
// invariant holds on both, and a change that comes back to where it was
// made writes nothing there, whether the echo is skipped by its
// replication origin or (noEchoSkip) goes through the merges.
func TestBidirectionalConvergesWithoutEchoWrites(t *testing.T) {
	hubSrv, spokeSrv := pgtest.Start(t), pgtest.Start(t)
	hub := newRegion(t, hubSrv, 0)
	spoke := newRegion(t, spokeSrv, 1)
	createSlot(t, spoke, hub.id)
	createSlot(t, hub, spoke.id)
	opts := options(200, 10000, 3)
	prog := votrScript(t)

	for _, skipEchoes := range []bool{true, false} {
		upCfg := feedConfig(t, spoke, hub, prog, opts)
		downCfg := feedConfig(t, hub, spoke, prog, opts)
		upCfg.noEchoSkip, downCfg.noEchoSkip = !skipEchoes, !skipEchoes
		up, down := start(t, upCfg), start(t, downCfg)

		stop := make(chan struct{})
		doneHub := writers(t, hub.dsn, 2, 10, stop, time.Millisecond)
		doneSpoke := writers(t, spoke.dsn, 2, 11, stop, time.Millisecond)
		time.Sleep(2 * time.Second)
		close(stop)
		nh, ns := doneHub(), doneSpoke()
		settle(t, hub, spoke, up, down)
		checkInvariant(t, hub.dsn)
		checkInvariant(t, spoke.dsn)
		ust, dst := up.s.Status(), down.s.Status()
		t.Logf("skipEchoes=%v: %d hub and %d spoke transactions; up %+v; down %+v", skipEchoes, nh, ns, ust, dst)
		if skipEchoes && (ust.Skipped == 0 || dst.Skipped == 0) {
			t.Errorf("no echo was skipped by its origin (up %d, down %d)", ust.Skipped, dst.Skipped)
		}
		if ust.Conflicts == 0 && dst.Conflicts == 0 {
			t.Errorf("concurrent writers on both sides produced no conflicts: the merge path was not exercised")
		}

		// One more write on each side: once it has travelled there and
		// back, the side that made it has not been written again.
		for _, side := range []region{spoke, hub} {
			// Echoes of the writers' last transactions may still be
			// travelling (the digests compare data, not the clocks the
			// merges still even out): count from when neither feed has
			// anything left to apply.
			quiesce(t, hub, spoke, up, down)
			txnsBefore := up.s.Status().Txns + down.s.Status().Txns
			xid := voteXid(t, side.dsn)
			settle(t, hub, spoke, up, down)
			// Both feeds have moved past the write and its echo.
			waitCaughtUp(t, up, spoke.dsn, time.Minute)
			waitCaughtUp(t, down, hub.dsn, time.Minute)
			if n := queryInt(t, side.dsn, `SELECT (SELECT count(*) FROM ballots WHERE xmin::text::bigint > $1)
				+ (SELECT count(*) FROM totals WHERE xmin::text::bigint > $1)
				+ (SELECT count(*) FROM candidates WHERE xmin::text::bigint > $1)`, xid); n != 0 {
				t.Errorf("skipEchoes=%v: the echo of a write on region %d wrote %d rows there again", skipEchoes, side.id, n)
			}
			applied := up.s.Status().Txns + down.s.Status().Txns - txnsBefore
			if want := int64(1); !skipEchoes {
				want = 2
				if applied != want {
					t.Errorf("skipEchoes=false: %d transactions applied for one write and its echo, want %d", applied, want)
				}
			} else if applied != want {
				t.Errorf("skipEchoes=true: %d transactions applied for one write, want %d (the echo skipped)", applied, want)
			}
		}
		if err := up.stop(t); err != nil {
			t.Fatal(err)
		}
		if err := down.stop(t); err != nil {
			t.Fatal(err)
		}
	}
}

// Several changes to one row inside one target transaction fold into
// one write (insert+update, insert+delete, update+delete, delete+insert,
// update+update), and an unchanged TOASTed value keeps the target's value:
// the target ends up identical to the source either way.
func TestFoldedChangesAndToastedValues(t *testing.T) {
	src, dst := feedOnOneServer(t)
	cands := schema.Candidates(testCandidates)
	id := func(i int) string { return "'" + cands[i].ID + "'" }
	const newID = "'00000000-0000-0000-0000-00000000000a'"
	const otherID = "'00000000-0000-0000-0000-00000000000b'"
	big := `(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)` // ~12 kB, stored out of line
	steps := []struct {
		name string
		sql  []string // one source transaction
	}{
		{"insert then update", []string{
			`INSERT INTO candidates (candidate, name, mood) VALUES (` + newID + `, 'New', 'shy')`,
			`UPDATE candidates SET mood = 'bold', version = version + 1 WHERE candidate = ` + newID}},
		{"insert then delete", []string{
			`INSERT INTO candidates (candidate, name, mood) VALUES (` + otherID + `, 'Gone', 'brief')`,
			`DELETE FROM candidates WHERE candidate = ` + otherID}},
		{"update then delete", []string{
			`UPDATE candidates SET mood = 'doomed' WHERE candidate = ` + id(1),
			`DELETE FROM candidates WHERE candidate = ` + id(1)}},
		{"delete then insert", []string{
			`DELETE FROM candidates WHERE candidate = ` + id(2),
			`INSERT INTO candidates (candidate, name, mood) VALUES (` + id(2) + `, 'Reborn', 'fresh')`}},
		{"update twice", []string{
			`UPDATE candidates SET mood = 'one' WHERE candidate = ` + id(3),
			`UPDATE candidates SET mood = 'two', version = 7 WHERE candidate = ` + id(3)}},
		{"big value", []string{`UPDATE candidates SET name = ` + big + ` WHERE candidate = ` + id(4)}},
		{"toasted value unchanged", []string{`UPDATE candidates SET mood = 'same name', version = version + 1 WHERE candidate = ` + id(4)}},
		{"toasted value unchanged, then deleted", []string{
			`UPDATE candidates SET name = ` + big + ` WHERE candidate = ` + id(5),
			`UPDATE candidates SET mood = 'x' WHERE candidate = ` + id(5)}},
	}
	for _, st := range steps {
		pgtest.Exec(t, src.dsn, "BEGIN", strings.Join(st.sql, "; "), "COMMIT")
	}
	// The toasted value really is sent as unchanged.
	if n := queryInt(t, src.dsn, `SELECT pg_column_size(name) FROM candidates WHERE candidate = `+id(4)); n < 2000 {
		t.Fatalf("test value is %d bytes stored, too small to be toasted", n)
	}
	r := start(t, feedConfig(t, src, dst, votrScript(t), options(200, 10000, 1)))
	waitCaughtUp(t, r, src.dsn, 30*time.Second)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
		t.Fatalf("target differs from source:\n got %s\nwant %s", got, want)
	}
	// Conflicts: each delete of a row the target does not have, merged to
	// leave its tombstone (the row inserted and deleted in one
	// transaction, and a row the target's own ON DELETE CASCADE removed
	// before the source's cascaded delete arrived), and the update then
	// delete, whose folded delete carries the row the source deleted (the
	// update's new image), not the target's: merged, it deletes the row.
	if st := r.s.Status(); st.Conflicts > 3 || st.Conflicts-st.Dropped != 1 || st.Txns != int64(len(steps)) {
		t.Errorf("status %+v: want %d transactions and at most 3 conflicts, all but one dropped deletes", st, len(steps))
	}
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.tombstones WHERE key = jsonb_build_array(`+otherID+`::text)`); n != 1 {
		t.Errorf("no tombstone for the row inserted and deleted in one transaction")
	}
}

// A target role without superuser rights can neither skip triggers nor
// use replication origins: the sink says so once, applies with foreign
// keys checked (parents first), and still converges. Its metrics count
// what it applied.
func TestNonSuperuserTargetAndMetrics(t *testing.T) {
	src, dst := feedOnOneServer(t)
	pgtest.Exec(t, dst.dsn,
		`CREATE ROLE votr_app LOGIN PASSWORD 'pw-votr-app'`,
		`GRANT USAGE ON SCHEMA votr TO votr_app`,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, votr TO votr_app`,
		`GRANT USAGE ON ALL SEQUENCES IN SCHEMA votr TO votr_app`)
	cfg := feedConfig(t, src, dst, votrScript(t), options(200, 10000, 1))
	cfg.TargetDSN = strings.Replace(dst.dsn, strings.SplitN(strings.TrimPrefix(dst.dsn, "postgres://"), "@", 2)[0], "votr_app:pw-votr-app", 1)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg

	// New candidates and their ballots in one transaction: with foreign
	// keys enforced, the candidates must be written first.
	pgtest.Exec(t, src.dsn, "BEGIN",
		`INSERT INTO ballots (candidate) SELECT candidate FROM candidates LIMIT 3`,
		`INSERT INTO candidates (candidate, name, mood) VALUES ('00000000-0000-0000-0000-0000000000c1', 'Late', 'eager')`,
		`INSERT INTO totals (candidate, total) VALUES ('00000000-0000-0000-0000-0000000000c1', 1)`,
		`INSERT INTO ballots (candidate) VALUES ('00000000-0000-0000-0000-0000000000c1')`,
		"COMMIT")
	stop := make(chan struct{})
	done := writers(t, src.dsn, 2, 5, stop, time.Millisecond)
	r := start(t, cfg)
	time.Sleep(time.Second)
	close(stop)
	done()
	waitCaughtUp(t, r, src.dsn, 30*time.Second)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
		t.Fatalf("target differs from source:\n got %s\nwant %s", got, want)
	}
	st := r.s.Status()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetCounter() != nil {
				got[mf.GetName()] = m.GetCounter().GetValue()
			}
		}
	}
	if got["votr_sink_rows_total"] != float64(st.Rows) || got["votr_sink_txns_total"] != float64(st.Txns) || st.Rows == 0 {
		t.Errorf("metrics %v disagree with status %+v", got, st)
	}
}
