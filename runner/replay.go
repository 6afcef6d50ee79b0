package runner

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/config"
	"github.com/votr-dev/votr/sink"
)

// ReplayResult counts what a replay did with one feed's parked changes
// (see sink.ReplayResult).
type ReplayResult struct {
	Feed string
	sink.ReplayResult
}

// Replay re-applies the changes parked in votr.dead_letters (see
// sink.Replay) of one feed ("S:D"), or of every feed when feed is "", with
// the topology's (fixed) merge script, printing one line per feed.
func (r *Runner) Replay(ctx context.Context, t *config.Topology, feed string) ([]ReplayResult, error) {
	feeds := t.Feeds()
	if feed != "" {
		f, err := t.ParseFeed(feed)
		if err != nil {
			return nil, err
		}
		feeds = []config.Feed{f}
	}
	dsns, err := r.regionDSNs(ctx, t, true)
	if err != nil {
		return nil, err
	}
	var out []ReplayResult
	for _, f := range feeds {
		tgtDSN := dsns[f.Target.ID]
		res, err := sink.Replay(ctx, r.feedConfig(t, f, dsns[f.Source.ID], tgtDSN, r.log, nil))
		if err != nil {
			hint := ""
			if ce := (*pgconn.ConnectError)(nil); errors.As(err, &ce) {
				hint = connectHint(err)
			}
			return out, fmt.Errorf("%w%s", config.ScrubError(err, tgtDSN), hint)
		}
		out = append(out, ReplayResult{Feed: f.String(), ReplayResult: res})
		line := fmt.Sprintf("feed %s: %d parked change(s) replayed (%d applied, %d already there, %d dropped, %d deleted)",
			f, res.Replayed, res.Applied, res.Unchanged, res.Dropped, res.Deleted)
		if res.StillParked > 0 {
			line += fmt.Sprintf("; %d parked again by the script", res.StillParked)
		}
		fmt.Fprintln(r.opts.Out, line)
	}
	return out, nil
}
