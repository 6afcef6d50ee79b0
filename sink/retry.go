package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// A change that fails (its merge throws, or the target refuses its
// statement every time: a constraint or a cast of the target's own) is
// retried alone, inside the open target transaction, instead of by
// reconnecting and streaming its source transaction again:
//
//  1. applyGroup applies a group as usual. When a change of it fails, it
//     undoes the group (a savepoint keeps the earlier chunks of a large
//     transaction) and applies it again in careful mode.
//  2. In careful mode every change is written on its own under a
//     savepoint (applyOne). A change that fails is rolled back to its
//     savepoint and tried again, Options.Retries more times.
//  3. Then it is parked in votr.dead_letters with the error as its reason
//     and the rest of the group is applied (onScriptError: deadletter),
//     or the feed stops after committing the source transactions before
//     the failing one (onScriptError: stop).
//
// Careful mode costs a few round trips per change, and only the groups
// with a failing change pay it.

// Savepoints of the retries: one per group continuing an open target
// transaction, one per change in careful mode.
const (
	groupSavepoint  = "votr_group"
	changeSavepoint = "votr_change"
)

// changeFailed reports errors that belong to the change being written and
// would recur if the whole group were tried again: a merge that failed, a
// data exception (a cast), an integrity constraint, or an error raised by
// a target trigger. A plain insert meeting an existing row (23505) is not
// one: inserts are then guarded with ON CONFLICT (see applyRetrying).
func changeFailed(err error, plainInserts bool) bool {
	var me *mergeError
	if errors.As(err, &me) {
		return true
	}
	// The checkpoint's refusal is an integrity error too, but of the
	// group's commit, and an error after the commit is none of the
	// changes': either ends the session, whatever the changes.
	var cm *checkpointMovedError
	if errors.As(err, &cm) || isAfterCommit(err) {
		return false
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	if pe.Code == "23505" && plainInserts {
		return false
	}
	for _, class := range []string{"22", "23", "P0"} {
		if strings.HasPrefix(pe.Code, class) {
			return true
		}
	}
	return false
}

// feedStopped is a change that kept failing with onScriptError: stop. It
// carries the segment of the change, so that applyGroup can commit what
// came before it; the error Run sees is its stop (fatal) error.
type feedStopped struct {
	seg  *segment
	stop error
}

func (e *feedStopped) Error() string { return e.stop.Error() }
func (e *feedStopped) Unwrap() error { return e.stop }

// applyGroup applies a group; when one of its changes fails, it applies
// the group again in careful mode (see above) without leaving the target
// transaction or the stream.
func (a *applier) applyGroup(ctx context.Context, segs []*segment) (groupResult, error) {
	wasOpen := a.inTxn
	if !wasOpen {
		a.groupSaved = false
	}
	st := a.st
	if wasOpen {
		// Earlier chunks of a large source transaction are in the open
		// target transaction: a change failing in this chunk must not
		// undo them.
		sql := "SAVEPOINT " + groupSavepoint
		if a.groupSaved {
			sql = "RELEASE SAVEPOINT " + groupSavepoint + "; " + sql
		}
		if err := a.exec(ctx, sql); err != nil {
			return groupResult{}, err
		}
		a.groupSaved = true
	}
	r, err := a.apply(ctx, segs)
	if wasOpen && a.s.plainInserts() && isCode(err, "23505") && !isAfterCommit(err) {
		// A row to insert exists: this chunk again with conflict detection,
		// keeping the earlier chunks (applyRetrying restarts otherwise).
		if err := a.undoGroup(ctx, true, st); err != nil {
			return r, err
		}
		a.s.insertConflict()
		r, err = a.apply(ctx, segs)
	}
	if err == nil || !changeFailed(err, a.s.plainInserts()) {
		return r, err
	}
	a.s.log.Warn("a change failed; applying its group again change by change", "err", err)
	if err := a.undoGroup(ctx, wasOpen, st); err != nil {
		return r, err
	}
	a.careful = true
	defer func() { a.careful = false }()
	r, err = a.apply(ctx, segs)
	var fs *feedStopped
	if !errors.As(err, &fs) {
		return r, err
	}
	// Stop after the source transactions before the failing one, as far
	// as they are whole and alone in this target transaction.
	i := 0
	for i < len(segs) && segs[i] != fs.seg {
		i++
	}
	if wasOpen || i == 0 || i == len(segs) || segs[i-1].partial {
		return r, fs.stop
	}
	if err := a.undoGroup(ctx, false, st); err != nil {
		return r, errors.Join(fs.stop, err)
	}
	if _, err := a.apply(ctx, segs[:i]); err != nil {
		return r, errors.Join(fs.stop, fmt.Errorf("commit the transactions before the failing one: %w", err))
	}
	return r, fs.stop
}

// undoGroup abandons what a group wrote: back to the group's savepoint
// when it continued an open target transaction (st: the counters then),
// else the whole target transaction.
func (a *applier) undoGroup(ctx context.Context, toSavepoint bool, st groupStats) error {
	if !toSavepoint {
		return a.rollback(ctx)
	}
	a.dropPending()
	a.st = st
	return a.exec(ctx, "ROLLBACK TO SAVEPOINT "+groupSavepoint)
}

// dropPending forgets the entries not written yet.
func (a *applier) dropPending() {
	for _, p := range a.pend {
		p.ents = p.ents[:0]
		clear(p.idx)
	}
	a.resetArrays()
}

// exec runs statements without parameters in the open target transaction.
func (a *applier) exec(ctx context.Context, sql string) error {
	if _, err := a.pg.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// addChange folds a change into the pending entries or, in careful mode,
// writes it on its own (applyOne).
func (a *applier) addChange(ctx context.Context, s *segment, c change) error {
	if !a.careful {
		return a.add(ctx, s, c)
	}
	return a.applyOne(ctx, s, c)
}

// applyOne writes one change under a savepoint, retrying it when it fails
// and then giving up on it as onScriptError says.
func (a *applier) applyOne(ctx context.Context, s *segment, c change) error {
	for attempt := 0; ; attempt++ {
		st := a.st
		err := a.tryChange(ctx, s, c)
		if err == nil {
			return nil
		}
		plain := a.s.plainInserts()
		guard := plain && isCode(err, "23505")
		if !guard && !changeFailed(err, plain) {
			return err
		}
		if err := a.undoChange(ctx); err != nil {
			return err
		}
		a.st = st
		switch {
		case guard:
			// The row exists: insert with conflict detection (not a failure).
			a.s.insertConflict()
			attempt--
		case attempt < a.s.opts.Retries:
			a.s.log.Debug("change failed; retrying it", "attempt", attempt+1, "of", a.s.opts.Retries, "err", err)
		default:
			return a.giveUp(ctx, s, c, err, attempt+1)
		}
	}
}

// tryChange writes one change under a new savepoint (opening the target
// transaction if needed) and releases the savepoint if it took.
func (a *applier) tryChange(ctx context.Context, s *segment, c change) error {
	b := &pgconn.Batch{}
	a.begin(b)
	b.ExecParams("SAVEPOINT "+changeSavepoint, nil, nil, nil, nil)
	if _, err := a.pg.ExecBatch(ctx, b).ReadAll(); err != nil {
		return fmt.Errorf("savepoint: %w", err)
	}
	err := a.add(ctx, s, c)
	if err == nil {
		err = a.flush(ctx)
	}
	if err != nil {
		return err
	}
	return a.exec(ctx, "RELEASE SAVEPOINT "+changeSavepoint)
}

// undoChange rolls back to the savepoint of the change being tried.
func (a *applier) undoChange(ctx context.Context) error {
	a.dropPending()
	return a.exec(ctx, "ROLLBACK TO SAVEPOINT "+changeSavepoint+"; RELEASE SAVEPOINT "+changeSavepoint)
}

// giveUp parks a change that failed tries times (err is the last failure),
// or stops the feed.
func (a *applier) giveUp(ctx context.Context, s *segment, c change, err error, tries int) error {
	t, terr := a.table(ctx, c.rel)
	if terr != nil {
		return terr
	}
	meta := s.metas[c.meta]
	var me *mergeError
	isMerge := errors.As(err, &me)
	if a.s.opts.OnScriptError == StopFeed {
		fix := "fix the target (its constraints) or the source's rows"
		if isMerge {
			fix = "fix the script"
		}
		return &feedStopped{seg: s, stop: &schemaError{fmt.Sprintf(
			"table %s: source LSN %s: a change failed %d times, stopping the feed (onScriptError: stop): %v; %s and run again",
			t.name, meta.lsn, tries, err, fix)}}
	}
	reason := fmt.Sprintf("failed %d times: %v", tries, err)
	a.s.log.Warn("a change keeps failing; dead-lettering it", "table", t.name, "lsn", meta.lsn, "err", err)
	if isMerge {
		// Through the merge path once more, which parks the change with
		// the target row it met.
		key := me.failureKey()
		a.deadKeys[key] = reason
		st := a.st
		err := a.tryChange(ctx, s, c)
		delete(a.deadKeys, key)
		if err == nil {
			return nil
		}
		if !changeFailed(err, a.s.plainInserts()) {
			return err
		}
		if err := a.undoChange(ctx); err != nil {
			return err
		}
		a.st = st
		reason = fmt.Sprintf("%s; then parking it failed: %v", reason, err)
	}
	d := deadLetter{t: t, e: &entry{op: c.op, meta: meta}, op: opName(c.op), reason: reason}
	if c.op != opInsert {
		d.before, _ = tupleRow(t, s, c.old)
	}
	d.proposed, _ = tupleRow(t, s, c.new)
	if err := a.write(ctx, nil, nil, []deadLetter{d}); err != nil {
		return err
	}
	a.st.deadLettered++
	return nil
}
