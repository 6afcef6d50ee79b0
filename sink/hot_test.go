package sink

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/schema"
)

// waitSinkBlocked waits until the target's apply session waits for a lock
// in a statement containing stmt.
func waitSinkBlocked(t *testing.T, dsn, stmt string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("the sink to wait for the client's lock in %q", stmt), func() bool {
		return pgtest.QueryInt(t, dsn, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'votr-sink' AND wait_event_type = 'Lock' AND position($1 in query) > 0`, stmt) > 0
	})
}

// A client writes the row a sink is settling between the sink's read and
// its write (#14.1): the client's transaction is open (holding its row or
// its new key) while the sink reads, and commits while the sink's write
// waits for it. The sink's change is merged with the client's row, not
// lost, and the client's row is not overwritten.
func TestSettleMergesRowWrittenDuringSettle(t *testing.T) {
	src, dst := feedOnOneServer(t)
	r := start(t, feedConfig(t, src, dst, votrScript(t), options(200, 10000, 3)))
	ctx := context.Background()
	cands := schema.Candidates(testCandidates)

	for i, tc := range []struct {
		name string
		// prepare runs on the target before the client's transaction;
		// client is the client's open transaction's statement.
		prepare, client, waitIn string
	}{
		// The target lacks the row: the sink's merge result is a new row,
		// and the client inserts the same key first.
		{"inserted", `DELETE FROM totals WHERE candidate = $1`, `INSERT INTO totals (candidate, total) VALUES ($1, 1000)`, "WITH ins AS"},
		// The target has the row: the client updates it before the sink
		// locks it; the sink waits, then reads the client's version (it
		// locks before it reads), so its write needs no second round.
		{"updated", ``, `UPDATE totals SET total = total + 1000 WHERE candidate = $1`, "FOR NO KEY UPDATE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cand := cands[i].ID
			if tc.prepare != "" {
				pgtest.Exec(t, dst.dsn, replaceArg(tc.prepare, cand))
			}
			before := queryInt(t, dst.dsn, `SELECT COALESCE((SELECT total FROM totals WHERE candidate = $1), 0)`, cand)
			client := connect(t, dst.dsn)
			defer client.Close(ctx)
			tx, err := client.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, tc.client, cand); err != nil {
				t.Fatalf("client: %v", err)
			}
			// The source's change: 7 ballots for the candidate.
			srcConn := connect(t, src.dsn)
			defer srcConn.Close(ctx)
			srcBefore := queryInt(t, src.dsn, `SELECT total FROM totals WHERE candidate = $1`, cand)
			if _, err := srcConn.Exec(ctx, `UPDATE totals SET total = total + 7 WHERE candidate = $1`, cand); err != nil {
				t.Fatal(err)
			}
			waitSinkBlocked(t, dst.dsn, tc.waitIn)
			rewrites := r.s.Status().Rewrites
			if err := tx.Commit(ctx); err != nil {
				t.Fatalf("client commit: %v", err)
			}
			waitCaughtUp(t, r, src.dsn, 2*time.Minute)
			// The client's 1000 and the source's 7 are both counted; what
			// the target had is kept (the counter is a join per region).
			want := before + 1000 + 7
			if tc.name == "inserted" {
				want = 1000 + srcBefore + 7
			}
			if got := queryInt(t, dst.dsn, `SELECT total FROM totals WHERE candidate = $1`, cand); got != want {
				t.Errorf("total %d after the sink settled, want %d (client's 1000 and the source's 7 merged)", got, want)
			}
			if n := queryInt(t, dst.dsn, `SELECT count(*) FROM totals WHERE candidate = $1 AND whence ? '0' AND whence ? '1'`, cand); n != 1 {
				t.Errorf("the row does not carry both regions' contributions")
			}
			st := r.s.Status()
			switch rewrote := st.Rewrites - rewrites; {
			case tc.name == "inserted" && rewrote == 0:
				t.Errorf("the insert that met the client's row was not settled again (Rewrites +0)")
			case tc.name == "updated" && rewrote != 0:
				t.Errorf("the locked row was written again %d time(s): it was read before it was locked", rewrote)
			}
			t.Logf("status %+v", st)
		})
	}
}

// replaceArg puts a quoted uuid in place of $1 (for pgtest.Exec).
func replaceArg(sql, id string) string {
	out := ""
	for i := 0; i < len(sql); i++ {
		if i+1 < len(sql) && sql[i] == '$' && sql[i+1] == '1' {
			out += "'" + id + "'"
			i++
			continue
		}
		out += string(sql[i])
	}
	return out
}

// Plain SQL clients (pgx, no votr code) update totals rows beside running
// sinks on a hub and two spokes: one row per transaction, and several rows
// in descending key order (the opposite of the sinks' order). None of
// their transactions is aborted, and all regions converge.
func TestClientsBesideSinksAreNeverAborted(t *testing.T) {
	srv := pgtest.Start(t)
	hub := newRegion(t, srv, 0)
	spokes := []region{newRegion(t, srv, 1), newRegion(t, srv, 2)}
	prog := votrScript(t)
	opts := options(1000, 10000, 3)
	var feeds []*running
	type feed struct {
		r   *running
		src region
	}
	var all []feed
	for _, sp := range spokes {
		createSlot(t, sp, hub.id)
		createSlot(t, hub, sp.id)
		up := start(t, feedConfig(t, sp, hub, prog, opts))
		down := start(t, feedConfig(t, hub, sp, prog, opts))
		feeds = append(feeds, up, down)
		all = append(all, feed{up, sp}, feed{down, hub})
	}

	ids := sortedCandidateIDs()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var committed, failed atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	client := func(dsn string, seed uint64, multi bool) {
		defer wg.Done()
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Errorf("client connect: %v", err)
			return
		}
		defer conn.Close(ctx)
		rng := rand.New(rand.NewPCG(seed, 1))
		for {
			select {
			case <-stop:
				return
			default:
			}
			var rows []string
			if multi {
				// Three to six distinct rows, descending.
				perm := rng.Perm(len(ids))[:3+rng.IntN(4)]
				for _, p := range perm {
					rows = append(rows, ids[p])
				}
				slices.Sort(rows)
				slices.Reverse(rows)
			} else {
				rows = []string{ids[rng.IntN(len(ids))]}
			}
			b := &pgx.Batch{}
			for _, id := range rows {
				b.Queue(`UPDATE totals SET total = total + 1 WHERE candidate = $1`, id)
				b.Queue(`INSERT INTO ballots (candidate) VALUES ($1)`, id)
			}
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return tx.SendBatch(ctx, b).Close() })
			if err != nil {
				failed.Add(1)
				errMu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				errMu.Unlock()
				continue
			}
			committed.Add(1)
		}
	}
	for ri, reg := range append([]region{hub}, spokes...) {
		wg.Add(2)
		go client(reg.dsn, uint64(2*ri), false)
		go client(reg.dsn, uint64(2*ri+1), true)
	}
	// Run until the clients committed a fair amount while the sinks
	// applied each other's changes (an event, not a duration).
	deadline := time.Now().Add(5 * time.Minute)
	for committed.Load() < 1500 && failed.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d client transactions failed beside the sinks (first: %v); %d committed", n, firstErr, committed.Load())
	}
	if committed.Load() < 1500 {
		t.Fatalf("clients committed only %d transactions", committed.Load())
	}

	// Converge: every feed caught up with its source, repeated until the
	// regions match (a spoke's change reaches the other spoke in two hops).
	var retries int64
	for round := 0; ; round++ {
		for _, f := range all {
			waitCaughtUp(t, f.r, f.src.dsn, 2*time.Minute)
		}
		h := convergedDigest(t, hub.dsn)
		same := true
		for _, sp := range spokes {
			same = same && convergedDigest(t, sp.dsn) == h
		}
		if same {
			break
		}
		if round == 20 {
			t.Fatalf("regions do not converge")
		}
	}
	for _, reg := range append([]region{hub}, spokes...) {
		checkInvariant(t, reg.dsn)
	}
	for _, f := range feeds {
		retries += f.s.Status().LockRetries
		if st := f.s.Status(); st.LastError != "" {
			t.Errorf("feed %s: %s", st.Feed, st.LastError)
		}
	}
	t.Logf("%d client transactions committed, none aborted; sinks retried %d groups for lock errors", committed.Load(), retries)
}

// Apply sessions check for a lock cycle early (half the target's
// deadlock_timeout, at most 100 ms, where the role may set it) and give up
// a wait at half the target's deadlock_timeout (at most 500 ms). Monitor
// sessions keep the server's settings.
func TestApplySessionLockWaits(t *testing.T) {
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	ctx := context.Background()
	pgtest.Exec(t, dst.dsn, `CREATE ROLE votr_plain LOGIN PASSWORD 'plain-secret'`,
		fmt.Sprintf(`GRANT CONNECT ON DATABASE %s TO votr_plain`, dst.db))
	plain, err := url.Parse(dst.dsn)
	if err != nil {
		t.Fatal(err)
	}
	plain.User = url.UserPassword("votr_plain", "plain-secret")
	for _, tc := range []struct {
		role, dsn, serverDeadlock string
		// what the apply session runs with
		deadlock, lock string
	}{
		{"superuser", dst.dsn, "1s", "100ms", "500ms"},
		{"superuser", dst.dsn, "150ms", "75ms", "75ms"},
		{"plain role", plain.String(), "1s", "1s", "500ms"},
		{"plain role", plain.String(), "200ms", "200ms", "100ms"},
	} {
		pgtest.Exec(t, dst.dsn, fmt.Sprintf("ALTER DATABASE %s SET deadlock_timeout = '%s'", dst.db, tc.serverDeadlock))
		cfg := feedConfig(t, src, dst, votrScript(t), DefaultOptions())
		cfg.TargetDSN = tc.dsn
		s, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, apply := range []bool{true, false} {
			conn, err := s.connect(ctx, apply)
			if err != nil {
				t.Fatalf("%s: %v", tc.role, err)
			}
			var deadlock, lock, idle string
			if err := conn.QueryRow(ctx, `SELECT current_setting('deadlock_timeout'), current_setting('lock_timeout'),
				current_setting('idle_in_transaction_session_timeout')`).Scan(&deadlock, &lock, &idle); err != nil {
				t.Fatal(err)
			}
			conn.Close(ctx)
			want := [3]string{tc.deadlock, tc.lock, "1min"}
			if !apply {
				want = [3]string{tc.serverDeadlock, "0", "0"}
			}
			if got := [3]string{deadlock, lock, idle}; got != want {
				t.Errorf("%s, server deadlock_timeout %s, apply=%v: deadlock_timeout, lock_timeout, idle_in_transaction_session_timeout = %q, want %q",
					tc.role, tc.serverDeadlock, apply, got, want)
			}
		}
	}
}

// A candidate's update from the source never waits for a target
// transaction that is inserting a ballot for that candidate: the foreign
// key check holds the candidate row FOR KEY SHARE, which only an update of
// the key conflicts with. The sink's updates used to assign the key
// columns too (the same values), and with a row trigger on the table the
// server then locks the row FOR UPDATE first: the update waited for every
// such transaction, and a worker holding that lock while it waited for a
// totals row the sink held made a lock cycle. Both the plain update (the
// target row is the source's old image) and the compare-and-set of a
// merged one (the target changed the candidate too) are checked.
func TestCandidateUpdateDoesNotWaitForBallotInserts(t *testing.T) {
	src, dst := feedOnOneServer(t)
	r := start(t, feedConfig(t, src, dst, votrScript(t), DefaultOptions()))
	ctx := context.Background()
	cands := schema.Candidates(testCandidates)
	for i, tc := range []struct {
		name     string
		conflict bool // the target updates the candidate first
	}{
		{"plain update", false},
		{"merged update", true},
	} {
		cand := cands[i].ID
		if tc.conflict {
			pgtest.Exec(t, dst.dsn, replaceArg(`UPDATE candidates SET mood = 'target-side' WHERE candidate = $1`, cand))
		}
		client := connect(t, dst.dsn)
		tx, err := client.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `UPDATE totals SET total = total + 1 WHERE candidate = $1`, cand); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ballots (candidate) VALUES ($1)`, cand); err != nil {
			t.Fatal(err)
		}
		pgtest.Exec(t, src.dsn, replaceArg(`UPDATE candidates SET mood = 'source-side', version = version + 1 WHERE candidate = $1`, cand))
		// Caught up while the client's transaction is still open: the
		// update did not wait for it.
		waitCaughtUp(t, r, src.dsn, 30*time.Second)
		if got := pgtest.Query(t, dst.dsn, `SELECT mood FROM candidates WHERE candidate = $1`, cand)[0]; !tc.conflict && got != "source-side" {
			t.Errorf("%s: mood %q at the target, want the source's", tc.name, got)
		}
		if n := r.s.Status().LockRetries; n != 0 {
			t.Errorf("%s: %d lock retries: the update waited for the ballot insert", tc.name, n)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		client.Close(ctx)
	}
	checkInvariant(t, dst.dsn)
}

// While catching up, a group's updates are written at once (fast writes),
// but only after its rows are locked in key order, like every write: here
// one source transaction updates the highest-key totals row first and the
// lowest-key one second, while a client holds the lowest. The sink must
// wait for the client before it has locked the highest row (the order a
// worker takes them in). Before the fix the fast update locked rows in the
// order of its arrays: the highest first, then it waited for the lowest,
// and a worker holding the lowest and wanting the highest made a lock
// cycle with it.
func TestFastWritesLockRowsInKeyOrder(t *testing.T) {
	src, dst := feedOnOneServer(t)
	ids := sortedCandidateIDs()
	low, high := ids[0], ids[len(ids)-1]
	pgtest.Exec(t, src.dsn, slices.Concat([]string{"BEGIN"}, voteSQL(high), voteSQL(low), []string{"COMMIT",
		// More than a MiB of WAL after it: the feed starts far behind.
		`CREATE TABLE filler (x text)`,
		`INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)`})...)
	wantLowestLockedFirst(t, src, dst, DefaultOptions(), "the sink locked the highest row before the lowest")
}

// pgoutput describes a table again after any invalidation of its cache
// entry at the source (here an ANALYZE between two transactions), most
// often unchanged. A group holding both transactions still writes once:
// its rows locked by one statement in key order. Before the fix the second
// description made the applier write the first transaction's rows at once
// and lock the second's after them: here the highest totals row (first
// transaction) was locked while the sink waited for the lowest (second),
// which a client holds.
func TestRedescribedTableDoesNotSplitAGroup(t *testing.T) {
	src, dst := feedOnOneServer(t)
	ids := sortedCandidateIDs()
	low, high := ids[0], ids[len(ids)-1]
	vote := func(cand string) []string { return slices.Concat([]string{"BEGIN"}, voteSQL(cand), []string{"COMMIT"}) }
	pgtest.Exec(t, src.dsn, slices.Concat(vote(high), []string{"ANALYZE totals", "ANALYZE ballots"}, vote(low))...)
	// Both transactions in one group: they are queued before the sink
	// starts, and a group takes what is queued.
	wantLowestLockedFirst(t, src, dst, options(1000, 10000, 3), "the sink locked the first transaction's row before the second's")
}

// sortedCandidateIDs are the test candidates' ids in key order.
func sortedCandidateIDs() []string {
	ids := make([]string, 0, testCandidates)
	for _, c := range schema.Candidates(testCandidates) {
		ids = append(ids, c.ID)
	}
	slices.Sort(ids)
	return ids
}

// voteSQL is one ballot for cand with its total, as a client writes them.
func voteSQL(cand string) []string {
	return []string{
		replaceArg(`UPDATE totals SET total = total + 1 WHERE candidate = $1`, cand),
		replaceArg(`INSERT INTO ballots (candidate) VALUES ($1)`, cand),
	}
}

// holdTotalsRow locks cand's totals row in a transaction left open on a
// connection of its own (closed when the test ends).
func holdTotalsRow(t *testing.T, dsn, cand string) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	client := connect(t, dsn)
	t.Cleanup(func() { client.Close(ctx) })
	tx, err := client.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM totals WHERE candidate = $1 FOR UPDATE`, cand); err != nil {
		t.Fatal(err)
	}
	return tx
}

// wantLowestLockedFirst runs the feed src → dst, whose source holds changes
// to the lowest- and highest-key totals rows, while a client holds the
// lowest: once the sink waits for it, the highest must still be free (a
// second client takes it NOWAIT; otherwise the test fails with msg). The
// client then lets go, and the target must converge with the source.
func wantLowestLockedFirst(t *testing.T, src, dst region, opts Options, msg string) {
	t.Helper()
	ctx := context.Background()
	ids := sortedCandidateIDs()
	low, high := ids[0], ids[len(ids)-1]
	tx := holdTotalsRow(t, dst.dsn, low)
	r := start(t, feedConfig(t, src, dst, votrScript(t), opts))
	waitSinkBlocked(t, dst.dsn, "totals")
	other := connect(t, dst.dsn)
	defer other.Close(ctx)
	otx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := otx.Exec(ctx, `SELECT 1 FROM totals WHERE candidate = $1 FOR UPDATE NOWAIT`, high); err != nil {
		t.Errorf("%s: %v", msg, err)
	}
	if err := otx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	checkInvariant(t, dst.dsn)
	if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
		t.Errorf("target %s, source %s", got, want)
	}
}

// Two key-moving updates of one row in one source transaction, with the
// source table's replica identity DEFAULT (the old tuple is only the key):
// the target ends with the row at the last key only. The key change was
// isolated (written alone) only for REPLICA IDENTITY FULL, so the two
// folded into one entry and the target kept the middle key as well.
func TestChainedKeyMovesWithDefaultIdentity(t *testing.T) {
	src, dst := feedOnOneServer(t)
	x, y, z := "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b", "00000000-0000-4000-8000-00000000000c"
	pgtest.Exec(t, src.dsn,
		`ALTER TABLE candidates REPLICA IDENTITY DEFAULT`,
		fmt.Sprintf(`INSERT INTO candidates (candidate, name, mood) VALUES ('%s', 'n', 'm')`, x))
	r := start(t, feedConfig(t, src, dst, votrScript(t), DefaultOptions()))
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	pgtest.Exec(t, src.dsn,
		"BEGIN",
		fmt.Sprintf(`UPDATE candidates SET candidate = '%s' WHERE candidate = '%s'`, y, x),
		fmt.Sprintf(`UPDATE candidates SET candidate = '%s' WHERE candidate = '%s'`, z, y),
		"COMMIT")
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	q := `SELECT coalesce(string_agg(candidate::text, ',' ORDER BY candidate), '') FROM candidates WHERE candidate IN ($1, $2, $3)`
	got, want := pgtest.Query(t, dst.dsn, q, x, y, z)[0], pgtest.Query(t, src.dsn, q, x, y, z)[0]
	if got != want || want != z {
		t.Errorf("target holds %q, source %q (want only %s)", got, want, z)
	}
}

// An update that keeps its key and a delete of the same row in one source
// transaction, replica identity DEFAULT (the update has no old tuple, the
// delete only the key): they fold into one delete, found by the delete's
// key. The folded entry kept the update's missing old tuple and the sink
// crashed on it.
func TestUpdateThenDeleteWithDefaultIdentity(t *testing.T) {
	src, dst := feedOnOneServer(t)
	x := "00000000-0000-4000-8000-00000000000d"
	pgtest.Exec(t, src.dsn,
		`ALTER TABLE candidates REPLICA IDENTITY DEFAULT`,
		fmt.Sprintf(`INSERT INTO candidates (candidate, name, mood) VALUES ('%s', 'n', 'm')`, x))
	r := start(t, feedConfig(t, src, dst, votrScript(t), DefaultOptions()))
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	if n := pgtest.QueryInt(t, dst.dsn, `SELECT count(*) FROM candidates WHERE candidate = '`+x+`'`); n != 1 {
		t.Fatalf("target has %d rows of the candidate before the delete, want 1", n)
	}
	pgtest.Exec(t, src.dsn,
		"BEGIN",
		fmt.Sprintf(`UPDATE candidates SET mood = 'changed' WHERE candidate = '%s'`, x),
		fmt.Sprintf(`DELETE FROM candidates WHERE candidate = '%s'`, x),
		"COMMIT")
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	if n := pgtest.QueryInt(t, dst.dsn, `SELECT count(*) FROM candidates WHERE candidate = '`+x+`'`); n != 0 {
		t.Errorf("target still has the deleted candidate (%d rows)", n)
	}
}

// A group locks the target rows of its updates before it reads them, by
// their old key. ballots has a key of two columns (candidate, ballot): the
// sink must wait for a client's lock on that row in its lock statement.
// Were the key's columns given in another order than the statement's, it
// would lock no row (both are uuids, so nothing fails) and meet the
// client's lock only in its write.
func TestUpdateLocksRowByCompositeKey(t *testing.T) {
	ctx := context.Background()
	src, dst := feedOnOneServer(t)
	cand := sortedCandidateIDs()[0]
	ballot := "00000000-0000-4000-8000-0000000000b1"
	pgtest.Exec(t, src.dsn, fmt.Sprintf(`INSERT INTO ballots (candidate, ballot) VALUES ('%s', '%s')`, cand, ballot))
	r := start(t, feedConfig(t, src, dst, votrScript(t), DefaultOptions()))
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)

	client := connect(t, dst.dsn)
	defer client.Close(ctx)
	tx, err := client.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM ballots WHERE candidate = $1 AND ballot = $2 FOR UPDATE`, cand, ballot); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, src.dsn, fmt.Sprintf(`UPDATE ballots SET src = src WHERE candidate = '%s' AND ballot = '%s'`, cand, ballot))
	waitSinkBlocked(t, dst.dsn, "FOR NO KEY UPDATE OF t")
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
		t.Errorf("target %s, source %s", got, want)
	}
}
