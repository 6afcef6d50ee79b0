package sink

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/script"
)

// DeadLetters is the votr.dead_letters table of a target database: the
// changes whose merge a feed gave up on (onScriptError: deadletter), kept
// with their rows until `votr replay` re-applies them. Every query on the
// table is in this file (schema creates it).
type DeadLetters struct{ db DB }

// DeadLettersIn is the dead-letter table of the database db is connected to.
func DeadLettersIn(db DB) DeadLetters { return DeadLetters{db} }

// Pending counts the feed's changes that are parked and not replayed yet.
func (d DeadLetters) Pending(ctx context.Context, feed string) (int64, error) {
	var n int64
	if err := d.db.QueryRow(ctx, `SELECT count(*) FROM votr.dead_letters WHERE feed = $1 AND replayed_at IS NULL`, feed).Scan(&n); err != nil {
		return 0, fmt.Errorf("count dead letters: %w", err)
	}
	return n, nil
}

// parkedChange is a row of votr.dead_letters not replayed yet.
type parkedChange struct {
	id        int64
	table, op string
	lsn       pglogrepl.LSN
	commit    *time.Time
	// before and proposed are the rows as rowJSON wrote them (nil: none).
	before, proposed []byte
}

// lockPending reads the feed's changes not replayed yet, oldest first, and
// locks them until the transaction ends.
func (d DeadLetters) lockPending(ctx context.Context, feed string) ([]parkedChange, error) {
	rows, err := d.db.Query(ctx, `SELECT id, tbl, op, source_lsn::text, source_commit, before::text, proposed::text
		FROM votr.dead_letters WHERE feed = $1 AND replayed_at IS NULL ORDER BY id FOR UPDATE`, feed)
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (parkedChange, error) {
		var p parkedChange
		var lsn string
		var before, proposed *string
		if err := r.Scan(&p.id, &p.table, &p.op, &lsn, &p.commit, &before, &proposed); err != nil {
			return p, err
		}
		var err error
		if p.lsn, err = pglogrepl.ParseLSN(lsn); err != nil {
			return p, fmt.Errorf("dead letter %d: source LSN %q: %w", p.id, lsn, err)
		}
		if before != nil {
			p.before = []byte(*before)
		}
		if proposed != nil {
			p.proposed = []byte(*proposed)
		}
		return p, nil
	})
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	return out, nil
}

// markReplayed records that a parked change has been re-applied.
func (d DeadLetters) markReplayed(ctx context.Context, id int64) error {
	if _, err := d.db.Exec(ctx, `UPDATE votr.dead_letters SET replayed_at = now() WHERE id = $1`, id); err != nil {
		return fmt.Errorf("mark dead letter %d replayed: %w", id, err)
	}
	return nil
}

// queueDeadLetter adds the insert of a change the feed gives up on to b,
// the batch that writes the merge results of its target transaction.
func queueDeadLetter(b *pgconn.Batch, feed string, d deadLetter) {
	var commitTime []byte
	if d.e.meta.commitTime != 0 {
		commitTime = []byte(pgTime(d.e.meta.commitTime).Format("2006-01-02 15:04:05.999999Z07:00"))
	}
	b.ExecParams(`INSERT INTO votr.dead_letters (feed, source_lsn, source_commit, tbl, op, before, proposed, target, reason)
			VALUES ($1, $2::pg_lsn, $3::timestamptz, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, $9)`,
		[][]byte{[]byte(feed), []byte(d.e.meta.lsn.String()), commitTime, []byte(d.t.name), []byte(d.op),
			rowJSON(d.before), rowJSON(d.proposed), rowJSON(d.target), []byte(d.reason)},
		nil, nil, nil)
}

type deadLetter struct {
	t                        *table
	e                        *entry
	op                       string
	before, proposed, target script.Row
	reason                   string
}
