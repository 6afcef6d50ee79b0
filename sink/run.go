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
	_, err := runFeeds(ctx, []*Sink{s}, s.ownSlot(), 0)
	return err
}

// ownSlot is the slot of the sink's feed alone.
func (s *Sink) ownSlot() string { return schema.Slot(s.cfg.SourceDB, s.cfg.TargetID) }

// runFeeds runs sessions of sinks reading slot until ctx is done or one of
// them fails for good; any failure restarts all of them, each from its own
// checkpoint. With several sinks and detachAfter > 0 it also returns, with
// that sink and its last error, when one sink's target cannot be connected
// to (unreachable), its own failures have ended every session for
// detachAfter, or it has stalled the others that long (its applier taking
// nothing: a hung target, a lock held): the caller runs it apart so that
// the others go on.
func runFeeds(ctx context.Context, sinks []*Sink, slot string, detachAfter time.Duration) (detach *Sink, err error) {
	backoff := 100 * time.Millisecond
	var outage time.Time
	// failing: since when each sink's own errors have ended the sessions,
	// without a session in between that ended otherwise.
	failing := map[*Sink]time.Time{}
	each := func(f func(s *Sink)) {
		for _, s := range sinks {
			f(s)
		}
	}
	for {
		// The first group a session commits after an outage ends it, and
		// is said then, while the session goes on.
		since := outage
		progressed, err := session(ctx, sinks, slot, detachAfter, func() {
			if !since.IsZero() {
				each(func(s *Sink) { s.log.Info("feed resumed", "after", time.Since(since).Round(time.Millisecond)) })
			}
		})
		each(func(s *Sink) { s.setConnected(false) })
		if ctx.Err() != nil {
			return nil, nil
		}
		if progressed {
			outage, backoff = time.Time{}, 100*time.Millisecond
		}
		each(func(s *Sink) { s.setError(err) })
		if ferr, ok := fatal(err); ok {
			each(func(s *Sink) {
				s.setError(ferr)
				s.log.Error("feed stopped", "err", ferr)
			})
			return nil, fmt.Errorf("%s: %w", feedsName(sinks), ferr)
		}
		if s := culprit(err, sinks, failing); s != nil && detachAfter > 0 {
			if d := time.Since(failing[s]); d >= detachAfter || (unreachable(err) && d >= min(detachAfter, unreachableFor)) {
				return s, err
			}
		}
		switch {
		case !transient(err):
			// Not a known passing condition: say so every time, but keep
			// trying (an operator may fix it while the feed waits).
			if outage.IsZero() {
				outage = time.Now()
			}
			each(func(s *Sink) { s.log.Error("feed failed; retrying with backoff", "err", err) })
		default:
			if outage.IsZero() {
				outage = time.Now()
				each(func(s *Sink) {
					s.log.Warn("feed interrupted; reconnecting with backoff until source and target are reachable", "err", err)
				})
			} else {
				each(func(s *Sink) { s.log.Debug("feed still interrupted", "err", err) })
			}
		}
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, 5*time.Second)
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(d):
		}
	}
}

// culprit returns the sink whose own error ended a session of several
// (nil: the stream's, or a session of one), and keeps failing up to date:
// since when each sink's errors have ended the sessions in a row.
func culprit(err error, sinks []*Sink, failing map[*Sink]time.Time) *Sink {
	var fe *feedError
	var s *Sink
	if len(sinks) > 1 && errors.As(err, &fe) {
		s = fe.s
	}
	for _, o := range sinks {
		if o != s {
			delete(failing, o)
		}
	}
	if s != nil {
		begun := time.Now()
		if !fe.since.IsZero() {
			begun = fe.since
		}
		if t, ok := failing[s]; !ok || begun.Before(t) {
			failing[s] = begun
		}
	}
	return s
}

// unreachable reports whether err is a failure to connect to a target: a
// region down, refusing connections or out of reach. A feed whose target
// alone fails so (session names it only while another target takes its
// connection) is detached once it has failed so for unreachableFor, not
// the detach time: every session would otherwise end before it streams,
// holding the other feeds back until then. Detached, it goes on alone and
// is handed back once it has caught up.
func unreachable(err error) bool {
	var ce *pgconn.ConnectError
	return errors.As(err, &ce)
}

// unreachableFor is how long a feed's target must refuse connections
// before the feed is detached: a moment's refusal (a server restarting,
// its connections full) is ridden out in the shared sessions rather than
// paid for with a detach and a handover.
const unreachableFor = 2 * time.Second

// feedError is an error of one feed of a session of several; since, when
// set, is when the feed's trouble began (it stalled the others).
type feedError struct {
	s     *Sink
	since time.Time
	err   error
}

func (e *feedError) Error() string { return "feed " + e.s.feed + ": " + e.err.Error() }
func (e *feedError) Unwrap() error { return e.err }

// feedsName names the feeds of a session in errors: "feed 1:0", or
// "feeds 0:1, 0:2".
func feedsName(sinks []*Sink) string {
	if len(sinks) == 1 {
		return "feed " + sinks[0].feed
	}
	names := make([]string, len(sinks))
	for i, s := range sinks {
		names[i] = s.feed
	}
	return "feeds " + strings.Join(names, ", ")
}

// member is one feed of a session: its target side and its pipeline.
type member struct {
	s          *Sink
	conn, mon  *pgx.Conn // nil when discarding
	origin     bool
	checkpoint pglogrepl.LSN
	q          *queue
	tr         *tracker
	dec        *decoder
	applied    bool
}

// openTarget connects the member's apply and monitor sessions and reads
// its checkpoint; a discarding sink has no target.
func (m *member) openTarget(ctx context.Context) error {
	s := m.s
	floor := pglogrepl.LSN(0)
	if !s.cfg.Discard {
		var err error
		if m.conn, err = s.connect(ctx, true); err != nil {
			return err
		}
		// The origin first: while an earlier session's connection still
		// holds it (a commit of its may be in flight), setting it up fails
		// and the session is retried; once it is ours, that commit has
		// landed or never will, and the checkpoint read next includes it.
		if m.origin, err = s.setupApply(ctx, m.conn); err != nil {
			return err
		}
		if m.checkpoint, err = s.readCheckpoint(ctx, m.conn, m.origin); err != nil {
			return err
		}
		if m.mon, err = s.connect(ctx, false); err != nil {
			return err
		}
		// Commits of an earlier session may not be flushed yet: nothing is
		// confirmed before the target's WAL is flushed past this point.
		var text string
		if err := m.mon.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&text); err != nil {
			return fmt.Errorf("target WAL position: %w", err)
		}
		if floor, err = pglogrepl.ParseLSN(text); err != nil {
			return err
		}
	}
	m.tr = &tracker{floor: floor}
	return nil
}

func (m *member) close() {
	for _, c := range []*pgx.Conn{m.conn, m.mon} {
		if c != nil {
			c.Close(context.Background())
		}
	}
}

// session runs one connection's worth of the sinks, which share their
// source and read slot (one sink: its own feed's). It calls firstApplied
// once, when the first of them commits a group, and reports whether any
// did, so runFeeds can tell an outage from a flapping error. With several
// sinks, one whose applier takes nothing for stallAfter (> 0) while the
// others wait ends the session with its feedError.
func session(ctx context.Context, sinks []*Sink, slot string, stallAfter time.Duration, firstApplied func()) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	ms := make([]*member, len(sinks))
	// named says which feed an error is of, where the session has several.
	named := func(m *member, err error) error {
		if len(ms) == 1 || err == nil || errors.Is(err, errQueueClosed) || errors.Is(err, context.Canceled) {
			return err
		}
		return &feedError{s: m.s, err: err}
	}
	// A target out of reach is one feed's trouble only if another target
	// takes its connection: when none does (the network, or one server
	// holding them all), no feed is singled out to be detached.
	var down error
	opened := 0
	for i, s := range sinks {
		ms[i] = &member{s: s}
		defer ms[i].close()
		err := ask(ctx, "the target", setupTimeout, ms[i].openTarget)
		switch {
		case err == nil:
			opened++
		case len(ms) > 1 && unreachable(err) && ctx.Err() == nil:
			if down == nil {
				down = named(ms[i], err)
			}
		default:
			return false, named(ms[i], err)
		}
	}
	if down != nil {
		if opened == 0 {
			return false, fmt.Errorf("no target of %s can be reached: %w", feedsName(sinks), errors.Unwrap(down))
		}
		return false, down
	}
	// The stream starts where the feed furthest behind resumes; the others
	// skip what they have applied.
	start := ms[0].checkpoint
	for _, m := range ms[1:] {
		start = min(start, m.checkpoint)
	}
	lead := sinks[0]
	// The source's WAL position tells how far behind the feeds are (bytes
	// of lag, catch-up mode); the stream itself does not carry it.
	var srcMon *pgx.Conn
	defer func() {
		if srcMon != nil {
			srcMon.Close(context.Background())
		}
	}()
	var walEnd walEndBox
	err = ask(ctx, "the source", setupTimeout, func(ctx context.Context) (err error) {
		if srcMon, err = lead.connectTo(ctx, lead.cfg.SourceDSN, monitorName, false); err != nil {
			return fmt.Errorf("source: %w", err)
		}
		return walEnd.poll(ctx, srcMon)
	})
	if err != nil {
		return false, err
	}
	var st *stream
	err = ask(ctx, "the source", setupTimeout, func(ctx context.Context) (err error) {
		st, err = openStream(ctx, lead.cfg.SourceDSN, lead.cfg.StreamName, lead.cfg.SourceDB, lead.cfg.SourceID, slot, start)
		return err
	})
	if err != nil {
		return false, err
	}
	defer st.done()

	var first sync.Once
	reply := make(chan struct{}, 1)
	for _, m := range ms {
		m.s.setConnected(true)
		m.s.setError(nil)
		m.q = m.s.newQueue()
		if m.s.cfg.Discard {
			m.q.direct = func(sg *segment) { m.s.discard(sg, m.tr) }
		}
		h := m.s.readerHooks(m.checkpoint, &walEnd, reply)
		if len(ms) == 1 {
			h.onBehind = st.setBehind // else fanOut's
		}
		m.dec = newDecoder(m.q, h)
	}

	var wg sync.WaitGroup
	errc := make(chan error, 2+2*len(ms))
	run := func(f func() error) {
		wg.Add(1)
		go func() { defer wg.Done(); errc <- f() }()
	}
	if len(ms) == 1 {
		run(func() error { return ms[0].dec.run(st) })
	} else {
		ins := make([]chan []byte, len(ms))
		for i, m := range ms {
			ins[i] = make(chan []byte, fanOutBuffer)
			run(func() error { return named(m, m.dec.consume(ins[i])) })
		}
		stalled := func(i int, since time.Time) error {
			return &feedError{s: ms[i].s, since: since, err: fmt.Errorf("its applier took nothing from the stream for %s", stallAfter)}
		}
		run(func() error { return fanOut(ctx, st, ins, walEnd.get, stallAfter, stalled) })
	}
	run(func() error { return statusLoop(ctx, st, ms, srcMon, reply, &walEnd) })
	for _, m := range ms {
		run(func() error {
			if m.s.cfg.Discard {
				<-ctx.Done()
				return ctx.Err()
			}
			return named(m, m.s.applyLoop(ctx, m.q, newApplier(m.s, m.conn, m.origin), m.tr, func() {
				m.applied = true
				first.Do(firstApplied)
			}, &walEnd))
		})
	}
	err = <-errc
	cancel()
	for _, m := range ms {
		m.q.close(errQueueClosed)
	}
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
	for _, m := range ms {
		progressed = progressed || m.applied
	}
	return progressed, err
}

// readerHooks connect a session's decoder for this sink to the session's
// shared state (the session decides who switches the stream's reading).
func (s *Sink) readerHooks(checkpoint pglogrepl.LSN, walEnd *walEndBox, reply chan<- struct{}) readerHooks {
	echoOrigin := schema.Origin(s.cfg.SourceDB, s.cfg.TargetID)
	if s.cfg.noEchoSkip {
		echoOrigin = ""
	}
	return readerHooks{
		skipUpTo:   checkpoint,
		echoOrigin: echoOrigin,
		chunkRows:  s.opts.BatchRows,
		chunkBytes: s.opts.BatchBytes,
		onWALEnd:   walEnd.set,
		sourceEnd:  walEnd.get,
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
	if se := (*silenceError)(nil); errors.As(err, &se) {
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
