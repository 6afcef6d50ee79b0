package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/sink"
)

// sinkBackends are the pids of the sink's sessions on the target.
func sinkBackends(ctx context.Context, dst *pgx.Conn, db string) ([]int, error) {
	rows, err := dst.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'votr-sink'`, db)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int])
}

// sinkTrouble describes a sink that did not get there.
func sinkTrouble(s *sink.Sink) error {
	st := s.Status()
	if st.LastError == "" {
		return fmt.Errorf("sink status: %+v", st)
	}
	return fmt.Errorf("sink error: %s", st.LastError)
}

const pollEvery = 5 * time.Millisecond

// waitSlotActive waits for a consumer to attach to the slot and returns
// its walsender's pid and when it was first seen.
func waitSlotActive(ctx context.Context, src *pgx.Conn, slot string) (int, time.Time, error) {
	for {
		var pid int
		err := src.QueryRow(ctx, `SELECT COALESCE(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&pid)
		if err != nil {
			return 0, time.Time{}, fmt.Errorf("slot %s: %w", slot, err)
		}
		if pid != 0 {
			return pid, time.Now(), nil
		}
		if !sleepCtx(ctx, pollEvery) {
			return 0, time.Time{}, fmt.Errorf("slot %s never became active: %w", slot, ctx.Err())
		}
	}
}

// waitConfirmed waits until the slot's consumer has confirmed the whole
// backlog, so that the next round streams only its own backlog.
func waitConfirmed(ctx context.Context, src *pgx.Conn, slot string, floor pglogrepl.LSN) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		var ok bool
		if err := src.QueryRow(ctx, `SELECT confirmed_flush_lsn > $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1`,
			slot, floor.String()).Scan(&ok); err != nil {
			return fmt.Errorf("slot %s: %w", slot, err)
		}
		if ok {
			return nil
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return fmt.Errorf("slot %s: the consumer did not confirm the backlog (past %s): %w", slot, floor, ctx.Err())
		}
	}
}

func waitSlotInactive(ctx context.Context, src *pgx.Conn, slot string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		var active bool
		if err := src.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active); err != nil {
			return err
		}
		if !active {
			return nil
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return fmt.Errorf("slot %s still active: %w", slot, ctx.Err())
		}
	}
}

// waitMarker waits until the round's marker transaction is visible on the target.
func waitMarker(ctx context.Context, dst *pgx.Conn, b backlog) (time.Time, error) {
	for {
		var v int
		if err := dst.QueryRow(ctx, `SELECT version FROM public.candidates WHERE candidate = $1`, b.markerID).Scan(&v); err != nil {
			return time.Time{}, fmt.Errorf("marker: %w", err)
		}
		if v >= b.markerVersion {
			return time.Now(), nil
		}
		if !sleepCtx(ctx, pollEvery) {
			return time.Time{}, fmt.Errorf("the marker transaction never arrived: %w", ctx.Err())
		}
	}
}

func waitStatus(ctx context.Context, s *sink.Sink, done func(sink.Status) bool) (time.Time, error) {
	for {
		if done(s.Status()) {
			return time.Now(), nil
		}
		if !sleepCtx(ctx, pollEvery) {
			return time.Time{}, fmt.Errorf("the reader never read the whole backlog: %w", ctx.Err())
		}
	}
}
