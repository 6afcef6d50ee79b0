package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Fanout applies several feeds of one source region through one
// replication slot. A walsender reads every WAL record of its server, so a
// hub with a slot per outbound feed reads and decodes its WAL once per
// spoke; through one slot it does so once (at 8 spokes on one server the
// walsenders' CPU per transaction fell from 2.6 to 1.4 ms: BENCHMARKS.md).
//
// Each feed keeps its target session, checkpoint, replication origin and
// echo filter: the stream starts where the feed furthest behind resumes,
// each feed skips what it has applied, and the slot is confirmed at the
// least position every feed may confirm. A failure of any feed restarts
// them all from their checkpoints; a feed whose own failures (a target
// down) go on for the detach time is detached to a slot of its own (see
// Run). A feed that is slow but does not fail still holds the others back,
// and the slot keeps WAL for the slowest feed.
//
// The slot must exist in the source database, created (like a feed's own
// slot) before any of the feeds' checkpoints. This is the first stage of
// docs/design/shared-outbound-slot.md: the bench runs a hub's outbound
// feeds this way with -shared-hub-slot; votr apply does not yet.
type Fanout struct {
	slot        string
	sinks       []*Sink
	detachAfter time.Duration
	rejoinEvery time.Duration // how often feeds alone are looked at for a handover
}

// NewFanout checks that the sinks can share slot: at least one, all from
// the same source, to different targets, none discarding (Config.Discard
// measures one feed's stream alone). A sink given to a Fanout is run by it
// and must not be Run itself.
func NewFanout(slot string, sinks ...*Sink) (*Fanout, error) {
	if len(sinks) == 0 {
		return nil, errors.New("fanout: no feeds to run")
	}
	if err := checkSlotName(slot); err != nil {
		return nil, fmt.Errorf("fanout: %w", err)
	}
	first := sinks[0].cfg
	targets := map[int]bool{}
	for _, s := range sinks {
		c := s.cfg
		switch {
		case c.SourceID != first.SourceID || c.SourceDB != first.SourceDB || c.SourceDSN != first.SourceDSN:
			return nil, fmt.Errorf("fanout: feed %s reads region %d (%s), feed %s region %d (%s): feeds sharing a slot share their source",
				s.feed, c.SourceID, c.SourceDB, sinks[0].feed, first.SourceID, first.SourceDB)
		case targets[c.TargetID]:
			return nil, fmt.Errorf("fanout: feed %s is given twice", s.feed)
		case c.Discard:
			return nil, fmt.Errorf("fanout: feed %s discards its stream; a discarding sink reads its own slot", s.feed)
		}
		targets[c.TargetID] = true
	}
	return &Fanout{slot: slot, sinks: sinks, detachAfter: DefaultDetachAfter, rejoinEvery: 10 * time.Second}, nil
}

// DefaultDetachAfter is how long one feed's own failures (its target down,
// say) or stall may hold the others of a Fanout back before it is
// detached.
const DefaultDetachAfter = 30 * time.Second

// WithDetachAfter sets how long one feed's own failures or stall may hold
// the shared sessions back before the feed is detached (see Run); 0 never
// detaches.
func (f *Fanout) WithDetachAfter(d time.Duration) *Fanout {
	f.detachAfter = d
	return f
}

// Run applies the feeds until ctx is done (then it returns nil) or one of
// them fails for good, as Sink.Run does for one feed.
//
// A feed whose own errors end every shared session for the detach time,
// or whose applier takes nothing from the stream that long while the
// others wait, is detached: the shared slot, idle at that moment and confirmed no further
// than every feed has durably applied, is copied to the feed's own slot,
// from which the feed goes on alone (as Sink.Run) while the others go on
// through the shared slot, which no longer waits for it. A feed whose own
// slot exists when Run starts was detached before and runs alone too: the
// shared slot may since have passed what it had applied.
//
// A feed running alone, connected and without error, whose own slot has
// caught up with the shared one, is handed back (see handover).
func (f *Fanout) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	shared, alone, err := f.members(ctx)
	if err != nil || ctx.Err() != nil {
		return err
	}
	r := &fanoutRun{f: f, ctx: ctx, events: make(chan fanoutEvent, len(f.sinks)+1), alone: map[*Sink]*runHandle{}}
	defer r.stopAll()
	for _, s := range alone {
		r.startAlone(s)
	}
	r.startShared(shared)
	tick := time.NewTicker(f.rejoinEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-r.events:
			if ev.detach == nil {
				return ev.err // a feed failed for good
			}
			s := ev.detach
			if err := f.detach(ctx, s); err != nil {
				s.log.Error("cannot detach the feed from the shared slot; it stays", "slot", f.slot, "err", err)
				r.startShared(r.shared)
				continue
			}
			var rest []*Sink
			for _, o := range r.shared {
				if o != s {
					rest = append(rest, o)
				}
			}
			r.startShared(rest)
			r.startAlone(s)
		case <-tick.C:
			for s := range r.alone {
				if err := r.handover(s); err != nil {
					return err
				}
			}
		}
	}
}

// fanoutRun is what a Fanout's Run has going: the shared sessions of some
// feeds and each other feed alone.
type fanoutRun struct {
	f      *Fanout
	ctx    context.Context
	events chan fanoutEvent // what ended by itself
	shared []*Sink
	sh     *runHandle // nil while no feed is shared
	alone  map[*Sink]*runHandle
}

// fanoutEvent is the end of the shared sessions (detach: to detach that
// feed, else err, nil when ctx is done) or of a feed alone (err).
type fanoutEvent struct {
	detach *Sink
	err    error
}

// runHandle stops one goroutine of a fanoutRun; one stopped this way
// reports no event.
type runHandle struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (h *runHandle) stop() {
	h.cancel()
	<-h.done
}

func (r *fanoutRun) start(run func(ctx context.Context) fanoutEvent) *runHandle {
	ctx, cancel := context.WithCancel(r.ctx)
	h := &runHandle{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		ev := run(ctx)
		if ctx.Err() != nil && r.ctx.Err() == nil {
			return // stopped on purpose
		}
		select {
		case r.events <- ev:
		default: // Run has returned
		}
	}()
	return h
}

// startShared runs the shared sessions of sinks, after stopping the old
// ones (if they have not ended).
func (r *fanoutRun) startShared(sinks []*Sink) {
	if r.sh != nil {
		r.sh.stop()
	}
	r.shared, r.sh = sinks, nil
	if len(sinks) == 0 {
		return
	}
	sinks = slices.Clone(sinks) // the run's own: r.shared changes while it goes on
	r.sh = r.start(func(ctx context.Context) fanoutEvent {
		s, err := runFeeds(ctx, sinks, r.f.slot, r.f.detachAfter)
		return fanoutEvent{detach: s, err: err}
	})
}

func (r *fanoutRun) startAlone(s *Sink) {
	if h := r.alone[s]; h != nil {
		h.stop()
	}
	r.alone[s] = r.start(func(ctx context.Context) fanoutEvent { return fanoutEvent{err: s.Run(ctx)} })
}

func (r *fanoutRun) stopAll() {
	if r.sh != nil {
		r.sh.stop()
	}
	for _, h := range r.alone {
		h.stop()
	}
}

// handover brings feed s, running alone, back to the shared slot once it
// is connected, without error, and its own slot has caught up with the
// shared one. Both stop; the shared slot's confirmed position S (fixed
// once its walsender has gone) is compared with s's own P: s has durably
// applied everything before P, so with S <= P the shared stream gives it
// all it still needs, and s's own slot is dropped. Only the drop makes s
// shared (a Fanout started after a crash before it runs s alone again).
// Otherwise both go on as they were. It returns an error only when ctx
// is done.
func (r *fanoutRun) handover(s *Sink) error {
	st := s.Status()
	if !st.Connected || st.LastError != "" {
		return nil
	}
	conn, err := s.connectTo(r.ctx, s.cfg.SourceDSN, monitorName, false)
	if err != nil {
		return nil // the stream's sessions will say why
	}
	defer conn.Close(context.Background())
	slots := func() (sharedLSN, ownLSN string, active bool, err error) {
		err = conn.QueryRow(r.ctx, `SELECT
			COALESCE((SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), ''),
			COALESCE((SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $2), ''),
			EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name IN ($1, $2) AND active)`,
			r.f.slot, s.ownSlot()).Scan(&sharedLSN, &ownLSN, &active)
		return
	}
	ahead := func(sharedLSN, ownLSN string) bool {
		sl, err1 := pglogrepl.ParseLSN(sharedLSN)
		ol, err2 := pglogrepl.ParseLSN(ownLSN)
		return err1 == nil && err2 == nil && sl <= ol
	}
	if sl, ol, _, err := slots(); err != nil || !ahead(sl, ol) {
		return nil
	}
	if r.sh != nil {
		r.sh.stop()
	}
	r.alone[s].stop()
	defer func() {
		r.startShared(r.shared)
		if _, ok := r.alone[s]; ok {
			r.startAlone(s)
		}
	}()
	// Until both walsenders have gone, a confirmation they were sent may
	// still move a slot on.
	for {
		sl, ol, active, err := slots()
		if err != nil {
			return r.ctx.Err()
		}
		if active {
			select {
			case <-r.ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if !ahead(sl, ol) {
			return nil
		}
		break
	}
	if _, err := conn.Exec(r.ctx, `SELECT pg_catalog.pg_drop_replication_slot($1)`, s.ownSlot()); err != nil {
		s.log.Warn("cannot hand the feed back to the shared slot; it goes on alone", "err", err)
		return r.ctx.Err()
	}
	delete(r.alone, s)
	r.shared = append(r.shared, s)
	s.log.Info("feed handed back to the shared slot", "slot", r.f.slot)
	return nil
}

// members splits the feeds into those that read the shared slot and those
// whose own slot exists (detached before), retrying while the source
// cannot be asked.
func (f *Fanout) members(ctx context.Context) (shared, alone []*Sink, err error) {
	lead := f.sinks[0]
	names := make([]string, len(f.sinks))
	for i, s := range f.sinks {
		names[i] = s.ownSlot()
	}
	backoff := 100 * time.Millisecond
	var own []string
	for {
		err = func() error {
			conn, err := lead.connectTo(ctx, lead.cfg.SourceDSN, monitorName, false)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			rows, err := conn.Query(ctx, `SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE slot_name = ANY($1)`, names)
			if err != nil {
				return err
			}
			own, err = pgx.CollectRows(rows, pgx.RowTo[string])
			return err
		}()
		if err == nil {
			break
		}
		if ferr, ok := fatal(err); ok {
			return nil, nil, fmt.Errorf("fanout: source: %w", ferr)
		}
		lead.log.Warn("fanout: cannot list the source's slots; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, nil, nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	for _, s := range f.sinks {
		if slices.Contains(own, s.ownSlot()) {
			s.log.Info("feed runs on its own slot (detached from the shared slot before)", "slot", s.ownSlot(), "shared", f.slot)
			alone = append(alone, s)
		} else {
			shared = append(shared, s)
		}
	}
	return shared, alone, nil
}

// detach copies the shared slot to s's own slot. The shared sessions have
// ended, so the copy is confirmed no further than s has durably applied
// (the shared slot never is), and s resumes from it without a gap. A copy
// left by an earlier detach that did not finish is kept: it was made the
// same way.
func (f *Fanout) detach(ctx context.Context, s *Sink) error {
	conn, err := s.connectTo(ctx, s.cfg.SourceDSN, monitorName, false)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, `SELECT pg_catalog.pg_copy_logical_replication_slot($1, $2)`, f.slot, s.ownSlot())
	if err != nil && !isCode(err, "42710") {
		return err
	}
	s.log.Warn("feed detached from the shared slot: its own failures held the other feeds back; it goes on alone from its own slot",
		"for", f.detachAfter, "slot", s.ownSlot(), "shared", f.slot)
	return nil
}
