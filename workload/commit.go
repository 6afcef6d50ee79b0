package workload

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ambiguousCommit is a transaction whose answer was lost with the
// connection: it may or may not have committed. It carries what resolve
// needs to learn the outcome.
type ambiguousCommit struct {
	ballot vote   // candidate of the transaction's marker ballot...
	id     string // ...and that ballot's id, chosen by the worker
	// The server process that ran the transaction, to end it if it is
	// still there: its pid and the client port of its connection (-1 over
	// a Unix socket).
	pid, port int
	err       error
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
// markerSQL comes first: the transaction's marker ballot, whose id the
// worker chose. From then on, anyone inserting that id waits until the
// transaction has ended (see resolve).
const markerSQL = `INSERT INTO public.ballots (candidate, ballot) VALUES ($1, $2)`

// castSQL is one candidate's share: $2 added to its totals row and $3
// ballots (the first share's marker is the one fewer), inserted only
// through the updated row. A candidate without a totals row fails the
// whole transaction (division by zero) rather than committing the other
// shares alone.
const castSQL = `WITH t AS (UPDATE public.totals SET total = total + $2 WHERE candidate = $1 RETURNING candidate),
	b AS (INSERT INTO public.ballots (candidate) SELECT t.candidate FROM t, generate_series(1, $3::int))
SELECT 1 / count(*)::int FROM t`

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
	conn, err := w.pool.Acquire(tctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err) // nothing was sent
	}
	defer conn.Release()
	pg := conn.Conn().PgConn()
	amb := &ambiguousCommit{ballot: p.votes[0], id: marker, pid: int(pg.PID()), port: -1}
	if a, ok := pg.Conn().LocalAddr().(*net.TCPAddr); ok {
		amb.port = a.Port
	}
	b := &pgx.Batch{}
	b.Queue(markerSQL, p.votes[0].candidate, marker)
	for i, v := range p.votes {
		n := v.n
		if i == 0 {
			n-- // the marker
		}
		b.Queue(castSQL, v.candidate, v.n, n)
	}
	if p.update != "" {
		b.Queue(`UPDATE public.candidates SET mood = $1, version = version + 1 WHERE candidate = $2`, p.mood, p.update)
	}
	br := conn.Conn().SendBatch(tctx, b)
	err = func() error {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("insert the marker ballot for %s: %w", p.votes[0].candidate, err)
		}
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
	amb.err = err
	return amb
}

// resolve learns what became of a transaction whose outcome was lost with
// the connection: "committed", "aborted", or "" if that could not be
// learned before ctx (plus the stop grace) ended.
//
// The server process that ran it is ended first if it is still there (it
// may not have noticed the lost connection: waiting for a lock, or for the
// rest of a pipeline that never arrived, with its rows locked). Then the
// marker ballot is inserted again, in a transaction that is always rolled
// back: while the lost transaction has not ended, that insert waits on the
// marker's key; once it has, the insert meets the marker exactly when the
// transaction committed. No transaction id is needed (after a crash the
// server may hand ids out again).
func (w *worker) resolve(ctx context.Context, amb *ambiguousCommit) string {
	rctx, cancel := graceful(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		var inserted int64
		err := pgx.BeginFunc(rctx, w.pool, func(tx pgx.Tx) error {
			// Only a process of this pool's role and name on that
			// connection: a pid taken again by another session is left
			// alone (unless it is another worker's, which then resolves
			// its own transaction the same way).
			if _, err := tx.Exec(rctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE pid = $1 AND coalesce(client_port, -1) = $2 AND pid <> pg_backend_pid()
				AND usename = current_user AND application_name = current_setting('application_name')`, amb.pid, amb.port); err != nil {
				return err
			}
			// Bounded, so that a lost transaction that is slow to end is
			// asked about again rather than waited on past the stop grace.
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
