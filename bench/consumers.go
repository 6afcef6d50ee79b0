package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/votr-dev/votr/schema"
	"github.com/votr-dev/votr/sink"
)

func (c *catchup) runNative(ctx context.Context, src *pgx.Conn, v *variant, b backlog) (runResult, error) {
	r := runResult{rows: b.rows, txns: b.txns}
	dst, err := pgx.Connect(ctx, v.target.dsn)
	if err != nil {
		return r, err
	}
	defer dst.Close(context.WithoutCancel(ctx))
	t0 := time.Now()
	if _, err := dst.Exec(ctx, "ALTER SUBSCRIPTION "+schema.QuoteIdent(v.sub)+" ENABLE"); err != nil {
		return r, err
	}
	defer func() {
		ctx := context.WithoutCancel(ctx)
		if _, err := dst.Exec(ctx, "ALTER SUBSCRIPTION "+schema.QuoteIdent(v.sub)+" DISABLE"); err == nil {
			_ = waitSlotInactive(ctx, src, v.slot)
		}
	}()
	sender, active, err := waitSlotActive(ctx, src, v.slot)
	if err != nil {
		return r, err
	}
	r.startup = active.Sub(t0)
	var worker int
	if err := dst.QueryRow(ctx, `SELECT COALESCE(max(pid), 0) FROM pg_stat_subscription WHERE subname = $1`, v.sub).Scan(&worker); err != nil {
		return r, err
	}
	end, err := waitMarker(ctx, dst, b)
	if err != nil {
		return r, err
	}
	r.elapsed = end.Sub(active)
	r.walsenderCPU = procsCPU([]int{sender})
	r.applyCPU = procsCPU([]int{worker})
	return r, waitConfirmed(ctx, src, v.slot, b.markerFloor)
}

func (c *catchup) runSink(ctx context.Context, src *pgx.Conn, v *variant, b backlog) (runResult, error) {
	r := runResult{rows: b.rows, txns: b.txns}
	cfg := sink.Config{
		SourceID: catchupSourceID, TargetID: v.feedID, SourceDB: catchupSourceDB, SourceDSN: c.source.dsn,
		Program: c.env.program, Options: sink.DefaultOptions(), Logger: c.env.log, Discard: v.kind == ceiling,
		SynchronousCommit: v.sync,
	}
	var dst *pgx.Conn
	if v.kind == votrSink {
		cfg.TargetDB, cfg.TargetDSN = v.target.db, v.target.dsn
		var err error
		if dst, err = pgx.Connect(ctx, v.target.dsn); err != nil {
			return r, err
		}
		defer dst.Close(context.WithoutCancel(ctx))
	}
	s, err := sink.New(cfg)
	if err != nil {
		return r, err
	}
	profile := c.opt.cpuprofile != "" && !c.profiled && v.kind == votrSink && !v.sync
	if profile {
		f, err := os.Create(c.opt.cpuprofile)
		if err != nil {
			return r, fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return r, fmt.Errorf("cpu profile: %w", err)
		}
		c.profiled = true
		defer pprof.StopCPUProfile()
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	cpu0, t0 := selfCPU(), time.Now()
	go func() { done <- s.Run(runCtx) }()
	stopped := false
	halt := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stop()
		return <-done
	}
	defer halt()

	sender, active, err := waitSlotActive(ctx, src, v.slot)
	if err != nil {
		return r, errors.Join(err, sinkTrouble(s))
	}
	r.startup = active.Sub(t0)
	var backends []int
	var end time.Time
	if v.kind == ceiling {
		end, err = waitStatus(ctx, s, func(st sink.Status) bool { return st.Txns >= b.txns })
	} else {
		backends, err = sinkBackends(ctx, dst, v.target.db)
		if err != nil {
			return r, err
		}
		end, err = waitMarker(ctx, dst, b)
	}
	if err != nil {
		return r, errors.Join(err, sinkTrouble(s))
	}
	r.elapsed = end.Sub(active)
	r.benchCPU = selfCPU() - cpu0
	r.walsenderCPU = procsCPU([]int{sender})
	r.applyCPU = procsCPU(backends)
	if profile {
		pprof.StopCPUProfile()
	}
	if err := waitConfirmed(ctx, src, v.slot, b.markerFloor); err != nil {
		return r, errors.Join(err, sinkTrouble(s))
	}
	if err := halt(); err != nil {
		return r, fmt.Errorf("sink stopped with: %w", err)
	}
	if st := s.Status(); st.Rows != b.rows || st.Txns != b.txns {
		return r, fmt.Errorf("the sink counted %d rows in %d txns; the backlog has %d rows in %d txns", st.Rows, st.Txns, b.rows, b.txns)
	}
	return r, nil
}

// runReader times the pglogrepl reference reader (reader.go).
func (c *catchup) runReader(ctx context.Context, src *pgx.Conn, v *variant, b backlog) (runResult, error) {
	r := runResult{rows: b.rows, txns: b.txns}
	var rd rawReader
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	cpu0, t0 := selfCPU(), time.Now()
	go func() { done <- rd.run(runCtx, c.source.dsn, v.slot) }()
	sender, active, err := waitSlotActive(ctx, src, v.slot)
	if err != nil {
		return r, err
	}
	r.startup = active.Sub(t0)
	for rd.txns.Load() < b.txns {
		select {
		case err := <-done:
			return r, fmt.Errorf("reader stopped after %d txns: %v", rd.txns.Load(), err)
		case <-time.After(pollEvery):
		}
	}
	r.elapsed = time.Since(active)
	r.benchCPU = selfCPU() - cpu0
	r.walsenderCPU = procsCPU([]int{sender})
	if err := waitConfirmed(ctx, src, v.slot, b.markerFloor); err != nil {
		return r, err
	}
	stop()
	if err := <-done; err != nil {
		return r, err
	}
	if rows := rd.rows.Load(); rows != b.rows {
		return r, fmt.Errorf("the reader counted %d rows; the backlog has %d", rows, b.rows)
	}
	return r, nil
}
