package sink

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/votr-dev/votr/internal/pgtest"
)

// The session's plan mode follows the feed (a few rows per statement when
// caught up, thousands when far behind), is sent only when it changes, and
// each mode prepares statements of its own.
func TestBeginSwitchesPlanModeOnlyOnChange(t *testing.T) {
	a := &applier{}
	for i, tc := range []struct {
		behind  bool
		results int // BEGIN, and the mode's settings when they change
		mode    int
	}{
		{false, 2, planSteady},
		{false, 1, planSteady},
		{true, 2, planBulk},
		{true, 1, planBulk},
		{false, 2, planSteady},
	} {
		a.inTxn, a.fastWrites = false, tc.behind
		if n := a.begin(&pgconn.Batch{}); n != tc.results || a.planMode != tc.mode || a.stmts.prefix != planPrefix[tc.mode] {
			t.Errorf("step %d (behind %v): begin added %d results, mode %d, prefix %q; want %d, %d, %q",
				i, tc.behind, n, a.planMode, a.stmts.prefix, tc.results, tc.mode, planPrefix[tc.mode])
		}
		if n := a.begin(&pgconn.Batch{}); n != 0 {
			t.Errorf("step %d: begin inside an open transaction added %d results", i, n)
		}
	}
	if planPrefix[planSteady] == planPrefix[planBulk] {
		t.Errorf("both plan modes prepare the same statements")
	}
}

// TestSinkSessionsNeverCompileWithJIT: a statement that must scan a table
// (the tombstone collection reads all of votr.checkpoints) is costed above
// jit_above_cost under the steady plan mode, where scans are disabled. A
// plain session with those settings compiles it with LLVM at every
// execution; the sink's own sessions must not (16 sinks' first tombstone
// collection took over a second of CPU each and stalled every feed).
func TestSinkSessionsNeverCompileWithJIT(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Start(t)
	r := newRegion(t, srv, 0)
	scan := "EXPLAIN (ANALYZE, COSTS) " + collectTombstonesSQL
	explain := func(conn *pgx.Conn) string {
		t.Helper()
		if _, err := conn.Exec(ctx, planModeSQL[planSteady]); err != nil {
			t.Fatal(err)
		}
		return explainText(t, conn, scan, 60.0)
	}

	plain := connect(t, r.dsn)
	defer plain.Close(ctx)
	var jitAvailable bool
	if err := plain.QueryRow(ctx, `SELECT pg_jit_available()`).Scan(&jitAvailable); err != nil {
		t.Fatal(err)
	}
	// The control shows the cost at stake where it exists: PostgreSQL 18
	// no longer costs disabled scans at 1e10, and a server without a JIT
	// provider never compiles. The sink sessions' own setting is checked
	// on every server.
	switch out := explain(plain); {
	case !jitAvailable:
		t.Logf("this server has no JIT provider: only the sink sessions' setting is checked")
	case !strings.Contains(out, "JIT:"):
		t.Logf("this server's planner did not cost the scan above jit_above_cost: only the sink sessions' setting is checked")
	}

	for _, apply := range []bool{true, false} {
		conn, err := (&Sink{}).connectTo(ctx, r.dsn, "votr-sink", apply)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var jit string
		if err := conn.QueryRow(ctx, `SHOW jit`).Scan(&jit); err != nil {
			t.Fatal(err)
		}
		if out := explain(conn); jit != "off" || strings.Contains(out, "JIT:") {
			t.Errorf("sink session (async commit %v): jit = %s, and the scan's plan:\n%s", apply, jit, out)
		}
	}
}
