package runner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/report"
	"github.com/votr-dev/votr/schema"
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

	stopWork, stopVal context.CancelFunc
	workDone, valDone chan struct{} // closed when workers / validation loop end
	collectors        []prometheus.Collector
}

// feedRun is one feed during a run.
type feedRun struct {
	feed       config.Feed
	srcDSN     string
	dstDSN     string
	sink       *sink.Sink // nil with NoSinks
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
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	_, stopMetrics, err := r.serveMetrics(r.metricsOnUI(o.MetricsAddr, registry), registry)
	if err != nil {
		return nil, err
	}
	defer stopMetrics()

	res := &RunResult{}
	var failMu sync.Mutex
	failed := make(chan struct{})
	fail := func(err error) {
		failMu.Lock()
		defer failMu.Unlock()
		res.Errors = append(res.Errors, err.Error())
		if len(res.Errors) == 1 {
			close(failed)
		}
	}
	rs := &runSet{r: r, o: o, registry: registry, fail: fail, ctx: ctx, t: t}
	// Every exit path stops and waits for everything it started: a sink
	// stopped this way rolls back its open target transaction.
	defer func() {
		rs.stopAll()
		_, regions, _ := rs.snapshot()
		for _, rr := range regions {
			rs.closeRegion(rr)
		}
	}()

	for _, rr := range regions {
		if err := rs.openRegion(rr); err != nil {
			return nil, err
		}
		rs.regions = append(rs.regions, rr)
	}
	// Sinks first, so no worker's change waits on a feed that is not there.
	for _, f := range feeds {
		if err := rs.startFeed(f); err != nil {
			return nil, err
		}
		rs.feeds = append(rs.feeds, f)
	}
	started := time.Now()
	for _, rr := range regions {
		if rr.reg.ID != t.Hub.ID { // the hub only receives
			rs.startWorkers(rr)
		}
	}
	view := r.showRun(rs, started)
	r.log.Info("running", "regions", len(regions), "feeds", len(feeds), "workers per spoke", t.Workers, "in-process sinks", !o.NoSinks)

	var drainStarted atomic.Pointer[time.Time]
	statusCtx, stopStatus := context.WithCancel(ctx)
	statusDone := make(chan struct{})
	go func() {
		defer close(statusDone)
		r.showStatus(statusCtx, o, rs.view, t.Sink.SlotWarnBytes, func() string {
			if d := drainStarted.Load(); d != nil {
				return fmt.Sprintf("workers stopped after %s; draining the feeds for %s (at most %s)",
					res.Elapsed.Round(time.Second), time.Since(*d).Round(time.Second), t.DrainDelay)
			}
			return fmt.Sprintf("running %s", time.Since(started).Round(time.Second))
		})
	}()
	defer func() {
		stopStatus()
		<-statusDone
	}()

	var timeout <-chan time.Time
	if o.Duration > 0 {
		timer := time.NewTimer(o.Duration)
		defer timer.Stop()
		timeout = timer.C
	}
wait:
	for {
		select {
		case <-ctx.Done():
			return nil, errStoppedAtOnce
		case <-r.opts.Interrupt:
			r.log.Info("interrupted: stopping the workers, then draining the feeds (interrupt again to stop at once)")
			break wait
		case <-timeout:
			r.log.Info("duration reached: stopping the workers, then draining the feeds", "duration", o.Duration)
			break wait
		case <-failed:
			r.log.Warn("stopping early: a feed or the workers failed")
			break wait
		case <-r.opts.Reload:
			start := time.Now()
			if err := rs.reload(ctx); err != nil {
				if ctx.Err() != nil {
					return nil, errStoppedAtOnce
				}
				r.log.Error("reload failed; the run goes on; fix the topology and reload again, or run apply again after this run", "err", err)
				fmt.Fprintf(r.opts.Out, "Reload FAILED: %v\n", err)
				continue
			}
			r.log.Info("reloaded the topology", "took", time.Since(start).Round(time.Millisecond))
		}
	}

	t, regions, feeds = rs.snapshot()
	for _, rr := range regions {
		rr.stopWorkers()
	}
	res.Elapsed = time.Since(started)
	if ctx.Err() != nil {
		return nil, errStoppedAtOnce
	}
	drainStart := time.Now()
	drainStarted.Store(&drainStart)
	view.draining(drainStart)
	res.CaughtUp = r.drain(ctx, t, feeds, regions)
	view.drained(ctx)
	res.Drain = time.Since(drainStart)
	if ctx.Err() != nil {
		return nil, errStoppedAtOnce
	}
	rs.stopAll()
	stopStatus()
	<-statusDone
	if r.opts.Console != nil {
		r.opts.Console.Keep()
	}

	res.Committed = map[int]int64{}
	exact := map[int]int64{}
	rs.mu.Lock()
	// Gone spokes first: one that left and joined again counts from its
	// latest join, whose base includes what it committed before.
	counted := append(slices.Clone(rs.gone), regions...)
	rs.mu.Unlock()
	for _, rr := range counted {
		res.Violations += rr.vstat.Violations.Load()
		if rr.reg.ID == t.Hub.ID {
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
			r.log.Warn("some commits have an unknown outcome; not checking that region's ballot count exactly", "region", rr.reg.ID, "unknown", rr.stats.Unknown.Load())
		}
	}
	rep, err := r.gather(ctx, t, regions, feeds)
	if err != nil {
		return res, err
	}
	rep.Check(exact)
	res.Report = rep
	view.done(ctx, res)

	fmt.Fprintln(r.opts.Out)
	fmt.Fprintf(r.opts.Out, "Workers committed %d transactions in %s (%.1f txn/s); the feeds %s in %s.\n",
		res.Txns, res.Elapsed.Round(time.Millisecond), float64(res.Txns)/max(res.Elapsed.Seconds(), 0.001),
		map[bool]string{true: "caught up", false: "did NOT catch up (drainDelay " + t.DrainDelay.String() + ")"}[res.CaughtUp],
		res.Drain.Round(time.Millisecond))
	if res.Violations > 0 {
		fmt.Fprintf(r.opts.Out, "The validation loops saw %d invariant violation(s) during the run (see the log).\n", res.Violations)
	} else {
		fmt.Fprintln(r.opts.Out, "The validation loops saw no invariant violation during the run.")
	}
	fmt.Fprintln(r.opts.Out)
	if err := rep.WriteText(r.opts.Out); err != nil {
		return res, err
	}
	res.OK = rep.OK() && res.Violations == 0 && len(res.Errors) == 0
	if len(res.Errors) > 0 {
		return res, fmt.Errorf("the run stopped early: %s", strings.Join(res.Errors, "; "))
	}
	return res, nil
}

// errStoppedAtOnce ends a run cancelled without draining.
var errStoppedAtOnce = errors.New("stopped at once without draining the feeds (nothing is half-applied); run `votr check FILE` for the convergence report, or `votr apply FILE` to resume")

// runTargets resolves every region's DSN (starting managed servers that are
// stopped) and every feed's.
func (r *Runner) runTargets(ctx context.Context, t *config.Topology) ([]*regionRun, []*feedRun, error) {
	dsns, err := r.regionDSNs(ctx, t, true)
	if err != nil {
		return nil, nil, err
	}
	var regions []*regionRun
	for _, reg := range t.Regions() {
		regions = append(regions, &regionRun{reg: reg, dsn: dsns[reg.ID]})
	}
	var feeds []*feedRun
	for _, f := range t.Feeds() {
		feeds = append(feeds, &feedRun{feed: f, srcDSN: dsns[f.Source.ID], dstDSN: dsns[f.Target.ID], retained: -1})
	}
	return regions, feeds, nil
}

// regionDSNs maps region id → DSN. Managed servers must exist (apply makes
// them); stopped ones are started when start is set, else it is an error.
func (r *Runner) regionDSNs(ctx context.Context, t *config.Topology, start bool) (map[int]string, error) {
	srvs, err := r.servers(t.Regions())
	if err != nil {
		return nil, err
	}
	byKey := map[string]*server{}
	for _, s := range srvs {
		byKey[s.key] = s
		if s.managed == nil {
			continue
		}
		if !s.managed.Exists() {
			return nil, fmt.Errorf("managed server %s does not exist (under %s): run `votr apply %s` first", s.key, s.dir, t.Path)
		}
		if !s.managed.Running(ctx) {
			if !start {
				return nil, fmt.Errorf("managed server %s is stopped: run `votr apply %s` to start it", s.key, t.Path)
			}
			if err := s.managed.Start(ctx); err != nil {
				return nil, fmt.Errorf("server %s: %w", s.key, err)
			}
		}
	}
	out := map[int]string{}
	for _, reg := range t.Regions() {
		dsn, err := byKey[reg.ServerKey()].dsn(reg.Database)
		if err != nil {
			return nil, err
		}
		out[reg.ID] = dsn
	}
	return out, nil
}

// drain waits until every feed has processed its source up to the source's
// WAL position once writes stopped, for at most drainDelay in all. It goes
// in two rounds: first the feeds into the hub, then, from the hub's position
// after those, the feeds out of it, so that what spoke A's feed brought to
// the hub reaches spoke B too. It reports whether all feeds got there.
func (r *Runner) drain(ctx context.Context, t *config.Topology, feeds []*feedRun, regions []*regionRun) bool {
	pools := map[int]*pgxpool.Pool{}
	for _, rr := range regions {
		pools[rr.reg.ID] = rr.pool
	}
	dctx, cancel := context.WithTimeout(ctx, t.DrainDelay)
	defer cancel()
	var into, out []*feedRun
	for _, f := range feeds {
		if f.feed.Target.ID == t.Hub.ID {
			into = append(into, f)
		} else {
			out = append(out, f)
		}
	}
	ok := r.drainRound(dctx, into, pools)
	return r.drainRound(dctx, out, pools) && ok
}

// drainRound reads each source's current WAL position and waits for its
// feeds to process up to it.
func (r *Runner) drainRound(ctx context.Context, feeds []*feedRun, pools map[int]*pgxpool.Pool) bool {
	tails := map[int]pglogrepl.LSN{}
	for _, f := range feeds {
		id := f.feed.Source.ID
		if _, ok := tails[id]; !ok {
			var text string
			// The insert position, not pg_current_wal_lsn() (the write
			// position): sinks commit asynchronously, so their last commits
			// may be inserted but not yet written, and must be waited for.
			if err := pools[id].QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&text); err != nil {
				r.log.Warn("cannot read the source's WAL position; not waiting for its feeds", "region", id, "err", err)
				tails[id] = 0
				continue
			}
			lsn, err := pglogrepl.ParseLSN(text)
			if err != nil {
				continue
			}
			tails[id] = lsn
		}
		f.sourceTail = tails[id]
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := true
	for _, f := range feeds {
		if f.sourceTail == 0 {
			ok = false
			continue
		}
		wg.Go(func() {
			var err error
			if f.sink != nil {
				// A sink that stopped for good (a fatal error) never
				// catches up: do not wait drainDelay for it.
				wctx, cancel := context.WithCancel(ctx)
				go func() {
					select {
					case <-f.done:
						cancel()
					case <-wctx.Done():
					}
				}()
				err = f.sink.WaitCaughtUp(wctx, f.sourceTail)
				cancel()
				if err != nil && ctx.Err() == nil {
					select {
					case <-f.done:
						err = fmt.Errorf("feed %s stopped before it caught up", f.feed)
					default:
					}
				}
			} else {
				err = waitSlot(ctx, pools[f.feed.Source.ID], schema.Slot(f.feed.Source.Database, f.feed.Target.ID), f.sourceTail)
			}
			if f.sink != nil {
				st := f.sink.Status()
				r.log.Debug("feed drained", "feed", f.feed.String(), "source_tail", f.sourceTail, "processed", st.ProcessedLSN, "applied", st.AppliedLSN, "err", err)
			}
			if err != nil {
				r.log.Warn("feed did not catch up", "feed", f.feed.String(), "err", err)
				mu.Lock()
				ok = false
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return ok
}

// waitSlot polls a slot until its consumer has confirmed lsn (used when the
// sinks run in other processes).
func waitSlot(ctx context.Context, pool *pgxpool.Pool, slot string, lsn pglogrepl.LSN) error {
	for {
		var text *string
		err := pool.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&text)
		if err == nil && text != nil {
			if got, perr := pglogrepl.ParseLSN(*text); perr == nil && got >= lsn {
				return nil
			}
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("slot %s does not exist", slot)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("slot %s not confirmed up to %s: %w", slot, lsn, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// gather reads the convergence report.
func (r *Runner) gather(ctx context.Context, t *config.Topology, regions []*regionRun, feeds []*feedRun) (*report.Report, error) {
	var rt []report.RegionTarget
	for _, rr := range regions {
		rt = append(rt, report.RegionTarget{ID: rr.reg.ID, Label: rr.reg.Label(), DSN: rr.dsn})
	}
	var ft []report.FeedTarget
	for _, f := range feeds {
		ft = append(ft, report.FeedTarget{Name: f.feed.String(), SourceID: f.feed.Source.ID, TargetID: f.feed.Target.ID,
			SourceDSN: f.srcDSN, TargetDSN: f.dstDSN, Slot: schema.Slot(f.feed.Source.Database, f.feed.Target.ID)})
	}
	rep, err := report.Gather(ctx, rt, ft, t.Hub.ID)
	if err != nil {
		return nil, fmt.Errorf("convergence report: %w", err)
	}
	rep.WarnSlots(t.Sink.SlotWarnBytes)
	return rep, nil
}

// Check reads every region and feed and returns the convergence report.
// Managed servers that are stopped are started to be read and stopped again.
func (r *Runner) Check(ctx context.Context, t *config.Topology) (*report.Report, error) {
	stop, err := r.startToRead(ctx, t)
	if err != nil {
		return nil, err
	}
	defer stop()
	srvs, err := r.servers(t.Regions())
	if err != nil {
		return nil, err
	}
	regions, feeds, err := r.runTargets(ctx, t)
	if err != nil {
		return nil, err
	}
	if err := r.regionsExist(ctx, t, srvs); err != nil {
		return nil, err
	}
	return r.gather(ctx, t, regions, feeds)
}

// regionsExist fails, saying to run apply, when a reachable server lacks a
// region's database: there is nothing to check yet. Unreachable servers are
// left to the report, which shows them.
func (r *Runner) regionsExist(ctx context.Context, t *config.Topology, srvs []*server) error {
	var missing []string
	for _, s := range srvs {
		dsn, err := s.maintenanceDSN()
		if err != nil {
			return err
		}
		conn, err := connect(ctx, dsn)
		if err != nil {
			continue
		}
		var dbs []string
		rows, err := conn.Query(ctx, `SELECT datname FROM pg_database`)
		if err == nil {
			dbs, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			continue
		}
		for _, reg := range t.Regions() {
			if reg.ServerKey() == s.key && !slices.Contains(dbs, reg.Database) {
				missing = append(missing, fmt.Sprintf("%s (region %s)", on(reg.Database, s.key), reg.Label()))
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("nothing to check: %s does not exist; run `votr apply %s` first", strings.Join(missing, ", "), t.Path)
	}
	return nil
}

// Sink runs the sink of one feed ("S:D") until ctx is done or the interrupt
// channel closes, showing its status like apply does.
func (r *Runner) Sink(ctx context.Context, t *config.Topology, feedName, metricsAddr string) error {
	f, err := t.ParseFeed(feedName)
	if err != nil {
		return err
	}
	dsns, err := r.regionDSNs(ctx, t, true)
	if err != nil {
		return err
	}
	if err := r.feedsFree(ctx, []*feedRun{{feed: f, srcDSN: dsns[f.Source.ID]}}); err != nil {
		return err
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	_, stopMetrics, err := r.serveMetrics(metricsAddr, registry)
	if err != nil {
		return err
	}
	defer stopMetrics()
	s, err := sink.New(sink.Config{
		SourceID: f.Source.ID, TargetID: f.Target.ID, SourceDB: f.Source.Database, TargetDB: f.Target.Database,
		SourceDSN: dsns[f.Source.ID], TargetDSN: dsns[f.Target.ID],
		Program: t.Program, Options: t.Sink, Logger: r.log, Registerer: registry,
	})
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-r.opts.Interrupt:
			r.log.Info("interrupted: stopping the sink")
			stop()
		case <-runCtx.Done():
		}
	}()
	fr := &feedRun{feed: f, sink: s, retained: -1}
	// One connection to the source for the status's slot readings.
	pcfg, err := pgxpool.ParseConfig(dsns[f.Source.ID])
	if err != nil {
		return fmt.Errorf("region %s: %w", f.Source.Label(), scrubErr(err, dsns[f.Source.ID]))
	}
	pcfg.MaxConns = 1
	srcPool, err := pgxpool.NewWithConfig(runCtx, pcfg)
	if err != nil {
		return fmt.Errorf("region %s: %w", f.Source.Label(), scrubErr(err, dsns[f.Source.ID]))
	}
	defer srcPool.Close()
	view := func() ([]*regionRun, []*feedRun, map[int]*pgxpool.Pool) {
		return nil, []*feedRun{fr}, map[int]*pgxpool.Pool{f.Source.ID: srcPool}
	}
	statusDone := make(chan struct{})
	go func() {
		defer close(statusDone)
		r.showStatus(runCtx, RunOptions{StatusEvery: 10 * time.Second}, view, t.Sink.SlotWarnBytes, func() string { return "sink " + feedLabel(f) })
	}()
	r.log.Info("sink running", "feed", feedLabel(f))
	err = s.Run(runCtx)
	stop()
	<-statusDone
	if r.opts.Console != nil {
		r.opts.Console.Keep()
	}
	return err
}

// serveMetrics serves registry on addr ("" serves nothing) and returns
// the URL it serves. The listener opens before it returns, so a taken port
// is an error now.
func (r *Runner) serveMetrics(addr string, registry *prometheus.Registry) (url string, stop func(), err error) {
	if addr == "" {
		return "", func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics address %s: %w (choose another --metrics-addr)", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	url = "http://" + ln.Addr().String() + "/metrics"
	r.log.Info("serving metrics", "url", url)
	return url, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// registerRegionMetrics registers the region's series and returns them, to
// be unregistered when the region leaves the run.
func registerRegionMetrics(reg *prometheus.Registry, rr *regionRun) []prometheus.Collector {
	labels := prometheus.Labels{"region": fmt.Sprint(rr.reg.ID)}
	var out []prometheus.Collector
	counter := func(name, help string, f func() float64) {
		c := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f)
		reg.MustRegister(c)
		out = append(out, c)
	}
	counter("votr_worker_transactions_total", "Transactions committed by the region's workers.", func() float64 { return float64(rr.stats.Txns.Load()) })
	counter("votr_worker_ballots_total", "Ballots committed by the region's workers.", func() float64 { return float64(rr.stats.Ballots.Load()) })
	counter("votr_worker_retries_total", "Worker transaction attempts run again.", func() float64 { return float64(rr.stats.Retries.Load()) })
	counter("votr_validator_checks_total", "Invariant checks completed in the region.", func() float64 { return float64(rr.vstat.Checks.Load()) })
	counter("votr_validator_violations_total", "Invariant violations found in the region.", func() float64 { return float64(rr.vstat.Violations.Load()) })
	return out
}

// statusView is what the live status shows: the regions and feeds running
// now, and a pool per source region to read its slots with.
type statusView func() (regions []*regionRun, feeds []*feedRun, pools map[int]*pgxpool.Pool)

// view is the run set as the status shows it.
func (rs *runSet) view() ([]*regionRun, []*feedRun, map[int]*pgxpool.Pool) {
	_, regions, feeds := rs.snapshot()
	pools := map[int]*pgxpool.Pool{}
	for _, rr := range regions {
		pools[rr.reg.ID] = rr.pool
	}
	return regions, feeds, pools
}

// showStatus keeps the live status: redrawn every second on a console,
// logged every o.StatusEvery otherwise. Slots are read every second either
// way, so that one retaining too much WAL is warned about in time.
func (r *Runner) showStatus(ctx context.Context, o RunOptions, view statusView, warnBytes int64, head func() string) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastLog := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		regions, feeds, pools := view()
		r.refresh(ctx, regions, feeds, pools, warnBytes)
		if r.opts.Console != nil {
			r.opts.Console.Show(statusLines(head(), regions, feeds, warnBytes))
			continue
		}
		if time.Since(lastLog) < o.StatusEvery-50*time.Millisecond {
			continue
		}
		lastLog = time.Now()
		for _, rr := range regions {
			txns, _ := rr.rates()
			r.log.Info("status", "region", rr.reg.Label(), "ballots", rr.sum, "txn/s", fmt.Sprintf("%.1f", txns),
				"committed", rr.stats.Txns.Load(), "violations", rr.vstat.Violations.Load())
		}
		for _, f := range feeds {
			args := []any{"feed", f.feed.String()}
			if f.sink != nil {
				st := f.sink.Status()
				args = append(args, "connected", st.Connected, "rows/s", fmt.Sprintf("%.0f", st.RowsPerSec), "lag", st.Lag.Round(time.Millisecond),
					"lag_bytes", st.LagBytes, "rows", st.Rows, "conflicts", st.Conflicts, "dead_lettered", st.DeadLettered)
				if st.LastError != "" {
					args = append(args, "last_error", st.LastError)
				}
			} else {
				args = append(args, "slot_lag_bytes", f.slotLagB)
			}
			args = append(args, "retained_bytes", f.retained)
			if m := f.slotMarker(warnBytes); m != "" {
				args = append(args, "slot", m)
			}
			r.log.Info("status", args...)
		}
	}
}

// rates returns the region's worker rates since the previous call.
func (rr *regionRun) rates() (txns, ballots float64) {
	now := rr.stats.Snapshot()
	txns, ballots = now.Rates(rr.prev)
	rr.prev = now
	return txns, ballots
}

// slotWarnEvery is how often a slot retaining too much WAL is warned about.
const slotWarnEvery = time.Minute

// refresh reads what the status shows from the databases: each region's
// sum of totals (= its ballots while the invariant holds; cheap: one row per
// candidate) and each feed's slot: the WAL it retains, its lag and state. A
// slot past warnBytes, or one PostgreSQL is about to invalidate or has
// invalidated, is warned about in the log.
func (r *Runner) refresh(ctx context.Context, regions []*regionRun, feeds []*feedRun, pools map[int]*pgxpool.Pool, warnBytes int64) {
	qctx, cancel := context.WithTimeout(ctx, 800*time.Millisecond)
	defer cancel()
	for _, rr := range regions {
		var n int64
		if err := rr.pool.QueryRow(qctx, `SELECT coalesce(sum(total), 0)::bigint FROM public.totals`).Scan(&n); err == nil {
			rr.sum = n
		}
	}
	for _, f := range feeds {
		p := pools[f.feed.Source.ID]
		if p == nil {
			continue
		}
		slot := schema.Slot(f.feed.Source.Database, f.feed.Target.ID)
		var retained, lag *int64
		var status string
		err := p.QueryRow(qctx, `SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint,
				coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&retained, &lag, &status)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			f.walStatus, f.retained = "missing", -1
		case err != nil:
			continue
		default:
			f.walStatus, f.retained = status, -1
			if retained != nil {
				f.retained = *retained
			}
			if lag != nil {
				f.slotLagB = *lag
			}
		}
		switch {
		case f.walStatus == "lost" || f.walStatus == "missing":
			if !f.lostWarned {
				f.lostWarned = true
				r.log.Error(f.slotMarker(warnBytes), "feed", f.feed.String(), "slot", slot)
			}
		case f.walStatus == "unreserved" || (warnBytes > 0 && f.retained > warnBytes):
			if time.Since(f.warnedAt) >= slotWarnEvery {
				f.warnedAt = time.Now()
				r.log.Warn(f.slotMarker(warnBytes), "feed", f.feed.String(), "slot", slot, "retained_bytes", f.retained,
					"slot_warn_bytes", warnBytes, "wal_status", f.walStatus)
			}
		}
	}
}

// slotMarker says, in the status and the log, what is wrong with a feed's
// slot and what to do ("" when nothing is).
func (f *feedRun) slotMarker(warnBytes int64) string {
	d := fmt.Sprintf("region %d", f.feed.Target.ID)
	switch {
	case f.walStatus == "lost":
		return "SLOT INVALIDATED by PostgreSQL (it retained more WAL than max_slot_wal_keep_size): stop and run `votr apply` again; it re-syncs " + d + " (drops the slot, re-creates it, copies again)"
	case f.walStatus == "missing":
		return "SLOT MISSING: stop and run `votr apply` again; it re-creates the slot and re-syncs " + d
	case f.walStatus == "unreserved":
		return fmt.Sprintf("SLOT AT RISK: it retains %s, past max_slot_wal_keep_size; PostgreSQL invalidates it at the next checkpoint unless its sink catches up", bytesText(f.retained))
	case warnBytes > 0 && f.retained > warnBytes:
		return fmt.Sprintf("SLOT RETAINS %s of WAL, more than sink.slotWarnBytes (%s): its sink is behind or stopped", bytesText(f.retained), bytesText(warnBytes))
	}
	return ""
}

// statusLines are the live status block: one line per region, one per feed.
func statusLines(head string, regions []*regionRun, feeds []*feedRun, warnBytes int64) []string {
	lines := []string{"── " + head + " " + strings.Repeat("─", 20)}
	for _, rr := range regions {
		txns, _ := rr.rates()
		inv := "invariant ok"
		if v := rr.vstat.Violations.Load(); v > 0 {
			inv = fmt.Sprintf("INVARIANT VIOLATED %d×", v)
		} else if rr.vstat.Checks.Load() == 0 {
			inv = "invariant not checked yet"
		}
		work := ""
		if rr.stats.Txns.Load() > 0 || txns > 0 {
			work = fmt.Sprintf("  %7.1f txn/s  %d committed", txns, rr.stats.Txns.Load())
		}
		lines = append(lines, fmt.Sprintf("region %-16s ballots %9d  %s%s", rr.reg.Label(), rr.sum, inv, work))
	}
	sorted := append([]*feedRun(nil), feeds...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].feed.String() < sorted[j].feed.String() })
	for _, f := range sorted {
		retains := ""
		if f.retained >= 0 {
			retains = "  retains " + bytesText(f.retained)
		}
		var line string
		if f.sink == nil {
			line = fmt.Sprintf("feed   %-16s slot lag %s%s (sink runs elsewhere)", f.feed.String(), bytesText(f.slotLagB), retains)
		} else {
			st := f.sink.Status()
			state := "connected"
			if !st.Connected {
				state = "connecting"
			}
			line = fmt.Sprintf("feed   %-16s %8.0f rows/s  lag %-8s %9d rows  %d conflicts%s  %s", f.feed.String(), st.RowsPerSec,
				st.Lag.Round(time.Millisecond), st.Rows, st.Conflicts, retains, state)
			if st.DeadLettered > 0 {
				line += fmt.Sprintf("  %d DEAD-LETTERED", st.DeadLettered)
			}
			if st.LastError != "" && !st.Connected {
				line += "  (" + oneLine(st.LastError) + ")"
			}
		}
		if m := f.slotMarker(warnBytes); m != "" {
			line += "  " + m
		}
		lines = append(lines, line)
	}
	return lines
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}
