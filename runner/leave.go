package runner

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/plan"
	"github.com/votr-dev/votr/sink"
)

// A spoke that leaves the topology first brings what it committed to the
// hub: its feed into the hub is drained up to the spoke's WAL end, and only
// then are its slot and checkpoint dropped. Online (a reload), the running
// sink drains it (runSet.leave); when that was interrupted, or the spoke
// left between two applies, the plan's drain action does it with a sink of
// its own (drainFormer). Both wait through drainLeaving.

// drainLeaving waits, for at most the topology's drainDelay, until the
// leaving spoke reg's feeds into the hub (out) have processed its WAL up to
// its position now; pool is a connection pool to the spoke's database. It
// reports whether they got there.
func (r *Runner) drainLeaving(ctx context.Context, t *config.Topology, reg config.Region, out []*feedRun, pool *pgxpool.Pool) bool {
	dctx, cancel := context.WithTimeout(ctx, t.DrainDelay)
	defer cancel()
	r.log.Info("draining the leaving spoke's feed into the hub", "region", reg.Label(), "drain_delay", t.DrainDelay)
	ok := r.drainRound(dctx, out, map[int]*pgxpool.Pool{reg.ID: pool})
	if ok {
		r.log.Info("the leaving spoke's feed into the hub is drained", "region", reg.Label())
	}
	return ok
}

// drainFormer carries out a drain action: a spoke that left the topology
// still has its feed into the hub (an online removal was interrupted, or
// the spoke left between two applies). A sink of this apply's own streams
// the feed up to the spoke's WAL end; where another process holds the slot
// (a `votr sink` of --no-sinks), its confirmations are waited for instead.
// A feed that does not get there is not removed: apply stops with what
// would be lost, unless DropUndrained gives it up.
func (r *Runner) drainFormer(ctx context.Context, x *execution, srv *server, a plan.Action) error {
	if x.t == nil || a.Region == nil {
		return fmt.Errorf("internal: drain of %s without a topology or region", a.Feed)
	}
	hub := x.t.Hub
	hubSrv := x.in.servers[hub.ServerKey()]
	if hubSrv == nil {
		return fmt.Errorf("internal: the hub's server %s was not inspected", hub.ServerKey())
	}
	srcDSN, err := srv.dsn(a.Database)
	if err != nil {
		return err
	}
	dstDSN, err := hubSrv.dsn(hub.Database)
	if err != nil {
		return err
	}
	reg := config.Region{ID: *a.Region, Database: a.Database}
	f := &feedRun{feed: config.Feed{Source: reg, Target: hub}, srcDSN: srcDSN, dstDSN: dstDSN, retained: -1}
	pcfg, err := pgxpool.ParseConfig(srcDSN)
	if err != nil {
		return fmt.Errorf("feed %s: %w", a.Feed, config.ScrubError(err, srcDSN))
	}
	pcfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("feed %s: %w", a.Feed, config.ScrubError(err, srcDSN))
	}
	defer pool.Close()

	held, err := r.slotHeld(ctx, srv, a.Name)
	if err != nil {
		return err
	}
	if held == "" {
		s, err := sink.New(r.feedConfig(x.t, f.feed, srcDSN, dstDSN, r.log, nil))
		if err != nil {
			return err
		}
		sctx, stop := context.WithCancel(ctx)
		f.sink, f.stop, f.done = s, stop, make(chan struct{})
		go func() {
			defer close(f.done)
			if err := s.Run(sctx); err != nil {
				r.log.Error("feed stopped", "feed", a.Feed, "err", err)
			}
		}()
		defer f.stopSink()
	} else {
		r.log.Info("the leaving spoke's slot is held by another process: waiting for its confirmations", "feed", a.Feed, "holder", held)
	}
	if r.drainLeaving(ctx, x.t, reg, []*feedRun{f}, pool) {
		x.st.markDrained(a.Feed)
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	lost := fmt.Sprintf("feed %s did not catch up with region %d within drainDelay (%s): what region %d committed that the hub lacks would be lost if its slot and checkpoint were dropped",
		a.Feed, reg.ID, x.t.DrainDelay, reg.ID)
	if r.opts.DropUndrained {
		r.log.Warn(lost+"; dropped anyway (--drop-undrained)", "feed", a.Feed)
		return nil
	}
	return fmt.Errorf("%s; they are kept: make sure %s is reachable and run apply again (or pass --drop-undrained to give those rows up)", lost, plan.On(a.Database, srv.key))
}

// slotHeld names the live process holding a slot, or "" when none does
// (a walsender of a killed process of this deployment is ended).
func (r *Runner) slotHeld(ctx context.Context, srv *server, name string) (string, error) {
	var holder string
	err := withConn(ctx, srv, "", func(c *pgx.Conn) error {
		slots, err := listSlots(ctx, c)
		if err != nil {
			return err
		}
		if i := slices.IndexFunc(slots, func(s plan.Slot) bool { return s.Name == name && s.Active }); i >= 0 && !r.endStale(ctx, c, slots[i], srv.key) {
			holder = slots[i].Holder()
		}
		return nil
	})
	return holder, err
}

// checkUndrained keeps from the plan's undrained feeds those the state does
// not record as drained (an online removal drained them before their
// spoke's server left the topology), and refuses them for apply unless
// DropUndrained; plan lists them in its notes.
func (r *Runner) checkUndrained(p *plan.Plan, st *State, apply bool) error {
	var left []plan.Undrained
	for _, u := range p.Undrained {
		if !slices.Contains(st.Drained, u.Feed) {
			left = append(left, u)
		}
	}
	p.Undrained = left
	if len(left) == 0 {
		return nil
	}
	if apply && !r.opts.DropUndrained {
		return plan.UndrainedError(left, "--drop-undrained")
	}
	for _, u := range left {
		how := "apply refuses to remove it unless given --drop-undrained"
		if r.opts.DropUndrained {
			how = "it is removed anyway (--drop-undrained): what the hub lacks of it is given up"
		}
		p.Notes = append(p.Notes, fmt.Sprintf("%s; %s", u, how))
	}
	return nil
}

// markDrained records that feed (a spoke's into the hub) was drained after
// its spoke left the topology.
func (s *State) markDrained(feed string) {
	if !slices.Contains(s.Drained, feed) {
		s.Drained = append(s.Drained, feed)
	}
}

// forgetDrained drops the record of feeds: their checkpoint is gone, or
// they are in the topology again.
func (s *State) forgetDrained(feeds ...string) {
	s.Drained = slices.DeleteFunc(s.Drained, func(f string) bool { return slices.Contains(feeds, f) })
}

// recordDrained records in the state that feeds were drained (a spoke
// leaving a running apply, which holds the lock).
func (r *Runner) recordDrained(feeds []*feedRun) {
	st, err := r.loadState()
	if err == nil {
		for _, f := range feeds {
			st.markDrained(f.feed.String())
		}
		err = r.saveState(st)
	}
	if err != nil {
		r.log.Warn("could not record the drained feeds in the state", "err", err)
	}
}
