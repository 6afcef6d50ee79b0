package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/votr-dev/votr/workload"
)

// Part 2, steady state: hub + spokes (see topology.go) for a fixed time at
// the original demo's pace, then a search for the sustainable pace: the
// highest rate at which the feeds keep up. Each window ends by stopping
// the workers and timing convergence (part 3) and checking every region.

type steadyOptions struct {
	spokes, candidates, workers          int
	searchSteps                          int
	searchStart                          float64
	duration, step, lagBound, probeEvery time.Duration
}

// window is the workers running at one pace for a while.
type window struct {
	pace     pace
	spokes   int
	elapsed  time.Duration
	txns     int64
	ballots  int64
	retries  int64
	all      probeLags       // probes sent after the first second
	status   map[string]dist // per feed: sink.Status().Lag at each new target commit
	converge time.Duration   // last worker commit → all regions identical
	// failed says why the regions did not converge in time or did not
	// check out; the window's other figures stand, converge does not.
	failed string
	detail string             // the error behind failed
	cpu    map[string]float64 // share of the machine's CPU, by consumer
	wal    walRates           // over the same span as cpu
	waits  *waitSamples
	// deadlocks on the server during the window and its drain
	// (pg_stat_database; a session reports its counts within about a
	// second, so the run's total is read once more when the topology stops).
	deadlocks int64
	// lockRetries are the sinks' group retries caused by a lock error
	// during the window.
	lockRetries int64
	// stoppedAt is when the window was cut short because it could no
	// longer be sustained (0: it ran its full length).
	stoppedAt time.Duration
}

func (w window) txnRate() float64    { return float64(w.txns) / w.elapsed.Seconds() }
func (w window) ballotRate() float64 { return float64(w.ballots) / w.elapsed.Seconds() }

// endToEnd is the lag that bounds a pace: spoke→hub→spoke, or spoke→hub
// when there is only one spoke.
func (w window) endToEnd(l probeLags) dist {
	if w.spokes == 1 {
		return l.spokeHub
	}
	return l.spokeSpoke
}

// sustained says whether the feeds kept up at this pace, and if not why:
// after the first second, 95% of probes crossed spoke→hub→spoke within
// bound, and the regions converged within bound of the last write.
// (p95, not p99: a single lock wait of deadlock_timeout = 1 s should not
// decide it; the tables show p99 too.)
func (w window) sustained(bound time.Duration) (bool, string) {
	e2e := w.endToEnd(w.all)
	switch {
	case w.failed != "":
		return false, w.failed
	case len(e2e) == 0:
		return false, "no probe arrived"
	case w.all.missing > 0:
		return false, fmt.Sprintf("%d probe arrivals missing", w.all.missing)
	case e2e.pct(95) > bound:
		return false, fmt.Sprintf("p95 lag %s ms > %s", msec(e2e.pct(95)), bound)
	case w.converge > bound:
		return false, fmt.Sprintf("drain %s ms > %s", msec(w.converge), bound)
	}
	return true, "kept up"
}

const warmUp = time.Second

// convergeTimeout bounds the wait for convergence after a window: a pace
// the feeds cannot follow (or feeds that stop making progress) must not
// stall the bench; the window is then reported as not converged.
const convergeTimeout = 2 * time.Minute

// convText renders the convergence time, or that there was none.
func (w window) convText() string {
	if w.failed != "" {
		return "–"
	}
	return msec(w.converge)
}

// runWindow runs pace p for d, then stops the workers and measures
// convergence and checks every region.
func (t *topology) runWindow(ctx context.Context, p pace, d, probeEvery, bound time.Duration) (window, error) {
	w := window{pace: p, spokes: len(t.spokes), status: map[string]dist{}}
	probeEvery = probeInterval(probeEvery, len(t.spokes))
	d0, err := t.serverDeadlocks(ctx)
	if err != nil {
		return w, err
	}
	r0 := t.lockRetries()
	s0 := t.stats.Snapshot()
	cpu0, err := t.cpuSnapshot(ctx)
	if err != nil {
		return w, err
	}
	wal0, walAt0, err := t.walSnapshot(ctx)
	if err != nil {
		return w, err
	}
	start := time.Now()
	wctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	werr := make(chan error, 1)
	go func() { werr <- t.runWorkers(wctx, p, probeEvery) }()
	var sampled sync.WaitGroup
	sampled.Go(func() { t.sampleLag(wctx, w.status) })
	w.waits = &waitSamples{counts: map[string]map[string]int{}}
	sampled.Go(func() { t.sampleWaits(wctx, w.waits) })

	// A window whose p95 can no longer meet the bound ends early: its
	// backlog would only lengthen the drain, and the search has its answer.
	if w.stoppedAt = t.watchWindow(ctx, start, d, probeEvery, bound); ctx.Err() != nil {
		return w, ctx.Err()
	}
	cpu1, err := t.cpuSnapshot(ctx)
	if err != nil {
		return w, err
	}
	w.cpu = cpuShares(cpu0, cpu1, time.Since(start))
	wal1, walAt1, err := t.walSnapshot(ctx)
	if err != nil {
		return w, err
	}
	w.wal = walRatesOf(wal0, wal1, walAt1.Sub(walAt0))
	polls, err := t.openPollers(ctx)
	if err != nil {
		return w, err
	}
	defer polls.close(ctx)
	stopWorkers()
	if err := <-werr; err != nil {
		return w, fmt.Errorf("workers: %w", err)
	}
	last := time.Now() // every worker has returned: no commit after this
	s1 := t.stats.Snapshot()
	w.elapsed = last.Sub(start)
	w.txns, w.ballots, w.retries = s1.Txns-s0.Txns, s1.Ballots-s0.Ballots, s1.Retries-s0.Retries

	// The samplers wind down (a cancelled query can take a while) while the
	// regions are polled: their ending is not the sinks' convergence time.
	w.converge, err = t.waitConverged(ctx, polls, last, convergeTimeout)
	sampled.Wait()
	if err != nil {
		if ctx.Err() != nil {
			return w, ctx.Err()
		}
		w.failed, w.detail = fmt.Sprintf("did not converge within %s", convergeTimeout), err.Error()
	} else if err := t.verify(ctx); err != nil {
		w.failed, w.detail = "regions differ after converging", err.Error()
	}
	// The last stamps are collected every probePoll; give them a moment.
	sleepCtx(ctx, 2*probePoll)
	w.all = t.probes.lags(start.Add(warmUp), last, t.hub.id, t.spokes)
	d1, err := t.serverDeadlocks(ctx)
	if err != nil {
		return w, err
	}
	w.deadlocks, w.lockRetries = d1-d0, t.lockRetries()-r0
	return w, t.sinkFailure()
}

// sampleLag records each feed's lag (sink.Status) whenever the feed has
// committed again since the last look.
func (t *topology) sampleLag(ctx context.Context, out map[string]dist) {
	last := map[string]time.Time{}
	workload.Every(ctx, 10*time.Millisecond, func() bool {
		for _, f := range t.feeds {
			st := f.sink.Status()
			if !st.LastCommit.IsZero() && !st.LastCommit.Equal(last[f.name]) {
				last[f.name] = st.LastCommit
				out[f.name] = append(out[f.name], st.Lag)
			}
		}
		return true
	})
}

// waitSamples count, per kind of session, what the sessions were doing
// at each sample (pg_stat_activity): on CPU, or waiting and for what.
type waitSamples struct {
	samples int
	counts  map[string]map[string]int // role → state → sessions seen in it
}

// sampleWaits looks at the servers' sessions every 100 ms.
func (t *topology) sampleWaits(ctx context.Context, out *waitSamples) {
	var conns []*pgx.Conn
	defer func() {
		for _, c := range conns {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	for _, s := range t.servers {
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err != nil {
			return
		}
		conns = append(conns, conn)
	}
	workload.Every(ctx, 100*time.Millisecond, func() bool {
		for _, conn := range conns {
			if err := sampleSessions(ctx, conn, out); err != nil {
				return false
			}
		}
		out.samples++
		return true
	})
}

// sampleSessions adds what the sessions of conn's server are doing to out.
func sampleSessions(ctx context.Context, conn *pgx.Conn, out *waitSamples) error {
	rows, err := conn.Query(ctx, `SELECT CASE
			WHEN backend_type = 'walsender' THEN 'walsenders'
			WHEN application_name = 'votr-sink' THEN 'sink sessions'
			ELSE 'worker sessions' END,
		CASE
			WHEN state = 'idle in transaction' THEN 'idle in transaction'
			WHEN wait_event_type IS NULL THEN 'CPU'
			WHEN wait_event_type = 'Lock' THEN 'Lock:' || wait_event
			ELSE wait_event_type || ':' || wait_event END
		FROM pg_stat_activity
		WHERE pid <> pg_backend_pid() AND datname LIKE 'votr\_%'
			AND (backend_type = 'walsender' OR (backend_type = 'client backend' AND application_name <> 'votr-bench'))
			AND state NOT IN ('idle')`)
	if err != nil {
		return err
	}
	var role, state string
	_, err = pgx.ForEachRow(rows, []any{&role, &state}, func() error {
		if out.counts[role] == nil {
			out.counts[role] = map[string]int{}
		}
		out.counts[role][state]++
		return nil
	})
	return err
}

// text renders the average number of sessions per state, busiest first.
func (ws *waitSamples) text(role string) string {
	if ws == nil || ws.samples == 0 || len(ws.counts[role]) == 0 {
		return "–"
	}
	type kv struct {
		k string
		v int
	}
	var xs []kv
	for k, v := range ws.counts[role] {
		xs = append(xs, kv{k, v})
	}
	slices.SortFunc(xs, func(a, b kv) int { return b.v - a.v })
	var parts []string
	for _, x := range xs[:min(len(xs), 4)] {
		parts = append(parts, fmt.Sprintf("%.1f %s", float64(x.v)/float64(ws.samples), x.k))
	}
	return strings.Join(parts, ", ")
}

// cpuSnapshot reads the CPU used so far by this process and by every
// process of the topology's servers, by what they do.
func (t *topology) cpuSnapshot(ctx context.Context) (map[int]cpuUse, error) {
	out := map[int]cpuUse{0: {"bench process (sinks, workers)", selfCPU()}}
	for _, s := range t.servers {
		if err := serverCPU(ctx, s.DSN("postgres"), out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// serverCPU adds the CPU used so far by each process of the server at dsn
// to out.
func serverCPU(ctx context.Context, dsn string, out map[int]cpuUse) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT pid, COALESCE(backend_type, ''), COALESCE(application_name, '') FROM pg_stat_activity`)
	if err != nil {
		return err
	}
	var pid int
	var kind, app string
	_, err = pgx.ForEachRow(rows, []any{&pid, &kind, &app}, func() error {
		what := "server background"
		switch {
		case kind == "walsender":
			what = "walsenders"
		case kind == "client backend" && app == "votr-sink":
			what = "sink sessions"
		case kind == "client backend" && app == "votr-bench":
			what = "probe sessions"
		case kind == "client backend":
			what = "worker sessions"
		}
		if c, err := procCPU(pid); err == nil {
			out[pid] = cpuUse{what, c}
		}
		return nil
	})
	return err
}

type cpuUse struct {
	what string
	cpu  time.Duration
}

// cpuShares turns two snapshots into each consumer's share of the
// machine (1.0 = every core busy for the whole time).
func cpuShares(before, after map[int]cpuUse, elapsed time.Duration) map[string]float64 {
	out := map[string]float64{}
	cores := float64(numCPU())
	for pid, a := range after {
		used := a.cpu - before[pid].cpu // a process new since before started at 0
		out[a.what] += used.Seconds() / elapsed.Seconds() / cores
	}
	return out
}

var cpuOrder = []string{"bench process (sinks, workers)", "sink sessions", "walsenders", "worker sessions", "probe sessions", "server background"}

func cpuText(shares map[string]float64) string {
	var parts []string
	total := 0.0
	for _, k := range cpuOrder {
		parts = append(parts, fmt.Sprintf("%s %.0f%%", k, 100*shares[k]))
		total += shares[k]
	}
	return fmt.Sprintf("%s; total %.0f%%", strings.Join(parts, ", "), 100*total)
}

// steadyResult is what the steady part hands on: its summary lines, and
// the total rate it sustained (a starting point for the scaling search).
type steadyResult struct {
	summary []string
	// sustainedTxns is the total transactions per second of the best
	// sustained window (0: none was sustained).
	sustainedTxns float64
}

// Bounds of every search for the sustained pace (transactions per second
// per spoke).
const (
	searchFloor = 2.5
	searchTop   = 6400
	// closeEnough ends the bisection: the sustained pace is known to ±12%,
	// about as close as two runs of the same step agree on this machine.
	closeEnough = 1.25
)

func runSteady(ctx context.Context, e *env, o steadyOptions) (steadyResult, error) {
	var res steadyResult
	e.progress("steady state: hub + %d spokes, %s, %d sinks", o.spokes, e.where(), 2*o.spokes)
	t, err := startTopology(ctx, e, "steady", o.spokes, o.candidates)
	if err != nil {
		return res, err
	}
	defer t.stop()

	orig, err := t.runWindow(ctx, originalPace(), o.duration, o.probeEvery, 0)
	if err != nil {
		return res, fmt.Errorf("original pace: %w", err)
	}
	e.progress("  %s", orig.line(o.lagBound))
	if orig.failed != "" {
		return res, fmt.Errorf("original pace: %s: %s", orig.failed, orig.detail)
	}

	plan := searchPlan{start: o.searchStart, floor: searchFloor, top: searchTop, steps: o.searchSteps, closeEnough: closeEnough}
	steps, best, bad, err := t.searchPace(ctx, e, plan, o.workers, o.step, o.probeEvery, o.lagBound)
	if err != nil {
		return res, err
	}
	var bestW, badW *window
	if best >= 0 {
		bestW = &steps[best]
		res.sustainedTxns = bestW.txnRate()
	}
	if bad >= 0 {
		badW = &steps[bad]
	}

	w := e.out
	fmt.Fprintf(w, "\n## 2. Steady state: hub + %d spokes, %s, %d sinks in this process\n\n", o.spokes, e.where(), 2*o.spokes)
	all := append([]window{orig}, steps...)
	printWindows(w, all, o.lagBound, false)
	fmt.Fprintf(w, `
Lag is measured per transaction with probes (a one-ballot vote on each spoke every %s, at most %d in all per second; a deferred trigger stamps its
commit in every region): spoke→hub = commit on the spoke → commit on the hub; spoke→hub→spoke = → commit on each
other spoke. "sustained": after the first second, p95 of spoke→hub→spoke ≤ %s, and the regions converged ≤ %s
after the last write. The search runs %d worker(s) per spoke in the original's transaction shape (10 ballots), no
pause, capped at a rate per spoke: it doubles the rate while steps are sustained (halves it while they are not),
then bisects between the best sustained and the lowest failed rate until they are within %.0f%% of each other, at
most %d steps of %s; when the workers cannot reach the cap, one last step runs them uncapped ("full speed": a
cap spaces transactions evenly and never makes up a slow one's slot, so it understates their speed). Every window
ends with the full convergence report checked (digests, invariant, ballots per origin). deadlocks = pg_stat_database.deadlocks
delta on the server over the window and its drain; lock retries = the sinks' group retries caused by a lock error.
`, probeInterval(o.probeEvery, o.spokes), maxProbeRate, o.lagBound, o.lagBound, o.workers, 100*(closeEnough-1), o.searchSteps, o.step)
	fmt.Fprintf(w, "\nPer feed, at the original pace (lag in ms, p50 / p95 / p99):\n\n")
	printFeeds(w, t, orig)
	if bestW != nil {
		fmt.Fprintf(w, "\nPer feed, at the sustained pace (%s):\n\n", bestW.pace.label)
		printFeeds(w, t, *bestW)
	}
	fmt.Fprintf(w, "\nCPU (share of all %d cores) at the original pace: %s\n", numCPU(), cpuText(orig.cpu))
	if bestW != nil {
		fmt.Fprintf(w, "CPU at the sustained pace, the limit (%s): %s\n", bestW.pace.label, cpuText(bestW.cpu))
		if c, ok := costOf(*bestW, numCPU()); ok {
			fmt.Fprintf(w, "  %.1f ms per worker transaction: the CPUs allow %s ballots/s at this cost, %s without the bench process and sink sessions (%s)\n",
				c.total, thousands(c.ceiling), thousands(c.postgresCeiling), postgresCeilingNote)
		}
	}
	if badW != nil {
		fmt.Fprintf(w, "CPU at the first pace not sustained (%s): %s\n", badW.pace.label, cpuText(badW.cpu))
	}

	fmt.Fprintf(w, "\nSessions, average number in each state (pg_stat_activity every 100 ms; idle sessions left out):\n\n")
	printWaits(w, []*window{&orig, bestW, badW}, func(x *window) string { return x.pace.label })

	fmt.Fprintf(w, "\n## 3. Convergence: last worker commit → all regions identical\n\n")
	ct := &table{head: []string{"pace", "ballots/s", "converged after ms"}}
	for _, x := range all {
		ct.add(x.pace.label, thousands(x.ballotRate()), x.convText())
	}
	ct.print(w)

	sum := []string{fmt.Sprintf("steady state, original pace (%d spokes): %s ballots/s; lag p99 spoke→hub %s ms (target < 50), spoke→hub→spoke %s ms (target < 100)",
		o.spokes, thousands(orig.ballotRate()), msec(orig.all.spokeHub.pct(99)), msec(orig.endToEnd(orig.all).pct(99)))}
	if bestW != nil {
		sum = append(sum, fmt.Sprintf("sustained with %d spokes: %.0f ballots/s", o.spokes, bestW.ballotRate()))
		e2e := bestW.endToEnd(bestW.all)
		s := fmt.Sprintf("  at %s (%s txn/s in all): spoke→hub→spoke p95 %s ms, p99 %s ms; converged in %s ms",
			bestW.pace.label, thousands(bestW.txnRate()), msec(e2e.pct(95)), msec(e2e.pct(99)), msec(bestW.converge))
		if badW != nil {
			_, why := badW.sustained(o.lagBound)
			s += fmt.Sprintf("; first pace not sustained: %s (%s ballots/s reached: %s)", badW.pace.label, thousands(badW.ballotRate()), why)
		} else {
			s += "; the workers could not go faster (no cap above it failed)"
		}
		sum = append(sum, s)
	} else {
		sum = append(sum, fmt.Sprintf("sustained with %d spokes: 0 ballots/s (no step of the search was sustained)", o.spokes))
	}
	for _, x := range all {
		if x.failed != "" {
			sum = append(sum, fmt.Sprintf("PROBLEM, steady state at %s: %s: %s", x.pace.label, x.failed, x.detail))
		}
	}
	var convs []float64
	for _, x := range all {
		if ok, _ := x.sustained(o.lagBound); ok && x.failed == "" {
			convs = append(convs, float64(x.converge.Milliseconds()))
		}
	}
	if len(convs) > 0 {
		sum = append(sum, fmt.Sprintf("convergence after the last write: %s ms at the original pace, at most %.0f ms over the sustained paces (target < 1000)",
			msec(orig.converge), slices.Max(convs)))
	}

	if e.plotDir != "" {
		series := []lagSeries{
			{label: "original pace, spoke→hub", lags: orig.all.spokeHub},
		}
		if o.spokes > 1 {
			series = append(series, lagSeries{label: "original pace, spoke→hub→spoke", lags: orig.all.spokeSpoke})
		}
		if bestW != nil {
			series = append(series, lagSeries{label: fmt.Sprintf("sustained pace (%s), end to end", bestW.pace.label), lags: bestW.endToEnd(bestW.all), dashed: true})
		}
		path := filepath.Join(e.plotDir, "lag.png")
		title := fmt.Sprintf("Lag, hub + %d spokes (%s)", o.spokes, time.Now().UTC().Format("2006-01-02"))
		if err := plotLagCDF(path, title, series); err != nil {
			return res, fmt.Errorf("lag picture: %w", err)
		}
		fmt.Fprintf(w, "\nLag distribution picture: %s\n", path)
	}
	res.summary = sum
	return res, nil
}

// searchPace runs the search for the sustained pace on this topology
// (see searchPlan). It returns the windows run, the index of the best
// sustained one (highest ballots/s) and of the lowest rate above it that
// was not sustained (-1: none).
func (t *topology) searchPace(ctx context.Context, e *env, plan searchPlan, workers int, step, probeEvery, bound time.Duration) (steps []window, best, bad int, err error) {
	_, err = plan.run(func(rate float64) (trial, error) {
		p := pace{label: rateLabel(rate), workers: workers, rate: rate, cfg: workloadConfig(0)}
		if math.IsInf(rate, 1) {
			p.label, p.rate = "full speed", 0 // no cap
		}
		w, err := t.runWindow(ctx, p, step, probeEvery, bound)
		if err != nil {
			return trial{}, fmt.Errorf("%s: %w", p.label, err)
		}
		e.progress("  %s", w.line(bound))
		if w.failed != "" {
			e.progress("  %s: %s", w.failed, w.detail)
		}
		steps = append(steps, w)
		ok, _ := w.sustained(bound)
		// A window whose regions did not converge or check out leaves them
		// out of step: later windows would not mean much.
		return trial{achieved: w.txnRate() / float64(len(t.spokes)), ok: ok, stop: w.failed != ""}, nil
	})
	if err != nil {
		return nil, -1, -1, err
	}
	best, bad = bestAndWorse(steps, bound)
	return steps, best, bad, nil
}

// bestAndWorse picks the sustained window with the most ballots/s and
// the not-sustained window of the lowest cap above it (-1: none).
func bestAndWorse(ws []window, bound time.Duration) (best, bad int) {
	best, bad = -1, -1
	for i, w := range ws {
		if ok, _ := w.sustained(bound); ok && (best < 0 || w.ballotRate() > ws[best].ballotRate()) {
			best = i
		}
	}
	for i, w := range ws {
		if ok, _ := w.sustained(bound); ok || (best >= 0 && w.pace.capOf() <= ws[best].pace.capOf()) {
			continue
		}
		if bad < 0 || w.pace.capOf() < ws[bad].pace.capOf() {
			bad = i
		}
	}
	return best, bad
}

func rateLabel(rate float64) string {
	return strconv.FormatFloat(rate, 'f', -1, 64) + " txn/s per spoke"
}

func (w window) line(bound time.Duration) string {
	_, why := w.sustained(bound)
	e2e := w.endToEnd(w.all)
	if w.stoppedAt > 0 {
		why += fmt.Sprintf(" (stopped after %.0f s)", w.stoppedAt.Seconds())
	}
	return fmt.Sprintf("%-22s %6s ballots/s, p99 spoke→hub %s ms, end-to-end p95 %s ms p99 %s ms, converged in %s ms, deadlocks %d: %s",
		w.pace.label, thousands(w.ballotRate()), msec(w.all.spokeHub.pct(99)), msec(e2e.pct(95)), msec(e2e.pct(99)), w.convText(), w.deadlocks, why)
}

// printWindows tabulates windows; withSpokes adds their spoke count.
func printWindows(w io.Writer, ws []window, bound time.Duration, withSpokes bool) {
	head := []string{"pace", "workers/spoke", "s", "txn/s", "ballots/s", "spoke→hub ms p50/p95/p99",
		"spoke→hub→spoke ms p50/p95/p99", "probes", "converged ms", "deadlocks", "lock retries", "sustained"}
	if withSpokes {
		head = append([]string{"spokes"}, head...)
	}
	t := &table{head: head}
	for _, x := range ws {
		_, why := x.sustained(bound)
		if x.stoppedAt > 0 {
			why += " (stopped early)"
		}
		e2e := "–"
		if x.spokes > 1 {
			e2e = x.all.spokeSpoke.ms()
		}
		retries := fmt.Sprint(x.lockRetries)
		row := []string{x.pace.label, fmt.Sprint(x.pace.workers), fmt.Sprintf("%.0f", x.elapsed.Seconds()), thousands(x.txnRate()),
			thousands(x.ballotRate()), x.all.spokeHub.ms(), e2e, fmt.Sprint(x.all.sent), x.convText(), fmt.Sprint(x.deadlocks), retries, why}
		if withSpokes {
			row = append([]string{fmt.Sprint(x.spokes)}, row...)
		}
		t.add(row...)
	}
	t.print(w)
}

// printWaits tabulates what the sessions did in each window (nil: left out).
func printWaits(w io.Writer, ws []*window, name func(*window) string) {
	st := &table{head: []string{"window", "sink sessions", "worker sessions", "walsenders"}}
	for _, x := range ws {
		if x != nil {
			st.add(name(x), x.waits.text("sink sessions"), x.waits.text("worker sessions"), x.waits.text("walsenders"))
		}
	}
	st.print(w)
}

func printFeeds(w io.Writer, t *topology, x window) {
	tb := &table{head: []string{"feed", "probe lag ms", "sink Status().Lag ms", "commits sampled"}}
	for _, f := range t.feeds {
		tb.add(f.name, x.all.feed[f.name].ms(), x.status[f.name].ms(), fmt.Sprint(len(x.status[f.name])))
	}
	tb.print(w)
}

func numCPU() int { return runtime.NumCPU() }

// maxProbeRate caps the probes of a whole topology, per second. A probe is
// a transaction every region applies: at one per spoke every 100 ms, the
// probes of 8 spokes were 44% of the transactions at the sustained pace
// (80 of 180 per second), against 8% with 3 spokes, and the scaling curve
// measured them as much as the workload.
const maxProbeRate = 30

// probeInterval is how often each of n spokes probes: every `every`, or
// less often where n spokes would exceed maxProbeRate.
func probeInterval(every time.Duration, n int) time.Duration {
	return max(every, time.Duration(float64(time.Second)*float64(n)/maxProbeRate))
}

// watchWindow waits out a window of length d begun at start, and ends it
// early once it cannot be sustained any more: when more end-to-end probe
// arrivals are already later than bound than 5% of all the window can
// have, its p95 exceeds bound whatever comes next. It returns how long the
// window ran if it ended early, else 0. bound 0: no early end.
func (t *topology) watchWindow(ctx context.Context, start time.Time, d, probeEvery, bound time.Duration) time.Duration {
	if bound <= 0 || d <= warmUp {
		sleepCtx(ctx, time.Until(start.Add(d)))
		return 0
	}
	// At most this many arrivals count (one probe per spoke per tick, each
	// reaching every other spoke); fewer make the threshold only safer.
	n := len(t.spokes)
	pairs := int((d-warmUp)/probeEvery+1) * n * max(1, n-1)
	limit := maxLate(pairs)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	end := time.NewTimer(time.Until(start.Add(d)))
	defer end.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0
		case <-end.C:
			return 0
		case now := <-tick.C:
			if t.probes.late(start.Add(warmUp), now, bound, t.hub.id, t.spokes) > limit {
				return now.Sub(start)
			}
		}
	}
}

// maxLate is how many of pairs arrivals may be late with p95 (nearest
// rank) still on time.
func maxLate(pairs int) int {
	return pairs - int(math.Ceil(0.95*float64(pairs)))
}
