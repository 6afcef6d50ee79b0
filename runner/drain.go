package runner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/schema"
)

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
			lsn, err := sourceTail(ctx, pools[id])
			if err != nil {
				r.log.Warn("cannot read the source's WAL position within drainDelay; not waiting for its feeds", "region", id, "err", err)
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
				err = waitSlot(ctx, pools[f.feed.Source.ID], f, f.sourceTail)
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

// sourceTail reads a source's WAL insert position (not pg_current_wal_lsn(),
// the write position: sinks commit asynchronously, so their last commits may
// be inserted but not yet written, and must be waited for). A source that is
// briefly unreachable (a server restarting) is asked again until ctx ends,
// like any other feed that is behind.
func sourceTail(ctx context.Context, pool *pgxpool.Pool) (pglogrepl.LSN, error) {
	for {
		var text string
		err := pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&text)
		if err == nil {
			return pglogrepl.ParseLSN(text)
		}
		select {
		case <-ctx.Done():
			return 0, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

var errNoSlot = errors.New("the slot it reads does not exist")

// waitSlot polls until the consumer of feed f (a sink in another process)
// has confirmed lsn on the slot the feed reads: its own, or while it has
// none the one it shares with its source's other feeds. A shared slot that
// has passed lsn counts once the feed still has no slot of its own after
// it was read: a feed detached meanwhile is no longer waited for by it.
func waitSlot(ctx context.Context, pool *pgxpool.Pool, f *feedRun, lsn pglogrepl.LSN) error {
	own := schema.Slot(f.feed.Source.Database, f.feed.Target.ID)
	confirmed := func(slot string) (*pglogrepl.LSN, error) {
		var text *string
		err := pool.QueryRow(ctx, `SELECT (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1)`, slot).Scan(&text)
		if err != nil || text == nil {
			return nil, err
		}
		l, err := pglogrepl.ParseLSN(*text)
		return &l, err
	}
	for {
		done, err := func() (bool, error) {
			o, err := confirmed(own)
			if err != nil || o != nil {
				return o != nil && *o >= lsn, err
			}
			if f.shared == "" {
				return false, errNoSlot
			}
			sh, err := confirmed(f.shared)
			if err == nil && sh == nil {
				err = errNoSlot
			}
			if err != nil || *sh < lsn {
				return false, err
			}
			o, err = confirmed(own)
			return o == nil && err == nil, err
		}()
		if done {
			return nil
		}
		if errors.Is(err, errNoSlot) {
			return fmt.Errorf("feed %s: %w", f.feed, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the slot of feed %s not confirmed up to %s: %w", f.feed, lsn, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
