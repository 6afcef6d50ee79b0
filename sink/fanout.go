package sink

import (
	"context"
	"errors"
	"fmt"
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
// them all from their checkpoints; a stopped target therefore holds the
// others back, and the slot keeps WAL for the slowest feed.
//
// The slot must exist in the source database, created (like a feed's own
// slot) before any of the feeds' checkpoints. This is the first stage of
// docs/design/shared-outbound-slot.md: the bench runs a hub's outbound
// feeds this way with -shared-hub-slot; votr apply does not yet.
type Fanout struct {
	slot  string
	sinks []*Sink
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
	return &Fanout{slot: slot, sinks: sinks}, nil
}

// Run applies the feeds until ctx is done (then it returns nil) or one of
// them fails for good, as Sink.Run does for one feed.
func (f *Fanout) Run(ctx context.Context) error {
	return runFeeds(ctx, f.sinks, f.slot)
}
