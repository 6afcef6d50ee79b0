package sink

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/schema"
)

// sessionParams are set on every connection the sink opens, so that values
// have one text form on both sides: pgoutput renders values with the
// walsender's settings, and merges compare them with the target's.
var sessionParams = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO, MDY",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "3",
	"bytea_output":       "hex",
	"application_name":   "votr-sink",
}

// monitorName is the application_name of the sink's side connections
// (WAL positions of source and target), told apart from the stream and
// the apply session.
const monitorName = "votr-sink-monitor"

// connect opens a target connection with the sink's session settings:
// the apply session (apply) or a monitor.
func (s *Sink) connect(ctx context.Context, apply bool) (*pgx.Conn, error) {
	name := monitorName
	if apply {
		name = sessionParams["application_name"]
	}
	conn, err := s.connectTo(ctx, s.cfg.TargetDSN, name, apply && !s.cfg.SynchronousCommit)
	if err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	if apply {
		if err := setApplySession(ctx, conn); err != nil {
			conn.Close(context.WithoutCancel(ctx))
			return nil, fmt.Errorf("target session settings: %w", err)
		}
	}
	return conn, nil
}

// idleInTransactionTimeout ends an apply session that stays inside a
// transaction this long without a statement (a stuck sink holding a
// region's rows); the feed reconnects and applies the group again.
const idleInTransactionTimeout = "60s"

// How an apply session waits for a lock. In a lock cycle with a user's
// transaction the sink should be the one to give up (and apply its group
// again). The server aborts the waiter that checks for a cycle first, each
// checking once, deadlock_timeout (D) after its own wait began:
//   - a cycle a user's transaction closes, after the sink's check found
//     none, ends with the sink's lock_timeout: D/2, at most maxLockTimeout,
//     always before the user's check;
//   - a cycle the sink closes is found by its own check, which comes early:
//     after D/2, at most sinkDeadlockCheck. The user's check comes first
//     only if the user had already waited between D minus that and D for
//     a row the sink held (the sink holds rows that long only in large
//     transactions and slow merges).
//
// deadlock_timeout is reserved to superusers (and roles granted SET on it);
// a session of any other role finds every cycle by its lock_timeout, and
// loses the window above from D/2 on.
const (
	sinkDeadlockCheck = 100 // ms
	maxLockTimeout    = 500 // ms
	// halfDeadlockSQL sets setting $1 to half the target's deadlock_timeout,
	// at most $2 ms.
	halfDeadlockSQL = `SELECT set_config($1,
	       least($2::int, greatest(1, (extract(epoch FROM current_setting('deadlock_timeout')::interval) * 500)::int)) || 'ms', false)`
)

// setApplySession sets the apply session's lock waits and idle limit.
func setApplySession(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, `SELECT set_config('idle_in_transaction_session_timeout', $1, false)`, idleInTransactionTimeout); err != nil {
		return err
	}
	// The lock timeout first: both are halves of the target's own
	// deadlock_timeout, which the second changes for this session.
	if _, err := conn.Exec(ctx, halfDeadlockSQL, "lock_timeout", maxLockTimeout); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, halfDeadlockSQL, "deadlock_timeout", sinkDeadlockCheck); err != nil && !isCode(err, "42501") {
		return err
	}
	return nil
}

// Plan modes of the apply session (see applier.begin).
//
// A caught-up feed applies groups of a few rows, and every statement the
// sink prepares takes its rows from arrays (unnest) and finds each target
// row (and tombstone) by its key: the right plan walks the array and
// probes the key's index, and one plan serves every group. Left to
// choose, the server planned some statements again at every execution (a
// custom plan costed per array: at a hub as much CPU as running them), and
// costed the arrays at 10 rows against tables it had not analyzed: hash
// joins over a sequential scan of the whole table, whose cost grows with
// the table (and with every dead version of a hot totals row) while the
// group stays a few rows. planSteady therefore forces one generic plan
// with only index probes.
//
// A feed far behind applies groups of thousands of rows per statement,
// which the server's own choice (hash joins where they pay) runs faster:
// planBulk restores it. Catch-up measured 12% slower under planSteady.
//
// The mode is a session setting, changed only when the feed moves from
// one to the other, and each mode prepares its own copy of a statement
// (planPrefix), so that a plan cached under one mode is never run under
// the other.
const (
	planUnknown = iota // after a rollback (which undoes a change of mode)
	planSteady
	planBulk
)

var planModeSQL = [...]string{
	planSteady: `SELECT set_config('plan_cache_mode', 'force_generic_plan', false),
	set_config('enable_seqscan', 'off', false), set_config('enable_bitmapscan', 'off', false),
	set_config('enable_hashjoin', 'off', false), set_config('enable_mergejoin', 'off', false),
	set_config('enable_material', 'off', false), set_config('enable_memoize', 'off', false)`,
	planBulk: `SELECT set_config('plan_cache_mode', 'auto', false),
	set_config('enable_seqscan', 'on', false), set_config('enable_bitmapscan', 'on', false),
	set_config('enable_hashjoin', 'on', false), set_config('enable_mergejoin', 'on', false),
	set_config('enable_material', 'on', false), set_config('enable_memoize', 'on', false)`,
}

var planPrefix = [...]string{planSteady: "/* steady */ ", planBulk: "/* bulk */ "}

// connectTimeout bounds a connection's setup when its connection string
// sets no connect_timeout: a server behind a silent partition accepts
// nothing, or accepts the TCP connection (a proxy, a load balancer) and
// never answers, and an unbounded attempt would leave the feed waiting on
// it after the partition ended.
const connectTimeout = 10 * time.Second

// boundConnect gives cfg connectTimeout unless its connection string set
// its own (connect_timeout=0, which libpq reads as "wait forever", parses
// as unset and gets it too: a feed must not hang on a silent server).
func boundConnect(cfg *pgconn.Config) {
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = connectTimeout
	}
}

func (s *Sink) connectTo(ctx context.Context, dsn, name string, asyncCommit bool) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("connection string: %w", err)
	}
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["application_name"] = name
	boundConnect(&cfg.Config)
	// No JIT compilation: the sink's statements touch a few rows each, and
	// under the steady plan mode (scans disabled) a statement that must
	// scan is costed far above jit_above_cost, so the server compiled it
	// with LLVM at every execution: the first tombstone collection of 16
	// sinks took over a second of CPU each and stalled every feed.
	cfg.RuntimeParams["jit"] = "off"
	if asyncCommit {
		// Like a native subscription: commit without waiting for the
		// flush; the source position is confirmed only after it.
		cfg.RuntimeParams["synchronous_commit"] = "off"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// setupApply prepares the apply session; it reports whether the session
// tags its transactions with a replication origin.
func (s *Sink) setupApply(ctx context.Context, conn *pgx.Conn) (bool, error) {
	if _, err := conn.Exec(ctx, "SET "+schema.SinkSetting+" = on"); err != nil {
		return false, fmt.Errorf("target session: %w", err)
	}
	// Skips FK and other triggers (the source already checked); superuser only.
	if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil && !isCode(err, "42501") {
		return false, fmt.Errorf("target session: %w", err)
	}
	name := schema.Origin(s.cfg.TargetDB, s.cfg.SourceID)
	_, err := conn.Exec(ctx, `SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL`, name)
	if err == nil {
		_, err = conn.Exec(ctx, `SELECT pg_replication_origin_session_setup($1)`, name)
	}
	switch {
	case err == nil:
		return true, nil
	case isCode(err, "42501"):
		if !s.originDenied {
			s.originDenied = true
			s.log.Info("no permission for replication origins on the target; echoes are still stopped by the merges", "err", err)
		}
		return false, nil
	}
	return false, fmt.Errorf("replication origin %s: %w", name, err)
}

func isCode(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
}
