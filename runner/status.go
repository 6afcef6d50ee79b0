package runner

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/votr-dev/votr/plan"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/workload"
)

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
	lastLog := time.Now()
	workload.Every(ctx, time.Second, func() bool {
		regions, feeds, pools := view()
		r.refresh(ctx, regions, feeds, pools, warnBytes)
		if r.opts.Console != nil {
			r.opts.Console.Show(statusLines(head(), regions, feeds, warnBytes))
			return true
		}
		if time.Since(lastLog) < o.StatusEvery-50*time.Millisecond {
			return true
		}
		lastLog = time.Now()
		for _, rr := range regions {
			txns, _ := rr.rates()
			args := []any{"region", rr.reg.Label(), "ballots", rr.sum, "txn/s", fmt.Sprintf("%.1f", txns),
				"committed", rr.stats.Txns.Load(), "violations", rr.vstat.Violations.Load()}
			if rr.progress.periods.Load() > 0 {
				args = append(args, "inserted_last_interval", rr.progress.last.Load())
			}
			r.log.Info("status", args...)
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
		return true
	})
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
		// Its own slot, or while it has none the one it shares.
		slot := schema.Slot(f.feed.Source.Database, f.feed.Target.ID)
		var retained, lag *int64
		var status string
		err := p.QueryRow(qctx, `SELECT slot_name::text, (pg_current_wal_lsn() - restart_lsn)::bigint, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint,
				coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name IN ($1, $2) ORDER BY slot_name = $1 DESC LIMIT 1`,
			slot, f.shared).Scan(&slot, &retained, &lag, &status)
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
		return fmt.Sprintf("SLOT AT RISK: it retains %s, past max_slot_wal_keep_size; PostgreSQL invalidates it at the next checkpoint unless its sink catches up", plan.BytesText(f.retained))
	case warnBytes > 0 && f.retained > warnBytes:
		return fmt.Sprintf("SLOT RETAINS %s of WAL, more than sink.slotWarnBytes (%s): its sink is behind or stopped", plan.BytesText(f.retained), plan.BytesText(warnBytes))
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
			if rr.progress.periods.Load() > 0 {
				work += fmt.Sprintf("  %d inserted last interval", rr.progress.last.Load())
			}
		}
		lines = append(lines, fmt.Sprintf("region %-16s ballots %9d  %s%s", rr.reg.Label(), rr.sum, inv, work))
	}
	sorted := append([]*feedRun(nil), feeds...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].feed.String() < sorted[j].feed.String() })
	for _, f := range sorted {
		retains := ""
		if f.retained >= 0 {
			retains = "  retains " + plan.BytesText(f.retained)
		}
		var line string
		if f.sink == nil {
			line = fmt.Sprintf("feed   %-16s slot lag %s%s (sink runs elsewhere)", f.feed.String(), plan.BytesText(f.slotLagB), retains)
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

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}
