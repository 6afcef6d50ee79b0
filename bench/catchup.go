package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/localpg"
	"github.com/votr-dev/votr/schema"
)

// Part 1, catch-up: one backlog on a source server, applied by each
// consumer in turn into its own database on a target server.
//
// Every consumer's slot (and the native subscriptions, disabled) exists
// before the backlog is written, so each one starts from the same position
// and reads the same stream. A run is timed from the moment its slot turns
// active on the source (the consumer has connected and asked for the
// stream: startup and the native launcher's wake-up are excluded, and
// shown apart) to the moment a final marker transaction is visible on the
// target (native, sink) or counted by the reader (ceiling).

const (
	catchupSourceID = 1
	catchupSourceDB = "votr_1"
	// Target region ids of the sink feeds: they name the slots
	// (schema.Slot) and checkpoints; the target databases are apart anyway.
	sinkTargetID     = 0
	sinkSyncTargetID = 2
	readerTargetID   = 8
	ceilingTargetID  = 9
)

type consumerKind int

const (
	native consumerKind = iota
	votrSink
	ceiling
	libReader // pglogrepl's parser, discarding: a reference for the ceiling
)

// variant is one consumer of the backlog.
type variant struct {
	name   string
	kind   consumerKind
	sync   bool   // target commits wait for the WAL flush
	slot   string // on the source
	sub    string // native: the subscription
	target region // native, sink: where it applies
	feedID int    // sink, ceiling: target id of the feed
}

// runResult is one variant applying one round's backlog.
type runResult struct {
	startup, elapsed time.Duration
	rows, txns       int64
	benchCPU         time.Duration // this process: the sink, or only polling for native
	walsenderCPU     time.Duration
	applyCPU         time.Duration // native apply worker, or the sink's target sessions
	// otherCPU is what else the machine's CPUs did meanwhile: the
	// servers' background processes, and anything not part of the bench.
	otherCPU time.Duration
	checked  string // what verification found
}

func (r runResult) rowsPerSec() float64 { return float64(r.rows) / r.elapsed.Seconds() }
func (r runResult) txnsPerSec() float64 { return float64(r.txns) / r.elapsed.Seconds() }

// backlog is one round's source transactions.
type backlog struct {
	txns, rows, ballots int64
	markerID            string
	markerVersion       int
	// markerFloor is the source's WAL insert position inside the marker
	// transaction: its commit record lies after it, so a slot confirmed
	// past markerFloor has had the whole backlog consumed.
	markerFloor pglogrepl.LSN
	digest      string
}

type catchupOptions struct {
	txns, clients, rounds, candidates int
	cpuprofile                        string
}

type catchup struct {
	opt      catchupOptions
	env      *env
	src      *localpg.Server
	dst      *localpg.Server
	source   region
	variants []*variant
	results  map[string][]runResult
	profiled bool
}

// catchupSummary carries the ratios to the last lines of the output.
type catchupSummary struct {
	catchUp, synchronous, ceiling float64
	reader                        float64 // sink / pglogrepl reader
}

func runCatchup(ctx context.Context, e *env, opt catchupOptions) (catchupSummary, error) {
	sum := catchupSummary{math.NaN(), math.NaN(), math.NaN(), math.NaN()}
	c := &catchup{opt: opt, env: e, results: map[string][]runResult{}}
	if err := c.setup(ctx); err != nil {
		return sum, err
	}
	defer func() {
		ctx := context.WithoutCancel(ctx)
		_ = e.lab.drop(ctx, c.dst)
		_ = e.lab.drop(ctx, c.src)
	}()
	for round := 1; round <= opt.rounds; round++ {
		b, err := c.generate(ctx, round)
		if err != nil {
			return sum, err
		}
		// Each round starts with another variant, so none always runs
		// first (or last) after the backlog is written.
		for i := range c.variants {
			v := c.variants[(i+round-1)%len(c.variants)]
			r, err := c.run(ctx, v, b)
			if err != nil {
				return sum, fmt.Errorf("round %d, %s: %w", round, v.name, err)
			}
			c.results[v.name] = append(c.results[v.name], r)
			e.progress("  round %d %-16s %9s rows in %6.2f s = %8s rows/s, %7s txn/s (startup %.2f s) %s",
				round, v.name, thousands(float64(r.rows)), r.elapsed.Seconds(),
				thousands(r.rowsPerSec()), thousands(r.txnsPerSec()), r.startup.Seconds(), r.checked)
		}
	}
	c.print(e.out)
	// Ratios are taken within each round (the runs of one round are
	// seconds apart, so whatever else loads the machine weighs on both
	// sides alike), then the median over the rounds.
	ratios := func(a, b string) []float64 {
		var xs []float64
		for i := range c.results[a] {
			xs = append(xs, c.results[a][i].rowsPerSec()/c.results[b][i].rowsPerSec())
		}
		return xs
	}
	rs := [][]float64{ratios("sink", "native"), ratios("sink sync", "native sync"), ratios("sink", "ceiling"), ratios("sink", "pglogrepl reader")}
	t := &table{head: []string{"round", "sink/native", "sink/native synchronous", "sink/ceiling", "sink/pglogrepl reader"}}
	for i := 0; i < opt.rounds; i++ {
		t.add(fmt.Sprint(i+1), fmt.Sprintf("%.2f", rs[0][i]), fmt.Sprintf("%.2f", rs[1][i]), fmt.Sprintf("%.2f", rs[2][i]), fmt.Sprintf("%.2f", rs[3][i]))
	}
	t.add("median", fmt.Sprintf("%.2f", median(rs[0])), fmt.Sprintf("%.2f", median(rs[1])), fmt.Sprintf("%.2f", median(rs[2])), fmt.Sprintf("%.2f", median(rs[3])))
	fmt.Fprintf(e.out, "\nRatios of rows/s within each round, and their median (the figures of the last lines):\n\n")
	t.print(e.out)
	sum.catchUp, sum.synchronous, sum.ceiling, sum.reader = median(rs[0]), median(rs[1]), median(rs[2]), median(rs[3])
	if opt.cpuprofile != "" && c.profiled {
		printProfile(ctx, e.out, opt.cpuprofile)
	}
	return sum, nil
}

func (c *catchup) setup(ctx context.Context) error {
	var err error
	if c.src, err = c.env.lab.server(ctx, "catchup-source"); err != nil {
		return err
	}
	if c.dst, err = c.env.lab.server(ctx, "catchup-target"); err != nil {
		return err
	}
	for _, srv := range []*localpg.Server{c.src, c.dst} {
		if err := execSQL(ctx, srv.DSN("postgres"), `ALTER SYSTEM SET autovacuum = off`, `SELECT pg_reload_conf()`); err != nil {
			return err
		}
	}
	if c.source, err = createRegion(ctx, c.src, catchupSourceDB, catchupSourceID, c.opt.candidates); err != nil {
		return err
	}
	c.variants = []*variant{
		{name: "native", kind: native, slot: "native_async", sub: "bench_native"},
		{name: "sink", kind: votrSink, feedID: sinkTargetID},
		{name: "ceiling", kind: ceiling, feedID: ceilingTargetID},
		{name: "pglogrepl reader", kind: libReader, feedID: readerTargetID},
		{name: "native sync", kind: native, sync: true, slot: "native_sync", sub: "bench_native_sync"},
		{name: "sink sync", kind: votrSink, sync: true, feedID: sinkSyncTargetID},
	}
	for _, v := range c.variants {
		if v.kind != native {
			v.slot = schema.Slot(catchupSourceDB, v.feedID)
		}
		if err := createSlot(ctx, c.source.dsn, v.slot); err != nil {
			return fmt.Errorf("%s: slot: %w", v.name, err)
		}
		if v.kind == ceiling || v.kind == libReader {
			continue
		}
		db := strings.ReplaceAll(v.name, " ", "_") + "_0"
		if v.target, err = createRegion(ctx, c.dst, db, 0, c.opt.candidates); err != nil {
			return err
		}
		if v.kind == votrSink {
			if err := addFeed(ctx, v.target.dsn, schema.FeedName(catchupSourceID, v.feedID)); err != nil {
				return fmt.Errorf("%s: checkpoint: %w", v.name, err)
			}
		}
		if v.kind == native {
			// The subscription uses the slot made above (so it exists
			// before the backlog) and the publication every region has.
			commit := "off" // PostgreSQL's default for subscriptions
			if v.sync {
				commit = "on"
			}
			err = execSQL(ctx, v.target.dsn, fmt.Sprintf(
				`CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s
				WITH (create_slot = false, slot_name = %s, enabled = false, copy_data = false, synchronous_commit = %s)`,
				schema.QuoteIdent(v.sub), schema.QuoteLiteral(c.src.ConnString(catchupSourceDB)), schema.QuoteIdent(schema.Publication), schema.QuoteLiteral(v.slot), commit))
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
		}
	}
	return nil
}

// generate writes one round's backlog on the source with several
// connections (asynchronous commit, as a loaded source would), one VOTR
// transaction each: a totals update and 1–10 ballots for one candidate.
// Then it commits the marker: a candidate's version bump.
func (c *catchup) generate(ctx context.Context, round int) (backlog, error) {
	start := time.Now()
	cands := schema.Candidates(c.opt.candidates)
	var b backlog
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, c.opt.clients)
	for w := 0; w < c.opt.clients; w++ {
		n := c.opt.txns / c.opt.clients
		if w < c.opt.txns%c.opt.clients {
			n++
		}
		wg.Go(func() {
			ballots, err := voteAsync(ctx, c.source.dsn, cands, n, rand.New(rand.NewPCG(uint64(round), uint64(w))))
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			b.ballots += ballots
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return b, fmt.Errorf("backlog: %w", err)
	}
	b.markerID = cands[0].ID
	var floor string
	if err := queryRow(ctx, c.source.dsn, `WITH m AS (UPDATE candidates SET version = version + 1 WHERE candidate = $1 RETURNING version)
		SELECT version, pg_current_wal_insert_lsn()::text FROM m`,
		[]any{b.markerID}, &b.markerVersion, &floor); err != nil {
		return b, fmt.Errorf("marker: %w", err)
	}
	var err error
	if b.markerFloor, err = pglogrepl.ParseLSN(floor); err != nil {
		return b, err
	}
	// Autovacuum is off on these servers (it would wake up during some
	// runs and not others); vacuum and analyze now, outside any run.
	if err := execSQL(ctx, c.source.dsn, "VACUUM ANALYZE"); err != nil {
		return b, err
	}
	b.txns = int64(c.opt.txns) + 1
	b.rows = b.ballots + int64(c.opt.txns) + 1
	if b.digest, err = digest(ctx, c.source.dsn); err != nil {
		return b, err
	}
	c.env.progress("catch-up round %d: backlog of %s txns, %s ballots, %s row changes written in %.1f s",
		round, thousands(float64(b.txns)), thousands(float64(b.ballots)), thousands(float64(b.rows)), time.Since(start).Seconds())
	return b, nil
}

// voteAsync commits n one-candidate VOTR transactions and returns the
// ballots it cast. Each is one pipelined batch (one implicit transaction).
func voteAsync(ctx context.Context, dsn string, cands []schema.Candidate, n int, rng *rand.Rand) (int64, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, err
	}
	cfg.RuntimeParams["synchronous_commit"] = "off"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ballots int64
	for i := 0; i < n; i++ {
		cand := cands[rng.IntN(len(cands))].ID
		k := 1 + rng.IntN(10)
		batch := &pgx.Batch{}
		batch.Queue(`UPDATE public.totals SET total = total + $1 WHERE candidate = $2`, k, cand)
		batch.Queue(`INSERT INTO public.ballots (candidate) SELECT $1::uuid FROM generate_series(1, $2::int)`, cand, k)
		if err := conn.SendBatch(ctx, batch).Close(); err != nil {
			return ballots, err
		}
		ballots += int64(k)
	}
	return ballots, nil
}

// run applies the round's backlog with one variant and verifies the result.
func (c *catchup) run(ctx context.Context, v *variant, b backlog) (runResult, error) {
	// Start every run from the same state: no dirty buffers to write back.
	for _, dsn := range []string{c.source.dsn, c.dst.DSN("postgres")} {
		if err := execSQL(ctx, dsn, "CHECKPOINT"); err != nil {
			return runResult{}, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	src, err := pgx.Connect(ctx, c.source.dsn)
	if err != nil {
		return runResult{}, err
	}
	defer src.Close(context.WithoutCancel(ctx))
	var r runResult
	busy0, self0 := machineBusy(), selfCPU()
	switch v.kind {
	case native:
		r, err = c.runNative(ctx, src, v, b)
	case libReader:
		r, err = c.runReader(ctx, src, v, b)
	default:
		r, err = c.runSink(ctx, src, v, b)
	}
	if err != nil {
		return r, err
	}
	if v.kind == native {
		r.benchCPU = selfCPU() - self0
	}
	r.otherCPU = max(0, machineBusy()-busy0-r.benchCPU-r.walsenderCPU-r.applyCPU)
	if v.kind == ceiling || v.kind == libReader {
		r.checked = fmt.Sprintf("(read %d txns)", r.txns)
		return r, nil
	}
	got, err := digest(ctx, v.target.dsn)
	if err != nil {
		return r, err
	}
	if err := execSQL(ctx, v.target.dsn, "VACUUM ANALYZE"); err != nil {
		return r, err
	}
	if got != b.digest {
		return r, fmt.Errorf("target %s differs from the source after the run:\n  source %s\n  target %s", v.target.db, b.digest, got)
	}
	r.checked = "(target identical)"
	return r, nil
}

func (c *catchup) print(w io.Writer) {
	fmt.Fprintf(w, "\n## 1. Catch-up: %d rounds, each a backlog of %s VOTR transactions (1 totals update + 1–10 ballots each)\n\n",
		c.opt.rounds, thousands(float64(c.opt.txns)))
	t := &table{head: []string{"variant", "rows/s (median)", "min–max", "txn/s", "seconds", "startup s",
		"bench CPU s/100k rows", "walsender CPU s/100k", "apply CPU s/100k", "other CPU s/100k"}}
	for _, v := range c.variants {
		rs := c.results[v.name]
		var rate, txn, el, su, cpu, ws, ap, ot []float64
		for _, r := range rs {
			per := 1e5 / float64(r.rows)
			rate = append(rate, r.rowsPerSec())
			txn = append(txn, r.txnsPerSec())
			el = append(el, r.elapsed.Seconds())
			su = append(su, r.startup.Seconds())
			cpu = append(cpu, r.benchCPU.Seconds()*per)
			ot = append(ot, r.otherCPU.Seconds()*per)
			ws = append(ws, r.walsenderCPU.Seconds()*per)
			ap = append(ap, r.applyCPU.Seconds()*per)
		}
		cpuText := fmt.Sprintf("%.2f", median(cpu))
		apText := "–"
		if v.kind != ceiling && v.kind != libReader {
			apText = fmt.Sprintf("%.2f", median(ap))
		}
		t.add(v.name, thousands(median(rate)), spread(rate, "%.0f"), thousands(median(txn)),
			fmt.Sprintf("%.2f", median(el)), fmt.Sprintf("%.2f", median(su)), cpuText, fmt.Sprintf("%.2f", median(ws)), apText, fmt.Sprintf("%.2f", median(ot)))
	}
	t.print(w)
	fmt.Fprintf(w, `
native = CREATE SUBSCRIPTION at its defaults (apply worker commits asynchronously); sink = votr sink, scripts/votr.ts,
default options; ceiling = the sink's own stream reader, discarding (sink.Config.Discard); pglogrepl reader = a plain
pglogrepl consumer parsing every message and discarding it (reader.go), a reference for the ceiling; "sync" = every target
commit waits for the WAL flush (native: subscription synchronous_commit = on; sink: Config.SynchronousCommit).
Time runs from the slot turning active to the marker being visible on the target.
Every native/sink run ends with the target's ballots, totals and candidates identical (md5, ordered) to the source.
"bench CPU" is this process (the sink; for native only its polling); walsender and apply CPU are the PostgreSQL
processes of that run (apply = the native apply worker, or the sink's sessions on the target); "other" is the rest of
the machine's busy time meanwhile (servers' background processes, anything else running on the machine).
`)
}

// printProfile prints where the sink's time went during the profiled run.
func printProfile(ctx context.Context, w io.Writer, path string) {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(w, "profile: %v\n", err)
		return
	}
	for _, mode := range [][]string{{"-top"}, {"-top", "-cum"}} {
		args := append([]string{"tool", "pprof", "-nodecount=10"}, mode...)
		out, err := exec.CommandContext(ctx, "go", append(args, exe, path)...).CombinedOutput()
		title := "flat"
		if len(mode) > 1 {
			title = "cumulative"
		}
		fmt.Fprintf(w, "\nCPU profile of the sink during catch-up (round 1, %s, top 10; %s):\n", title, path)
		if err != nil {
			fmt.Fprintf(w, "go tool pprof: %v\n%s", err, out)
			return
		}
		fmt.Fprint(w, string(out))
	}
}
