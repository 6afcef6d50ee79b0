package sink

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/schema"
)

// A lock timeout in a later chunk of a large source transaction (the
// target transaction is already open with the earlier chunks) is retried
// in place, like any other group's: the chunk goes back to the group
// savepoint and is applied again, instead of ending the session and
// streaming the whole transaction again (which, at a hub where feeds queue
// for the same rows, a large transaction might never get through). The
// lock error here hits the last chunk's settle: a client holds the totals
// row the transaction updates last.
func TestLockErrorInLaterChunkRetriedInPlace(t *testing.T) {
	src, dst := feedOnOneServer(t)
	r, sessions := startCountingSessions(t, feedConfig(t, src, dst, votrScript(t), options(200, 50, 3)))
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	ctx := context.Background()
	cand := schema.Candidates(testCandidates)[0].ID

	tx := holdTotalsRow(t, dst.dsn, cand)

	// One source transaction: 200 ballots (four chunks of 50 rows), then
	// its totals update in a fifth chunk.
	const n = 200
	srcConn := connect(t, src.dsn)
	defer srcConn.Close(ctx)
	stx, err := srcConn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`SET LOCAL session_replication_role = replica`,
		`INSERT INTO ballots (candidate, ballot, whence, src) SELECT $1, gen_random_uuid(), '{"1": 1}', 1 FROM generate_series(1, 200)`,
		`SET LOCAL session_replication_role = origin`,
		`UPDATE totals SET total = total + 200 WHERE candidate = $1`,
	} {
		var args []any
		if strings.Contains(sql, "$1") {
			args = []any{cand}
		}
		if _, err := stx.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := stx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// The sink waits for the client's lock until its lock_timeout, and
	// either retries the chunk (LockRetries) or, before the fix, ends the
	// session (a second session reads the checkpoint).
	waitFor(t, "a lock timeout of the sink", func() bool {
		return r.s.Status().LockRetries > 0 || sessions.Load() > 1
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	if got := sessions.Load(); got != 1 {
		t.Errorf("%d sessions: the lock timeout in the open transaction's chunk ended the session instead of retrying the chunk", got)
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM ballots WHERE candidate = $1`, cand); got != n {
		t.Errorf("%d ballots on the target, want %d", got, n)
	}
	checkInvariant(t, dst.dsn)
	if st := r.s.Status(); st.Txns != 1 || st.LockRetries == 0 {
		t.Errorf("status %+v: want 1 transaction applied after at least one lock retry", st)
	}
}

// An update that changes a row's key, on a target where the row is no
// longer at the old key but already at the new one (a client there made
// the same change): the merge result is a new row at the new key, its
// insert meets the row there, and the change must be settled against that
// row. Before the fix the re-read looked at the old key again, found
// nothing, inserted again, and gave up after 100 rounds, ending every
// session at this change: the feed never got past it.
func TestKeyChangeMeetingRowAtNewKeySettles(t *testing.T) {
	src, dst := feedOnOneServer(t)
	r, sessions := startCountingSessions(t, feedConfig(t, src, dst, votrScript(t), options(200, 10000, 3)))
	cand := schema.Candidates(testCandidates)[0].ID
	const k1, k2 = "00000000-0000-0000-0000-0000000000a1", "00000000-0000-0000-0000-0000000000a2"
	pgtest.Exec(t, src.dsn, replaceArg(`INSERT INTO ballots (candidate, ballot) VALUES ($1, '`+k1+`')`, cand))
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM ballots WHERE ballot = $1`, k1); n != 1 {
		t.Fatalf("the ballot did not replicate")
	}
	pgtest.Exec(t, dst.dsn, `UPDATE ballots SET ballot = '`+k2+`' WHERE ballot = '`+k1+`'`)
	pgtest.Exec(t, src.dsn, `UPDATE ballots SET ballot = '`+k2+`' WHERE ballot = '`+k1+`'`)
	settledInOneSession(t, r, sessions, sourceLSN(t, src.dsn))
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM ballots WHERE ballot IN ($1, $2)`, k1, k2); n != 1 {
		t.Errorf("%d rows at the old and new keys, want 1", n)
	}
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM ballots WHERE ballot = $1 AND whence ? '0' AND whence ? '1'`, k2); n != 1 {
		t.Errorf("the row at the new key does not carry both regions' writes")
	}
}

// settledInOneSession waits for the sink to pass the source position lsn
// and fails the test if it got there only through an error (a new session).
func settledInOneSession(t *testing.T, r *running, sessions *atomic.Int64, lsn pglogrepl.LSN) {
	t.Helper()
	waitFor(t, "the sink to apply the key change or fail", func() bool {
		st := r.s.Status()
		return st.ProcessedLSN >= lsn || st.LastError != "" || sessions.Load() > 1
	})
	if st := r.s.Status(); st.LastError != "" || sessions.Load() > 1 {
		t.Fatalf("the key change did not settle: %d sessions, status %+v", sessions.Load(), st)
	}
}

// An update that moves a row's key, on a target that still has the row at
// the old key and has another row of its own at the new key (a client
// there inserted it): the old key goes (leaving its tombstone), the insert
// at the new key meets the target's row and is merged with it, and the
// feed goes on past the change.
func TestKeyChangeOntoTakenKeySettles(t *testing.T) {
	src, dst := feedOnOneServer(t)
	r, sessions := startCountingSessions(t, feedConfig(t, src, dst, votrScript(t), options(200, 10000, 3)))
	const from, to = "00000000-0000-0000-0000-0000000000b1", "00000000-0000-0000-0000-0000000000b2"
	pgtest.Exec(t, src.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES ('`+from+`', 'Mover', 'restless')`)
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	pgtest.Exec(t, dst.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES ('`+to+`', 'Local', 'settled')`)
	pgtest.Exec(t, src.dsn, `UPDATE candidates SET candidate = '`+to+`', version = version + 1 WHERE candidate = '`+from+`'`)
	settledInOneSession(t, r, sessions, sourceLSN(t, src.dsn))
	if st := r.s.Status(); st.Conflicts != 1 {
		t.Errorf("status %+v: want the key change counted as one conflict", st)
	}
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM candidates WHERE candidate = '`+from+`'`); n != 0 {
		t.Errorf("%d rows left at the old key, want 0", n)
	}
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM candidates WHERE candidate = '`+to+`'`); n != 1 {
		t.Errorf("%d rows at the new key, want 1", n)
	}
	if w := tombstoneWhence(t, dst.dsn, "public.candidates", from); w == "" {
		t.Errorf("no tombstone at the old key")
	}
}

// A change merged, whose row then changes before its compare-and-set
// lands, is read and merged again: it is still one conflict. Before the
// fix every round's merge was counted, so the status, the metrics and the
// checkpoint's conflicts total grew with the contention instead of the
// conflicting changes.
func TestResettledConflictCountedOnce(t *testing.T) {
	src, dst := feedOnOneServer(t)
	r := start(t, feedConfig(t, src, dst, votrScript(t), options(200, 10000, 3)))
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	ctx := context.Background()
	cand := schema.Candidates(testCandidates)[0].ID
	// The target's row differs from the source's: the change conflicts.
	pgtest.Exec(t, dst.dsn, replaceArg(`UPDATE totals SET total = total + 1000 WHERE candidate = $1`, cand))
	// A client changes the row again while the sink settles its merge.
	client := connect(t, dst.dsn)
	defer client.Close(ctx)
	tx, err := client.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE totals SET total = total + 5 WHERE candidate = $1`, cand); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, src.dsn, replaceArg(`UPDATE totals SET total = total + 7 WHERE candidate = $1`, cand))
	waitSinkBlocked(t, dst.dsn, "FOR NO KEY UPDATE")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, r, src.dsn, 2*time.Minute)
	if got := queryInt(t, dst.dsn, `SELECT total FROM totals WHERE candidate = $1`, cand); got != 1000+5+7 {
		t.Errorf("total %d, want %d", got, 1000+5+7)
	}
	if st := r.s.Status(); st.Conflicts != 1 {
		t.Errorf("status %+v: one conflicting change counted %d times", st, st.Conflicts)
	}
	feed := schema.FeedName(src.id, dst.id)
	if n := queryInt(t, dst.dsn, `SELECT conflicts FROM votr.checkpoints WHERE feed = $1`, feed); n != 1 {
		t.Errorf("checkpoint counts %d conflicts, want 1", n)
	}
}
