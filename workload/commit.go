package workload

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ambiguousCommit is a COMMIT whose answer was lost with the connection.
// It carries what resolve needs to learn the outcome.
type ambiguousCommit struct {
	xid    string // the transaction's id
	ballot vote   // candidate of one ballot the transaction inserted...
	id     string // ...and that ballot's id
	err    error
}

func (e *ambiguousCommit) Error() string {
	return fmt.Sprintf("connection lost during COMMIT of transaction %s: %v", e.xid, e.err)
}
func (e *ambiguousCommit) Unwrap() error { return e.err }

// attempt runs the transaction once. It is not cancelled by ctx right away:
// a stop lets the in-flight transaction finish for up to stopGrace.
func (w *worker) attempt(ctx context.Context, p plan) (err error) {
	tctx, cancel := graceful(ctx)
	defer cancel()
	tx, err := w.pool.Begin(tctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(tctx))
		}
	}()
	b := &pgx.Batch{}
	for i, v := range p.votes {
		b.Queue(`UPDATE public.totals SET total = total + $1 WHERE candidate = $2`, v.n, v.candidate)
		insert := `INSERT INTO public.ballots (candidate) SELECT $1::uuid FROM generate_series(1, $2::int)`
		if i == 0 {
			// One ballot id marks the transaction: if it is in the table
			// after a lost COMMIT, the whole transaction committed.
			insert += ` RETURNING ballot::text`
		}
		b.Queue(insert, v.candidate, v.n)
	}
	if p.update != "" {
		b.Queue(`UPDATE public.candidates SET mood = $1, version = version + 1 WHERE candidate = $2`, p.mood, p.update)
	}
	// The transaction id tells whether a COMMIT cut off by a lost connection
	// might still be finishing on the server (see resolve).
	b.Queue(`SELECT pg_current_xact_id()::text`)
	var xid, marker string
	br := tx.SendBatch(tctx, b)
	fail := func(e error) error { br.Close(); return e }
	for i, v := range p.votes {
		tag, err := br.Exec()
		if err != nil {
			return fail(fmt.Errorf("update total of %s: %w", v.candidate, err))
		}
		if tag.RowsAffected() != 1 {
			return fail(&fatalError{fmt.Errorf("candidate %s has no row in totals: seed the region (schema.Seed) so every candidate has a total", v.candidate)})
		}
		if i == 0 {
			rows, err := br.Query()
			if err == nil {
				if rows.Next() {
					err = rows.Scan(&marker)
				}
				rows.Close()
				if err == nil {
					err = rows.Err()
				}
			}
			if err == nil && marker == "" {
				err = errors.New("no ballot id returned")
			}
			if err != nil {
				return fail(fmt.Errorf("insert %d ballots for %s: %w", v.n, v.candidate, err))
			}
			continue
		}
		if _, err := br.Exec(); err != nil {
			return fail(fmt.Errorf("insert %d ballots for %s: %w", v.n, v.candidate, err))
		}
	}
	if p.update != "" {
		if _, err := br.Exec(); err != nil {
			return fail(fmt.Errorf("update candidate %s: %w", p.update, err))
		}
	}
	if err := br.QueryRow().Scan(&xid); err != nil {
		return fail(fmt.Errorf("read transaction id: %w", err))
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("finish batch: %w", err)
	}
	if err := tx.Commit(tctx); err != nil {
		if definitelyNotCommitted(err) {
			return fmt.Errorf("commit: %w", err)
		}
		return &ambiguousCommit{xid: xid, ballot: p.votes[0], id: marker, err: err}
	}
	return nil
}

// resolve learns what became of a transaction whose COMMIT was cut off:
// "committed", "aborted", or "" if that could not be learned before ctx
// (plus the stop grace) ended.
//
// The marker ballot decides; the transaction id only tells when to look.
// While pg_xact_status says "in progress" the old backend may still be
// committing, so resolve waits; once it is final, a fresh snapshot shows the
// marker ballot exactly when the transaction committed. The id alone is not
// enough: after a crash the server hands out ids again from the last one it
// logged, so the id may then name a later transaction (or one "in the
// future", which certainly did not commit).
func (w *worker) resolve(ctx context.Context, amb *ambiguousCommit) string {
	rctx, cancel := graceful(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		var status *string
		err := w.pool.QueryRow(rctx, `SELECT pg_xact_status($1::text::xid8)`, amb.xid).Scan(&status)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "22023" { // "transaction ID … is in the future"
			return "aborted"
		}
		if err == nil && (status == nil || *status != "in progress") {
			var found bool
			err = w.pool.QueryRow(rctx, `SELECT EXISTS (SELECT 1 FROM public.ballots WHERE candidate = $1 AND ballot = $2)`,
				amb.ballot.candidate, amb.id).Scan(&found)
			if err == nil {
				if found {
					return "committed"
				}
				return "aborted"
			}
		}
		if err != nil {
			if classify(err) == fatal {
				w.log.Error("cannot ask the server about an interrupted COMMIT", "xid", amb.xid, "err", err)
				return ""
			}
			w.health.failed(err)
		}
		if !sleep(rctx, backoff(attempt, w.rng.Float64())) {
			return ""
		}
	}
}
