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

	"github.com/votr-dev/votr/config"
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
		var me *mergeError
		if ferr, ok := fatal(err); ok {
			s.setError(ferr)
			s.log.Error("feed stopped", "err", ferr)
			return fmt.Errorf("feed %s: %w", s.feed, ferr)
		}
		switch {
		case errors.As(err, &me):
			if err := s.mergeFailed(me); err != nil {
				s.log.Error("feed stopped", "err", err)
				return err
			}
			if s.failures[me.failureKey()] == 0 {
				continue // first failure: retry at once, one transaction at a time
			}
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

// mergeFailed decides how a failing merge is retried; it returns an error
// when the feed must stop.
func (s *Sink) mergeFailed(me *mergeError) error {
	if s.safeUntil < me.lsn {
		// Retry one source transaction per target transaction up to the
		// failing one, so the failing change is found the same way each time.
		s.safeUntil = me.lsn
		s.log.Warn("merge failed; retrying transaction by transaction", "err", me)
		return nil
	}
	key := me.failureKey()
	s.failures[key]++
	n := s.failures[key]
	if n <= s.opts.Retries {
		s.log.Warn("merge failed; retrying", "attempt", n, "of", s.opts.Retries, "err", me)
		return nil
	}
	if onScriptError(s.opts) == config.StopFeed {
		return fmt.Errorf("feed %s: table %s: source LSN %s: merge failed %d times, stopping the feed (onScriptError: stop): %w; fix the script and run again",
			s.feed, me.table, me.lsn, n, me.err)
	}
	s.deadKeys[key] = fmt.Sprintf("merge failed %d times: %v", n, me.err)
	s.log.Warn("merge keeps failing; dead-lettering the change", "table", me.table, "lsn", me.lsn, "key", me.key, "err", me.err)
	return nil
}

// connect opens a target connection with the sink's session settings:
// the apply session (apply) or a monitor.
func (s *Sink) connect(ctx context.Context, apply bool) (*pgx.Conn, error) {
	name := monitorName
	if apply {
		name = sessionParams["application_name"]
	}
	conn, err := s.connectTo(ctx, s.cfg.TargetDSN, name, apply && !s.cfg.SynchronousCommit)
	if err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	return conn, nil
}

func (s *Sink) connectTo(ctx context.Context, dsn, name string, asyncCommit bool) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("connection string: %w", err)
	}
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["application_name"] = name
	if asyncCommit {
		// Like a native subscription: commit without waiting for the
		// flush; the source position is confirmed only after it.
		cfg.RuntimeParams["synchronous_commit"] = "off"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// setupApply prepares the apply session; it reports whether the session
// tags its transactions with a replication origin.
func (s *Sink) setupApply(ctx context.Context, conn *pgx.Conn) (bool, error) {
	if _, err := conn.Exec(ctx, "SET "+schema.SinkSetting+" = on"); err != nil {
		return false, fmt.Errorf("target session: %w", err)
	}
	// Skips FK and other triggers (the source already checked); superuser only.
	if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil && !isCode(err, "42501") {
		return false, fmt.Errorf("target session: %w", err)
	}
	name := schema.Origin(s.cfg.TargetDB, s.cfg.SourceID)
	_, err := conn.Exec(ctx, `SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL`, name)
	if err == nil {
		_, err = conn.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, name)
	}
	switch {
	case err == nil:
		return true, nil
	case isCode(err, "42501"):
		if !s.originDenied {
			s.originDenied = true
			s.log.Info("no permission for replication origins on the target; echoes are still stopped by the merges", "err", err)
		}
		return false, nil
	}
	return false, fmt.Errorf("replication origin %s: %w", name, err)
}

// readCheckpoint returns the position the feed resumes from.
func (s *Sink) readCheckpoint(ctx context.Context, conn *pgx.Conn) (pglogrepl.LSN, error) {
	lsn, err := CheckpointsIn(conn).start(ctx, s.feed)
	if isCode(err, "42P01") || isCode(err, "3F000") {
		return 0, &schemaError{fmt.Sprintf("target database %s has no votr schema (votr.checkpoints); run `votr apply`", s.cfg.TargetDB)}
	}
	if err != nil {
		return 0, fmt.Errorf("checkpoint: %w", err)
	}
	return lsn, nil
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
		if checkpoint, err = s.readCheckpoint(ctx, conn); err != nil {
			return false, err
		}
		if origin, err = s.setupApply(ctx, conn); err != nil {
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
	st, err := openStream(ctx, s.cfg.SourceDSN, s.cfg.SourceDB, s.cfg.SourceID, schema.Slot(s.cfg.SourceDB, s.cfg.TargetID), checkpoint)
	if err != nil {
		return false, err
	}
	defer st.done()
	s.setConnected(true)
	s.setError(nil)

	q := newQueue(2 * s.opts.BatchRows)
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
		errc <- s.applyLoop(ctx, q, newApplier(s, conn, origin, s.deadKeys), tr, &applied, &walEnd)
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

// lingerFor is how long a small group waits for more while catching up.
const lingerFor = 2 * time.Millisecond

// catchingUp reports whether a group is worth growing: small, not ending
// inside a large transaction, and the feed far behind the source.
func (s *Sink) catchingUp(segs []*segment, maxTxns int, walEnd *walEndBox) bool {
	last := segs[len(segs)-1]
	if last.partial || maxTxns < 8 {
		return false
	}
	txns := 0
	for _, sg := range segs {
		txns += len(sg.commits)
	}
	if txns >= maxTxns/4 {
		return false
	}
	end := walEnd.get()
	return end > last.endLSN() && end-last.endLSN() > 1<<20
}

func (s *Sink) applyLoop(ctx context.Context, q *queue, a *applier, tr *tracker, applied *bool, walEnd *walEndBox) error {
	var segs []*segment
	for {
		maxTxns := s.opts.BatchTxns
		s.mu.Lock()
		if s.st.AppliedLSN < s.safeUntil {
			maxTxns = 1
		}
		s.mu.Unlock()
		var err error
		segs, err = q.take(segs[:0], maxTxns, s.opts.BatchRows)
		if err != nil {
			return err
		}
		if s.catchingUp(segs, maxTxns, walEnd) {
			// Behind the source and the group is small: the reader is
			// about to deliver more, and every target transaction costs
			// the target a commit and the statements' fixed costs. Wait a
			// moment and take what arrived (never when caught up: then
			// latency matters).
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(lingerFor):
			}
			if segs, err = q.takeMore(segs, maxTxns, s.opts.BatchRows); err != nil {
				return err
			}
		}
		r, err := s.applyRetrying(ctx, a, segs)
		if err != nil {
			return err
		}
		q.recycle(segs)
		if r.committed {
			s.groups.Add(1)
			*applied = true
			s.committed(r)
			tr.add(r.targetLSN, r.processed)
		} else if r.processed > 0 && !a.inTxn {
			tr.add(0, r.processed)
		}
		if r.processed > 0 && !a.inTxn {
			s.setProcessed(r.processed)
		}
	}
}

// plainInserts reports whether inserts may go without ON CONFLICT.
func (s *Sink) plainInserts() bool { return s.guardedGroups.Load() <= 0 }

// insertConflict switches inserts to ON CONFLICT for a while.
func (s *Sink) insertConflict() {
	if s.guardedGroups.Load() <= 0 {
		s.log.Debug("insert met an existing row; guarding inserts with ON CONFLICT for a while")
	}
	s.guardedGroups.Store(1000)
}

// applyRetrying applies a group, retrying it at once in this session when
// the target aborted it for a deadlock or serialization failure (writers
// on the target lock the same rows): reconnecting would only add delay.
func (s *Sink) applyRetrying(ctx context.Context, a *applier, segs []*segment) (groupResult, error) {
	wasOpen := a.inTxn
	for attempt := 1; ; attempt++ {
		plain := s.plainInserts()
		r, err := a.apply(ctx, segs)
		if err == nil {
			if r.committed && !plain {
				s.guardedGroups.Add(-1)
			}
			return r, nil
		}
		if plain && isCode(err, "23505") {
			// A row to insert exists: apply the group again with
			// conflict detection (after a restart if a large transaction
			// was open: its earlier chunks are gone with the rollback).
			s.insertConflict()
			if wasOpen {
				return r, err
			}
			if err := a.rollback(ctx); err != nil {
				return r, err
			}
			continue
		}
		if wasOpen || attempt >= 10 || !(isCode(err, "40P01") || isCode(err, "40001")) {
			return r, err
		}
		s.log.Debug("target transaction aborted; retrying the group", "attempt", attempt, "err", err)
		if err := a.rollback(ctx); err != nil {
			return r, err
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(time.Duration(attempt) * time.Millisecond):
		}
	}
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

// walEndBox holds the source's WAL position as last seen (polled, or
// reported by the walsender's keepalives).
type walEndBox struct {
	mu  sync.Mutex
	lsn pglogrepl.LSN
}

func (w *walEndBox) set(l pglogrepl.LSN) {
	w.mu.Lock()
	if l > w.lsn {
		w.lsn = l
	}
	w.mu.Unlock()
}

// poll asks the source for its WAL write position.
func (w *walEndBox) poll(ctx context.Context, src *pgx.Conn) error {
	var text string
	if err := src.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&text); err != nil {
		return fmt.Errorf("source WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(text)
	if err != nil {
		return err
	}
	w.set(lsn)
	return nil
}

func (w *walEndBox) get() pglogrepl.LSN {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lsn
}

// tracker holds applied source positions until the target's WAL is
// flushed past the commit that recorded them.
type tracker struct {
	mu        sync.Mutex
	floor     pglogrepl.LSN // target position flushed before anything is confirmed
	lastT     pglogrepl.LSN
	pend      []confirmEntry
	flushed   pglogrepl.LSN // target WAL flushed, as last seen
	confirmed pglogrepl.LSN
}

type confirmEntry struct{ target, source pglogrepl.LSN }

// add records that source is applied once the target flushed target
// (0: no new commit; the previous one's position applies).
func (t *tracker) add(target, source pglogrepl.LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if target == 0 {
		target = t.lastT
	}
	if target < t.floor {
		target = t.floor
	}
	t.lastT = target
	t.pend = append(t.pend, confirmEntry{target, source})
}

// confirmable returns the source position that may be confirmed, asking
// the target how far its WAL is flushed when that matters.
func (t *tracker) confirmable(ctx context.Context, mon *pgx.Conn) (pglogrepl.LSN, error) {
	t.mu.Lock()
	need := len(t.pend) > 0 && t.pend[0].target > t.flushed
	t.mu.Unlock()
	if need && mon != nil {
		var text string
		if err := mon.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()::text`).Scan(&text); err != nil {
			return 0, fmt.Errorf("target WAL flush position: %w", err)
		}
		f, err := pglogrepl.ParseLSN(text)
		if err != nil {
			return 0, err
		}
		t.mu.Lock()
		t.flushed = f
		t.mu.Unlock()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for n < len(t.pend) && (mon == nil || t.pend[n].target <= t.flushed) {
		if t.pend[n].source > t.confirmed {
			t.confirmed = t.pend[n].source
		}
		n++
	}
	t.pend = append(t.pend[:0], t.pend[n:]...)
	return t.confirmed, nil
}

// statusLoop sends standby status updates: every second, at once when the
// source asks, and more often while someone waits for the feed to catch up
// (each update makes an idle source report its position again).
func (s *Sink) statusLoop(ctx context.Context, st *stream, mon, srcMon *pgx.Conn, tr *tracker, reply <-chan struct{}, walEnd *walEndBox) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-reply:
		case <-timer.C:
		}
		lsn, err := tr.confirmable(ctx, mon)
		if err != nil {
			return err
		}
		if lsn == 0 {
			lsn = st.start
		}
		if err := st.sendStatus(lsn, false); err != nil {
			return err
		}
		if err := walEnd.poll(ctx, srcMon); err != nil {
			return err
		}
		s.mu.Lock()
		var lagBytes int64
		if end := walEnd.get(); end > s.st.ProcessedLSN && s.st.ProcessedLSN > 0 {
			lagBytes = int64(end - s.st.ProcessedLSN)
		}
		// Near the end only: each update makes the walsender work (and
		// write the slot), which would slow a catch-up.
		fast := s.waiters > 0 && lagBytes < 256<<10
		s.st.LagBytes = lagBytes
		s.mu.Unlock()
		s.m.lagBytes(lagBytes)
		if fast {
			timer.Reset(50 * time.Millisecond)
		} else {
			timer.Reset(time.Second)
		}
	}
}

func isCode(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
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
