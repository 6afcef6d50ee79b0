package runner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/report"
	"github.com/votr-dev/votr/sink"
	"github.com/votr-dev/votr/workload"
)

// RunOptions tune the run that follows a converged apply.
type RunOptions struct {
	// Duration stops the run after this long (0: until interrupted).
	Duration time.Duration
	// NoSinks runs no sinks in this process: the user runs
	// `votr sink FILE --feed S:D` for each feed elsewhere. The drain then
	// waits on the slots' confirmed positions.
	NoSinks bool
	// MetricsAddr serves Prometheus metrics at http://ADDR/metrics.
	MetricsAddr string
	// RateLimit caps each spoke's workers together at this many
	// transactions per second (0: no cap beyond the workload's interval).
	RateLimit float64
	// StatusEvery is how often the status is logged without a Console
	// (default 10s).
	StatusEvery time.Duration
	// MaxBallots, when positive, overrides the topology's maxBallots: the
	// workers of all regions cast exactly this many ballots in all, then the
	// run drains and ends.
	MaxBallots int
	// FailFast stops the run at the first invariant violation (as the
	// topology's workload.failFast does).
	FailFast bool
	// ReportEvery, when positive, overrides the topology's
	// workload.reportEvery: the period of the per-region progress lines.
	ReportEvery time.Duration
}

// RunResult is how a run ended.
type RunResult struct {
	Report *report.Report
	// Violations is the number of invariant violations the validation loops
	// saw during the run (the report checks only the final state).
	Violations int64
	// Committed is, per spoke, the ballots with that src its region held at
	// the start plus what this run's workers committed.
	Committed map[int]int64
	Txns      int64         // transactions this run's workers committed
	Elapsed   time.Duration // from the workers' start to their stop
	Drain     time.Duration // from the workers' stop to every feed caught up
	CaughtUp  bool          // every feed caught up within drainDelay
	// MaxBallots is the run's ballot budget (0: none); with one, the run is
	// OK only if every region holds exactly WantBallots ballots.
	MaxBallots  int
	WantBallots int64
	// Errors are the failures that ended the run early (a sink or worker
	// that gave up).
	Errors []string
	OK     bool
}

// regionRun is one region during a run.
type regionRun struct {
	reg   config.Region
	dsn   string
	pool  *pgxpool.Pool
	stats workload.Stats
	vstat workload.ValidatorStats
	base  int64 // ballots with src = this region before the run
	prev  workload.Snapshot
	sum   int64 // latest sum(total), for the status
	// progress is the ballots inserted per reporting period (progress.go).
	progress progress

	stopWork, stopVal context.CancelFunc
	workDone, valDone chan struct{} // closed when workers / validation loop end
	collectors        []prometheus.Collector
}

// feedRun is one feed during a run.
type feedRun struct {
	feed   config.Feed
	srcDSN string
	dstDSN string
	sink   *sink.Sink // nil with NoSinks
	// shared is the slot the feed reads with its source's other feeds
	// (plan.SharedSlotOf; "": its own), run by the run set's fanout.
	shared     string
	sourceTail pglogrepl.LSN
	stop       context.CancelFunc // stops the sink
	done       chan struct{}      // closed when the sink has stopped

	// Read by the status from pg_replication_slots (status goroutine only).
	slotLagB   int64  // WAL written since the slot's confirmed position
	retained   int64  // WAL the slot keeps on its source's server (-1: unknown)
	walStatus  string // wal_status, or "missing"
	warnedAt   time.Time
	lostWarned bool
}

// run starts the sinks, the validators and the workers; on interrupt or
// after o.Duration it stops the workers, lets the feeds drain (up to the
// topology's drainDelay), stops the sinks and prints the convergence report.
// Cancelling ctx stops everything at once: the sinks roll back any open
// target transaction, so nothing is half-applied.
func (r *Runner) run(ctx context.Context, t *config.Topology, o RunOptions) (*RunResult, error) {
	if o.StatusEvery <= 0 {
		o.StatusEvery = 10 * time.Second
	}
	regions, feeds, err := r.runTargets(ctx, t)
	if err != nil {
		return nil, err
	}
	if !o.NoSinks {
		if err := r.feedsFree(ctx, feeds); err != nil {
			return nil, err
		}
	}
	lr, err := r.newLiveRun(ctx, t, o)
	if err != nil {
		return nil, err
	}
	// Every exit path stops and waits for everything it started: a sink
	// stopped this way rolls back its open target transaction.
	defer lr.close()

	if err := lr.start(regions, feeds); err != nil {
		return nil, err
	}
	if err := lr.wait(ctx); err != nil {
		return nil, err
	}
	t, regions, feeds, err = lr.drain(ctx)
	if err != nil {
		return nil, err
	}
	exact := lr.tally(t, regions)
	rep, err := r.gather(ctx, t, regions, feeds)
	if err != nil {
		return lr.res, err
	}
	rep.Check(exact)
	lr.res.Report = rep
	lr.view.done(ctx, lr.res)
	return lr.print(t, rep)
}

// liveRun is one run, from the start of its sinks and workers to its
// report.
type liveRun struct {
	r   *Runner
	t   *config.Topology // as the run started (a reload changes rs.t)
	o   RunOptions
	rs  *runSet
	res *RunResult
	// failed is closed at the first failure of a sink or worker.
	failed  chan struct{}
	started time.Time // the workers' start
	// draining is set when the workers stop, for the status's head.
	draining    atomic.Pointer[drainMark]
	stopMetrics func()
	// view feeds the web view (--ui); its methods do nothing without one.
	view *uiFeed
	// statusCancel and statusDone stop the live status and wait for it
	// (nil before it starts).
	statusCancel context.CancelFunc
	statusDone   chan struct{}
	// progressCancel and progressDone stop the progress lines (progress.go).
	progressCancel context.CancelFunc
	progressDone   chan struct{}
}

// drainMark is when the drain began, and how long it may take (the
// drainDelay of the topology the run ended with).
type drainMark struct {
	at    time.Time
	delay time.Duration
}

// newLiveRun serves the run's metrics and makes its (empty) run set.
func (r *Runner) newLiveRun(ctx context.Context, t *config.Topology, o RunOptions) (*liveRun, error) {
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	_, stopMetrics, err := r.serveMetrics(r.metricsOnUI(o.MetricsAddr, registry), registry)
	if err != nil {
		return nil, err
	}
	lr := &liveRun{r: r, t: t, o: o, res: &RunResult{}, failed: make(chan struct{}), stopMetrics: stopMetrics}
	var failMu sync.Mutex
	fail := func(err error) {
		failMu.Lock()
		defer failMu.Unlock()
		lr.res.Errors = append(lr.res.Errors, err.Error())
		if len(lr.res.Errors) == 1 {
			close(lr.failed)
		}
	}
	lr.rs = &runSet{r: r, o: o, registry: registry, fail: fail, ctx: ctx, t: t}
	lr.res.MaxBallots = t.MaxBallots
	if o.MaxBallots > 0 {
		lr.res.MaxBallots = o.MaxBallots
	}
	if lr.res.MaxBallots > 0 {
		lr.rs.budget = workload.NewBudget(int64(lr.res.MaxBallots))
	}
	return lr, nil
}

// start opens the regions, starts the sinks, then the workers, then the
// live status.
func (lr *liveRun) start(regions []*regionRun, feeds []*feedRun) error {
	rs, t := lr.rs, lr.t
	for _, rr := range regions {
		if err := rs.openRegion(rr); err != nil {
			return err
		}
		rs.regions = append(rs.regions, rr)
	}
	// Sinks first, so no worker's change waits on a feed that is not there.
	rs.feeds = append(rs.feeds, feeds...) // stopped by close, however far this gets
	if err := rs.startFeeds(feeds); err != nil {
		return err
	}
	lr.started = time.Now()
	for _, rr := range regions {
		if t.RunsWorkers(rr.reg.ID) { // the hub only receives, unless 2-DC
			rs.startWorkers(rr)
		}
	}
	lr.startProgress()
	lr.view = lr.r.showRun(rs, lr.started)
	lr.r.log.Info("running", "regions", len(regions), "feeds", len(feeds), "workers per working region", t.Workers, "in-process sinks", !lr.o.NoSinks)

	var statusCtx context.Context
	statusCtx, lr.statusCancel = context.WithCancel(rs.ctx)
	lr.statusDone = make(chan struct{})
	go func() {
		defer close(lr.statusDone)
		lr.r.showStatus(statusCtx, lr.o, rs.view, t.Sink.SlotWarnBytes, lr.head)
	}()
	return nil
}

// head is the first line of the live status.
func (lr *liveRun) head() string {
	if d := lr.draining.Load(); d != nil {
		return fmt.Sprintf("workers stopped after %s; draining the feeds for %s (at most %s)",
			lr.res.Elapsed.Round(time.Second), time.Since(d.at).Round(time.Second), d.delay)
	}
	return fmt.Sprintf("running %s", time.Since(lr.started).Round(time.Second))
}

// stopStatus stops the live status and waits for it; again is harmless.
func (lr *liveRun) stopStatus() {
	if lr.statusCancel == nil {
		return
	}
	lr.statusCancel()
	<-lr.statusDone
}

// close stops everything the run started, in reverse order.
func (lr *liveRun) close() {
	lr.stopStatus()
	lr.stopProgress()
	lr.rs.stopAll()
	_, regions, _ := lr.rs.snapshot()
	for _, rr := range regions {
		lr.rs.closeRegion(rr)
	}
	lr.stopMetrics()
}

// wait lets the run go on until it is interrupted, its duration is up or
// something failed, reloading the topology when asked to.
func (lr *liveRun) wait(ctx context.Context) error {
	r := lr.r
	var timeout <-chan time.Time
	if lr.o.Duration > 0 {
		timer := time.NewTimer(lr.o.Duration)
		defer timer.Stop()
		timeout = timer.C
	}
	var spent <-chan struct{} // nil (never ready) without a budget
	if lr.rs.budget != nil {
		spent = lr.rs.budget.Spent()
	}
	for {
		select {
		case <-ctx.Done():
			return errStoppedAtOnce
		case <-spent:
			r.log.Info("every ballot of the budget is handed out: waiting for the last transactions, then draining the feeds", "maxBallots", lr.res.MaxBallots)
			return lr.waitWorkers(ctx)
		case <-r.opts.Interrupt:
			r.log.Info("interrupted: stopping the workers, then draining the feeds (interrupt again to stop at once)")
			return nil
		case <-timeout:
			r.log.Info("duration reached: stopping the workers, then draining the feeds", "duration", lr.o.Duration)
			return nil
		case <-lr.failed:
			r.log.Warn("stopping early: a feed or the workers failed")
			return nil
		case <-r.opts.Reload:
			start := time.Now()
			if err := lr.rs.reload(ctx); err != nil {
				if ctx.Err() != nil {
					return errStoppedAtOnce
				}
				r.log.Error("reload failed; the run goes on; fix the topology and reload again, or run apply again after this run", "err", err)
				fmt.Fprintf(r.opts.Out, "Reload FAILED: %v\n", err)
				continue
			}
			r.log.Info("reloaded the topology", "took", time.Since(start).Round(time.Millisecond))
		}
	}
}

// waitWorkers waits until every region's workers have stopped by
// themselves (a spent budget), so no transaction is cut off by the stop.
func (lr *liveRun) waitWorkers(ctx context.Context) error {
	_, regions, _ := lr.rs.snapshot()
	for _, rr := range regions {
		if rr.workDone == nil {
			continue
		}
		select {
		case <-rr.workDone:
		case <-ctx.Done():
			return errStoppedAtOnce
		case <-lr.failed:
			return nil
		}
	}
	return nil
}

// drain stops the workers, lets the feeds catch up (up to drainDelay), then
// stops the sinks and the live status. It returns the topology, regions and
// feeds the run ended with (a reload may have changed them).
func (lr *liveRun) drain(ctx context.Context) (*config.Topology, []*regionRun, []*feedRun, error) {
	res := lr.res
	t, regions, feeds := lr.rs.snapshot()
	for _, rr := range regions {
		rr.stopWorkers()
	}
	lr.stopProgress()
	res.Elapsed = time.Since(lr.started)
	if ctx.Err() != nil {
		return nil, nil, nil, errStoppedAtOnce
	}
	mark := &drainMark{at: time.Now(), delay: t.DrainDelay}
	lr.draining.Store(mark)
	lr.view.draining(mark.at)
	res.CaughtUp = lr.r.drain(ctx, t, feeds, regions)
	lr.view.drained(ctx)
	res.Drain = time.Since(mark.at)
	if ctx.Err() != nil {
		return nil, nil, nil, errStoppedAtOnce
	}
	lr.rs.stopAll()
	lr.stopStatus()
	if lr.r.opts.Console != nil {
		lr.r.opts.Console.Keep()
	}
	return t, regions, feeds, nil
}

// tally adds up what the workers committed and the validators saw, and
// returns the ballot count per spoke that the report can check exactly.
func (lr *liveRun) tally(t *config.Topology, regions []*regionRun) (exact map[int]int64) {
	res, rs := lr.res, lr.rs
	res.Committed = map[int]int64{}
	exact = map[int]int64{}
	rs.mu.Lock()
	// Gone spokes first: one that left and joined again counts from its
	// latest join, whose base includes what it committed before.
	counted := append(slices.Clone(rs.gone), regions...)
	rs.mu.Unlock()
	if res.MaxBallots > 0 {
		// Every region should hold what all regions cast before the run
		// plus the budget.
		res.WantBallots = int64(res.MaxBallots)
		for _, rr := range regions {
			res.WantBallots += rr.base
		}
	}
	for _, rr := range counted {
		res.Violations += rr.vstat.Violations.Load()
		if rr.workDone == nil { // ran no workers (the hub, unless 2-DC)
			continue
		}
		res.Txns += rr.stats.Txns.Load()
		n := rr.base + rr.stats.Committed()[rr.reg.ID]
		res.Committed[rr.reg.ID] = n
		// A commit whose outcome is unknown may or may not be there: the
		// exact count cannot be checked for that region.
		if rr.stats.Unknown.Load() == 0 {
			exact[rr.reg.ID] = n
		} else {
			lr.r.log.Warn("some commits have an unknown outcome; not checking that region's ballot count exactly", "region", rr.reg.ID, "unknown", rr.stats.Unknown.Load())
		}
	}
	return exact
}

// print writes how the run went and the convergence report.
func (lr *liveRun) print(t *config.Topology, rep *report.Report) (*RunResult, error) {
	res, out := lr.res, lr.r.opts.Out
	fmt.Fprintln(out)
	fmt.Fprintf(out, "Workers committed %d transactions in %s (%.1f txn/s); the feeds %s in %s.\n",
		res.Txns, res.Elapsed.Round(time.Millisecond), float64(res.Txns)/max(res.Elapsed.Seconds(), 0.001),
		map[bool]string{true: "caught up", false: "did NOT catch up (drainDelay " + t.DrainDelay.String() + ")"}[res.CaughtUp],
		res.Drain.Round(time.Millisecond))
	if res.Violations > 0 {
		fmt.Fprintf(out, "The validation loops saw %d invariant violation(s) during the run (see the log).\n", res.Violations)
	} else {
		fmt.Fprintln(out, "The validation loops saw no invariant violation during the run.")
	}
	fmt.Fprintln(out)
	if err := rep.WriteText(out); err != nil {
		return res, err
	}
	sized := lr.checkSize(rep)
	res.OK = rep.OK() && res.Violations == 0 && len(res.Errors) == 0 && sized
	if len(res.Errors) > 0 {
		return res, fmt.Errorf("the run stopped early: %s", strings.Join(res.Errors, "; "))
	}
	return res, nil
}

// checkSize says whether a fixed-size run (maxBallots) left exactly the
// expected ballots in every region, and prints which regions did not; true
// without a budget.
func (lr *liveRun) checkSize(rep *report.Report) bool {
	res, out := lr.res, lr.r.opts.Out
	if res.MaxBallots <= 0 {
		return true
	}
	ok := true
	for _, reg := range rep.Regions {
		if reg.Err != "" || reg.Ballots != res.WantBallots {
			ok = false
			fmt.Fprintf(out, "maxBallots %d: region %s holds %d ballots, want exactly %d.\n", res.MaxBallots, reg.Label, reg.Ballots, res.WantBallots)
		}
	}
	if ok {
		fmt.Fprintf(out, "maxBallots %d: every region holds exactly %d ballots.\n", res.MaxBallots, res.WantBallots)
	}
	return ok
}

// errStoppedAtOnce ends a run cancelled without draining.
var errStoppedAtOnce = errors.New("stopped at once without draining the feeds (nothing is half-applied); run `votr check FILE` for the convergence report, or `votr apply FILE` to resume")
