package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/schema"
)

// Run applies the feed until ctx is done (then it returns nil) or a fatal
// error: a missing or invalidated slot, a schema the target cannot take,
// or a merge that keeps failing with onScriptError=stop. Transient errors
// (connections lost, servers restarting, serialization failures) close
// everything, back off and resume from the target's checkpoint: nothing is
// applied twice and nothing is lost.
func (s *Sink) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	var outage time.Time
	for {
		progressed, err := s.session(ctx)
		s.setConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		if progressed && !outage.IsZero() {
			s.log.Info("feed resumed", "after", time.Since(outage).Round(time.Millisecond))
			outage = time.Time{}
		}
		if progressed {
			backoff = 100 * time.Millisecond
		}
		s.setError(err)
		if ferr, ok := fatal(err); ok {
			s.setError(ferr)
			s.log.Error("feed stopped", "err", ferr)
			return fmt.Errorf("feed %s: %w", s.feed, ferr)
		}
		switch {
		case !transient(err):
			// Not a known passing condition: say so every time, but keep
			// trying (an operator may fix it while the feed waits).
			if outage.IsZero() {
				outage = time.Now()
			}
			s.log.Error("feed failed; retrying with backoff", "err", err)
		default:
			if outage.IsZero() {
				outage = time.Now()
				s.log.Warn("feed interrupted; reconnecting with backoff until source and target are reachable", "err", err)
			} else {
				s.log.Debug("feed still interrupted", "err", err)
			}
		}
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, 5*time.Second)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

// session runs one connection's worth of the feed. It reports whether it
// applied anything, so Run can tell an outage from a flapping error.
func (s *Sink) session(ctx context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var conn, mon *pgx.Conn
	var origin bool
	var checkpoint, t0 pglogrepl.LSN
	if !s.cfg.Discard {
		if conn, err = s.connect(ctx, true); err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		// The origin first: while an earlier session's connection still
		// holds it (a commit of its may be in flight), setting it up fails
		// and the session is retried; once it is ours, that commit has
		// landed or never will, and the checkpoint read next includes it.
		if origin, err = s.setupApply(ctx, conn); err != nil {
			return false, err
		}
		if checkpoint, err = s.readCheckpoint(ctx, conn, origin); err != nil {
			return false, err
		}
		if mon, err = s.connect(ctx, false); err != nil {
			return false, err
		}
		defer mon.Close(context.Background())
		// Commits of an earlier session may not be flushed yet: nothing is
		// confirmed before the target's WAL is flushed past this point.
		var text string
		if err := mon.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&text); err != nil {
			return false, fmt.Errorf("target WAL position: %w", err)
		}
		if t0, err = pglogrepl.ParseLSN(text); err != nil {
			return false, err
		}
	}
	// The source's WAL position tells how far behind the feed is (bytes
	// of lag, catch-up mode); the stream itself does not carry it.
	srcMon, err := s.connectTo(ctx, s.cfg.SourceDSN, monitorName, false)
	if err != nil {
		return false, fmt.Errorf("source: %w", err)
	}
	defer srcMon.Close(context.Background())
	var walEnd walEndBox
	if err := walEnd.poll(ctx, srcMon); err != nil {
		return false, err
	}
	st, err := openStream(ctx, s.cfg.SourceDSN, s.cfg.StreamName, s.cfg.SourceDB, s.cfg.SourceID, schema.Slot(s.cfg.SourceDB, s.cfg.TargetID), checkpoint)
	if err != nil {
		return false, err
	}
	defer st.done()
	s.setConnected(true)
	s.setError(nil)

	q := s.newQueue()
	tr := &tracker{floor: t0}
	if s.cfg.Discard {
		q.direct = func(sg *segment) { s.discard(sg, tr) }
	}
	reply := make(chan struct{}, 1)
	echoOrigin := schema.Origin(s.cfg.SourceDB, s.cfg.TargetID)
	if s.cfg.noEchoSkip {
		echoOrigin = ""
	}
	dec := newDecoder(q, readerHooks{
		skipUpTo:   checkpoint,
		echoOrigin: echoOrigin,
		chunkRows:  s.opts.BatchRows,
		chunkBytes: s.opts.BatchBytes,
		onWALEnd:   walEnd.set,
		sourceEnd:  walEnd.get,
		onBehind:   st.setBehind,
		onReply: func() {
			select {
			case reply <- struct{}{}:
			default:
			}
		},
		onSkip: func() {
			s.mu.Lock()
			s.st.Skipped++
			s.mu.Unlock()
		},
	})

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	var applied bool
	wg.Add(3)
	go func() { defer wg.Done(); errc <- dec.run(st) }()
	go func() { defer wg.Done(); errc <- s.statusLoop(ctx, st, mon, srcMon, tr, reply, &walEnd) }()
	go func() {
		defer wg.Done()
		if s.cfg.Discard {
			<-ctx.Done()
			errc <- ctx.Err()
			return
		}
		errc <- s.applyLoop(ctx, q, newApplier(s, conn, origin), tr, &applied, &walEnd)
	}()
	err = <-errc
	cancel()
	q.close(errQueueClosed)
	st.close()
	wg.Wait()
	if errors.Is(err, errQueueClosed) || errors.Is(err, context.Canceled) {
		// Look for the error that stopped the session, if another
		// goroutine reported it.
		close(errc)
		for e := range errc {
			if !errors.Is(e, errQueueClosed) && !errors.Is(e, context.Canceled) && !errors.Is(e, net.ErrClosed) {
				err = e
				break
			}
		}
	}
	return applied, err
}

// discard counts a decoded segment and drops it (Config.Discard).
func (s *Sink) discard(sg *segment, tr *tracker) {
	var r groupResult
	r.st.rows = int64(len(sg.changes))
	r.st.txns = int64(len(sg.commits))
	if n := len(sg.commits); n > 0 {
		r.last = sg.commits[n-1]
		s.committed(r)
	}
	if e := sg.endLSN(); e > 0 && !sg.partial {
		tr.add(0, e)
		s.setProcessed(e)
	}
}

// fatal reports errors that retrying cannot cure, with what to do.
func fatal(err error) (error, bool) {
	var se *slotError
	var sc *schemaError
	if errors.As(err, &se) || errors.As(err, &sc) {
		return err, true
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err, false
	}
	switch {
	case pe.Code == "28000" || pe.Code == "28P01":
		return fmt.Errorf("%w (check the user and password of the region's connection string)", err), true
	case pe.Code == "3D000":
		return fmt.Errorf("%w (run `votr apply` to create the region's database)", err), true
	case pe.Code == "42501":
		return fmt.Errorf("%w (the source role needs the REPLICATION attribute, the target role write access to the votr and workload tables)", err), true
	case pe.Code == "55000" && strings.Contains(pe.Message, "can no longer get changes"),
		pe.Code == "58P01" && strings.Contains(pe.Message, "WAL segment"):
		return fmt.Errorf("%w (the replication slot lost WAL it needed; the feed must be rebuilt: run `votr apply`, which replaces an invalidated slot)", err), true
	}
	return err, false
}

// transient reports errors that reconnecting may cure.
func transient(err error) bool {
	if cm := (*checkpointMovedError)(nil); errors.As(err, &cm) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"), strings.HasPrefix(pe.Code, "57"), strings.HasPrefix(pe.Code, "53"),
			pe.Code == "40001", pe.Code == "40P01", pe.Code == "55006", pe.Code == "55P03":
			return true
		}
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || pgconn.SafeToRetry(err)
}

// readCheckpoint returns the position the feed resumes from, on conn,
// which holds the feed's replication origin when origin is true (the
// session set it up on conn just before). A feed
// without a checkpoint row is refused: apply creates the row once the
// feed's slot exists and its initial copy is committed, so streaming
// without one would skip the copy for good.
func (s *Sink) readCheckpoint(ctx context.Context, conn *pgx.Conn, origin bool) (pglogrepl.LSN, error) {
	lsn, ok, err := CheckpointsIn(conn).resume(ctx, s.feed)
	if isCode(err, "42P01") || isCode(err, "3F000") {
		return 0, &schemaError{fmt.Sprintf("target database %s has no votr schema (votr.checkpoints); run `votr apply`", s.cfg.TargetDB)}
	}
	if err != nil {
		return 0, fmt.Errorf("checkpoint: %w", err)
	}
	if !ok {
		return 0, &schemaError{fmt.Sprintf("feed %s has no checkpoint in region %d's database %s: `votr apply` has not finished creating it (its slot may exist, but the copy of region %d's rows was not committed); run `votr apply` with the topology that has this feed, then start the sink again",
			s.feed, s.cfg.TargetID, s.cfg.TargetDB, s.cfg.SourceID)}
	}
	s.checkpoint = lsn
	if s.resumed != nil {
		s.resumed(lsn, origin)
	}
	return lsn, nil
}
