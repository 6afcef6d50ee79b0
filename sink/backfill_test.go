package sink

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/schema"
)

// exportSlot creates the feed's slot on a replication connection with an
// exported snapshot; the snapshot lives until the returned close is called.
func exportSlot(t testing.TB, src region, dst int) (Snapshot, func()) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(src.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "database"
	ctx := context.Background()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, schema.Slot(src.db, dst), "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		conn.Close(ctx)
		t.Fatalf("create slot with exported snapshot: %v", err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		t.Fatal(err)
	}
	return Snapshot{Name: res.SnapshotName, ConsistentPoint: lsn}, func() { conn.Close(ctx) }
}

// hubWithVotes makes a server with a hub (region 0) holding votes worker
// transactions (random, from seed) and an empty spoke 3.
func hubWithVotes(t *testing.T, votes int, seed uint64) (srv *localpg.Server, src, dst region) {
	t.Helper()
	srv = pgtest.Start(t)
	src, dst = newRegion(t, srv, 0), newRegion(t, srv, 3)
	ctx := context.Background()
	conn := connect(t, src.dsn)
	defer conn.Close(ctx)
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for range votes {
		if err := vote(ctx, conn, rng, 3); err != nil {
			t.Fatal(err)
		}
	}
	return srv, src, dst
}

// A backfill taken while the source keeps committing meets the slot's
// stream with no gap and no overlap: once the sink has streamed the rest,
// the target equals the source, and not one streamed change met a row the
// copy had already brought (an overlap) or lacked one it needed (a gap) —
// either would have been a conflict. The target's own earlier ballots are
// merged with the copy, not overwritten.
func TestBackfillMeetsStream(t *testing.T) {
	srv, src, dst := hubWithVotes(t, 300, 1)
	ctx := context.Background()

	stop := make(chan struct{})
	wait := writers(t, src.dsn, 2, 7, stop, 2*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	snap, closeSnap := exportSlot(t, src, dst.id)
	cfg := feedConfig(t, src, dst, votrScript(t), options(1000, 500, 0))
	var reports []BackfillProgress
	res, err := Backfill(ctx, cfg, snap, func(p BackfillProgress) { reports = append(reports, p) })
	closeSnap()
	if err != nil {
		t.Fatalf("backfill: %v", err)
	}
	if res.Rows == 0 || res.Tables["public.ballots"] == 0 || res.Checkpoint != snap.ConsistentPoint-1 {
		t.Errorf("backfill result %+v (consistent point %s)", res, snap.ConsistentPoint)
	}
	if len(reports) < 3 || reports[len(reports)-1].Rows != res.Rows || reports[0].Estimate <= 0 {
		t.Errorf("progress reports: %d, last %+v", len(reports), reports[len(reports)-1])
	}
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.checkpoints WHERE feed = '0:3' AND source_lsn = $1::pg_lsn`, res.Checkpoint.String()); got != 1 {
		t.Errorf("checkpoint not at %s", res.Checkpoint)
	}

	r := start(t, cfg)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	txns := wait()
	waitCaughtUp(t, r, src.dsn, time.Minute)
	st := r.s.Status()
	r.stop(t)
	if txns == 0 || st.Txns == 0 {
		t.Fatalf("the source committed %d transactions during the test, the sink applied %d", txns, st.Txns)
	}
	if st.Conflicts != 0 {
		t.Errorf("%d streamed changes conflicted with the copy: the copy and the stream overlap or leave a gap", st.Conflicts)
	}
	checkInvariant(t, dst.dsn)
	srcBallots := queryInt(t, src.dsn, `SELECT count(*) FROM ballots`)
	if got := queryInt(t, dst.dsn, `SELECT count(*) FROM ballots`); got != srcBallots {
		t.Errorf("target holds %d ballots, want the source's %d", got, srcBallots)
	}
	if a, b := digest(t, src.dsn), digest(t, dst.dsn); a != b {
		t.Errorf("target differs from the source:\n%s\n%s", a, b)
	}

	// A target with ballots of its own: the copy is merged with them (the
	// totals counters add up), nothing of the target's is overwritten.
	other := newRegion(t, srv, 4)
	oconn := connect(t, other.dsn)
	rng := rand.New(rand.NewPCG(5, 6))
	for range 20 {
		if err := vote(ctx, oconn, rng, 2); err != nil {
			t.Fatal(err)
		}
	}
	oconn.Close(ctx)
	own := queryInt(t, other.dsn, `SELECT count(*) FROM ballots`)
	snap, closeSnap = exportSlot(t, src, other.id)
	res, err = Backfill(ctx, feedConfig(t, src, other, votrScript(t), DefaultOptions()), snap, nil)
	closeSnap()
	if err != nil {
		t.Fatalf("backfill into a target with its own ballots: %v", err)
	}
	if res.Conflicts == 0 {
		t.Error("the copy met the target's own totals without merging them")
	}
	checkInvariant(t, other.dsn)
	if got := queryInt(t, other.dsn, `SELECT count(*) FROM ballots`); got != srcBallots+own {
		t.Errorf("target holds %d ballots, want the source's %d plus its own %d", got, srcBallots, own)
	}

	// A second backfill, from a new snapshot, into a target that has it all
	// already: the merges leave every row as it is.
	before := digest(t, dst.dsn)
	pgtest.Exec(t, src.dsn, `SELECT pg_drop_replication_slot('`+schema.Slot(src.db, dst.id)+`')`)
	snap, closeSnap = exportSlot(t, src, dst.id)
	if _, err = Backfill(ctx, cfg, snap, nil); err != nil {
		t.Fatalf("second backfill: %v", err)
	}
	closeSnap()
	if after := digest(t, dst.dsn); after != before {
		t.Errorf("a second backfill changed the target:\n%s\n%s", before, after)
	}
}

// A backfill whose rows a client of the target holds locked past the
// session's lock_timeout is copied again from the same snapshot once they
// are free, rather than failing the apply that runs it.
func TestBackfillRetriesALockTimeout(t *testing.T) {
	_, src, dst := hubWithVotes(t, 50, 3)
	ctx := context.Background()

	// The slot first: its snapshot waits for open transactions to end.
	snap, closeSnap := exportSlot(t, src, dst.id)
	defer closeSnap()
	holder := connect(t, dst.dsn)
	defer holder.Close(ctx)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT * FROM totals FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	log := &testlog.Buffer{}
	cfg := feedConfig(t, src, dst, votrScript(t), options(1000, 500, 0))
	cfg.Logger = keptLogger(t, log)
	type result struct {
		res BackfillResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := Backfill(ctx, cfg, snap, nil)
		done <- result{res, err}
	}()
	waitFor(t, "the backfill to give up a wait on the locked rows", func() bool {
		return log.Count("backfill aborted by the target") > 0 || len(done) > 0
	})
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("backfill: %v\n%s", r.err, log)
	}
	if r.res.Attempts < 2 || r.res.Rows == 0 {
		t.Errorf("backfill result %+v: want the copy made again after the lock timeout", r.res)
	}
	if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
		t.Errorf("target differs from source after the backfill:\n got %s\nwant %s", got, want)
	}
}
