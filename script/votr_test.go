package script

import (
	"fmt"
	"strings"
	"testing"
)

// Rows as a sink hands them over: integer columns int64, jsonb decoded with
// float64 numbers.

func ballotRow(cand, id string, src int) Row {
	return Row{"candidate": cand, "ballot": id, "whence": map[string]any{fmt.Sprint(src): 1.0}, "src": int64(src)}
}

// totalRow builds a totals row from (region, c, n) triples; total is their
// sum of n.
func totalRow(cand string, src int, entries ...[3]int) Row {
	w := map[string]any{}
	total := 0
	for _, e := range entries {
		w[fmt.Sprint(e[0])] = map[string]any{"c": float64(e[1]), "n": float64(e[2])}
		total += e[2]
	}
	return Row{"candidate": cand, "total": int64(total), "whence": w, "src": int64(src)}
}

// candRow builds a candidates row; clock is region → count pairs.
func candRow(version, src int, mood string, clock ...[2]int) Row {
	w := map[string]any{}
	for _, e := range clock {
		w[fmt.Sprint(e[0])] = float64(e[1])
	}
	return Row{"candidate": "c1", "name": "Ada", "mood": mood, "version": int64(version), "whence": w, "src": int64(src)}
}

type e3 = [3]int
type e2 = [2]int

func TestVotrMerges(t *testing.T) {
	h := votrHost(t)
	if got := strings.Join(h.Tables(), ","); got != "ballots,candidates,totals" {
		t.Fatalf("votr.ts configures %s", got)
	}
	for _, name := range h.Tables() {
		if !h.Table(name).HasMerge {
			t.Errorf("votr.ts has no merge for %s", name)
		}
	}
	b1 := ballotRow("c1", "b1", 1)
	cases := []struct {
		name, table string
		op          Op
		want        Result
		err         string
	}{
		// ballots
		{"ballot insert, no target", "ballots", Op{Proposed: b1}, Result{Action: Apply, Row: b1}, ""},
		{"ballot already there", "ballots", Op{Proposed: b1, Target: Row{"candidate": "c1", "ballot": "b1", "whence": map[string]any{"1": int64(1)}, "src": 1.0}}, Result{Action: Drop}, ""},
		{"ballot delete", "ballots", Op{Before: b1, Target: b1}, Result{Action: Delete, Tombstone: b1}, ""},
		// The target holds region 2's write, which the delete had not seen:
		// the row stays (observed-remove) joined with the tombstone, as it
		// comes back when the delete arrives first (the case below); the
		// tombstone remembers b1.
		{"ballot delete loses to an unseen write", "ballots", Op{Before: b1, Target: ballotRow("c1", "b1", 2)},
			Result{Action: Apply, Row: Row{"candidate": "c1", "ballot": "b1", "whence": map[string]any{"1": 1, "2": 1}, "src": 2}, Tombstone: b1}, ""},
		{"ballot delete, no target", "ballots", Op{Before: b1}, Result{Action: Drop, Tombstone: b1}, ""},
		{"ballot delete, tombstone already there", "ballots", Op{Before: b1, Deleted: b1}, Result{Action: Drop}, ""},
		{"ballot replayed after its delete", "ballots", Op{Proposed: b1, Deleted: b1}, Result{Action: Drop}, ""},
		{"ballot rewritten after its delete", "ballots", Op{Proposed: ballotRow("c1", "b1", 2), Deleted: b1},
			Result{Action: Apply, Row: Row{"candidate": "c1", "ballot": "b1", "whence": map[string]any{"1": 1, "2": 1}, "src": 2}}, ""},
		// candidates: deletes against a tombstone's clock
		{"candidate delete covering the target", "candidates",
			Op{Before: candRow(3, 2, "odd", e2{1, 1}, e2{2, 1}), Target: candRow(2, 1, "smug", e2{1, 1})},
			Result{Action: Delete, Tombstone: candRow(3, 2, "odd", e2{1, 1}, e2{2, 1})}, ""},
		{"candidate delete joins the tombstone", "candidates",
			Op{Before: candRow(2, 1, "smug", e2{1, 2}), Deleted: candRow(2, 2, "odd", e2{2, 1})},
			Result{Action: Drop, Tombstone: candRow(2, 2, "odd", e2{1, 2}, e2{2, 1})}, ""},
		{"candidate update seen by the delete stays deleted", "candidates",
			Op{Before: candRow(1, 1, "a", e2{1, 1}), Proposed: candRow(2, 1, "smug", e2{1, 2}), Deleted: candRow(3, 2, "odd", e2{1, 2}, e2{2, 1})},
			Result{Action: Drop}, ""},
		{"candidate update concurrent with the delete comes back", "candidates",
			Op{Before: candRow(1, 1, "a", e2{1, 1}), Proposed: candRow(2, 1, "smug", e2{1, 3}), Deleted: candRow(3, 2, "odd", e2{1, 2}, e2{2, 1})},
			Result{Action: Apply, Row: candRow(3, 2, "odd", e2{1, 3}, e2{2, 1})}, ""},
		{"ballot written in two regions", "ballots", Op{Proposed: ballotRow("c1", "b1", 2), Target: b1},
			Result{Action: Apply, Row: Row{"candidate": "c1", "ballot": "b1", "whence": map[string]any{"1": 1, "2": 1}, "src": 2}}, ""},
		{"ballot written in two regions, other way", "ballots", Op{Proposed: b1, Target: ballotRow("c1", "b1", 2)},
			Result{Action: Apply, Row: Row{"candidate": "c1", "ballot": "b1", "whence": map[string]any{"1": 1, "2": 1}, "src": 2}}, ""},

		// totals
		{"total, no target", "totals", Op{Proposed: totalRow("c1", 1, e3{1, 1, 4})}, Result{Action: Apply, Row: totalRow("c1", 1, e3{1, 1, 4})}, ""},
		{"total echo is the target", "totals",
			Op{Before: totalRow("c1", 1, e3{1, 1, 4}), Proposed: totalRow("c1", 1, e3{1, 2, 6}), Target: totalRow("c1", 2, e3{1, 2, 6}, e3{2, 1, 3})},
			Result{Action: Apply, Row: totalRow("c1", 2, e3{1, 2, 6}, e3{2, 1, 3})}, ""},
		{"total replay of an old change", "totals",
			Op{Before: totalRow("c1", 0), Proposed: totalRow("c1", 1, e3{1, 1, 4}), Target: totalRow("c1", 1, e3{1, 5, 20})},
			Result{Action: Apply, Row: totalRow("c1", 1, e3{1, 5, 20})}, ""},
		{"total concurrent increments", "totals",
			Op{Before: totalRow("c1", 1, e3{1, 1, 4}), Proposed: totalRow("c1", 1, e3{1, 2, 6}), Target: totalRow("c1", 2, e3{1, 1, 4}, e3{2, 1, 3})},
			Result{Action: Apply, Row: totalRow("c1", 0, e3{1, 2, 6}, e3{2, 1, 3})}, ""},
		{"total concurrent increments, other way", "totals",
			Op{Before: totalRow("c1", 1, e3{1, 1, 4}), Proposed: totalRow("c1", 2, e3{1, 1, 4}, e3{2, 1, 3}), Target: totalRow("c1", 1, e3{1, 2, 6})},
			Result{Action: Apply, Row: totalRow("c1", 0, e3{1, 2, 6}, e3{2, 1, 3})}, ""},
		{"total equal clocks, larger src", "totals",
			Op{Proposed: totalRow("c1", 3, e3{1, 2, 6}, e3{3, 1, 1}), Target: totalRow("c1", 0, e3{1, 2, 6}, e3{3, 1, 1})},
			Result{Action: Apply, Row: totalRow("c1", 3, e3{1, 2, 6}, e3{3, 1, 1})}, ""},
		{"total equal clocks, smaller src is the target", "totals",
			Op{Proposed: totalRow("c1", 0, e3{1, 2, 6}, e3{3, 1, 1}), Target: totalRow("c1", 3, e3{1, 2, 6}, e3{3, 1, 1})},
			Result{Action: Apply, Row: totalRow("c1", 3, e3{1, 2, 6}, e3{3, 1, 1})}, ""},
		{"total proposal dominates", "totals",
			Op{Before: totalRow("c1", 3, e3{3, 1, 1}), Proposed: totalRow("c1", 3, e3{1, 2, 6}, e3{3, 2, 5}), Target: totalRow("c1", 1, e3{1, 2, 6})},
			Result{Action: Apply, Row: totalRow("c1", 3, e3{1, 2, 6}, e3{3, 2, 5})}, ""},
		{"total equal clocks, larger n wins", "totals",
			Op{Proposed: totalRow("c1", 1, e3{1, 2, 7}), Target: totalRow("c1", 1, e3{1, 2, 6})},
			Result{Action: Apply, Row: totalRow("c1", 1, e3{1, 2, 7})}, ""},
		{"total equal clocks, smaller n loses", "totals",
			Op{Proposed: totalRow("c1", 1, e3{1, 2, 6}), Target: totalRow("c1", 1, e3{1, 2, 7})},
			Result{Action: Apply, Row: totalRow("c1", 1, e3{1, 2, 7})}, ""},
		{"total delete", "totals", Op{Before: totalRow("c1", 1), Target: totalRow("c1", 1)}, Result{Action: Delete, Tombstone: totalRow("c1", 1)}, ""},
		{"total malformed clock", "totals",
			Op{Proposed: Row{"candidate": "c1", "total": int64(1), "whence": map[string]any{"1": 1.0}, "src": int64(1)}, Target: totalRow("c1", 1), Meta: Meta{Table: "totals"}},
			Result{}, `totals: proposed.whence["1"] is 1, not a region's {c, n}`},
		{"total clock not an object", "totals",
			Op{Proposed: totalRow("c1", 1), Target: Row{"candidate": "c1", "total": int64(1), "whence": "x", "src": int64(1)}},
			Result{}, `target.whence is "x"`},

		// candidates
		{"candidate, no target", "candidates", Op{Proposed: candRow(2, 1, "smug", e2{1, 1})}, Result{Action: Apply, Row: candRow(2, 1, "smug", e2{1, 1})}, ""},
		{"candidate newer version wins", "candidates",
			Op{Proposed: candRow(3, 1, "smug", e2{1, 2}), Target: candRow(2, 2, "odd", e2{2, 1})},
			Result{Action: Apply, Row: candRow(3, 1, "smug", e2{1, 2}, e2{2, 1})}, ""},
		{"candidate older version loses, clocks merge", "candidates",
			Op{Proposed: candRow(2, 2, "odd", e2{2, 1}), Target: candRow(3, 1, "smug", e2{1, 2})},
			Result{Action: Apply, Row: candRow(3, 1, "smug", e2{1, 2}, e2{2, 1})}, ""},
		{"candidate version tie, higher src wins", "candidates",
			Op{Proposed: candRow(2, 1, "smug", e2{1, 1}), Target: candRow(2, 2, "odd", e2{2, 1})},
			Result{Action: Apply, Row: candRow(2, 2, "odd", e2{1, 1}, e2{2, 1})}, ""},
		{"candidate same version and src, later write wins", "candidates",
			Op{Proposed: candRow(2, 1, "later", e2{1, 3}), Target: candRow(2, 1, "earlier", e2{1, 2})},
			Result{Action: Apply, Row: candRow(2, 1, "later", e2{1, 3})}, ""},
		{"candidate echo is the target", "candidates",
			Op{Before: candRow(1, 0, "hopeful"), Proposed: candRow(2, 1, "smug", e2{1, 1}), Target: candRow(3, 2, "odd", e2{1, 1}, e2{2, 1})},
			Result{Action: Apply, Row: candRow(3, 2, "odd", e2{1, 1}, e2{2, 1})}, ""},
		{"candidate malformed clock", "candidates",
			Op{Proposed: candRow(2, 1, "smug", e2{1, 1}), Target: Row{"candidate": "c1", "name": "Ada", "mood": "x", "version": int64(1), "whence": map[string]any{"1": "one"}, "src": int64(1)}, Meta: Meta{Table: "candidates"}},
			Result{}, `candidates: target.whence["1"] is "one", not a region's count`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := h.Merge(c.table, c.op)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error = %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Action != c.want.Action || got.Reason != c.want.Reason || !RowsEqual(got.Row, c.want.Row) || !RowsEqual(got.Tombstone, c.want.Tombstone) {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
			// An unchanged target must come back as exactly the target, so
			// the sink writes nothing.
			if got.Action == Apply && c.op.Target != nil && RowsEqual(c.want.Row, c.op.Target) && !RowsEqual(got.Row, c.op.Target) {
				t.Fatalf("echo changed the row: %v → %v", c.op.Target, got.Row)
			}
		})
	}
}
