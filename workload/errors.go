package workload

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// errorKind says what a worker does after a failed attempt.
type errorKind int

const (
	// conflict: the server chose this transaction as a victim (serialization
	// failure, deadlock, lock timeout). Run it again at once.
	conflict errorKind = iota
	// outage: the connection or the server is gone (restart, network). Back
	// off and reconnect; the region is logged as unreachable once.
	outage
	// fatal: retrying cannot help (missing table, bad data). Stop the workers.
	fatal
)

// classify sorts an error from one attempt. Errors that are not from the
// server (EOF, refused connections, closed conns) are treated as outages:
// they are what a restart looks like from the client side.
func classify(err error) errorKind {
	var fe *fatalError
	if errors.As(err, &fe) {
		return fatal
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "40001", pe.Code == "40P01", pe.Code == "55P03":
			return conflict
		case pe.Code == "57014": // query_canceled, e.g. a statement_timeout
			return conflict
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			strings.HasPrefix(pe.Code, "53"),                           // insufficient resources (too many connections)
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", // shutdown, crash, starting up
			pe.Code == "25006": // read-only transaction: a standby being promoted
			return outage
		}
		return fatal
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) {
		return outage
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return outage
	}
	// pgx reports a closed or broken connection with plain errors ("conn
	// closed", "conn busy"); treat the rest as an outage too rather than
	// stopping a long-running workload on an error we cannot name.
	return outage
}

// fatalError marks an error no retry can fix.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

// definitelyNotCommitted reports whether a failed COMMIT certainly did not
// commit: only when the server answered with an ERROR. Anything else is
// ambiguous and is resolved by asking the server (resolve):
//   - a FATAL answer, because a backend told to shut down can commit and then
//     report the termination instead of the COMMIT's completion;
//   - a lost connection, even one pgconn calls safe to retry: pgx v5.12
//     reports a read failure after the COMMIT was sent as "conn closed", a
//     lock error that claims nothing was sent (seen in TestWorkerSurvivesRestart).
func definitelyNotCommitted(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		sev := pe.SeverityUnlocalized
		if sev == "" {
			sev = pe.Severity
		}
		return sev == "ERROR"
	}
	return false
}
