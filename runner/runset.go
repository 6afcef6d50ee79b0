package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
	"github.com/votr-dev/votr/sink"
	"github.com/votr-dev/votr/workload"
)

// runSet is what a run has going: per region a pool, a validation loop and
// (on spokes) workers; per feed a sink. Regions and feeds can join and leave
// while the run goes on (a topology edited and reloaded).
type runSet struct {
	r        *Runner
	o        RunOptions
	registry *prometheus.Registry
	fail     func(error)
	// Parents of every sink, validator and worker context: cancelled only
	// when the run ends at once.
	ctx context.Context

	mu      sync.Mutex
	t       *config.Topology
	regions []*regionRun
	feeds   []*feedRun
	// gone are spokes removed during the run: their ballots stay in the
	// other regions and still count.
	gone []*regionRun
	// budget is the ballots the whole run may cast (nil: no limit), shared
	// by the workers of every region.
	budget *workload.Budget

	// fan runs the feeds that share a slot (feedRun.shared); fanMu
	// serialises its restarts.
	fanMu sync.Mutex
	fan   *fanout
}

// fanout is the feeds of a run that read one shared slot, run by one
// sink.Fanout, which is started again whenever one of them joins or leaves.
type fanout struct {
	slot  string
	feeds []*feedRun
	stop  context.CancelFunc
	done  chan struct{} // closed when the Fanout has returned
}

// snapshot returns the current regions and feeds.
func (rs *runSet) snapshot() (*config.Topology, []*regionRun, []*feedRun) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.t, slices.Clone(rs.regions), slices.Clone(rs.feeds)
}

// openRegion connects to a region and starts its validation loop.
func (rs *runSet) openRegion(rr *regionRun) error {
	pcfg, err := pgxpool.ParseConfig(rr.dsn)
	if err != nil {
		return fmt.Errorf("region %s: %w", rr.reg.Label(), config.ScrubError(err, rr.dsn))
	}
	pcfg.MaxConns = 3
	if rs.t.RunsWorkers(rr.reg.ID) {
		pcfg.MaxConns = int32(rs.t.Workers) + 3
	}
	pcfg.ConnConfig.RuntimeParams["application_name"] = fmt.Sprintf("votr region %d", rr.reg.ID)
	works := rs.t.RunsWorkers(rr.reg.ID)
	if name := rs.r.processName(workersPrefix); works && name != "" {
		pcfg.ConnConfig.RuntimeParams["application_name"] = name
	}
	rr.pool, err = pgxpool.NewWithConfig(rs.ctx, pcfg)
	if err != nil {
		return fmt.Errorf("region %s: %w", rr.reg.Label(), config.ScrubError(err, rr.dsn))
	}
	// The count below is the run's base: no earlier process's transaction
	// may commit after it.
	if works {
		if err := rs.r.workersFree(rs.ctx, rr.pool, rr.reg); err != nil {
			rr.pool.Close()
			return err
		}
	}
	if err := rr.pool.QueryRow(rs.ctx, `SELECT count(*) FROM public.ballots WHERE src = $1`, rr.reg.ID).Scan(&rr.base); err != nil {
		rr.pool.Close()
		return fmt.Errorf("region %s: count its ballots: %w", rr.reg.Label(), err)
	}
	rr.collectors = registerRegionMetrics(rs.registry, rr)
	vctx, stop := context.WithCancel(rs.ctx)
	rr.stopVal, rr.valDone = stop, make(chan struct{})
	every := rs.t.Workload.ValidateEvery
	go func() {
		defer close(rr.valDone)
		failFast := rs.t.Workload.FailFast || rs.o.FailFast
		err := workload.RunValidator(vctx, rr.pool, rr.reg.ID, every, failFast, rs.r.log, &rr.vstat)
		var inconsistent *workload.InconsistentError
		switch {
		case errors.As(err, &inconsistent):
			rs.fail(err) // it names the region itself
		case err != nil:
			rs.fail(fmt.Errorf("region %s: validation: %w", rr.reg.Label(), err))
		}
	}()
	return nil
}

// startWorkers starts a spoke's workers.
func (rs *runSet) startWorkers(rr *regionRun) {
	wctx, stop := context.WithCancel(rs.ctx)
	rr.stopWork, rr.workDone = stop, make(chan struct{})
	rr.prev = rr.stats.Snapshot()
	t := rs.t
	go func() {
		defer close(rr.workDone)
		opts := []workload.Option{workload.WithRateLimit(rs.o.RateLimit)}
		if rs.budget != nil {
			opts = append(opts, workload.WithBudget(rs.budget))
		}
		err := workload.Run(wctx, rr.pool, rr.reg.ID, t.Workers, t.Workload, rs.r.log, &rr.stats, opts...)
		if err != nil {
			rs.r.log.Error("workers stopped", "region", rr.reg.ID, "err", err)
			rs.fail(err)
		}
	}()
}

// stopWorkers stops a region's workers and waits for them.
func (rr *regionRun) stopWorkers() {
	if rr.stopWork != nil {
		rr.stopWork()
		<-rr.workDone
	}
}

// close stops the region's validation loop and closes its pool.
func (rs *runSet) closeRegion(rr *regionRun) {
	rr.stopWorkers()
	if rr.stopVal != nil {
		rr.stopVal()
		<-rr.valDone
	}
	for _, c := range rr.collectors {
		rs.registry.Unregister(c)
	}
	if rr.pool != nil {
		rr.pool.Close()
	}
}

// startFeeds starts the feeds' sinks (none with NoSinks); those that share
// a slot join the run's fanout, started again once for all of them.
func (rs *runSet) startFeeds(feeds []*feedRun) error {
	if rs.o.NoSinks {
		return nil
	}
	var joining []*feedRun
	for _, f := range feeds {
		s, err := sink.New(rs.r.feedConfig(rs.t, f.feed, f.srcDSN, f.dstDSN, rs.r.log, rs.registry))
		if err != nil {
			return err // the caller stops what started
		}
		f.sink = s
		if f.shared != "" {
			joining = append(joining, f)
			continue
		}
		sctx, stop := context.WithCancel(rs.ctx)
		f.stop, f.done = stop, make(chan struct{})
		go func() {
			defer close(f.done)
			if err := s.Run(sctx); err != nil {
				rs.r.log.Error("feed stopped", "feed", f.feed.String(), "err", err)
				rs.fail(err)
			}
		}()
	}
	if len(joining) == 0 {
		return nil
	}
	rs.fanMu.Lock()
	defer rs.fanMu.Unlock()
	var members []*feedRun
	if rs.fan != nil {
		members = rs.fan.feeds
	}
	return rs.restartFanout(joining[0].shared, append(slices.Clone(members), joining...))
}

// restartFanout stops the run's fanout, if any, and starts one for feeds
// (none when empty). The caller holds fanMu. Each feed's done is the
// Fanout's: it closes when the Fanout returns.
func (rs *runSet) restartFanout(slot string, feeds []*feedRun) error {
	if fo := rs.fan; fo != nil && fo.stop != nil {
		fo.stop()
		<-fo.done
	}
	rs.fan = &fanout{slot: slot, feeds: feeds}
	if len(feeds) == 0 {
		return nil
	}
	sinks := make([]*sink.Sink, len(feeds))
	for i, f := range feeds {
		sinks[i] = f.sink
	}
	fo, err := sink.NewFanout(slot, sinks...)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(rs.ctx)
	done := make(chan struct{})
	rs.fan.stop, rs.fan.done = stop, done
	for _, f := range feeds {
		f.done = done
	}
	go func() {
		defer close(done)
		if err := fo.Run(ctx); err != nil {
			rs.r.log.Error("feeds sharing a slot stopped", "slot", slot, "err", err)
			rs.fail(err)
		}
	}()
	return nil
}

// stopFeeds stops feeds' sinks and waits for them (an open target
// transaction rolls back: nothing is half-applied). Feeds of the fanout
// leave it; it goes on with the others. Departing feeds (their spoke
// leaves the topology) that read the shared slot get a copy of it first:
// the fanout going on without them moves it past what they applied.
func (rs *runSet) stopFeeds(feeds []*feedRun, departing bool) {
	var leaving []*feedRun
	for _, f := range feeds {
		if f.shared != "" && f.sink != nil {
			leaving = append(leaving, f)
		} else {
			f.stopSink()
		}
	}
	if len(leaving) == 0 {
		return
	}
	rs.fanMu.Lock()
	defer rs.fanMu.Unlock()
	if rs.fan == nil {
		return
	}
	fo := rs.fan
	if fo.stop != nil {
		fo.stop()
		<-fo.done
		fo.stop = nil
	}
	if departing {
		// Bounded: the other feeds wait meanwhile. One that could not
		// leave is still recorded, and the Fanout started below copies
		// the slot for it before it streams (or waits until it can).
		lctx, cancel := context.WithTimeout(rs.ctx, leaveWait)
		for _, f := range leaving {
			if err := f.sink.LeaveSharedSlot(lctx, fo.slot); err != nil {
				rs.r.log.Warn("a departing feed could not leave the shared slot yet; the hub's other outbound feeds see to it before they stream", "feed", f.feed.String(), "err", err)
			}
		}
		cancel()
	}
	rest := slices.DeleteFunc(slices.Clone(fo.feeds), func(f *feedRun) bool { return slices.Contains(leaving, f) })
	if err := rs.restartFanout(fo.slot, rest); err != nil {
		rs.fail(err)
	}
}

// leaveWait bounds how long departing feeds may take to leave the shared
// slot while the hub's other outbound feeds are stopped.
const leaveWait = 30 * time.Second

// stopSink stops a feed's own sink and waits for it (its open target
// transaction rolls back: nothing is half-applied).
func (f *feedRun) stopSink() {
	if f.stop != nil {
		f.stop()
		<-f.done
	}
}

// stopAll stops every worker, validation loop and sink, in that order.
func (rs *runSet) stopAll() {
	_, regions, feeds := rs.snapshot()
	for _, rr := range regions {
		rr.stopWorkers()
	}
	for _, rr := range regions {
		if rr.stopVal != nil {
			rr.stopVal()
			<-rr.valDone
		}
	}
	rs.stopFeeds(feeds, false)
}

// reload applies the topology file as it is now to the running set: the
// spokes it no longer has leave (their workers stop, what they committed is
// drained to the hub, their feeds stop, then the plan removes the feeds'
// slots, origins, checkpoints and publication); the spokes it adds join
// (the plan creates them and backfills them, then their feeds and workers
// start). The other regions keep running throughout. Errors leave the run
// going with what it has; the next apply finishes the job.
func (rs *runSet) reload(ctx context.Context) error {
	r := rs.r
	old, running, _ := rs.snapshot()
	t, err := r.load(old.Path)
	if err != nil {
		return fmt.Errorf("the edited topology does not load, so nothing changed:\n%w", err)
	}
	if t.Hub.ServerKey() != old.Hub.ServerKey() || t.Hub.Database != old.Hub.Database {
		return errors.New("the edited topology has another hub: a running apply cannot move its hub; stop it and run apply again")
	}
	same := func(a, b config.Region) bool {
		return a.ID == b.ID && a.ServerKey() == b.ServerKey() && a.Database == b.Database
	}
	// Who leaves and joins is told from the spokes that run, not from the
	// last topology loaded: a reload that failed after it was loaded (a
	// join refused, say) left its spokes out, and the next one starts them.
	var leaving, joining []config.Region
	for _, rr := range running {
		if rr.reg.ID != old.Hub.ID && !slices.ContainsFunc(t.Spokes, func(n config.Region) bool { return same(n, rr.reg) }) {
			leaving = append(leaving, rr.reg)
		}
	}
	for _, reg := range t.Spokes {
		if !slices.ContainsFunc(running, func(rr *regionRun) bool { return same(rr.reg, reg) }) {
			joining = append(joining, reg)
		}
	}
	fmt.Fprintf(r.opts.Out, "\nReloading %s while the run goes on: %d spoke(s) leaving, %d joining.\n", t.Path, len(leaving), len(joining))

	// What leaves stops first, so that its slots are free to drop.
	for _, reg := range leaving {
		rs.leave(ctx, reg)
	}
	rs.mu.Lock()
	rs.t = t
	rs.mu.Unlock()

	p, in, st, err := r.plan(ctx, t, true)
	if err != nil {
		return err
	}
	defer in.closeExports(ctx)
	if err := p.WriteText(r.opts.Out); err != nil {
		return err
	}
	if err := r.recordTopology(t, st); err != nil {
		return err
	}
	if !p.Empty() {
		fmt.Fprintln(r.opts.Out)
	}
	if _, err := r.execute(ctx, &execution{t: t, in: in, st: st}, p, true); err != nil {
		return err
	}

	dsns, err := r.regionDSNs(ctx, t, true)
	if err != nil {
		return err
	}
	for _, reg := range joining {
		if err := rs.join(reg, dsns); err != nil {
			return err
		}
	}
	_, regions, feeds := rs.snapshot()
	fmt.Fprintf(r.opts.Out, "Reload complete: %d regions, %d feeds running.\n", len(regions), len(feeds))
	if rs.o.NoSinks && len(joining) > 0 {
		fmt.Fprintln(r.opts.Out, "Sinks run outside this apply (--no-sinks): start `votr sink FILE --feed S:D` for the new feeds.")
	}
	return nil
}

// leave takes a spoke out of the run: its workers stop, its feed into the
// hub drains what they committed (up to drainDelay), then its feeds and
// validation loop stop.
func (rs *runSet) leave(ctx context.Context, reg config.Region) {
	rs.mu.Lock()
	i := slices.IndexFunc(rs.regions, func(rr *regionRun) bool { return rr.reg.ID == reg.ID })
	var rr *regionRun
	if i >= 0 {
		rr = rs.regions[i]
	}
	var mine, rest []*feedRun
	for _, f := range rs.feeds {
		if f.feed.Source.ID == reg.ID || f.feed.Target.ID == reg.ID {
			mine = append(mine, f)
		} else {
			rest = append(rest, f)
		}
	}
	t := rs.t
	hub := t.Hub.ID
	rs.mu.Unlock()
	if rr == nil {
		return
	}
	rr.stopWorkers()
	var out []*feedRun
	for _, f := range mine {
		if f.feed.Target.ID == hub {
			out = append(out, f)
		}
	}
	if rs.r.drainLeaving(ctx, t, reg, out, rr.pool) {
		// Recorded, so that the plan may remove the feeds even if the
		// spoke's server left the topology with it.
		rs.r.recordDrained(out)
	} else {
		rs.r.log.Warn("the leaving spoke's last ballots did not all reach the hub within drainDelay; the plan drains its feed again before removing it", "region", reg.Label())
	}
	rs.stopFeeds(mine, true)
	rs.closeRegion(rr)
	rs.mu.Lock()
	rs.regions = slices.DeleteFunc(rs.regions, func(x *regionRun) bool { return x == rr })
	rs.feeds = rest
	rs.gone = append(rs.gone, rr)
	rs.mu.Unlock()
	rs.r.log.Info("spoke left the run", "region", reg.Label(), "committed", rr.base+rr.stats.Committed()[reg.ID])
}

// join starts a spoke the plan has just created: feeds first, then its
// validation loop and workers.
func (rs *runSet) join(reg config.Region, dsns map[int]string) error {
	rs.mu.Lock()
	t := rs.t
	rs.mu.Unlock()
	rr := &regionRun{reg: reg, dsn: dsns[reg.ID]}
	var feeds []*feedRun
	for _, f := range t.Feeds() {
		if f.Source.ID == reg.ID || f.Target.ID == reg.ID {
			feeds = append(feeds, &feedRun{feed: f, srcDSN: dsns[f.Source.ID], dstDSN: dsns[f.Target.ID], shared: plan.SharedSlotOf(t, f), retained: -1})
		}
	}
	if err := rs.startFeeds(feeds); err != nil {
		rs.stopFeeds(feeds, false)
		return err
	}
	if err := rs.openRegion(rr); err != nil {
		rs.stopFeeds(feeds, false)
		return err
	}
	rs.startWorkers(rr)
	rs.mu.Lock()
	rs.regions = append(rs.regions, rr)
	rs.feeds = append(rs.feeds, feeds...)
	rs.mu.Unlock()
	rs.r.log.Info("spoke joined the run", "region", reg.Label())
	return nil
}

// load reads the topology file again (Options.Load, else config.Load).
func (r *Runner) load(path string) (*config.Topology, error) {
	if r.opts.Load != nil {
		return r.opts.Load(path)
	}
	return config.Load(path, os.LookupEnv)
}
