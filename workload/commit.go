package workload

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ambiguousCommit is a transaction whose answer was lost with the
// connection: it may or may not have committed. It carries what resolve
// needs to learn the outcome.
type ambiguousCommit struct {
	ballot vote   // candidate of one ballot the transaction inserted...
	id     string // ...and that ballot's id, chosen by the worker
	err    error
}

func (e *ambiguousCommit) Error() string {
	return fmt.Sprintf("connection lost before the transaction's outcome was known (marker ballot %s): %v", e.id, e.err)
}
func (e *ambiguousCommit) Unwrap() error { return e.err }

// The transaction goes to the server in one round trip: its statements in
// one pipeline ended by a single Sync, which the server runs as one
// implicit transaction (committed at the Sync, or rolled back whole at the
// first error). Nothing is held across a round trip to the worker, so the
// totals rows it updates are locked only while the server runs it.
//
// castSQL is one candidate's share: its totals row and its ballots. The
// ballots are inserted only through the updated row, and a candidate
// without one fails the whole transaction (division by zero in a one-time
// filter) rather than committing the other candidates' share alone. The
// first share's first ballot has the id the worker chose ($3): it marks the
// transaction for resolve.
const castSQL = `WITH t AS (UPDATE public.totals SET total = total + $2 WHERE candidate = $1 RETURNING candidate)
INSERT INTO public.ballots (candidate, ballot)
SELECT $1::uuid, CASE WHEN g = 1 AND $3::uuid IS NOT NULL THEN $3::uuid ELSE gen_random_uuid() END
FROM generate_series(1, $2::int) AS g
WHERE 1 / (SELECT count(*) FROM t)::int = 1`

// noTotalsRow is the SQLSTATE of castSQL's guard (division_by_zero).
const noTotalsRow = "22012"

// attempt runs the transaction once. It is not cancelled by ctx right away:
// a stop lets the in-flight transaction finish for up to stopGrace.
func (w *worker) attempt(ctx context.Context, p plan) error {
	tctx, cancel := graceful(ctx)
	defer cancel()
	marker, err := newUUID()
	if err != nil {
		return &fatalError{fmt.Errorf("marker ballot id: %w", err)}
	}
	b := &pgx.Batch{}
	for i, v := range p.votes {
		var id *string
		if i == 0 {
			id = &marker
		}
		b.Queue(castSQL, v.candidate, v.n, id)
	}
	if p.update != "" {
		b.Queue(`UPDATE public.candidates SET mood = $1, version = version + 1 WHERE candidate = $2`, p.mood, p.update)
	}
	br := w.pool.SendBatch(tctx, b)
	err = func() error {
		for _, v := range p.votes {
			if _, err := br.Exec(); err != nil {
				var pe *pgconn.PgError
				if errors.As(err, &pe) && pe.Code == noTotalsRow {
					return &fatalError{fmt.Errorf("candidate %s has no row in totals: seed the region (schema.Seed) so every candidate has a total", v.candidate)}
				}
				return fmt.Errorf("cast %d ballots for %s: %w", v.n, v.candidate, err)
			}
		}
		if p.update != "" {
			if _, err := br.Exec(); err != nil {
				return fmt.Errorf("update candidate %s: %w", p.update, err)
			}
		}
		return nil
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("commit: %w", cerr)
	}
	if err == nil || definitelyNotCommitted(err) {
		return err
	}
	return &ambiguousCommit{ballot: p.votes[0], id: marker, err: err}
}

// resolve learns what became of a transaction whose outcome was lost with
// the connection: "committed", "aborted", or "" if that could not be
// learned before ctx (plus the stop grace) ended.
//
// It tries to insert the marker ballot again, in a transaction it always
// rolls back. While the lost transaction is still running (its backend may
// not have noticed the lost connection yet), that insert waits on the
// marker's key; once it has ended, the insert meets the marker exactly when
// the transaction committed. This needs no transaction id, which after a
// crash the server may hand out again.
func (w *worker) resolve(ctx context.Context, amb *ambiguousCommit) string {
	rctx, cancel := graceful(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		var inserted int64
		err := pgx.BeginFunc(rctx, w.pool, func(tx pgx.Tx) error {
			// Bounded, so that a lost transaction that is slow to end
			// (its backend still waiting on a dead link) is asked about
			// again rather than waited on past the stop grace.
			if _, err := tx.Exec(rctx, `SET LOCAL lock_timeout = '1s'`); err != nil {
				return err
			}
			tag, err := tx.Exec(rctx, `INSERT INTO public.ballots (candidate, ballot) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
				amb.ballot.candidate, amb.id)
			inserted = tag.RowsAffected()
			if err == nil {
				err = errProbeDone // roll the probe back
			}
			return err
		})
		if errors.Is(err, errProbeDone) {
			if inserted == 0 {
				return "committed"
			}
			return "aborted"
		}
		if classify(err) == fatal {
			w.log.Error("cannot ask the server about a transaction whose outcome was lost", "marker", amb.id, "err", err)
			return ""
		}
		if classify(err) == outage {
			w.health.failed(err)
		}
		if !sleep(rctx, backoff(attempt, w.rng.Float64())) {
			return ""
		}
	}
}

// errProbeDone ends resolve's probe transaction with a rollback.
var errProbeDone = errors.New("probe done")

// newUUID returns a random (version 4) UUID in its text form.
func newUUID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return "", err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}
