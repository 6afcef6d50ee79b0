package runner

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/votr-dev/votr/schema"
)

// slotFreeWait is how long a run waits for a feed's slot to be released
// before it calls the feed taken: a process killed a moment ago leaves its
// walsender holding the slot until the server notices the closed socket.
const slotFreeWait = 5 * time.Second

// feedsFree fails, naming the holder, when another process (a second apply
// with its own state dir, or a `votr sink`) already streams one of the
// feeds: two sinks on one feed would fight over its slot, and two sets of
// workers would make the counts of both runs wrong.
func (r *Runner) feedsFree(ctx context.Context, feeds []*feedRun) error {
	deadline := time.Now().Add(slotFreeWait)
	for {
		busy, err := r.busySlots(ctx, feeds)
		if err != nil || len(busy) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s; stop that process first (or run apply with --no-sinks and leave the feeds to it)", strings.Join(busy, "; "))
		}
		r.log.Info("waiting for replication slots in use to be released", "slots", strings.Join(busy, "; "))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// busySlots describes the feeds whose slot is in use. An unreachable source
// is not an error here: the sinks wait for it like for any outage.
func (r *Runner) busySlots(ctx context.Context, feeds []*feedRun) ([]string, error) {
	var busy []string
	for _, f := range feeds {
		conn, err := connect(ctx, f.srcDSN)
		if err != nil {
			continue
		}
		slots, err := listSlots(ctx, conn)
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			continue
		}
		name := schema.Slot(f.feed.Source.Database, f.feed.Target.ID)
		for _, s := range slots {
			if s.Name == name && s.Active {
				busy = append(busy, fmt.Sprintf("feed %s already runs elsewhere: its replication slot %s on %s is in use by %s",
					f.feed, name, f.feed.Source.ServerKey(), s.Holder()))
			}
		}
	}
	return busy, nil
}
