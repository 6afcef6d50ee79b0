package sink

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/internal/testlog"
	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/script"
)

const testCandidates = 16

// region is a votr region database made for a test.
type region struct {
	id  int
	db  string
	dsn string
	srv *localpg.Server
}

func newRegion(t testing.TB, srv *localpg.Server, id int) region {
	t.Helper()
	db := fmt.Sprintf("votr_%d", id)
	dsn := pgtest.CreateDB(t, srv, db)
	pgtest.Exec(t, dsn, schema.Create(id)...)
	ctx := context.Background()
	conn := connect(t, dsn)
	defer conn.Close(ctx)
	if err := conn.SendBatch(ctx, schema.Seed(testCandidates)).Close(); err != nil {
		t.Fatalf("seed %s: %v", db, err)
	}
	return region{id: id, db: db, dsn: dsn, srv: srv}
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	return conn
}

// createSlot makes the slot of feed src → dst.
func createSlot(t testing.TB, src region, dst int) {
	t.Helper()
	pgtest.Exec(t, src.dsn, fmt.Sprintf("SELECT pg_create_logical_replication_slot('%s', 'pgoutput')", schema.Slot(src.db, dst)))
}

// feedOnOneServer is how most feed tests begin: a fresh server holding
// region 1 (the source) and the hub (the target), and the slot of feed 1:0.
func feedOnOneServer(t testing.TB) (src, dst region) {
	t.Helper()
	rs := regionsOnOneServer(t, []int{1, 0}, [2]int{1, 0})
	return rs[0], rs[1]
}

// regionsOnOneServer makes a fresh server holding a region for each of ids
// (returned in that order), then the slot of each feed, given as its
// source and target region ids, in the order given.
func regionsOnOneServer(t testing.TB, ids []int, feeds ...[2]int) []region {
	t.Helper()
	srv := pgtest.Start(t)
	byID := make(map[int]region, len(ids))
	rs := make([]region, 0, len(ids))
	for _, id := range ids {
		r := newRegion(t, srv, id)
		byID[id] = r
		rs = append(rs, r)
	}
	for _, f := range feeds {
		src, ok := byID[f[0]]
		if !ok {
			t.Fatalf("feed %d:%d: no region %d", f[0], f[1], f[0])
		}
		createSlot(t, src, f[1])
	}
	return rs
}

func testLogger(t testing.TB) *slog.Logger { return loggerTo(tWriter{t}) }

// keptLogger logs to the test's log and into kept, which the test may
// search while the sink runs.
func keptLogger(t testing.TB, kept *testlog.Buffer) *slog.Logger {
	return loggerTo(io.MultiWriter(tWriter{t}, kept))
}

func loggerTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func votrScript(t testing.TB) *script.Program {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	p, err := script.Compile(filepath.Join(filepath.Dir(file), "..", "scripts", "votr.ts"))
	if err != nil {
		t.Fatalf("compile votr.ts: %v", err)
	}
	return p
}

// options are the default options with the given batch sizes and retries.
func options(batchTxns, batchRows, retries int) Options {
	o := DefaultOptions()
	o.BatchTxns, o.BatchRows, o.Retries = batchTxns, batchRows, retries
	return o
}

func feedConfig(t testing.TB, src, dst region, prog *script.Program, opts Options) Config {
	return Config{
		SourceID: src.id, TargetID: dst.id, SourceDB: src.db, TargetDB: dst.db,
		SourceDSN: src.dsn, TargetDSN: dst.dsn, Program: prog, Options: opts,
		Logger: testLogger(t),
	}
}

// running is a sink running in the background.
type running struct {
	s      *Sink
	cancel context.CancelFunc
	done   chan error
}

// start runs a sink on a feed that apply has created: its checkpoint row
// is added (at 0, as apply does for a feed with nothing to copy) unless a
// backfill made it.
func start(t testing.TB, cfg Config) *running {
	t.Helper()
	return startWith(t, cfg, nil)
}

// startWith is start with the sink's resumed hook set (nil: none).
func startWith(t testing.TB, cfg Config, resumed func(checkpoint pglogrepl.LSN, originHeld bool)) *running {
	t.Helper()
	if !cfg.Discard {
		addCheckpoint(t, cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.resumed = resumed
	r := &running{s: s, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// addCheckpoint adds the feed's checkpoint row at 0, as apply does for a
// feed with nothing to copy.
func addCheckpoint(t testing.TB, cfg Config) {
	t.Helper()
	conn := connect(t, cfg.TargetDSN)
	defer conn.Close(context.Background())
	if err := CheckpointsIn(conn).Add(context.Background(), schema.FeedName(cfg.SourceID, cfg.TargetID)); err != nil {
		t.Fatal(err)
	}
}

// startCountingSessions is start with a count of the sink's sessions (each
// reads the checkpoint once when it begins).
func startCountingSessions(t testing.TB, cfg Config) (*running, *atomic.Int64) {
	t.Helper()
	var sessions atomic.Int64
	r := startWith(t, cfg, func(pglogrepl.LSN, bool) { sessions.Add(1) })
	return r, &sessions
}

func (r *running) stop(t testing.TB) error {
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("sink did not stop within 30s")
	}
	return nil
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline (the machine is busy: nothing here is timed).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// sourceLSN is the source's current WAL insert position: with
// asynchronous commits (a sink's), pg_current_wal_lsn() may still be
// before the latest commit records.
func sourceLSN(t testing.TB, dsn string) pglogrepl.LSN {
	t.Helper()
	conn := connect(t, dsn)
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(context.Background(), "SELECT pg_current_wal_insert_lsn()::text").Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// waitCaughtUp waits until the sink has processed its source's current WAL.
func waitCaughtUp(t testing.TB, r *running, srcDSN string, timeout time.Duration) {
	t.Helper()
	lsn := sourceLSN(t, srcDSN)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := r.s.WaitCaughtUp(ctx, lsn); err != nil {
		t.Fatalf("%v (status %+v)", err, r.s.Status())
	}
}

// digest is an order-independent fingerprint of a region's rows.
func digest(t testing.TB, dsn string) string {
	t.Helper()
	conn := connect(t, dsn)
	defer conn.Close(context.Background())
	var out []string
	for _, q := range []string{
		`SELECT count(*) || ':' || COALESCE(md5(string_agg(b::text, ',' ORDER BY candidate, ballot)), '') FROM ballots b`,
		`SELECT count(*) || ':' || COALESCE(md5(string_agg(x::text, ',' ORDER BY candidate)), '') FROM totals x`,
		`SELECT count(*) || ':' || COALESCE(md5(string_agg(c::text, ',' ORDER BY candidate)), '') FROM candidates c`,
	} {
		var s string
		if err := conn.QueryRow(context.Background(), q).Scan(&s); err != nil {
			t.Fatalf("digest: %v", err)
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

func queryInt(t testing.TB, dsn, q string, args ...any) int64 {
	t.Helper()
	return pgtest.QueryInt(t, dsn, q, args...)
}

// vote runs one VOTR transaction: votes for k random candidates, each
// getting 1..10 ballots and the matching totals increment.
func vote(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, k int) error {
	cands := schema.Candidates(testCandidates)
	b := &pgx.Batch{}
	for i := 0; i < k; i++ {
		c := cands[rng.IntN(len(cands))].ID
		n := 1 + rng.IntN(10)
		b.Queue(`UPDATE totals SET total = total + $2 WHERE candidate = $1`, c, n)
		b.Queue(`INSERT INTO ballots (candidate) SELECT $1 FROM generate_series(1, $2::int)`, c, n)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// writers runs n workers voting on dsn until stop is closed; it returns
// how many transactions committed.
func writers(t testing.TB, dsn string, n int, seed uint64, stop <-chan struct{}, pause time.Duration) func() int64 {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Errorf("writer connect: %v", err)
				return
			}
			defer conn.Close(ctx)
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := vote(ctx, conn, rng, 1+rng.IntN(3))
				if err != nil {
					// Concurrent sinks may deadlock with writers on totals;
					// the worker simply retries, as votr's workers do.
					if strings.Contains(err.Error(), "deadlock") || strings.Contains(err.Error(), "40001") {
						continue
					}
					t.Errorf("writer: %v", err)
					return
				}
				mu.Lock()
				total++
				mu.Unlock()
				if pause > 0 {
					time.Sleep(pause)
				}
			}
		}(w)
	}
	return func() int64 {
		wg.Wait()
		return total
	}
}

// checkInvariant asserts count(ballots) = sum(totals) per candidate.
func checkInvariant(t testing.TB, dsn string) {
	t.Helper()
	bad := queryInt(t, dsn, `SELECT count(*) FROM totals x
		WHERE x.total <> (SELECT count(*) FROM ballots b WHERE b.candidate = x.candidate)`)
	if bad != 0 {
		db := "?"
		if cfg, err := pgx.ParseConfig(dsn); err == nil {
			db = cfg.Database // not the DSN: it carries the password
		}
		t.Errorf("invariant broken for %d candidates in database %s", bad, db)
	}
}

// compileScript compiles a merge script given as source.
func compileScript(t *testing.T, src string) *script.Program {
	t.Helper()
	path := filepath.Join(t.TempDir(), "merge.ts")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	prog, err := script.Compile(path)
	if err != nil {
		t.Fatal(err)
	}
	return prog
}
