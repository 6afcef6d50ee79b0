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

// start gives the feed its row if it has none and returns the position to
// stream from. The errors are the database's own, so that the session can
// tell a missing votr schema.
func (c Checkpoints) start(ctx context.Context, feed string) (pglogrepl.LSN, error) {
	if _, err := c.db.Exec(ctx, `INSERT INTO votr.checkpoints (feed) VALUES ($1) ON CONFLICT (feed) DO NOTHING`, feed); err != nil {
		return 0, err
	}
	var text string
	if err := c.db.QueryRow(ctx, `SELECT source_lsn::text FROM votr.checkpoints WHERE feed = $1`, feed).Scan(&text); err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(text)
}

// advanceSQL moves a feed's checkpoint to a source commit and adds a
// group's counts; it runs, prepared, in the group's target transaction.
const advanceSQL = `INSERT INTO votr.checkpoints AS c
	(feed, source_lsn, source_commit, applied_at, txns, rows, conflicts, dropped, dead_lettered)
	VALUES ($1, $2::pg_lsn, $3::timestamptz, now(), $4, $5, $6, $7, $8)
	ON CONFLICT (feed) DO UPDATE SET source_lsn = EXCLUDED.source_lsn, source_commit = EXCLUDED.source_commit,
		applied_at = now(), txns = c.txns + EXCLUDED.txns, rows = c.rows + EXCLUDED.rows,
		conflicts = c.conflicts + EXCLUDED.conflicts, dropped = c.dropped + EXCLUDED.dropped,
		dead_lettered = c.dead_lettered + EXCLUDED.dead_lettered`

// advanceArgs are advanceSQL's parameters, in text form.
func advanceArgs(feed string, lsn, commitTime []byte, st groupStats) [][]byte {
	return [][]byte{[]byte(feed), lsn, commitTime,
		itoa(st.txns), itoa(st.rows), itoa(st.conflicts), itoa(st.dropped), itoa(st.deadLettered)}
}

func itoa(n int64) []byte { return strconv.AppendInt(nil, n, 10) }

func (a *applier) commit(ctx context.Context, last commit) (pglogrepl.LSN, error) {
	b := &pgconn.Batch{}
	a.begin(b)
	commitTime := []byte(pgTime(last.commitTime).Format("2006-01-02 15:04:05.999999Z07:00"))
	lsn := []byte(last.lsn.String())
	if a.origin {
		// Tags the transaction, so the reverse feed's reader can skip it.
		b.ExecParams(`SELECT pg_replication_origin_xact_setup($1::pg_lsn, $2::timestamptz)`,
			[][]byte{lsn, commitTime}, nil, nil, nil)
	}
	name, err := a.stmts.name(ctx, advanceSQL)
	if err != nil {
		return 0, err
	}
	b.ExecPrepared(name, advanceArgs(a.s.feed, lsn, commitTime, a.st), nil, nil)
	b.ExecParams("COMMIT", nil, nil, nil, nil)
	b.ExecParams("SELECT pg_current_wal_insert_lsn()", nil, nil, nil, nil)
	res, err := a.pg.ExecBatch(ctx, b).ReadAll()
	a.inTxn = false
	if err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	// A COMMIT of a failed transaction reports ROLLBACK instead of an error.
	if tag := res[len(res)-2].CommandTag.String(); tag != "COMMIT" {
		return 0, fmt.Errorf("commit: the target rolled the transaction back (%s)", tag)
	}
	rows := res[len(res)-1].Rows
	if len(rows) != 1 {
		return 0, fmt.Errorf("commit: no WAL position returned")
	}
	return pglogrepl.ParseLSN(string(rows[0][0]))
}
