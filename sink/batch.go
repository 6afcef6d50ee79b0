package sink

import (
	"context"
	"fmt"
	"hash/maphash"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// groupResult is what one applied group changed.
type groupResult struct {
	committed bool
	// targetLSN is the target's WAL insert position after the commit: the
	// source position may be confirmed once the target flushed past it.
	targetLSN pglogrepl.LSN
	// processed is the source position the group completes (0: none yet,
	// the group ended inside a large transaction).
	processed pglogrepl.LSN
	last      commit // last source transaction applied (lsn 0: none)
	st        groupStats
}

// groupStats are the counters of the target transaction being built.
type groupStats struct {
	txns, rows, conflicts, dropped, deadLettered int64
}

// applier writes groups of source transactions into the target. It owns
// the apply connection; only its goroutine uses it.
type applier struct {
	s      *Sink
	conn   *pgx.Conn
	pg     *pgconn.PgConn
	tombAt time.Time // the last tombstone collection (tombstone.go)
	stmts  stmtCache
	tables map[*relation]*table
	pend   map[*table]*pending
	owner  map[string]*table // the current description of each target table
	seed   maphash.Seed
	origin bool // the session has a replication origin
	// replay: every conflict goes through the script (see Replay).
	replay bool

	inTxn bool
	st    groupStats
	// unflushed: a group committed asynchronously and the target's WAL
	// may not be flushed past it yet; flushed once the feed is idle if the
	// target relays (see flushWAL).
	unflushed bool
	// flushCommit: the group being applied took everything queued, the
	// feed is not behind and the target relays: the round trip of its
	// COMMIT flushes the WAL after it (queueCommit), so no flush is owed.
	flushCommit bool
	relay       relayCheck
	// planMode is the session's plan mode (planSteady, planBulk), set by
	// begin; planUnknown after a rollback, which undoes a change of mode.
	planMode int
	// unfused: the group's last attempt missed a write it committed with
	// (settle): its next attempt commits on its own.
	unfused bool
	// fastWrites: the feed is catching up; updates and deletes are
	// written at once where the row matches the old image (see flush).
	fastWrites bool

	arrays []textArray
	nArr   int

	// deadKeys are changes whose merge failed too often: dead-letter them.
	deadKeys map[string]string

	// careful: write every change on its own under a savepoint (retry.go).
	careful bool
	// groupSaved: the open target transaction holds a group savepoint.
	groupSaved bool
}

func newApplier(s *Sink, conn *pgx.Conn, origin bool) *applier {
	return &applier{
		s: s, conn: conn, pg: conn.PgConn(),
		stmts:    stmtCache{conn: conn.PgConn(), names: map[string]string{}},
		tables:   map[*relation]*table{},
		pend:     map[*table]*pending{},
		owner:    map[string]*table{},
		seed:     maphash.MakeSeed(),
		origin:   origin,
		deadKeys: map[string]string{},
	}
}

// array returns a cleared parameter buffer that stays valid until the
// current batch has run (see resetArrays).
func (a *applier) array() *textArray {
	if a.nArr == len(a.arrays) {
		a.arrays = append(a.arrays, textArray{})
	}
	arr := &a.arrays[a.nArr]
	a.nArr++
	arr.reset()
	return arr
}

func (a *applier) resetArrays() {
	a.nArr = 0
	// Drop buffers one huge statement grew, to keep memory bounded.
	for i := range a.arrays {
		if cap(a.arrays[i].buf) > 16<<20 {
			a.arrays[i].buf = nil
		}
	}
}

func (a *applier) table(ctx context.Context, rel *relation) (*table, error) {
	if t, ok := a.tables[rel]; ok {
		return t, nil
	}
	t, err := loadTable(ctx, a.conn, rel)
	if err != nil {
		return nil, err
	}
	a.tables[rel] = t
	a.forgetOlder(rel)
	return t, nil
}

func (s *Sink) applyLoop(ctx context.Context, q *queue, a *applier, tr *tracker, applied func(), walEnd *walEndBox) error {
	var segs []*segment
	var rate txnRate
	for {
		maxTxns := s.opts.BatchTxns
		var err error
		bounds := groupBounds{txns: maxTxns, rows: s.opts.BatchRows, bytes: s.opts.BatchBytes}
		segs, err = q.take(segs[:0], bounds)
		if err != nil {
			return err
		}
		// A small group may wait a moment and take what arrived meanwhile:
		// every target transaction costs the target a commit and its
		// statements' fixed costs.
		var wait time.Duration
		whole := false
		switch {
		case s.catchingUp(segs, maxTxns, walEnd):
			// Behind the source: the reader is about to deliver more.
			wait = lingerFor
		default:
			// Caught up, but more transactions are expected soon (see
			// txnRate.busy): a group of one or two would pay those costs
			// for each. No target transaction is open while it waits (one
			// left open by the chunks of a large transaction holds their
			// locks), and it takes only whole transactions.
			wait = rate.busy(segs, maxTxns, a.inTxn, time.Now())
			whole = wait > 0
			// The group before, committed asynchronously and not yet
			// flushed, must not wait for this one's linger to reach
			// the next hop.
			if whole && a.unflushed && a.relays(ctx) {
				if err := a.flushWAL(ctx); err != nil {
					return err
				}
				a.unflushed = false
			}
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
			if segs, err = q.takeMore(segs, bounds, whole); err != nil {
				return err
			}
		}
		behind := farBehind(segs, walEnd)
		rate.add(segs, behind, time.Now())
		idle := q.empty() // the group took everything queued
		a.fastWrites = behind
		a.flushCommit = !s.cfg.SynchronousCommit && !behind && idle && !a.inTxn && a.relays(ctx)
		started := time.Now()
		r, err := s.applyRetrying(ctx, a, segs)
		if err != nil {
			return err
		}
		if r.committed && !behind {
			rate.applied(time.Since(started))
		}
		q.recycle(segs)
		if r.committed && a.flushCommit {
			a.unflushed = false
		} else {
			a.unflushed = a.unflushed || (r.committed && !s.cfg.SynchronousCommit)
		}
		// Flush when the group took everything queued, or nothing is
		// queued now, whether or not this group committed: a group of
		// echoes only (dropped, nothing to commit) must not leave the
		// commit before it waiting for the WAL writer.
		if a.unflushed && !a.inTxn && !behind && (idle || q.empty()) && a.relays(ctx) {
			if err := a.flushWAL(ctx); err != nil {
				return err
			}
			a.unflushed = false
		}
		if r.committed {
			s.groups.Add(1)
			s.committed(r)
			tr.add(r.targetLSN, r.processed)
			applied()
			if err := s.collectTombstones(ctx, a); err != nil {
				return err
			}
		} else if r.processed > 0 && !a.inTxn {
			tr.add(0, r.processed)
		}
		if r.processed > 0 && !a.inTxn {
			s.setProcessed(r.processed)
		}
	}
}

// lingerFor is how long a small group waits for more while catching up.
const lingerFor = 2 * time.Millisecond

// busyLinger is how long a small group of a caught-up feed waits for more
// when its source commits faster than one transaction per busyLinger: a
// few milliseconds of lag for fewer, larger target transactions.
const busyLinger = 20 * time.Millisecond

// maxBusyLinger bounds the wait of a caught-up feed whose groups are slow to
// apply (see txnRate.busy).
const maxBusyLinger = 80 * time.Millisecond

// txnRate estimates how fast a caught-up feed's source transactions
// reach the applier, over the last second or so, and how long its groups
// take to apply.
type txnRate struct {
	since time.Time // start of the current count
	txns  int       // transactions taken since then
	perS  float64   // the last full count's rate
	last  time.Time // when the last group was taken
	// apply is a moving average of how long committed caught-up groups
	// took to apply, retries included, each sample capped (see applied).
	apply time.Duration
}

// applied records how long a caught-up group that committed took to apply
// (groups of echoes only, and chunks of a large transaction, say nothing of
// a group's cost). A sample counts for at most what makes busy wait its
// longest: one stalled group (a lock retry, a table loaded anew) must not
// keep the feed waiting long after.
func (r *txnRate) applied(d time.Duration) {
	d = min(d, maxBusyLinger/4)
	if r.apply == 0 {
		r.apply = d
		return
	}
	r.apply += (d - r.apply) / 4
}

// add counts a group taken at now. Groups taken far behind the source
// (up to thousands of transactions, as fast as the target applies them)
// say nothing of how fast the source commits: they restart the count.
func (r *txnRate) add(segs []*segment, behind bool, now time.Time) {
	r.last = now
	if behind || r.since.IsZero() {
		r.since, r.txns, r.perS = now, 0, 0
		if behind {
			return
		}
	}
	r.txns += groupTxns(segs)
	if d := now.Sub(r.since); d >= time.Second {
		r.perS = float64(r.txns) / d.Seconds()
		r.since, r.txns = now, 0
	}
}

// busy returns how long a group taken at now from a caught-up feed should
// wait to grow (0: not at all). It waits where more transactions are
// expected within the wait, and the group before it was taken only just
// before (after a pause the rate is stale, and the first transaction should
// not wait). Never while a target transaction is open (inTxn: the chunks of
// a large transaction hold their locks until it commits).
//
// A group of fewer than 4 transactions waits busyLinger. Where groups take
// long to apply (their rows contended, or the target's CPU saturated),
// what a group costs beyond its rows (a round trip that locks them, a
// commit, the WAL records of those locks, and for every feed of the
// target's WAL, a transaction to decode) is what runs out: the wait grows
// with the apply time, up to maxBusyLinger, and so does the group (up to a
// quarter of the largest). The apply time includes the group's rows, so a
// longer wait makes it longer still; maxBusyLinger bounds that, and it
// starts only where a group of a few transactions takes over 5 ms.
func (r *txnRate) busy(segs []*segment, maxTxns int, inTxn bool, now time.Time) time.Duration {
	wait, most := busyLinger, 4
	if slow := 4 * r.apply; slow > busyLinger {
		wait, most = min(slow, maxBusyLinger), max(4, maxTxns/4)
	}
	if inTxn || segs[len(segs)-1].partial || maxTxns < 8 || r.perS*wait.Seconds() < 1 || now.Sub(r.last) > 5*wait {
		return 0
	}
	if txns := groupTxns(segs); txns > 0 && txns < most {
		return wait
	}
	return 0
}

// groupTxns is the number of whole source transactions a group ends.
func groupTxns(segs []*segment) int {
	n := 0
	for _, sg := range segs {
		n += len(sg.commits)
	}
	return n
}

// catchingUp reports whether a group is worth growing: small, not ending
// inside a large transaction, and the feed far behind the source.
func (s *Sink) catchingUp(segs []*segment, maxTxns int, walEnd *walEndBox) bool {
	last := segs[len(segs)-1]
	if last.partial || maxTxns < 8 {
		return false
	}
	if groupTxns(segs) >= maxTxns/4 {
		return false
	}
	end := walEnd.get()
	return end > last.endLSN() && end-last.endLSN() > 1<<20
}

// applyRetrying applies a group, retrying it at once in this session when
// the target aborted it for a deadlock, a lock timeout or a serialization
// failure (writers on the target lock the same rows): reconnecting would
// only add delay.
func (s *Sink) applyRetrying(ctx context.Context, a *applier, segs []*segment) (groupResult, error) {
	wasOpen := a.inTxn
	st := a.st // the counts of the open transaction's earlier chunks
	for attempt := 1; ; attempt++ {
		plain := s.plainInserts()
		r, err := a.applyGroup(ctx, segs)
		if err == nil {
			if r.committed && !plain {
				s.guardedGroups.Add(-1)
			}
			return r, nil
		}
		if isAfterCommit(err) {
			return r, err
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
		// Lock errors are retried for as long as they last: at a hub, many
		// feeds queue for the same rows, and giving up would only add a
		// reconnect to the wait.
		if !isLockError(err) {
			return r, err
		}
		s.lockRetried(err)
		s.log.Debug("target transaction aborted; retrying the group", "attempt", attempt, "err", err)
		if wasOpen {
			// A later chunk of a large source transaction: back to the
			// group savepoint (applyGroup took it), keeping the earlier
			// chunks, rather than ending the session and streaming the
			// whole transaction again. commit marks the transaction closed
			// even when the error skipped its COMMIT: it is still open.
			a.inTxn = true
			if err := a.undoGroup(ctx, true, st); err != nil {
				return r, err
			}
		} else if err := a.rollback(ctx); err != nil {
			return r, err
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(time.Duration(min(attempt, 20)) * time.Millisecond):
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

// apply writes a group of segments. Whole source transactions are
// committed with the checkpoint; a group ending in a chunk of a large
// transaction leaves the target transaction open for the next chunk.
func (a *applier) apply(ctx context.Context, segs []*segment) (groupResult, error) {
	var r groupResult
	for _, s := range segs {
		ti := 0
		for ci, c := range s.changes {
			for ti < len(s.truncs) && s.truncs[ti].at == ci {
				if err := a.truncate(ctx, s.truncs[ti]); err != nil {
					return r, err
				}
				ti++
			}
			if err := a.addChange(ctx, s, c); err != nil {
				return r, err
			}
		}
		for ; ti < len(s.truncs); ti++ {
			if err := a.truncate(ctx, s.truncs[ti]); err != nil {
				return r, err
			}
		}
		a.st.rows += int64(len(s.changes))
		a.st.txns += int64(len(s.commits))
		if n := len(s.commits); n > 0 {
			r.last = s.commits[n-1]
		}
		if e := s.endLSN(); e > r.processed {
			r.processed = e
		}
	}
	if segs[len(segs)-1].partial {
		if err := a.flush(ctx); err != nil {
			return r, err
		}
		r.processed = 0
		return r, nil
	}
	var last *commit
	if r.last.lsn != 0 {
		last = &r.last
	}
	if done, err := a.flushThen(ctx, last); err != nil {
		return r, err
	} else if done != nil {
		return a.groupCommitted(r, *done), nil
	}
	if r.last.lsn == 0 && !a.inTxn {
		// Only positions to mark processed: nothing to commit.
		return r, nil
	}
	if r.last.lsn == 0 {
		return r, fmt.Errorf("internal error: target transaction open without a source commit")
	}
	lsn, err := a.commit(ctx, r.last)
	if err != nil {
		return r, err
	}
	return a.groupCommitted(r, lsn), nil
}

// groupCommitted completes r for a group the target committed.
func (a *applier) groupCommitted(r groupResult, lsn pglogrepl.LSN) groupResult {
	a.unfused = false
	r.committed = true
	r.targetLSN = lsn
	r.st = a.st
	a.st = groupStats{}
	return r
}

// truncate applies a source TRUNCATE after what is pending.
func (a *applier) truncate(ctx context.Context, tr truncate) error {
	if err := a.flush(ctx); err != nil {
		return err
	}
	var names []string
	for _, rel := range tr.rels {
		t, err := a.table(ctx, rel)
		if err != nil {
			return err
		}
		names = append(names, t.ident)
	}
	sql := "TRUNCATE " + strings.Join(names, ", ")
	if tr.ident {
		sql += " RESTART IDENTITY"
	}
	if tr.cascade {
		sql += " CASCADE"
	}
	b := &pgconn.Batch{}
	a.begin(b)
	b.ExecParams(sql, nil, nil, nil, nil)
	if _, err := a.pg.ExecBatch(ctx, b).ReadAll(); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return nil
}

// rollback abandons the open target transaction and everything pending.
func (a *applier) rollback(ctx context.Context) error {
	for _, p := range a.pend {
		p.ents = p.ents[:0]
		clear(p.idx)
	}
	a.resetArrays()
	a.st = groupStats{}
	a.inTxn = false
	a.planMode = planUnknown
	if _, err := a.pg.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	return nil
}

// committed records a group the target committed.
func (s *Sink) committed(r groupResult) {
	now := time.Now()
	lag := now.Sub(pgTime(r.last.commitTime))
	if lag < 0 {
		lag = 0
	}
	s.mu.Lock()
	s.st.AppliedLSN = r.last.lsn
	s.st.LastCommit = now
	s.st.Lag = lag
	s.st.Txns += r.st.txns
	s.st.Rows += r.st.rows
	s.st.Conflicts += r.st.conflicts
	s.st.Dropped += r.st.dropped
	s.st.DeadLettered += r.st.deadLettered
	if n := len(s.samples); n == 0 || now.Sub(s.samples[n-1].at) >= 200*time.Millisecond {
		s.samples = append(s.samples, rateSample{at: now, rows: s.st.Rows})
		if len(s.samples) > 64 {
			s.samples = append(s.samples[:0], s.samples[32:]...)
		}
	} else {
		s.samples[n-1].rows = s.st.Rows
	}
	s.mu.Unlock()
	s.m.add(r.st, lag)
}
