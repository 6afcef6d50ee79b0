package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what the stores run their statements on: a connection, a pool or
// a transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Checkpoints is the votr.checkpoints table of a target database: one row
// per feed into it, holding the commit position of the last source
// transaction applied (committed in the same target transaction as the
// changes, so that nothing is applied twice) and running totals. Every
// query on the table is in this file (schema creates it).
type Checkpoints struct{ db DB }

// CheckpointsIn is the checkpoint table of the database db is connected to.
func CheckpointsIn(db DB) Checkpoints { return Checkpoints{db} }

// Checkpoint is a feed's row.
type Checkpoint struct {
	SourceLSN                                    string // as the server prints a pg_lsn
	SourceCommit                                 *time.Time
	AppliedAt                                    *time.Time
	Txns, Rows, Conflicts, Dropped, DeadLettered int64
}

// Add gives a feed its row (at position 0: stream the whole slot) unless
// it has one.
func (c Checkpoints) Add(ctx context.Context, feed string) error {
	if _, err := c.db.Exec(ctx, `INSERT INTO votr.checkpoints (feed) VALUES ($1) ON CONFLICT (feed) DO NOTHING`, feed); err != nil {
		return fmt.Errorf("add checkpoint of feed %s: %w", feed, err)
	}
	return nil
}

// Remove deletes a feed's row: the feed starts afresh.
func (c Checkpoints) Remove(ctx context.Context, feed string) error {
	if _, err := c.db.Exec(ctx, `DELETE FROM votr.checkpoints WHERE feed = $1`, feed); err != nil {
		return fmt.Errorf("remove checkpoint of feed %s: %w", feed, err)
	}
	return nil
}

// Feeds lists the feeds that have a row.
func (c Checkpoints) Feeds(ctx context.Context) ([]string, error) {
	rows, err := c.db.Query(ctx, `SELECT feed FROM votr.checkpoints`)
	if err != nil {
		return nil, fmt.Errorf("read checkpoints: %w", err)
	}
	feeds, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read checkpoints: %w", err)
	}
	return feeds, nil
}

// Get reads a feed's row; ok is false when it has none.
func (c Checkpoints) Get(ctx context.Context, feed string) (cp Checkpoint, ok bool, err error) {
	err = c.db.QueryRow(ctx, `SELECT source_lsn::text, source_commit, applied_at, txns, rows, conflicts, dropped, dead_lettered
		FROM votr.checkpoints WHERE feed = $1`, feed).
		Scan(&cp.SourceLSN, &cp.SourceCommit, &cp.AppliedAt, &cp.Txns, &cp.Rows, &cp.Conflicts, &cp.Dropped, &cp.DeadLettered)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return cp, false, nil
	case err != nil:
		return cp, false, fmt.Errorf("read checkpoint of feed %s: %w", feed, err)
	}
	return cp, true, nil
}

// resume reads the position a session of the feed streams from (the
// session reads it only after acquiring the feed's replication origin: see
// Sink.session). ok is false when the feed has no row: apply has not
// finished creating it, and a sink must not create it (the row's existence
// is what tells apply that the feed's initial copy is done). The errors
// are the database's own, so that the session can tell a missing votr
// schema.
func (c Checkpoints) resume(ctx context.Context, feed string) (lsn pglogrepl.LSN, ok bool, err error) {
	var text string
	err = c.db.QueryRow(ctx, `SELECT source_lsn::text FROM votr.checkpoints WHERE feed = $1`, feed).Scan(&text)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	lsn, err = pglogrepl.ParseLSN(text)
	return lsn, err == nil, err
}

// advanceSQL moves a feed's checkpoint from where this session last left
// it ($9) to a later source commit ($2) and adds a group's counts; it
// runs, prepared, in the group's target transaction. Checkpoints only move
// forward, and only from the position the session read or wrote: when the
// row is elsewhere (a slow commit of an earlier session landed after this
// one read it, a backfill moved it, apply removed it) the statement fails
// by inserting a row without a feed (a not-null violation the commit
// recognises), so the whole group rolls back instead of being applied a
// second time. The sink never creates the row: apply does (see Add and
// backfillSQL).
const advanceSQL = `WITH moved AS (
		UPDATE votr.checkpoints AS c SET source_lsn = $2::pg_lsn, source_commit = $3::timestamptz,
			applied_at = now(), txns = c.txns + $4::bigint, rows = c.rows + $5::bigint,
			conflicts = c.conflicts + $6::bigint, dropped = c.dropped + $7::bigint,
			dead_lettered = c.dead_lettered + $8::bigint
		WHERE c.feed = $1::text AND c.source_lsn = $9::pg_lsn AND c.source_lsn < $2::pg_lsn
		RETURNING 1)
	INSERT INTO votr.checkpoints (feed) SELECT NULL WHERE NOT EXISTS (SELECT FROM moved)`

// backfillSQL records a backfill's checkpoint, in the copy's target
// transaction: it creates the feed's row (which tells apply and the sink
// that the feed is created and copied) or moves an existing one forward.
// A row already past the copy's position (a sink that ran ahead) is left
// as it is: the copy's rows are merged like replicated inserts, so
// committing them again changes nothing, and the checkpoint never moves
// back.
const backfillSQL = `INSERT INTO votr.checkpoints AS c
	(feed, source_lsn, source_commit, applied_at, txns, rows, conflicts, dropped, dead_lettered)
	VALUES ($1, $2::pg_lsn, $3::timestamptz, now(), $4, $5, $6, $7, $8)
	ON CONFLICT (feed) DO UPDATE SET source_lsn = EXCLUDED.source_lsn, source_commit = EXCLUDED.source_commit,
		applied_at = now(), txns = c.txns + EXCLUDED.txns, rows = c.rows + EXCLUDED.rows,
		conflicts = c.conflicts + EXCLUDED.conflicts, dropped = c.dropped + EXCLUDED.dropped,
		dead_lettered = c.dead_lettered + EXCLUDED.dead_lettered
	WHERE c.source_lsn < EXCLUDED.source_lsn`

// advanceArgs are advanceSQL's and backfillSQL's parameters, in text form
// (prev only for advanceSQL).
func advanceArgs(feed string, lsn, commitTime []byte, st groupStats, prev []byte) [][]byte {
	args := [][]byte{[]byte(feed), lsn, commitTime,
		itoa(st.txns), itoa(st.rows), itoa(st.conflicts), itoa(st.dropped), itoa(st.deadLettered)}
	if prev != nil {
		args = append(args, prev)
	}
	return args
}

func itoa(n int64) []byte { return strconv.AppendInt(nil, n, 10) }

// checkpointMovedError is a group the target rolled back because the
// feed's checkpoint was not where the session left it. The session ends
// and the next one resumes from the checkpoint as it is.
type checkpointMovedError struct {
	feed string
	at   pglogrepl.LSN
	err  error
}

func (e *checkpointMovedError) Error() string {
	return fmt.Sprintf("feed %s: the checkpoint is no longer at %s, where this session left it (an earlier session's commit landed late, a backfill moved it, or apply removed the feed): the group was rolled back; resuming from the checkpoint: %v",
		e.feed, e.at, e.err)
}

func (e *checkpointMovedError) Unwrap() error { return e.err }

// isCheckpointRefusal tells advanceSQL's refusal (a row without a feed).
func isCheckpointRefusal(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23502" && pe.SchemaName == "votr" && pe.TableName == "checkpoints" && pe.ColumnName == "feed"
}

// afterCommitError is a failure of a batch after its group committed (the
// flush, or reading the WAL position): nothing of the group is to be
// applied again, retried or taken change by change. The session ends and
// the next one resumes from the checkpoint the group wrote.
type afterCommitError struct{ err error }

func (e *afterCommitError) Error() string {
	return "after the group committed: " + e.err.Error()
}

func (e *afterCommitError) Unwrap() error { return e.err }

// isAfterCommit reports an afterCommitError.
func isAfterCommit(err error) bool {
	var ac *afterCommitError
	return errors.As(err, &ac)
}

// commit commits the open group (opening it if nothing was written) with
// the feed's checkpoint, in one round trip.
func (a *applier) commit(ctx context.Context, last commit) (pglogrepl.LSN, error) {
	b := &pgconn.Batch{}
	a.begin(b)
	if err := a.queueCommit(ctx, b, last); err != nil {
		return 0, err
	}
	res, err := a.pg.ExecBatch(ctx, b).ReadAll()
	return a.committed(res, err, last)
}

// queueCommit ends b with the group's commit: its origin, the checkpoint,
// COMMIT and the target's WAL position after it (read by committed), then,
// if a.flushCommit, the flush (flushSQL) in a transaction of its own.
func (a *applier) queueCommit(ctx context.Context, b *pgconn.Batch, last commit) error {
	commitTime := []byte(pgTime(last.commitTime).Format("2006-01-02 15:04:05.999999Z07:00"))
	lsn := []byte(last.lsn.String())
	if a.origin {
		// Tags the transaction, so the reverse feed's reader can skip it.
		b.ExecParams(`SELECT pg_replication_origin_xact_setup($1::pg_lsn, $2::timestamptz)`,
			[][]byte{lsn, commitTime}, nil, nil, nil)
	}
	sql, args := advanceSQL, advanceArgs(a.s.feed, lsn, commitTime, a.st, []byte(a.s.checkpoint.String()))
	if a.s.copying {
		sql, args = backfillSQL, advanceArgs(a.s.feed, lsn, commitTime, a.st, nil)
	}
	name, err := a.stmts.name(ctx, sql)
	if err != nil {
		return err
	}
	b.ExecPrepared(name, args, nil, nil)
	b.ExecParams("COMMIT", nil, nil, nil, nil)
	b.ExecParams("SELECT pg_current_wal_insert_lsn()", nil, nil, nil, nil)
	if a.flushCommit {
		// The last group before the feed goes idle at a target that
		// relays: flushWAL's transaction rides in the same round trip,
		// after the group's locks are released.
		queueFlush(b)
	}
	return nil
}

// groupResults is the number of results queueCommit's group part ends
// with: the checkpoint, COMMIT and the WAL position.
const groupResults = 3

// groupCommitted reports whether the results of a batch that queueCommit
// ended, cut short by an error, show the group's COMMIT done: the error
// came after it. The group's COMMIT is the batch's first transaction end
// (a failed statement leaves no result, and a COMMIT of a failed
// transaction reports ROLLBACK).
func groupCommitted(res []*pgconn.Result) bool {
	for _, r := range res {
		switch r.CommandTag.String() {
		case "COMMIT":
			return r.Err == nil
		case "ROLLBACK":
			return false
		}
	}
	return false
}

// committed reads the end of a batch that queueCommit ended: the target's
// WAL position after the commit.
func (a *applier) committed(res []*pgconn.Result, err error, last commit) (pglogrepl.LSN, error) {
	a.inTxn = false
	if isCheckpointRefusal(err) {
		return 0, &checkpointMovedError{feed: a.s.feed, at: a.s.checkpoint, err: err}
	}
	if err != nil {
		if groupCommitted(res) {
			return 0, &afterCommitError{err: err}
		}
		return 0, fmt.Errorf("commit: %w", err)
	}
	var flush []*pgconn.Result
	if a.flushCommit {
		if len(res) < groupResults+flushResults {
			return 0, fmt.Errorf("commit: %d results, too few for a group and its flush", len(res))
		}
		res, flush = res[:len(res)-flushResults], res[len(res)-flushResults:]
	}
	// A COMMIT of a failed transaction reports ROLLBACK instead of an error.
	if tag := res[len(res)-2].CommandTag.String(); tag != "COMMIT" {
		return 0, fmt.Errorf("commit: the target rolled the transaction back (%s)", tag)
	}
	a.s.checkpoint = last.lsn
	checkpointAt := len(res) - groupResults
	if a.s.copying && res[checkpointAt].CommandTag.RowsAffected() == 0 {
		a.s.log.Warn("the feed's checkpoint is already past the copy's position: left where it is", "copy_checkpoint", last.lsn)
	}
	rows := res[len(res)-1].Rows
	if len(rows) != 1 {
		return 0, &afterCommitError{err: fmt.Errorf("no WAL position returned")}
	}
	if flush != nil {
		if tag := flush[len(flush)-1].CommandTag.String(); tag != "COMMIT" {
			return 0, &afterCommitError{err: fmt.Errorf("the WAL flush did not commit (%s)", tag)}
		}
	}
	lsn, err := pglogrepl.ParseLSN(string(rows[0][0]))
	if err != nil {
		return 0, &afterCommitError{err: err}
	}
	return lsn, nil
}
