package sink

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
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
