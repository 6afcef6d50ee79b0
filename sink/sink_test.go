package sink

import (
	"math/rand/v2"

	"context"
	"github.com/votr-dev/votr/schema"
	"testing"
	"time"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/internal/pgtest"
)

// A stream of VOTR transactions replicates from a spoke to the hub and
// the two converge, row for row.
func TestReplicateConverges(t *testing.T) {
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	createSlot(t, src, dst.id)

	for _, batch := range []int{200, 1} {
		stop := make(chan struct{})
		done := writers(t, src.dsn, 3, uint64(batch), stop, 0)
		r := start(t, feedConfig(t, src, dst, votrScript(t), config.SinkOptions{BatchTxns: batch, BatchRows: 10000, Retries: 3}))
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
	if _, err := tx.Exec(ctx, `INSERT INTO ballots (candidate) SELECT $1 FROM generate_series(1, $2::int)`, c, n); err != nil {
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
	cfg := feedConfig(t, src, dst, nil, config.SinkOptions{BatchTxns: 20, BatchRows: 1000})
	bigVote(t, src.dsn, 20000) // applied in chunks: kills land inside it
	stop := make(chan struct{})
	done := writers(t, src.dsn, 2, 7, stop, 2*time.Millisecond)
	rng := rand.New(rand.NewPCG(1, 2))
	var window int
	ctx := context.Background()
	for i := 0; i < 9; i++ {
		r := start(t, cfg)
		time.Sleep(time.Duration(150+rng.IntN(600)) * time.Millisecond)
		switch i % 3 {
		case 0:
		case 1:
			pgtest.Exec(t, dst.dsn, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'votr-sink'`)
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
