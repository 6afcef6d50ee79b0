package sink

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/internal/pgtest"
)

// TestFlushWALFlushesAsyncCommits: once a caught-up feed's group has
// committed asynchronously, flushWAL must make the target's WAL durable
// past it at once, not when the WAL writer next wakes (the next hop's
// walsender sends only flushed WAL). The WAL writer is slowed to 10 s so
// that only flushWAL can have flushed; a transaction that writes no WAL of
// its own commits asynchronously whatever synchronous_commit says, which is
// what this test caught.
func TestFlushWALFlushesAsyncCommits(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := pgtest.CreateDB(t, srv, "flush")
	pgtest.Exec(t, dsn,
		`ALTER SYSTEM SET wal_writer_delay = '10s'`,
		`ALTER SYSTEM SET wal_writer_flush_after = '16MB'`,
		`SELECT pg_reload_conf()`,
		`CREATE TABLE t (x int)`)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	writer := connect(t, dsn)
	defer writer.Close(ctx)
	flusher := connect(t, dsn)
	defer flusher.Close(ctx)
	a := &applier{pg: flusher.PgConn()}
	// The first commits may wake a hibernating WAL writer, which flushes
	// them; later ones wait for its 10 s delay.
	for i := range 5 {
		if end, flushed, err := flushAfterAsyncCommit(ctx, writer, a, i); err != nil {
			t.Fatal(err)
		} else if flushed != "" {
			t.Fatalf("commit %d: WAL flushed to %s after flushWAL, short of the asynchronous commit ending at %s", i, flushed, end)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRelays: a target relays (and so is flushed for the next hop) only
// when a slot on its database feeds a region other than the feed's source.
func TestRelays(t *testing.T) {
	src, dst := feedOnOneServer(t) // region 1 → hub; the slot of 1:0 is on region 1
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := connect(t, dst.dsn)
	defer conn.Close(ctx)
	a := &applier{s: &Sink{cfg: Config{SourceID: src.id, TargetDB: dst.db}}, conn: conn}
	steps := []struct {
		name string
		slot int // a slot to add on the target, feeding this region (-1: none)
		want bool
	}{
		{"no slot on the target", -1, false},
		{"only the reverse feed's slot (a spoke)", src.id, false},
		{"a slot to another region (a hub)", 2, true},
	}
	for _, st := range steps {
		if st.slot >= 0 {
			createSlot(t, dst, st.slot)
		}
		a.relay.at = time.Time{} // look again
		if got := a.relays(ctx); got != st.want {
			t.Errorf("%s: relays = %v, want %v", st.name, got, st.want)
		}
	}
}

// TestFlushWALDoesNotWaitForStandbys: the flush is for the target's own
// walsenders, which send what is flushed locally; it must not wait for a
// synchronous standby too. A target whose synchronous_standby_names names a
// standby that is not connected would otherwise hold the feed in its first
// flush for as long as the standby stays away.
func TestFlushWALDoesNotWaitForStandbys(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := pgtest.CreateDB(t, srv, "flush")
	// (The table first: from then on a synchronous commit waits forever.)
	pgtest.Exec(t, dsn,
		`CREATE TABLE t (x int)`,
		`ALTER SYSTEM SET synchronous_standby_names = 'votr_absent_standby'`,
		`SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		pgtest.Exec(t, dsn, `ALTER SYSTEM RESET synchronous_standby_names`, `SELECT pg_reload_conf()`)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	writer := connect(t, dsn)
	defer writer.Close(ctx)
	flusher := connect(t, dsn)
	defer flusher.Close(ctx)
	var standbys string
	if err := flusher.QueryRow(ctx, `SHOW synchronous_standby_names`).Scan(&standbys); err != nil || standbys == "" {
		t.Fatalf("synchronous_standby_names not in effect (%q, %v)", standbys, err)
	}
	a := &applier{pg: flusher.PgConn()}
	end, flushed, err := flushAfterAsyncCommit(ctx, writer, a, 1)
	if err != nil {
		t.Fatalf("flushWAL with an absent synchronous standby: %v", err)
	}
	if flushed != "" {
		t.Fatalf("WAL not flushed past the asynchronous commit ending at %s (flushed to %s)", end, flushed)
	}
}

// flushAfterAsyncCommit commits a row into t asynchronously on writer, runs
// a's flushWAL, and returns where that commit's WAL ends and, if the WAL is
// not flushed past it, where it is flushed to ("" when it is).
func flushAfterAsyncCommit(ctx context.Context, writer *pgx.Conn, a *applier, x int) (end, short string, err error) {
	if _, err := writer.Exec(ctx, `SET synchronous_commit = off`); err != nil {
		return "", "", err
	}
	if _, err := writer.Exec(ctx, `INSERT INTO t VALUES ($1)`, x); err != nil {
		return "", "", err
	}
	if err := writer.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&end); err != nil {
		return "", "", err
	}
	if err := a.flushWAL(ctx); err != nil {
		return end, "", err
	}
	var ok bool
	var flushed string
	if err := writer.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn, pg_current_wal_flush_lsn()::text`, end).Scan(&ok, &flushed); err != nil {
		return end, "", err
	}
	if ok {
		return end, "", nil
	}
	return end, flushed, nil
}

// TestIdleGroupFlushesAfterItsLocks: at a target that relays, the group that
// empties the queue is flushed in the round trip of its own commit, so the
// next hop does not wait for the WAL writer; but its COMMIT must not be the
// one that waits for the flush. A transaction keeps its row locks until its
// commit is flushed, and at a hub the other inbound feeds queue on those
// rows (the hot totals) for as long as the flush takes. A deferred trigger
// records the synchronous_commit each applying transaction commits with;
// the WAL writer is slowed to 10 s so that only the sink can have flushed.
func TestIdleGroupFlushesAfterItsLocks(t *testing.T) {
	src, dst := feedOnOneServer(t)
	createSlot(t, dst, 2) // the hub feeds region 2: it relays
	pgtest.Exec(t, dst.dsn,
		`ALTER SYSTEM SET wal_writer_delay = '10s'`,
		`ALTER SYSTEM SET wal_writer_flush_after = '16MB'`,
		`SELECT pg_reload_conf()`,
		`CREATE SCHEMA seen`,
		`CREATE TABLE seen.commits (setting text NOT NULL)`,
		`CREATE FUNCTION seen.record() RETURNS trigger LANGUAGE plpgsql AS $$
		 BEGIN INSERT INTO seen.commits VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$`,
		`CREATE CONSTRAINT TRIGGER seen_commit AFTER UPDATE ON public.totals
		 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION seen.record()`,
		`ALTER TABLE public.totals ENABLE ALWAYS TRIGGER seen_commit`)
	r := start(t, feedConfig(t, src, dst, votrScript(t), DefaultOptions()))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	writer := connect(t, src.dsn)
	defer writer.Close(ctx)
	reader := connect(t, dst.dsn)
	defer reader.Close(ctx)
	rng := rand.New(rand.NewPCG(7, 11))
	// The first commits may wake a hibernating WAL writer, which flushes
	// them; later ones wait for its 10 s delay.
	for i := range 5 {
		groups := r.s.groups.Load()
		if err := vote(ctx, writer, rng, 1); err != nil {
			t.Fatal(err)
		}
		want := queryInt(t, src.dsn, `SELECT count(*) FROM ballots`)
		// The WAL position is read with the count that first shows the
		// vote, so that no later WAL (the server's own) is counted in.
		var end string
		waitFor(t, fmt.Sprintf("vote %d applied", i), func() bool {
			var n int64
			if err := reader.QueryRow(ctx, `SELECT count(*), pg_current_wal_insert_lsn()::text FROM ballots`).Scan(&n, &end); err != nil {
				t.Fatal(err)
			}
			return n == want
		})
		// The sink counts a group once its round trip (and any flush
		// after it) has returned: from then on the WAL must be flushed
		// past it. (Were the machine slow enough for the WAL writer's
		// 10 s to pass meanwhile, the check would pass without the sink.)
		waitFor(t, fmt.Sprintf("vote %d's group counted", i), func() bool { return r.s.groups.Load() > groups })
		var flushed bool
		if err := reader.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn`, end).Scan(&flushed); err != nil {
			t.Fatal(err)
		}
		if !flushed {
			t.Fatalf("vote %d: the hub's WAL is not flushed past the group that applied it (ending before %s) once the sink is done with it: its next hop waits for the WAL writer", i, end)
		}
	}
	rows, err := reader.Query(ctx, `SELECT setting, count(*) FROM seen.commits GROUP BY 1 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	counts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct {
		Setting string
		N       int64
	}])
	if err != nil {
		t.Fatal(err)
	}
	if len(counts) != 1 || counts[0].Setting != "off" {
		t.Fatalf("the groups committed with synchronous_commit %v, want only off: a group's COMMIT that waits for the flush holds its rows locked meanwhile", counts)
	}
}

// TestGroupCommitted: a batch that queueCommit ended and that an error cut
// short tells from the results it returned whether the group had committed
// (the error came after the commit). pgx leaves no result for a statement
// that failed without returning rows.
func TestGroupCommitted(t *testing.T) {
	tag := func(s string) *pgconn.Result { return &pgconn.Result{CommandTag: pgconn.NewCommandTag(s)} }
	lsn := &pgconn.Result{CommandTag: pgconn.NewCommandTag("SELECT 1"), Rows: [][][]byte{{[]byte("0/1")}}}
	cases := []struct {
		name string
		res  []*pgconn.Result
		want bool
	}{
		{"the flush failed", []*pgconn.Result{tag("INSERT 0 1"), tag("UPDATE 1"), tag("COMMIT"), lsn, tag("BEGIN"), {Err: &pgconn.PgError{Code: "XX000"}}}, true},
		{"the connection ended after the group's commit", []*pgconn.Result{tag("UPDATE 1"), tag("COMMIT")}, true},
		{"the connection ended after the flush's commit", []*pgconn.Result{tag("UPDATE 1"), tag("COMMIT"), lsn, tag("BEGIN"), lsn, tag("COMMIT")}, true},
		{"a write failed", []*pgconn.Result{tag("INSERT 0 1")}, false},
		{"nothing returned", nil, false},
		{"the group's transaction had failed", []*pgconn.Result{tag("UPDATE 1"), tag("ROLLBACK"), lsn, tag("BEGIN"), lsn}, false},
		{"the group's transaction had failed, the flush committed", []*pgconn.Result{tag("UPDATE 1"), tag("ROLLBACK"), lsn, tag("BEGIN"), lsn, tag("COMMIT")}, false},
	}
	for _, c := range cases {
		if got := groupCommitted(c.res); got != c.want {
			t.Errorf("%s: groupCommitted = %v, want %v", c.name, got, c.want)
		}
	}
}
