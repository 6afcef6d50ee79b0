package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/votr-dev/votr/schema"
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
// them all from their checkpoints; a feed whose target alone cannot be
// connected to, or whose own failures go on for the detach time, is
// detached to a slot of its own (see Run). A feed that is slow but does
// not fail still holds the others back, and the slot keeps WAL for the
// slowest feed.
//
// The slot must exist in the source database, and each feed must either
// have its own slot (it reads that until it is handed over) or be recorded
// as reading the shared one (SlotMembers). votr apply runs a hub's outbound
// feeds this way with sink.sharedHubSlot (docs/design/shared-outbound-slot.md).
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

// firstRejoinLook is when a Fanout first looks for feeds alone to hand
// back (then every rejoinEvery).
const firstRejoinLook = 2 * time.Second

// DefaultDetachAfter is how long one feed's own failures (other than its
// target out of reach, which detaches it sooner: unreachableFor) or stall
// may hold the others of a Fanout back before it is detached.
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
// A feed whose target alone cannot be connected to for unreachableFor,
// whose own errors end every shared session for the detach time, or
// whose applier takes nothing from the stream that long while the others
// wait, is detached: the shared slot, idle at that moment and confirmed
// no further than every feed has durably applied, is copied to the feed's
// own slot, from which the feed goes on alone (as Sink.Run) while the
// others go on through the shared slot, which no longer waits for it. A feed whose own
// slot exists when Run starts was detached before and runs alone too: the
// shared slot may since have passed what it had applied.
//
// A feed running alone, connected and without error, whose own slot has
// caught up with the shared one, is handed back (see handover).
//
// One Fanout at a time runs a shared slot's feeds: Run holds an advisory
// lock on the source for as long as it streams, and waits while another
// process holds it. Two would take turns on the slot, each confirming it
// at its own feeds' positions, and one could move it past a member of the
// other. If the lock's connection is lost, every session stops, and Run
// takes the lock again and looks at the members afresh.
func (f *Fanout) Run(ctx context.Context) error {
	for {
		err := f.runHolding(ctx)
		if !errors.Is(err, errLockLost) || ctx.Err() != nil {
			return err
		}
		f.sinks[0].log.Warn("fanout: the connection holding the shared slot's lock was lost; stopping its feeds, then taking it again", "slot", f.slot)
	}
}

// errLockLost: the connection holding a Fanout's lock on its slot failed.
var errLockLost = errors.New("fanout: the shared slot's lock was lost")

// runHolding takes the slot's lock (nil when ctx ends first) and runs the
// feeds while it holds it.
func (f *Fanout) runHolding(ctx context.Context) error {
	lock, err := f.holdSlot(ctx)
	if lock == nil {
		return err
	}
	defer lock.Close(context.Background())
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			// A silent source counts as lost too: its backend, and so the
			// lock, may be gone without this connection hearing of it.
			err := ask(ctx, "the source", answerTimeout, func(ctx context.Context) error {
				_, err := lock.Exec(ctx, `SELECT 1`)
				return err
			})
			if err != nil && ctx.Err() == nil {
				cancel(errLockLost)
				return
			}
		}
	}()
	err = f.runLocked(ctx)
	cancel(nil)
	<-watched
	if errors.Is(context.Cause(ctx), errLockLost) {
		return errLockLost
	}
	return err
}

// holdSlot takes the advisory lock of the shared slot on a connection of
// its own to the source and returns that connection, retrying while the
// source cannot be asked or another process holds the lock; nil when ctx
// ends first.
func (f *Fanout) holdSlot(ctx context.Context) (*pgx.Conn, error) {
	lead := f.sinks[0]
	backoff, warned := 100*time.Millisecond, time.Time{}
	for {
		conn, err := lead.connectTo(ctx, lead.cfg.SourceDSN, monitorName, false)
		if err == nil {
			var got bool
			err = ask(ctx, "the source", answerTimeout, func(ctx context.Context) error {
				return conn.QueryRow(ctx, `SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended($1, 0))`, slotLockName(f.slot)).Scan(&got)
			})
			if err == nil && got {
				return conn, nil
			}
			if err == nil && time.Since(warned) > 30*time.Second {
				warned = time.Now()
				lead.log.Warn("fanout: another process runs the shared slot's feeds; waiting for it to stop", "slot", f.slot, "holder", lockHolder(ctx, conn, f.slot))
			}
			conn.Close(context.Background())
		}
		if err != nil {
			if ferr, ok := fatal(err); ok {
				return nil, fmt.Errorf("fanout: source: %w", ferr)
			}
			lead.log.Warn("fanout: cannot take the shared slot's lock; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// slotLockName names the advisory lock of a shared slot.
func slotLockName(slot string) string { return "votr shared slot " + slot }

// lockHolder describes the session holding slot's lock ("" if unknown).
func lockHolder(ctx context.Context, conn *pgx.Conn, slot string) string {
	var pid int
	var app string
	err := ask(ctx, "the source", answerTimeout, func(ctx context.Context) error {
		return conn.QueryRow(ctx, `SELECT a.pid, COALESCE(a.application_name, '')
			FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
			  AND ((l.classid::bigint << 32) | l.objid::bigint) = pg_catalog.hashtextextended($1, 0)
			LIMIT 1`, slotLockName(slot)).Scan(&pid, &app)
	})
	if err != nil {
		return ""
	}
	return fmt.Sprintf("pid %d, application_name %q", pid, app)
}

// runLocked runs the feeds; the caller holds the slot's lock.
func (f *Fanout) runLocked(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	shared, alone, err := f.members(ctx)
	if err != nil || ctx.Err() != nil {
		return err
	}
	r := &fanoutRun{f: f, ctx: ctx, events: make(chan fanoutEvent, len(f.sinks)+1), alone: map[*Sink]*runHandle{},
		retryAt: map[*Sink]time.Time{}, stale: map[*Sink]bool{}}
	defer r.stopAll()
	for _, s := range alone {
		r.startAlone(s)
	}
	r.startShared(shared)
	// The first look comes soon: a Fanout is started again by each join
	// and leave, and its feeds alone (a joining one, say) should not wait
	// a whole period each time. A feed not caught up costs a query.
	tick := time.NewTimer(min(f.rejoinEvery, firstRejoinLook))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-r.events:
			if ev.h.stopped {
				continue // from a run stopped (and replaced) since
			}
			if ev.detach == nil {
				return ev.err // a feed failed for good
			}
			s := ev.detach
			if err := f.detach(ctx, s, ev.err); err != nil {
				// Started at once, the sessions would meet the same
				// failure and ask for the same detach straight away.
				s.log.Error("cannot detach the feed from the shared slot; it stays, and the feeds start again shortly", "slot", f.slot, "in", detachRetryWait, "err", err)
				r.startSharedAfter(r.shared, detachRetryWait)
				continue
			}
			var rest []*Sink
			for _, o := range r.shared {
				if o != s {
					rest = append(rest, o)
				}
			}
			delete(r.stale, s) // its own slot is the one it reads now
			r.startShared(rest)
			r.startAlone(s)
		case <-tick.C:
			tick.Reset(f.rejoinEvery)
			r.dropStale()
			for s := range r.alone {
				// An event already queued comes first: a handover would
				// restart its run and leave it stale.
				if ctx.Err() == nil && len(r.events) == 0 && time.Now().After(r.retryAt[s]) {
					if !r.handover(s) {
						r.retryAt[s] = time.Now().Add(handoverWait)
					}
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
	// retryAt: no handover of a feed before then (one has just failed:
	// each attempt pauses the shared feeds and restarts their sessions).
	retryAt map[*Sink]time.Time
	// stale are shared feeds whose own slot a handover could not drop:
	// behind what they applied, it only holds WAL back.
	stale map[*Sink]bool
}

// fanoutEvent is the end of the shared sessions (detach: to detach that
// feed, for err; else err, nil when ctx is done) or of a feed alone (err),
// from the run h.
type fanoutEvent struct {
	h      *runHandle
	detach *Sink
	err    error
}

// runHandle stops one goroutine of a fanoutRun. Only Run's goroutine
// stops runs, so it alone reads and writes stopped.
type runHandle struct {
	cancel  context.CancelFunc
	done    chan struct{}
	stopped bool // its events, if any, are stale
}

func (h *runHandle) stop() {
	h.stopped = true
	h.cancel()
	<-h.done
}

func (r *fanoutRun) start(run func(ctx context.Context) fanoutEvent) *runHandle {
	ctx, cancel := context.WithCancel(r.ctx)
	h := &runHandle{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		ev := run(ctx)
		ev.h = h
		if ctx.Err() != nil && r.ctx.Err() == nil {
			return // stopped on purpose
		}
		select {
		case r.events <- ev:
		case <-ctx.Done(): // stopped meanwhile, or Run has returned
		}
	}()
	return h
}

// detachRetryWait is how long the shared sessions wait to start again
// after a detach failed.
const detachRetryWait = 5 * time.Second

// startShared runs the shared sessions of sinks, after stopping the old
// ones (if they have not ended).
func (r *fanoutRun) startShared(sinks []*Sink) { r.startSharedAfter(sinks, 0) }

// startSharedAfter is startShared, the sessions beginning after wait.
func (r *fanoutRun) startSharedAfter(sinks []*Sink, wait time.Duration) {
	if r.sh != nil {
		r.sh.stop()
	}
	r.shared, r.sh = sinks, nil
	if len(sinks) == 0 {
		return
	}
	sinks = slices.Clone(sinks) // the run's own: r.shared changes while it goes on
	r.sh = r.start(func(ctx context.Context) fanoutEvent {
		select {
		case <-ctx.Done():
			return fanoutEvent{}
		case <-time.After(wait):
		}
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

// handoverWait bounds each wait of a handover: for the walsenders of the
// slots to go, and for the feed alone to reach the shared slot's position.
const handoverWait = 30 * time.Second

// handover brings feed s, running alone, back to the shared slot when it
// is connected, without error, and its own slot has caught up with the
// shared one.
//
// The shared sessions stop first; once their walsender has gone, the
// shared slot's confirmed position S is fixed. The feed alone goes on
// until its own slot's P has reached S (it has durably applied everything
// before P), then stops; once its walsender has gone too, S <= P still
// holds, so the shared stream gives it all it still needs, and its own
// slot is dropped. Only the drop makes s shared: a Fanout started after a
// crash before it runs s alone again. If a wait runs out (another process
// holds a slot, say) everything goes on as it was, and handover reports
// false.
func (r *fanoutRun) handover(s *Sink) bool {
	st := s.Status()
	if !st.Connected || st.LastError != "" {
		return true // not ready: nothing was tried
	}
	ctx := r.ctx
	conn, err := s.connectTo(ctx, s.cfg.SourceDSN, monitorName, false)
	if err != nil {
		return false // the sessions will say why; the next try waits
	}
	defer conn.Close(context.Background())
	own := s.ownSlot()
	sl, ol, err := slotPositions(ctx, conn, r.f.slot, own)
	if err != nil {
		return false
	}
	if sl > ol {
		return true // not caught up yet
	}
	if r.sh != nil {
		r.sh.stop()
	}
	defer func() { r.startShared(r.shared) }()
	if !waitSlots(ctx, conn, func() (bool, error) { return slotIdle(ctx, conn, r.f.slot) }) {
		return false
	}
	var shared pglogrepl.LSN
	if !waitSlots(ctx, conn, func() (bool, error) {
		sl, ol, err := slotPositions(ctx, conn, r.f.slot, own)
		shared = sl
		return err == nil && sl <= ol, err
	}) {
		return false
	}
	r.alone[s].stop()
	if !waitSlots(ctx, conn, func() (bool, error) { return slotIdle(ctx, conn, own) }) {
		r.startAlone(s)
		return false
	}
	if _, ol, err := slotPositions(ctx, conn, r.f.slot, own); err != nil || ol < shared {
		r.startAlone(s)
		return false
	}
	// Membership first: the own slot still wins until it is dropped.
	if err := ask(ctx, "the source", answerTimeout, func(ctx context.Context) error {
		return SlotMembersIn(conn).Join(ctx, s.feed, r.f.slot)
	}); err != nil {
		s.log.Warn("cannot hand the feed back to the shared slot; it goes on alone", "err", err)
		r.startAlone(s)
		return false
	}
	if err := ask(ctx, "the source", answerTimeout, func(ctx context.Context) error {
		_, err := conn.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot($1)`, own)
		return err
	}); err != nil {
		// The drop may have happened before the error reached us, or,
		// cut off (its answer lost), still happen: its backend is ended
		// first (slotGone), so that what is seen next stays true; one the
		// server refused is over. If that cannot be told, s is shared: an
		// own slot left behind is behind what s has applied (dropped
		// later as stale; until then the next Fanout runs s alone from
		// it), while running s alone on a dropped slot would fail for
		// good.
		var pid uint32
		if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) {
			pid = conn.PgConn().PID()
		}
		gone, cerr := slotGone(ctx, s, own, pid)
		if cerr == nil && !gone {
			s.log.Warn("cannot hand the feed back to the shared slot; it goes on alone", "err", err)
			lctx, cancel := context.WithTimeout(ctx, leaveWait)
			err := leaveShared(lctx, s, r.f.slot, own, s.feed)
			cancel()
			if err != nil {
				// Still a member: it stays in the shared sessions. Its
				// own slot, behind them, is read by the next Fanout,
				// which hands it over again.
				s.log.Warn("the feed stays with the shared slot; its own slot is dropped later", "err", err)
				delete(r.alone, s)
				r.shared = append(slices.Clone(r.shared), s)
				r.stale[s] = true
				return false
			}
			r.startAlone(s)
			return false
		}
		if cerr != nil {
			r.stale[s] = true
		}
	}
	delete(r.alone, s)
	r.shared = append(slices.Clone(r.shared), s)
	s.log.Info("feed handed back to the shared slot", "slot", r.f.slot)
	return true
}

// dropStale drops the own slots of shared feeds that a handover could not
// drop (see handover), each once no session streams it.
func (r *fanoutRun) dropStale() {
	for s := range r.stale {
		err := ask(r.ctx, "the source", setupTimeout, func(ctx context.Context) error {
			conn, err := s.connectTo(ctx, s.cfg.SourceDSN, monitorName, false)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			_, err = conn.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
				WHERE slot_name = $1 AND NOT active`, s.ownSlot())
			return err
		})
		if se := (*silenceError)(nil); unreachable(err) || errors.As(err, &se) {
			return // the source cannot be asked: the others would wait as long
		}
		if gone, _ := slotGone(r.ctx, s, s.ownSlot(), 0); err == nil && gone {
			delete(r.stale, s)
		}
	}
}

// waitSlots polls cond until it holds (true), it fails, ctx is done or
// handoverWait has passed.
func waitSlots(ctx context.Context, conn *pgx.Conn, cond func() (bool, error)) bool {
	deadline := time.Now().Add(handoverWait)
	for {
		ok, err := cond()
		if ok || err != nil || time.Now().After(deadline) {
			return ok
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// slotPositions returns the confirmed positions of the shared slot and a
// feed's own slot; either missing is an error.
func slotPositions(ctx context.Context, conn *pgx.Conn, shared, own string) (sharedLSN, ownLSN pglogrepl.LSN, err error) {
	var st, ot *string
	err = ask(ctx, "the source", answerTimeout, func(ctx context.Context) error {
		return conn.QueryRow(ctx, `SELECT
			(SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1),
			(SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $2)`, shared, own).Scan(&st, &ot)
	})
	if err != nil {
		return 0, 0, err
	}
	if st == nil || ot == nil {
		return 0, 0, fmt.Errorf("slot %s or %s is missing", shared, own)
	}
	if sharedLSN, err = pglogrepl.ParseLSN(*st); err != nil {
		return 0, 0, err
	}
	ownLSN, err = pglogrepl.ParseLSN(*ot)
	return sharedLSN, ownLSN, err
}

// slotIdle reports whether no walsender streams slot: until then, a
// confirmation it was sent may still move the slot on.
func slotIdle(ctx context.Context, conn *pgx.Conn, slot string) (bool, error) {
	var active bool
	err := ask(ctx, "the source", answerTimeout, func(ctx context.Context) error {
		return conn.QueryRow(ctx, `SELECT COALESCE((SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), false)`, slot).Scan(&active)
	})
	return err == nil && !active, err
}

// slotGone asks the source, on a connection of its own (the one an error
// came on may be broken), whether slot no longer exists. pid (0: none) is
// the backend of a connection whose drop of slot was cut off: it is ended
// first, and waited for, so that the drop cannot still happen after the
// answer (its request in flight, or its backend slow); while it cannot be
// ended, nothing can be told.
func slotGone(ctx context.Context, s *Sink, slot string, pid uint32) (bool, error) {
	n := -1
	err := ask(ctx, "the source", setupTimeout, func(ctx context.Context) error {
		conn, err := s.connectTo(ctx, s.cfg.SourceDSN, monitorName, false)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		if pid != 0 {
			var left bool
			if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_terminate_backend($1, $2)
				OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = $1)`,
				int32(pid), int64(answerTimeout/time.Millisecond)).Scan(&left); err != nil {
				return fmt.Errorf("end the backend of the cut drop: %w", err)
			}
			if !left {
				return fmt.Errorf("the backend (pid %d) of a cut drop of slot %s is still there", pid, slot)
			}
		}
		return conn.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot).Scan(&n)
	})
	return err == nil && n == 0, err
}

// members splits the feeds into those that read the shared slot and those
// whose own slot exists (detached before, or new), retrying while the
// source cannot be asked. A feed with its own slot reads it: the shared
// slot may have passed what it applied ("the private slot wins"), and a
// membership left by a detach or handover that did not finish is cleared.
// A feed with neither has lost its slot, which is an error: nothing can
// tell what it missed.
func (f *Fanout) members(ctx context.Context) (shared, alone []*Sink, err error) {
	lead := f.sinks[0]
	names := make([]string, len(f.sinks))
	for i, s := range f.sinks {
		names[i] = s.ownSlot()
	}
	backoff := 100 * time.Millisecond
	for {
		shared, alone = nil, nil
		err = ask(ctx, "the source", setupTimeout, func(ctx context.Context) error {
			conn, err := lead.connectTo(ctx, lead.cfg.SourceDSN, monitorName, false)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			rows, err := conn.Query(ctx, `SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE slot_name = ANY($1)`, names)
			if err != nil {
				return err
			}
			own, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			reads, err := SlotMembersIn(conn).All(ctx)
			if err != nil {
				return err
			}
			// A member this Fanout is not given (its spoke left, or a
			// process runs an older topology) must leave before any
			// session moves the shared slot on without it.
			for feed, slot := range reads {
				if slot != f.slot || slices.ContainsFunc(f.sinks, func(s *Sink) bool { return s.feed == feed }) {
					continue
				}
				var src, dst int
				if _, err := fmt.Sscanf(feed, "%d:%d", &src, &dst); err != nil || src != lead.cfg.SourceID {
					return fmt.Errorf("fanout: votr.slot_members records feed %q as reading the shared slot %s, which is not a feed of region %d", feed, slot, lead.cfg.SourceID)
				}
				if err := leaveShared(ctx, lead, f.slot, schema.Slot(lead.cfg.SourceDB, dst), feed); err != nil {
					if isCode(err, "42704") {
						return &slotError{fmt.Sprintf("the shared slot %s is gone (%v): run `votr apply`, which re-syncs the feeds that read it", f.slot, err)}
					}
					return err
				}
				lead.log.Info("feed no longer run with the shared slot's others: it has a slot of its own", "feed", feed, "slot", schema.Slot(lead.cfg.SourceDB, dst))
			}
			for _, s := range f.sinks {
				switch {
				case slices.Contains(own, s.ownSlot()):
					if reads[s.feed] != "" {
						if err := SlotMembersIn(conn).Leave(ctx, s.feed); err != nil {
							return err
						}
					}
					s.log.Info("feed reads its own slot until it has caught up with the shared slot", "slot", s.ownSlot(), "shared", f.slot)
					alone = append(alone, s)
				case reads[s.feed] == f.slot:
					shared = append(shared, s)
				default:
					return &lostSlotError{feed: s.feed, own: s.ownSlot(), shared: f.slot}
				}
			}
			return nil
		})
		var lost *lostSlotError
		if err == nil || errors.As(err, &lost) {
			return shared, alone, err
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
}

// lostSlotError: a feed of a Fanout has neither its own slot nor
// membership of the shared slot.
type lostSlotError struct{ feed, own, shared string }

func (e *lostSlotError) Error() string {
	return fmt.Sprintf("fanout: feed %s has no slot of its own (%s) and does not read the shared slot %s, so what it has not applied may be gone from both: `votr apply` copies the feed afresh",
		e.feed, e.own, e.shared)
}

// detach copies the shared slot to s's own slot. The shared sessions have
// ended, so the copy is confirmed no further than s has durably applied
// (the shared slot never is), and s resumes from it without a gap. A copy
// left by an earlier detach that did not finish is kept: it was made the
// same way. cause is the feed's error that ended the shared sessions.
func (f *Fanout) detach(ctx context.Context, s *Sink, cause error) error {
	ctx, cancel := context.WithTimeout(ctx, leaveWait)
	defer cancel()
	if err := leaveShared(ctx, s, f.slot, s.ownSlot(), s.feed); err != nil {
		return err
	}
	if unreachable(cause) {
		s.log.Warn("feed detached from the shared slot: its target cannot be reached; it goes on alone from its own slot, so that the other feeds do not wait for it",
			"slot", s.ownSlot(), "shared", f.slot, "err", cause)
		return nil
	}
	s.log.Warn("feed detached from the shared slot: its own failures held the other feeds back; it goes on alone from its own slot",
		"for", f.detachAfter, "slot", s.ownSlot(), "shared", f.slot, "err", cause)
	return nil
}

// LeaveSharedSlot gives the feed, which read the shared slot until now, a
// slot of its own: a copy of the shared slot, whose position no member
// has passed, after which the feed is no longer recorded as a member. No
// session may read the shared slot for this feed meanwhile; a Fanout runs
// a feed's sessions only while it is given the feed. For a feed that
// leaves a running Fanout (its spoke leaves the topology): the Fanout
// that goes on without it would otherwise move the shared slot past what
// it applied while its record still says it reads it. A feed with its own
// slot already keeps it.
func (s *Sink) LeaveSharedSlot(ctx context.Context, shared string) error {
	return leaveShared(ctx, s, shared, s.ownSlot(), s.feed)
}

// leaveWait bounds a leave that the Fanout's loop waits for (a detach, a
// handover undone): the loop runs every feed of the slot, and either
// caller has a way on when the leave fails.
const leaveWait = 3 * setupTimeout

// leaveShared copies the shared slot to own unless own exists, then
// removes feed's membership, on the source's connections of s. It retries
// what fails for a reason reconnecting may cure, until ctx ends: a feed
// whose own slot exists while it is still recorded as a member would be
// trusted to read the shared slot, which goes on without it, if its own
// slot were then dropped by hand.
func leaveShared(ctx context.Context, s *Sink, shared, own, feed string) error {
	backoff := 100 * time.Millisecond
	for {
		err := ask(ctx, "the source", setupTimeout, func(ctx context.Context) error {
			conn, err := s.connectTo(ctx, s.cfg.SourceDSN, monitorName, false)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			_, err = conn.Exec(ctx, `SELECT pg_catalog.pg_copy_logical_replication_slot($1, $2)
				WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $2)`, shared, own)
			if err != nil && !isCode(err, "42710") {
				return fmt.Errorf("copy the shared slot %s to %s: %w", shared, own, err)
			}
			return SlotMembersIn(conn).Leave(ctx, feed)
		})
		if err == nil || ctx.Err() != nil {
			return err
		}
		if _, ok := fatal(err); ok || isCode(err, "42704") {
			return err // the shared slot gone, a role refused: not for a retry
		}
		s.log.Warn("feed leaving the shared slot: retrying", "slot", shared, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
