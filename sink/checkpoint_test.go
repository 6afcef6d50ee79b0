package sink

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/schema"
)

// The checkpoint store moves a feed's checkpoint only forward, and a
// sink's write only from where its session left it; a backfill's write
// creates the row or moves it forward, never back.
func TestCheckpointsMoveOnlyForward(t *testing.T) {
	srv := pgtest.Start(t)
	dst := newRegion(t, srv, 0)
	conn := connect(t, dst.dsn)
	defer conn.Close(context.Background())
	ctx := context.Background()

	// write runs one checkpoint write in its own transaction, as a
	// sink's commit (prev set) or a backfill's (prev "").
	write := func(feed, lsn, prev string) error {
		sql, args := backfillSQL, advanceArgs(feed, []byte(lsn), []byte("2026-01-01 00:00:00Z"), groupStats{txns: 1}, nil)
		if prev != "" {
			sql, args = advanceSQL, advanceArgs(feed, []byte(lsn), []byte("2026-01-01 00:00:00Z"), groupStats{txns: 1}, []byte(prev))
		}
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			return err
		}
		if err := conn.PgConn().ExecParams(ctx, sql, args, nil, nil, nil).Read().Err; err != nil {
			_, _ = conn.Exec(ctx, "ROLLBACK")
			return err
		}
		_, err := conn.Exec(ctx, "COMMIT")
		return err
	}
	at := func(feed string) string {
		rows := pgtest.Query(t, dst.dsn, `SELECT source_lsn::text FROM votr.checkpoints WHERE feed = $1`, feed)
		if len(rows) == 0 {
			return "none"
		}
		return rows[0]
	}
	for _, c := range []struct {
		name, feed, lsn, prev string // prev "": a backfill's write
		refused               bool
		want                  string
	}{
		{"a sink cannot create a feed's row", "1:0", "0/10", "0/0", true, "none"},
		{"a backfill creates it", "1:0", "0/100", "", false, "0/100"},
		{"a sink moves it forward from where it left it", "1:0", "0/200", "0/100", false, "0/200"},
		{"not backwards", "1:0", "0/150", "0/200", true, "0/200"},
		{"not to where it is", "1:0", "0/200", "0/200", true, "0/200"},
		{"not from where another session left it", "1:0", "0/300", "0/100", true, "0/200"},
		{"a backfill behind a running sink leaves it", "1:0", "0/180", "", false, "0/200"},
		{"a backfill ahead moves it", "1:0", "0/250", "", false, "0/250"},
	} {
		err := write(c.feed, c.lsn, c.prev)
		switch {
		case c.refused && !isCheckpointRefusal(err):
			t.Errorf("%s: write of %s got %v, want the refusal", c.name, c.lsn, err)
		case !c.refused && err != nil:
			t.Errorf("%s: write of %s: %v", c.name, c.lsn, err)
		}
		if got := at(c.feed); got != c.want {
			t.Errorf("%s: checkpoint at %s, want %s", c.name, got, c.want)
		}
	}
	// Only the writes that moved it counted their transactions.
	if n := queryInt(t, dst.dsn, `SELECT txns FROM votr.checkpoints WHERE feed = '1:0'`); n != 3 {
		t.Errorf("txns = %d, want 3 (one per write that moved the checkpoint)", n)
	}
}

// A sink started on a feed whose slot exists but whose checkpoint apply
// has not written (an apply killed between creating the slot and
// committing the copy) refuses to run, saying to run apply, and creates
// nothing: streaming from the slot would skip the copy for good.
func TestSinkRefusesFeedApplyDidNotFinish(t *testing.T) {
	src, dst := feedOnOneServer(t)
	s, err := New(feedConfig(t, src, dst, votrScript(t), DefaultOptions()))
	if err != nil {
		t.Fatal(err)
	}
	// A deadline only so that a sink that streams anyway ends the test.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = s.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "run `votr apply`") || !strings.Contains(err.Error(), "has no checkpoint") {
		t.Fatalf("Run on a feed apply did not finish: %v, want a refusal saying to run votr apply", err)
	}
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.checkpoints`); n != 0 {
		t.Errorf("the refused sink left %d checkpoint rows", n)
	}
}

// A session reads its checkpoint only once it holds the feed's replication
// origin: while another connection holds it (an earlier session whose last
// commit is still in flight), the sink waits and reads nothing.
func TestCheckpointReadWithOriginHeld(t *testing.T) {
	src, dst := feedOnOneServer(t)
	ctx := context.Background()

	// The previous session's connection, still holding the origin.
	prev := connect(t, dst.dsn)
	defer prev.Close(ctx)
	origin := schema.Origin(dst.db, src.id)
	if _, err := prev.Exec(ctx, `SELECT pg_replication_origin_create($1)`, origin); err != nil {
		t.Fatal(err)
	}
	if _, err := prev.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, origin); err != nil {
		t.Fatal(err)
	}

	type read struct {
		lsn  pglogrepl.LSN
		held bool
	}
	reads := make(chan read, 100)
	r := startWith(t, feedConfig(t, src, dst, votrScript(t), DefaultOptions()), func(lsn pglogrepl.LSN, held bool) {
		reads <- read{lsn, held}
	})
	for deadline := time.Now().Add(time.Minute); !strings.Contains(r.s.Status().LastError, "already active"); {
		if time.Now().After(deadline) {
			t.Fatalf("the sink did not try for the origin held elsewhere: %+v", r.s.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case rd := <-reads:
		t.Fatalf("the checkpoint was read (%s) while another connection held the feed's origin", rd.lsn)
	default:
	}
	if _, err := prev.Exec(ctx, `SELECT pg_replication_origin_session_reset()`); err != nil {
		t.Fatal(err)
	}
	select {
	case rd := <-reads:
		if !rd.held {
			t.Errorf("checkpoint read without the origin held by the reading session")
		}
	case <-time.After(time.Minute):
		t.Fatalf("no checkpoint read within a minute of the origin's release: %+v", r.s.Status())
	}
	conn := connect(t, src.dsn)
	defer conn.Close(ctx)
	if err := vote(ctx, conn, rand.New(rand.NewPCG(1, 1)), 2); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, r, src.dsn, time.Minute)
	if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
		t.Errorf("target differs from source:\n got %s\nwant %s", got, want)
	}
}

// A commit of an earlier session that lands after a new session read the
// checkpoint (possible without origin privileges) is not applied a second
// time: the new session's first commit finds the checkpoint moved, rolls
// back and resumes from it.
func TestLateCommitOfEarlierSession(t *testing.T) {
	src, dst := feedOnOneServer(t)
	ctx := context.Background()
	slot := schema.Slot(src.db, dst.id)
	// No script: a transaction applied twice shows as conflicts.
	cfg := feedConfig(t, src, dst, nil, DefaultOptions())
	conn := connect(t, src.dsn)
	defer conn.Close(ctx)
	rng := rand.New(rand.NewPCG(3, 4))
	votes := func(n int) {
		for range n {
			if err := vote(ctx, conn, rng, 2); err != nil {
				t.Fatal(err)
			}
		}
	}
	type row struct{ lsn, txns, conflicts string }
	checkpoint := func() row {
		r := pgtest.Query(t, dst.dsn, `SELECT source_lsn::text || ' ' || txns || ' ' || conflicts FROM votr.checkpoints WHERE feed = '1:0'`)
		f := strings.Fields(r[0])
		return row{f[0], f[1], f[2]}
	}

	votes(3)
	r := start(t, cfg)
	waitCaughtUp(t, r, src.dsn, time.Minute)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	before := checkpoint()
	// The slot as the earlier session leaves it: it applies two more
	// transactions but dies before confirming them.
	pgtest.Exec(t, src.dsn, `SELECT pg_copy_logical_replication_slot('`+slot+`', 'kept')`)
	votes(2)
	r = start(t, cfg)
	waitCaughtUp(t, r, src.dsn, time.Minute)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	after := checkpoint()
	pgtest.Exec(t, src.dsn, `SELECT pg_drop_replication_slot('`+slot+`')`,
		`SELECT pg_copy_logical_replication_slot('kept', '`+slot+`')`, `SELECT pg_drop_replication_slot('kept')`)
	// The new session reads the checkpoint as it was before that commit;
	// the commit lands right after. Its refusal ends the session at once:
	// it is not a change's failure, to be applied again change by change.
	logged := &testlog.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(tWriter{t}, logged), nil))
	pgtest.Exec(t, dst.dsn, `UPDATE votr.checkpoints SET source_lsn = '`+before.lsn+`', txns = `+before.txns+`, conflicts = `+before.conflicts+` WHERE feed = '1:0'`)
	var mu sync.Mutex
	var reads []string
	r = startWith(t, cfg, func(lsn pglogrepl.LSN, _ bool) {
		mu.Lock()
		reads = append(reads, lsn.String())
		first := len(reads) == 1
		mu.Unlock()
		if first {
			// On the sink's goroutine: errors are reported, not fatal.
			late, err := pgx.Connect(ctx, dst.dsn)
			if err == nil {
				_, err = late.Exec(ctx, `UPDATE votr.checkpoints SET source_lsn = $1::pg_lsn, txns = $2::bigint, conflicts = $3::bigint WHERE feed = '1:0'`,
					after.lsn, after.txns, after.conflicts)
				late.Close(ctx)
			}
			if err != nil {
				t.Errorf("late commit: %v", err)
			}
		}
	})
	votes(1)
	waitCaughtUp(t, r, src.dsn, time.Minute)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	final := checkpoint()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("checkpoint before %v, after the late commit %v, final %v; sessions read %v", before, after, final, reads)
	if len(reads) < 2 || reads[0] != before.lsn || reads[1] != after.lsn {
		t.Errorf("sessions read %v, want %s, then %s after the refused commit", reads, before.lsn, after.lsn)
	}
	if logged.Count("is no longer at") == 0 {
		t.Errorf("no session reported the checkpoint's refusal")
	}
	if logged.Count("a change failed") != 0 {
		t.Errorf("the refused commit was taken for a failed change and its group applied again change by change")
	}
	if final.conflicts != after.conflicts {
		t.Errorf("conflicts %s, want %s: the late commit's transactions were applied again", final.conflicts, after.conflicts)
	}
	if want := atoi(t, after.txns) + 1; atoi(t, final.txns) != want {
		t.Errorf("txns %s, want %d: the late commit's transactions were counted again", final.txns, want)
	}
	if got, want := digest(t, dst.dsn), digest(t, src.dsn); got != want {
		t.Errorf("target differs from source:\n got %s\nwant %s", got, want)
	}
}

func atoi(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A restarted sink whose checkpoint lies below its slot's confirmed
// position (the feed confirmed echoes it skipped, which do not move the
// checkpoint) never moves the slot back: PostgreSQL 15 takes whatever
// position a status update reports.
func TestRestartNeverMovesSlotBack(t *testing.T) {
	src, dst := feedOnOneServer(t)
	ctx := context.Background()
	slot := schema.Slot(src.db, dst.id)
	cfg := feedConfig(t, src, dst, votrScript(t), DefaultOptions())
	confirmed := func() pglogrepl.LSN {
		lsn, err := pglogrepl.ParseLSN(pgtest.Query(t, src.dsn, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot)[0])
		if err != nil {
			t.Fatal(err)
		}
		return lsn
	}
	waitConfirmed := func(lsn pglogrepl.LSN) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); confirmed() < lsn; {
			if time.Now().After(deadline) {
				t.Fatalf("slot not confirmed past %s within a minute (at %s)", lsn, confirmed())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	conn := connect(t, src.dsn)
	defer conn.Close(ctx)
	if err := vote(ctx, conn, rng, 2); err != nil {
		t.Fatal(err)
	}
	r := start(t, cfg)
	waitCaughtUp(t, r, src.dsn, time.Minute)

	// Echo-only traffic: transactions the reverse feed applied to the
	// source, tagged with its origin.
	echo := connect(t, src.dsn)
	defer echo.Close(ctx)
	origin := schema.Origin(src.db, dst.id)
	for _, q := range []string{`SELECT pg_replication_origin_create($1)`, `SELECT pg_replication_origin_session_setup($1)`} {
		if _, err := echo.Exec(ctx, q, origin); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		if err := vote(ctx, echo, rng, 2); err != nil {
			t.Fatal(err)
		}
	}
	end := sourceLSN(t, src.dsn)
	waitCaughtUp(t, r, src.dsn, time.Minute)
	waitConfirmed(end)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	ahead := confirmed()
	ck, err := pglogrepl.ParseLSN(pgtest.Query(t, dst.dsn, `SELECT source_lsn::text FROM votr.checkpoints WHERE feed = '1:0'`)[0])
	if err != nil {
		t.Fatal(err)
	}
	if ck >= ahead {
		t.Fatalf("setup: checkpoint %s is not below the slot's confirmed position %s", ck, ahead)
	}

	// Restart, watching the slot until a real transaction is confirmed.
	stopWatch := make(chan struct{})
	lowest := make(chan pglogrepl.LSN, 1)
	watcher := connect(t, src.dsn)
	defer watcher.Close(ctx)
	go func() {
		low := ahead
		for {
			var text string
			if err := watcher.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&text); err == nil {
				if l, err := pglogrepl.ParseLSN(text); err == nil && l < low {
					low = l
				}
			}
			select {
			case <-stopWatch:
				lowest <- low
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	r = start(t, cfg)
	for deadline := time.Now().Add(time.Minute); !r.s.Status().Connected; {
		if time.Now().After(deadline) {
			t.Fatalf("restarted sink not connected within a minute: %+v", r.s.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := vote(ctx, conn, rng, 2); err != nil {
		t.Fatal(err)
	}
	real := sourceLSN(t, src.dsn)
	waitCaughtUp(t, r, src.dsn, time.Minute)
	waitConfirmed(real)
	close(stopWatch)
	low := <-lowest
	t.Logf("checkpoint %s, slot confirmed at %s before the restart, lowest seen after it %s", ck, ahead, low)
	if low < ahead {
		t.Errorf("the restarted sink moved the slot back from %s to %s", ahead, low)
	}
}
