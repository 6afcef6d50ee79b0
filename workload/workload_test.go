package workload

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/schema"
)

// region makes a database on srv with region id's schema and n seeded
// candidates, and returns its DSN.
func region(t *testing.T, srv *localpg.Server, id, candidates int) string {
	t.Helper()
	return regionDB(t, srv, "votr_"+strings.ReplaceAll(t.Name(), "/", "_"), id, candidates)
}

// regionDB is region with the database's name given.
func regionDB(t *testing.T, srv *localpg.Server, name string, id, candidates int) string {
	t.Helper()
	dsn := pgtest.CreateDB(t, srv, name)
	pgtest.Exec(t, dsn, schema.Create(id)...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.SendBatch(ctx, schema.Seed(candidates)).Close(); err != nil {
		t.Fatalf("seed: %v", err)
	}
	return dsn
}

func newPool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestWorkersKeepInvariant runs three workers on eight candidates (every
// transaction fights over the same totals rows) with the validator checking
// all along, then compares what the workers counted with the database.
func TestWorkersKeepInvariant(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := region(t, srv, 1, 8)
	pool := newPool(t, dsn)
	log := testLog(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var stats Stats
	var vstats ValidatorStats
	cfg := quiet()
	cfg.CandidateUpdateEvery = 5
	var wg sync.WaitGroup
	var runErr, valErr error
	wg.Go(func() { runErr = Run(ctx, pool, 1, 3, cfg, log, &stats) })
	wg.Go(func() { valErr = RunValidator(ctx, pool, 1, 20*time.Millisecond, false, log, &vstats) })
	wg.Wait()
	if runErr != nil || valErr != nil {
		t.Fatalf("Run: %v; RunValidator: %v", runErr, valErr)
	}

	if stats.Txns.Load() < 20 {
		t.Fatalf("only %d transactions committed in 2s: the workers are stuck", stats.Txns.Load())
	}
	if vstats.Checks.Load() < 10 {
		t.Errorf("validator ran %d checks in 2s, want >= 10", vstats.Checks.Load())
	}
	if v := vstats.Violations.Load(); v != 0 {
		t.Errorf("validator saw %d violations while workers ran, want 0", v)
	}
	if n := stats.Unknown.Load(); n != 0 {
		t.Errorf("%d transactions with unknown outcome without any outage", n)
	}
	got := map[string]int64{
		"count(ballots)":       pgtest.QueryInt(t, dsn, `SELECT count(*) FROM ballots`),
		"ballots with src 1":   pgtest.QueryInt(t, dsn, `SELECT count(*) FROM ballots WHERE src = 1`),
		"sum(total)":           pgtest.QueryInt(t, dsn, `SELECT sum(total) FROM totals`),
		"sum of clock n":       pgtest.QueryInt(t, dsn, `SELECT COALESCE(sum((whence->'1'->>'n')::bigint), 0) FROM totals`),
		"committed[1]":         stats.Committed()[1],
		"candidate versions-1": pgtest.QueryInt(t, dsn, `SELECT sum(version - 1) FROM candidates`),
	}
	want := map[string]int64{
		"count(ballots)":       stats.Ballots.Load(),
		"ballots with src 1":   stats.Ballots.Load(),
		"sum(total)":           stats.Ballots.Load(),
		"sum of clock n":       stats.Ballots.Load(),
		"committed[1]":         stats.Ballots.Load(),
		"candidate versions-1": stats.CandidateUpdates.Load(),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("database vs worker stats:\n got %v\nwant %v", got, want)
	}
	if stats.CandidateUpdates.Load() == 0 {
		t.Errorf("no candidate updated in %d transactions with CandidateUpdateEvery=5", stats.Txns.Load())
	}
	vs, err := Validate(context.Background(), pool)
	if err != nil || len(vs) != 0 {
		t.Errorf("final Validate = %v, %v; want no violation", vs, err)
	}
	t.Logf("%d txns, %d ballots, %d candidate updates, %d retries, %d checks",
		stats.Txns.Load(), stats.Ballots.Load(), stats.CandidateUpdates.Load(), stats.Retries.Load(), vstats.Checks.Load())
}

// TestValidateFindsViolations writes behind the triggers' back (as a broken
// sink would) and expects each violation with the right numbers.
func TestValidateFindsViolations(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := region(t, srv, 1, 4)
	cs := schema.Candidates(4)
	pool := newPool(t, dsn)
	ctx := context.Background()

	tests := []struct {
		name string
		sql  []string
		want []Violation
	}{
		{"consistent after seeding", nil, nil},
		{
			name: "ballot without its total",
			sql:  []string{`INSERT INTO ballots (candidate) VALUES ('` + cs[0].ID + `')`},
			want: []Violation{{Candidate: cs[0].ID, Name: cs[0].Name, Ballots: 1, Total: 0}},
		},
		{
			name: "total without its ballots",
			sql:  []string{`UPDATE totals SET total = total + 3 WHERE candidate = '` + cs[2].ID + `'`},
			want: []Violation{
				{Candidate: cs[0].ID, Name: cs[0].Name, Ballots: 1, Total: 0},
				{Candidate: cs[2].ID, Name: cs[2].Name, Ballots: 0, Total: 3},
			},
		},
		{
			name: "candidate missing its totals row",
			sql: []string{
				`DELETE FROM totals WHERE candidate = '` + cs[1].ID + `'`,
				`INSERT INTO ballots (candidate) SELECT '` + cs[1].ID + `' FROM generate_series(1, 2)`,
			},
			want: []Violation{
				{Candidate: cs[0].ID, Name: cs[0].Name, Ballots: 1, Total: 0},
				{Candidate: cs[1].ID, Name: cs[1].Name, Ballots: 2, Total: 0},
				{Candidate: cs[2].ID, Name: cs[2].Name, Ballots: 0, Total: 3},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.sql) > 0 {
				pgtest.Exec(t, dsn, append([]string{`SET ` + schema.SinkSetting + ` = on`}, tc.sql...)...)
			}
			got, err := Validate(ctx, pool)
			if err != nil {
				t.Fatal(err)
			}
			for i := range got {
				// The snapshot read is named (fail-fast prints it); its
				// value is the server's to choose.
				if got[i].Snapshot == "" {
					t.Errorf("violation %v names no snapshot", got[i])
				}
				got[i].Snapshot = ""
			}
			slices.SortFunc(tc.want, func(a, b Violation) int { return strings.Compare(a.Candidate, b.Candidate) })
			if !reflect.DeepEqual(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Errorf("Validate:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}

	// The loop counts and keeps going while the violations stay.
	var vstats ValidatorStats
	lctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := RunValidator(lctx, pool, 1, 50*time.Millisecond, false, testLog(t), &vstats); err != nil {
		t.Fatal(err)
	}
	checks := vstats.Checks.Load()
	if checks < 2 || vstats.LastViolations.Load() != 3 || vstats.Violations.Load() != 3*checks {
		t.Errorf("validator stats: checks %d, last %d, total %d; want >= 2 checks with 3 violations each",
			checks, vstats.LastViolations.Load(), vstats.Violations.Load())
	}
}

// TestPlainSQLIsStamped writes as any psql user would and checks the clocks
// the triggers leave, so such writes replicate like the workers' own.
func TestPlainSQLIsStamped(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := region(t, srv, 3, 2)
	c := schema.Candidates(2)[1].ID
	tests := []struct {
		name  string
		sql   []string
		query string
		want  string // whence and src as JSON
	}{
		{"seed carries no region's clock", nil,
			`SELECT json_build_object('whence', whence, 'src', src) FROM totals WHERE candidate = '` + c + `'`,
			`{"whence": {}, "src": 0}`},
		{"ballot insert", []string{`INSERT INTO ballots (candidate, ballot) VALUES ('` + c + `', '00000000-0000-0000-0000-000000000001')`},
			`SELECT json_build_object('whence', whence, 'src', src) FROM ballots WHERE ballot = '00000000-0000-0000-0000-000000000001'`,
			`{"whence": {"3": 1}, "src": 3}`},
		{"ballot insert cannot forge a clock", []string{`INSERT INTO ballots (candidate, ballot, whence, src) VALUES ('` + c + `', '00000000-0000-0000-0000-000000000002', '{"9": 5}', 9)`},
			`SELECT json_build_object('whence', whence, 'src', src) FROM ballots WHERE ballot = '00000000-0000-0000-0000-000000000002'`,
			`{"whence": {"3": 1}, "src": 3}`},
		{"two total increments", []string{
			`UPDATE totals SET total = total + 1 WHERE candidate = '` + c + `'`,
			`UPDATE totals SET total = total + 2 WHERE candidate = '` + c + `'`},
			`SELECT json_build_object('total', total, 'whence', whence, 'src', src) FROM totals WHERE candidate = '` + c + `'`,
			`{"total": 3, "whence": {"3": {"c": 2, "n": 3}}, "src": 3}`},
		{"candidate update", []string{`UPDATE candidates SET mood = 'smug', version = version + 1 WHERE candidate = '` + c + `'`},
			`SELECT json_build_object('version', version, 'whence', whence, 'src', src) FROM candidates WHERE candidate = '` + c + `'`,
			`{"version": 2, "whence": {"3": 1}, "src": 3}`},
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pgtest.Exec(t, dsn, tc.sql...)
			var raw []byte
			if err := conn.QueryRow(ctx, tc.query).Scan(&raw); err != nil {
				t.Fatal(err)
			}
			var got, want any
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatalf("row JSON %s: %v", raw, err)
			}
			if err := json.Unmarshal([]byte(tc.want), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got %s, want %s", raw, tc.want)
			}
		})
	}
}

// TestWorkerSurvivesRestart restarts the server under running workers: they
// must reconnect and go on, and what they counted must equal what is stored.
func TestWorkerSurvivesRestart(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := region(t, srv, 1, 16)
	pool := newPool(t, dsn)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stats Stats
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, pool, 1, 2, paced(2*time.Millisecond), testLog(t), &stats)
	}()
	waitFor(t, "first transactions", func() bool { return stats.Txns.Load() >= 20 })

	for _, mode := range []string{"fast", "immediate"} {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Minute)
		if err := srv.Restart(rctx, mode); err != nil {
			rcancel()
			t.Fatalf("restart %s: %v", mode, err)
		}
		rcancel()
		before := stats.Txns.Load()
		waitFor(t, "transactions after the "+mode+" restart", func() bool { return stats.Txns.Load() >= before+20 })
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(stopGrace + 5*time.Second):
		t.Fatal("Run did not return after cancel")
	}

	if stats.Outages.Load() < 1 {
		t.Errorf("Outages = %d, want >= 1 after restarts", stats.Outages.Load())
	}
	if n := stats.Unknown.Load(); n != 0 {
		t.Errorf("%d commits with unknown outcome: the workers should have asked the server", n)
	}
	count := pgtest.QueryInt(t, dsn, `SELECT count(*) FROM ballots`)
	sum := pgtest.QueryInt(t, dsn, `SELECT sum(total) FROM totals`)
	if count != stats.Ballots.Load() || sum != count {
		t.Errorf("after restarts: %d ballots, sum(total) %d; workers committed %d", count, sum, stats.Ballots.Load())
	}
	t.Logf("%d txns, %d ballots, %d retries, %d outages", stats.Txns.Load(), stats.Ballots.Load(), stats.Retries.Load(), stats.Outages.Load())
}

// TestRunStopsPromptly checks that cancelling stops every worker with a
// nil error and that rate limiting holds the pace.
func TestRunStopsPromptly(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := region(t, srv, 1, 8)
	pool := newPool(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var stats Stats
	start := time.Now()
	if err := Run(ctx, pool, 1, 4, quiet(), nil, &stats, WithRateLimit(50)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Run took %s to stop after a 1s context", d)
	}
	// 50 txn/s for 1s: allow scheduling slack but not a free run.
	if n := stats.Txns.Load(); n < 20 || n > 60 {
		t.Errorf("%d transactions in 1s at a 50/s limit", n)
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	srv := pgtest.Start(t)
	empty := pgtest.CreateDB(t, srv, "votr_empty")
	pgtest.Exec(t, empty, schema.Create(1)...)
	seeded := region(t, srv, 1, 2)
	tests := []struct {
		name    string
		dsn     string
		workers int
		cfg     Options
		want    string
	}{
		{"no workers", seeded, 0, quiet(), "need at least 1 worker"},
		{"negative max votes", seeded, 1, with(func(o *Options) { o.MaxVotes = -1 }), "maxVotes = -1"},
		{"negative max candidates", seeded, 1, with(func(o *Options) { o.MaxCandidates = -2 }), "maxCandidates = -2"},
		{"negative interval", seeded, 1, paced(-time.Second), "interval = -1s"},
		{"unseeded region", empty, 1, quiet(), "no candidates to vote for"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := Run(ctx, newPool(t, tc.dsn), 1, tc.workers, tc.cfg, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	ids := make([]string, 0, 6)
	for _, c := range schema.Candidates(6) {
		ids = append(ids, c.ID)
	}
	slices.Sort(ids)
	tests := []struct {
		name                string
		maxCands, maxVotes  int
		wantMaxK, wantMaxN  int
		updateEvery         int
		wantUpdatesSometime bool
	}{
		{"capped by candidates", 10, 3, 6, 3, 0, false},
		{"single candidate", 1, 1, 1, 1, 1, true},
		{"defaults", DefaultOptions().MaxCandidates, DefaultOptions().MaxVotes, 6, DefaultOptions().MaxVotes, 4, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &worker{ids: ids, cfg: Options{MaxCandidates: tc.maxCands, MaxVotes: tc.maxVotes, CandidateUpdateEvery: tc.updateEvery},
				rng: rand.New(rand.NewPCG(1, 2))}
			updates := 0
			for range 500 {
				p := w.plan()
				if len(p.votes) < 1 || len(p.votes) > tc.wantMaxK {
					t.Fatalf("plan has %d candidates, want 1..%d", len(p.votes), tc.wantMaxK)
				}
				if !slices.IsSortedFunc(p.votes, func(a, b vote) int { return strings.Compare(a.candidate, b.candidate) }) {
					t.Fatalf("votes not in candidate order (lock order): %v", p.votes)
				}
				for i, v := range p.votes {
					if v.n < 1 || v.n > int64(tc.wantMaxN) {
						t.Fatalf("%d votes, want 1..%d", v.n, tc.wantMaxN)
					}
					if i > 0 && p.votes[i-1].candidate == v.candidate {
						t.Fatalf("candidate %s picked twice", v.candidate)
					}
				}
				if p.update != "" {
					updates++
					if !slices.ContainsFunc(p.votes, func(v vote) bool { return v.candidate == p.update }) {
						t.Fatalf("updates candidate %s it does not vote for", p.update)
					}
				}
			}
			if (updates > 0) != tc.wantUpdatesSometime {
				t.Errorf("%d candidate updates in 500 plans, want some: %v", updates, tc.wantUpdatesSometime)
			}
		})
	}
}

// TestPlanOriginalShape: with ballotsPerTxn every plan casts exactly that
// many ballots, dealt round-robin (each candidate gets ⌊b/k⌋ or ⌈b/k⌉) over
// 1..min(b, maxCandidates, candidates) distinct candidates in ascending order.
func TestPlanOriginalShape(t *testing.T) {
	ids := make([]string, 0, 20)
	for _, c := range schema.Candidates(20) {
		ids = append(ids, c.ID)
	}
	tests := []struct {
		name                string
		ballots, maxCands   int
		candidates, wantMax int
	}{
		{"defaults", DefaultOptions().BallotsPerTxn, DefaultOptions().MaxCandidates, 20, 10},
		{"fewer candidates than ballots", 10, 10, 4, 4},
		{"maxCandidates caps", 7, 3, 20, 3},
		{"one ballot", 1, 10, 20, 1},
		{"more ballots than candidates per txn", 25, 10, 20, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &worker{ids: ids[:tc.candidates], rng: rand.New(rand.NewPCG(3, 4)),
				cfg: Options{BallotsPerTxn: tc.ballots, MaxCandidates: tc.maxCands, MaxVotes: 1000}}
			seenK := map[int]bool{}
			for range 2000 {
				p := w.plan()
				k := len(p.votes)
				if k < 1 || k > tc.wantMax {
					t.Fatalf("plan has %d candidates, want 1..%d", k, tc.wantMax)
				}
				seenK[k] = true
				if p.ballots() != int64(tc.ballots) {
					t.Fatalf("plan casts %d ballots, want exactly %d: %v", p.ballots(), tc.ballots, p.votes)
				}
				lo, hi := int64(tc.ballots/k), int64((tc.ballots+k-1)/k)
				for i, v := range p.votes {
					if v.n < lo || v.n > hi {
						t.Fatalf("candidate gets %d of %d ballots over %d candidates, want %d..%d (round-robin)", v.n, tc.ballots, k, lo, hi)
					}
					if i > 0 && strings.Compare(p.votes[i-1].candidate, v.candidate) >= 0 {
						t.Fatalf("votes not in strictly ascending candidate order: %v", p.votes)
					}
				}
			}
			if len(seenK) != tc.wantMax {
				t.Errorf("saw %d distinct candidate counts in 2000 plans, want every one of 1..%d", len(seenK), tc.wantMax)
			}
		})
	}
}

// TestEveryTxnCastsBallotsPerTxn runs the default workers against
// PostgreSQL and groups the ballots by the transaction that inserted them
// (xmin): every committed transaction must hold exactly ballotsPerTxn
// ballots, and the totals must still add up.
func TestEveryTxnCastsBallotsPerTxn(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := region(t, srv, 1, 12)
	pool := newPool(t, dsn)
	cfg := quiet()
	if cfg.BallotsPerTxn != 10 {
		t.Fatalf("default ballotsPerTxn = %d, want the original's 10", cfg.BallotsPerTxn)
	}
	var stats Stats
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, pool, 1, 3, cfg, testLog(t), &stats) }()
	deadline := time.Now().Add(2 * time.Minute)
	for stats.Txns.Load() < 50 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if stats.Txns.Load() < 50 {
		t.Fatalf("only %d transactions committed", stats.Txns.Load())
	}
	txns := pgtest.QueryInt(t, dsn, `SELECT count(DISTINCT xmin::text) FROM ballots`)
	ballots := pgtest.QueryInt(t, dsn, `SELECT count(*) FROM ballots`)
	odd := pgtest.QueryInt(t, dsn, `SELECT count(*) FROM (SELECT xmin::text FROM ballots GROUP BY 1 HAVING count(*) <> 10) o`)
	wide := pgtest.QueryInt(t, dsn, `SELECT count(*) FROM (SELECT xmin::text FROM ballots GROUP BY 1 HAVING count(DISTINCT candidate) NOT BETWEEN 1 AND 10) o`)
	if odd != 0 || wide != 0 {
		t.Errorf("%d transactions do not hold exactly 10 ballots, %d vote for more than 10 candidates", odd, wide)
	}
	if txns != stats.Txns.Load() || ballots != 10*txns || ballots != stats.Ballots.Load() {
		t.Errorf("database: %d ballots in %d transactions; workers: %d ballots in %d transactions; want 10 per transaction",
			ballots, txns, stats.Ballots.Load(), stats.Txns.Load())
	}
	if sum := pgtest.QueryInt(t, dsn, `SELECT sum(total) FROM totals`); sum != ballots {
		t.Errorf("sum(total) = %d, want count(ballots) = %d", sum, ballots)
	}
	if vs, err := Validate(context.Background(), pool); err != nil || len(vs) != 0 {
		t.Errorf("Validate = %v, %v; want no violation", vs, err)
	}
	t.Logf("%d transactions, %d ballots", txns, ballots)
}

func TestBackoff(t *testing.T) {
	for attempt := range 40 {
		for _, j := range []float64{0, 0.5, 0.999} {
			d := backoff(attempt, j)
			if d <= 0 || d > backoffCap {
				t.Fatalf("backoff(%d, %v) = %s, want in (0, %s]", attempt, j, d, backoffCap)
			}
		}
	}
	if backoff(0, 0) >= backoff(5, 0) {
		t.Errorf("backoff does not grow: %s then %s", backoff(0, 0), backoff(5, 0))
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestResolveCommitOutcome asks the server about transactions the way a
// worker does after losing its connection before it learned the outcome:
// finished ones, one never sent, and ones still running when resolve asks
// (it must wait for them, then report what they did).
func TestResolveCommitOutcome(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := region(t, srv, 1, 1)
	pool := newPool(t, dsn)
	ctx := context.Background()
	cand := schema.Candidates(1)[0].ID
	w := &worker{pool: pool, log: testLog(t), health: &health{log: testLog(t), stats: &Stats{}}, rng: rand.New(rand.NewPCG(1, 1))}
	// open starts a transaction that inserts a marker ballot and returns
	// it with what a worker knows when the answer is lost.
	open := func() (pgx.Tx, *ambiguousCommit) {
		id, err := newUUID()
		if err != nil {
			t.Fatal(err)
		}
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ballots (candidate, ballot) VALUES ($1, $2)`, cand, id); err != nil {
			t.Fatal(err)
		}
		return tx, &ambiguousCommit{ballot: vote{candidate: cand, n: 1}, id: id}
	}
	end := func(tx pgx.Tx, commit bool) {
		var err error
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, commit := range []bool{true, false} {
		want := map[bool]string{true: "committed", false: "aborted"}[commit]
		tx, amb := open()
		end(tx, commit)
		if got := w.resolve(ctx, amb); got != want {
			t.Errorf("finished (commit %v): resolve = %q, want %q", commit, got, want)
		}

		// Still running when resolve asks: resolve waits on the marker's
		// key until the transaction ends.
		tx, amb = open()
		got := make(chan string, 1)
		go func() { got <- w.resolve(ctx, amb) }()
		waitFor(t, "resolve to wait on the running transaction", func() bool {
			var n int
			err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO public.ballots%'`).Scan(&n)
			return err == nil && n > 0
		})
		select {
		case g := <-got:
			t.Fatalf("running (commit %v): resolve answered %q before the transaction ended", commit, g)
		default:
		}
		end(tx, commit)
		if g := <-got; g != want {
			t.Errorf("running (commit %v): resolve = %q, want %q", commit, g, want)
		}
	}

	// Still running and never to end by itself (its connection lost
	// before the end of its pipeline): resolve ends its server process,
	// so it did not commit.
	tx, amb := open()
	pg := tx.Conn().PgConn()
	amb.pid, amb.port = int(pg.PID()), -1
	if a, ok := pg.Conn().LocalAddr().(*net.TCPAddr); ok {
		amb.port = a.Port
	}
	if got := w.resolve(ctx, amb); got != "aborted" {
		t.Errorf("stuck: resolve = %q, want aborted", got)
	}
	if err := tx.Commit(ctx); err == nil {
		t.Errorf("stuck: the transaction's session survived resolve and committed")
	}

	// Never reached the server.
	id, err := newUUID()
	if err != nil {
		t.Fatal(err)
	}
	if got := w.resolve(ctx, &ambiguousCommit{ballot: vote{candidate: cand, n: 1}, id: id}); got != "aborted" {
		t.Errorf("never sent: resolve = %q, want aborted", got)
	}
	// resolve's probes leave nothing behind.
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM ballots`).Scan(&n); err != nil || n != 2 {
		t.Errorf("ballots after resolving = %d (%v), want the 2 committed markers", n, err)
	}
}

// TestCastIsAllOrNothing: a transaction whose later share fails (here a
// candidate without a totals row) commits nothing, though its statements
// go in one round trip without BEGIN.
func TestCastIsAllOrNothing(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := region(t, srv, 1, 2)
	pool := newPool(t, dsn)
	ctx := context.Background()
	cands := schema.Candidates(2)
	ids := []string{cands[0].ID, cands[1].ID}
	slices.Sort(ids)
	if _, err := pool.Exec(ctx, `DELETE FROM totals WHERE candidate = $1`, ids[1]); err != nil {
		t.Fatal(err)
	}
	w := &worker{pool: pool, log: testLog(t), health: &health{log: testLog(t), stats: &Stats{}}, rng: rand.New(rand.NewPCG(1, 1))}
	err := w.attempt(ctx, plan{votes: []vote{{candidate: ids[0], n: 3}, {candidate: ids[1], n: 2}}})
	if classify(err) != fatal || !strings.Contains(err.Error(), "has no row in totals") {
		t.Fatalf("attempt = %v, want the fatal missing-totals error", err)
	}
	var ballots, total int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM ballots), (SELECT coalesce(sum(total), 0) FROM totals)`).Scan(&ballots, &total); err != nil {
		t.Fatal(err)
	}
	if ballots != 0 || total != 0 {
		t.Errorf("after the failed transaction: %d ballots, sum(total) %d; want nothing committed", ballots, total)
	}
	// And a good one commits whole, its marker ballot among its ballots.
	if err := w.attempt(ctx, plan{votes: []vote{{candidate: ids[0], n: 3}}}); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM ballots), (SELECT sum(total) FROM totals)`).Scan(&ballots, &total); err != nil {
		t.Fatal(err)
	}
	if ballots != 3 || total != 3 {
		t.Errorf("after a good transaction: %d ballots, sum(total) %d; want 3 and 3", ballots, total)
	}
}

func TestDefinitelyNotCommitted(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"server ERROR", &pgconn.PgError{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "40001"}, true},
		// A backend terminated right after committing answers FATAL.
		{"server FATAL", &pgconn.PgError{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P01"}, false},
		{"connection lost", io.ErrUnexpectedEOF, false},
		{"commit rolled back", pgx.ErrTxCommitRollback, false},
		// pgx reports a lost connection after COMMIT was sent as a
		// "conn closed" error that claims to be safe to retry.
		{"claims safe to retry", safeToRetryErr{}, false},
	}
	for _, tc := range tests {
		if got := definitelyNotCommitted(tc.err); got != tc.want {
			t.Errorf("%s: definitelyNotCommitted = %v, want %v", tc.name, got, tc.want)
		}
	}
}

type safeToRetryErr struct{}

func (safeToRetryErr) Error() string     { return "conn closed" }
func (safeToRetryErr) SafeToRetry() bool { return true }

func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		want errorKind
	}{
		{&pgconn.PgError{Code: "40001"}, conflict},
		{&pgconn.PgError{Code: "40P01"}, conflict},
		{fmt.Errorf("update total: %w", &pgconn.PgError{Code: "40P01"}), conflict},
		{&pgconn.PgError{Code: "57P01"}, outage},
		{&pgconn.PgError{Code: "08006"}, outage},
		{&pgconn.PgError{Code: "53300"}, outage},
		{io.ErrUnexpectedEOF, outage},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, outage},
		{&pgconn.PgError{Code: "42P01"}, fatal},
		{&fatalError{errors.New("no totals row")}, fatal},
	}
	for _, tc := range tests {
		if got := classify(tc.err); got != tc.want {
			t.Errorf("classify(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// quiet is the default options without the pause and the candidate updates,
// as the zero knobs used to mean.
func quiet() Options { return paced(0) }

// paced is quiet with the given pause after each transaction.
func paced(interval time.Duration) Options {
	return with(func(o *Options) { o.Interval, o.CandidateUpdateEvery = interval, 0 })
}

// with is the default options changed by set.
func with(set func(*Options)) Options {
	o := DefaultOptions()
	set(&o)
	return o
}

// TestBudgetStopsWorkers: two regions' workers share one budget of 237
// ballots (not a multiple of ballotsPerTxn); Run returns by itself once it
// is spent, and the regions hold exactly 237 ballots between them.
func TestBudgetStopsWorkers(t *testing.T) {
	srv := pgtest.Start(t)
	dsns := []string{regionDB(t, srv, "votr_budget_1", 1, 12), regionDB(t, srv, "votr_budget_2", 2, 12)}
	const n = 237
	b := NewBudget(n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(dsns))
	stats := make([]Stats, len(dsns))
	for i, dsn := range dsns {
		pool := newPool(t, dsn)
		wg.Go(func() { errs[i] = Run(ctx, pool, i+1, 3, quiet(), testLog(t), &stats[i], WithBudget(b)) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("the workers did not stop by themselves when the budget was spent")
	}
	select {
	case <-b.Spent():
	default:
		t.Error("Spent not closed after the workers stopped")
	}
	var total int64
	for i, dsn := range dsns {
		if errs[i] != nil {
			t.Fatalf("Run region %d: %v", i+1, errs[i])
		}
		got := pgtest.QueryInt(t, dsn, `SELECT count(*) FROM ballots`)
		if got != stats[i].Ballots.Load() {
			t.Errorf("region %d holds %d ballots, its workers committed %d", i+1, got, stats[i].Ballots.Load())
		}
		if sum := pgtest.QueryInt(t, dsn, `SELECT sum(total) FROM totals`); sum != got {
			t.Errorf("region %d: sum(total) = %d, count(ballots) = %d", i+1, sum, got)
		}
		total += got
	}
	if total != n || b.Left() != 0 {
		t.Errorf("%d ballots cast in all, %d left in the budget; want exactly %d and 0", total, b.Left(), n)
	}
}

func TestPlanCut(t *testing.T) {
	mk := func(ns ...int64) plan {
		p := plan{}
		for i, n := range ns {
			p.votes = append(p.votes, vote{candidate: fmt.Sprint(i), n: n})
		}
		return p
	}
	tests := []struct {
		name string
		in   []int64
		to   int64
		want []int64
	}{
		{"no cut", []int64{4, 3, 3}, 10, []int64{4, 3, 3}},
		{"trim last", []int64{4, 3, 3}, 9, []int64{4, 3, 2}},
		{"drop last", []int64{4, 3, 3}, 7, []int64{4, 3}},
		{"drop and trim", []int64{4, 3, 3}, 5, []int64{4, 1}},
		{"one ballot", []int64{4, 3, 3}, 1, []int64{1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := mk(tc.in...)
			p.cut(tc.to)
			var got []int64
			for _, v := range p.votes {
				got = append(got, v.n)
			}
			if !slices.Equal(got, tc.want) || p.ballots() != tc.to {
				t.Errorf("cut(%v, %d) = %v, want %v", tc.in, tc.to, got, tc.want)
			}
		})
	}
}
