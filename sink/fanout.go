package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

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
	return &Fanout{slot: slot, sinks: sinks, detachAfter: DefaultDetachAfter}, nil
}

// DefaultDetachAfter is how long a feed's own failures (its target down,
// say) may hold the others of a Fanout back before it is detached.
const DefaultDetachAfter = 30 * time.Second

// WithDetachAfter sets how long a feed's own failures may end the shared
// sessions before the feed is detached (see Run); 0 never detaches.
func (f *Fanout) WithDetachAfter(d time.Duration) *Fanout {
	f.detachAfter = d
	return f
}

// Run applies the feeds until ctx is done (then it returns nil) or one of
// them fails for good, as Sink.Run does for one feed.
//
// A feed whose own errors end every shared session for the detach time is
// detached: the shared slot, idle at that moment and confirmed no further
// than every feed has durably applied, is copied to the feed's own slot,
// from which the feed goes on alone (as Sink.Run) while the others go on
// through the shared slot, which no longer waits for it. A feed whose own
// slot exists when Run starts was detached before and runs alone too: the
// shared slot may since have passed what it had applied.
func (f *Fanout) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	shared, alone, err := f.members(ctx)
	if err != nil || ctx.Err() != nil {
		return err
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(f.sinks)+1)
	runAlone := func(s *Sink) {
		wg.Add(1)
		go func() { defer wg.Done(); errc <- s.Run(ctx) }()
	}
	for _, s := range alone {
		runAlone(s)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for len(shared) > 0 {
			s, err := runFeeds(ctx, shared, f.slot, f.detachAfter)
			if s == nil {
				errc <- err
				return
			}
			if err := f.detach(ctx, s); err != nil {
				s.log.Error("cannot detach the feed from the shared slot; it stays", "slot", f.slot, "err", err)
				continue
			}
			shared = slices.DeleteFunc(shared, func(o *Sink) bool { return o == s })
			runAlone(s)
		}
	}()
	// The first to end (with an error, or because ctx is done) ends all.
	err = <-errc
	cancel()
	wg.Wait()
	return err
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
