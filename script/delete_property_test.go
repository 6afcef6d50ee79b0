package script

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"
)

// The delete property test: regions write, update and delete rows of one
// table (votr.ts's candidates register, or the built-in versionColumn rule)
// while exchanging their changes in random orders, with duplicates and
// echoes. A model sink applies each change as the real one does (fast path
// where the target is the change's before-image and the key has no
// tombstone, else the merge with the key's tombstone as op.deleted; local
// deletes record their tombstone as schema's trigger does). Checked: every
// region, and fresh regions fed every change in random orders with
// duplicates, end with the same rows.

type delRegion struct {
	rows  map[string]Row
	tombs map[string]Row
}

func newDelRegion() *delRegion { return &delRegion{rows: map[string]Row{}, tombs: map[string]Row{}} }

func (r *delRegion) dump() string {
	var lines []string
	for k, row := range r.rows {
		lines = append(lines, k+" "+canonicalJSON(map[string]any(dbForm(row))))
	}
	sortStrings(lines)
	return strings.Join(lines, "\n")
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// delChange is one row change: nil before for an insert, nil after for a
// delete.
type delChange struct {
	key           string
	before, after Row
}

// apply is the model sink: the change as the fast path or the merge takes it.
func (r *delRegion) apply(h *Host, table string, c delChange) error {
	row, tomb := r.rows[c.key], r.tombs[c.key]
	switch {
	case c.before == nil && row == nil && tomb == nil:
		r.rows[c.key] = dbForm(c.after)
		return nil
	case c.before != nil && c.after != nil && row != nil && RowsEqual(row, c.before):
		r.rows[c.key] = dbForm(c.after)
		return nil
	case c.after != nil && row != nil && RowsEqual(row, c.after):
		return nil // already there: the settle query finds no difference
	case c.after == nil && row != nil && tomb == nil && RowsEqual(row, c.before):
		delete(r.rows, c.key)
		r.tombs[c.key] = c.before
		return nil
	}
	// Every settle read carries the key's tombstone.
	op := Op{Before: c.before, Proposed: c.after, Target: row, Deleted: tomb, Meta: Meta{Table: table}}
	if c.after != nil && c.before == nil {
		op.Before = nil
	}
	res, err := h.Merge(table, op)
	if err != nil {
		return err
	}
	if res.Tombstone != nil && !RowsEqual(res.Tombstone, tomb) {
		r.tombs[c.key] = dbForm(res.Tombstone)
	}
	switch res.Action {
	case Delete:
		if row != nil {
			delete(r.rows, c.key)
			if res.Tombstone == nil {
				img := c.before
				if img == nil {
					img = row
				}
				r.tombs[c.key] = dbForm(img)
			}
		}
	case Apply:
		if row == nil || !RowsEqual(row, res.Row) {
			r.rows[c.key] = dbForm(res.Row)
		}
	case DeadLetter:
		return fmt.Errorf("dead letter: %s", res.Reason)
	}
	return nil
}

// delSim runs one random history.
type delSim struct {
	h       *Host
	table   string
	rng     *rand.Rand
	regions []*delRegion
	logs    [][]delChange // what each region published, sink writes included
	cursor  map[[2]int]int
	fresh   int // keys made so far
	all     []delChange
}

func (s *delSim) local(r int) {
	reg := s.regions[r]
	var keys []string
	for k := range reg.rows {
		keys = append(keys, k)
	}
	sortStrings(keys)
	me := fmt.Sprint(r)
	moods := []string{"calm", "bold", "shy", "odd"}
	var deleted []string
	for k := range reg.tombs {
		if reg.rows[k] == nil {
			deleted = append(deleted, k)
		}
	}
	sortStrings(deleted)
	if len(deleted) > 0 && s.rng.IntN(5) == 0 {
		// A re-insert under a deleted key: stamp continues the tombstone's
		// clock and passes its version.
		k := deleted[s.rng.IntN(len(deleted))]
		tomb := reg.tombs[k]
		w := map[string]any{}
		for kk, v := range tomb["whence"].(map[string]any) {
			w[kk] = v
		}
		n, _ := w[me].(float64)
		w[me] = n + 1
		row := Row{"candidate": k, "name": "again", "mood": moods[s.rng.IntN(len(moods))], "version": tomb["version"].(int64) + 1,
			"whence": w, "src": int64(r)}
		s.commit(r, delChange{key: k, after: row})
		return
	}
	if len(keys) == 0 || s.rng.IntN(4) == 0 {
		// A new key (the workload's clients make fresh uuids).
		k := fmt.Sprintf("k%d", s.fresh)
		s.fresh++
		row := Row{"candidate": k, "name": "n", "mood": moods[s.rng.IntN(len(moods))], "version": int64(1),
			"whence": map[string]any{me: 1.0}, "src": int64(r)}
		s.commit(r, delChange{key: k, after: row})
		return
	}
	k := keys[s.rng.IntN(len(keys))]
	old := reg.rows[k]
	if s.rng.IntN(3) == 0 {
		s.commit(r, delChange{key: k, before: old})
		return
	}
	w := map[string]any{}
	for kk, v := range old["whence"].(map[string]any) {
		w[kk] = v
	}
	n, _ := w[me].(float64)
	w[me] = n + 1
	row := Row{}
	for kk, v := range old {
		row[kk] = v
	}
	row["whence"], row["src"], row["mood"] = w, int64(r), moods[s.rng.IntN(len(moods))]
	row["version"] = old["version"].(int64) + 1
	s.commit(r, delChange{key: k, before: old, after: row})
}

// commit applies a local change as a SQL client's (a delete records its
// tombstone, as the trigger does) and publishes it.
func (s *delSim) commit(r int, c delChange) {
	reg := s.regions[r]
	if c.after == nil {
		delete(reg.rows, c.key)
		img := dbForm(c.before)
		if prev := reg.tombs[c.key]; prev != nil {
			// The trigger joins the clocks (entry by entry the larger).
			w := map[string]any{}
			for _, from := range []Row{prev, img} {
				for kk, v := range from["whence"].(map[string]any) {
					if x, ok := w[kk].(float64); !ok || v.(float64) > x {
						w[kk] = v
					}
				}
			}
			img["whence"] = w
		}
		reg.tombs[c.key] = img
	} else {
		reg.rows[c.key] = dbForm(c.after)
	}
	s.logs[r] = append(s.logs[r], c)
	s.all = append(s.all, c)
}

// deliver applies the next change of src's log to dst; a sink's write is
// published again (as an echo of what changed), so changes travel on.
func (s *delSim) deliver(src, dst int) (bool, error) {
	f := [2]int{src, dst}
	i := s.cursor[f]
	if i >= len(s.logs[src]) {
		return false, nil
	}
	s.cursor[f] = i + 1
	c := s.logs[src][i]
	reg := s.regions[dst]
	before := reg.rows[c.key]
	if err := reg.apply(s.h, s.table, c); err != nil {
		return false, err
	}
	after := reg.rows[c.key]
	if !RowsEqual(before, after) {
		s.logs[dst] = append(s.logs[dst], delChange{key: c.key, before: before, after: after})
	}
	return true, nil
}

func runDelSim(fatalf func(string, ...any), h *Host, table string, seed uint64) {
	const regions, steps = 3, 120
	s := &delSim{h: h, table: table, rng: rand.New(rand.NewPCG(seed, 7)), cursor: map[[2]int]int{}}
	for i := 0; i < regions; i++ {
		s.regions = append(s.regions, newDelRegion())
		s.logs = append(s.logs, nil)
	}
	for step := 0; step < steps; step++ {
		r := s.rng.IntN(regions)
		if s.rng.IntN(2) == 0 {
			s.local(r)
			continue
		}
		src := s.rng.IntN(regions)
		if src != r {
			if _, err := s.deliver(src, r); err != nil {
				fatalf("seed %d step %d: %v", seed, step, err)
			}
		}
	}
	// Drain: every feed until nothing moves (echoes must die out).
	for moved, rounds := true, 0; moved; rounds++ {
		if rounds > 200 {
			fatalf("seed %d: echoes do not die out after %d rounds of every feed", seed, rounds)
		}
		moved = false
		for src := 0; src < regions; src++ {
			for dst := 0; dst < regions; dst++ {
				if src == dst {
					continue
				}
				ok, err := s.deliver(src, dst)
				if err != nil {
					fatalf("seed %d drain: %v", seed, err)
				}
				moved = moved || ok
			}
		}
	}
	want := s.regions[0].dump()
	for i, reg := range s.regions[1:] {
		if got := reg.dump(); got != want {
			fatalf("seed %d: region %d differs from region 0 after the feeds drained:\n%s", seed, i+1, diffLines(want, got))
		}
	}
	// Every original change, shuffled and duplicated, into fresh regions.
	for trial := 0; trial < 5; trial++ {
		var order []delChange
		for _, c := range s.all {
			for n := 1 + s.rng.IntN(3); n > 0; n-- {
				order = append(order, c)
			}
		}
		s.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		fresh := newDelRegion()
		for _, c := range order {
			if err := fresh.apply(h, table, c); err != nil {
				fatalf("seed %d shuffled: %v", seed, err)
			}
		}
		if got := fresh.dump(); got != want {
			fatalf("seed %d trial %d: every change in a random order gives other rows:\n%s", seed, trial, diffLines(want, got))
		}
	}
}

func TestDeletesConvergeVotr(t *testing.T) {
	h := votrHost(t)
	for seed := uint64(1); seed <= 40; seed++ {
		runDelSim(t.Fatalf, h, "candidates", seed)
	}
}

func TestDeletesConvergeVersionColumn(t *testing.T) {
	h := hostFor(t, `export const tables = { lww: { versionColumn: "version" } };`, 30*time.Second)
	for seed := uint64(1); seed <= 40; seed++ {
		runDelSim(t.Fatalf, h, "lww", seed)
	}
}

// The model catches a merge that ignores tombstones (the behaviour before
// them): a late insert brings a deleted row back in some orders.
func TestDeletesConvergeCatchesNoTombstones(t *testing.T) {
	src, err := os.ReadFile(votrScript)
	if err != nil {
		t.Fatal(err)
	}
	const line = `candidates: { merge: (op) => withTombstones(op, register("version"), (o) => mergeRegister(o, "version", false)) }`
	broken := strings.Replace(string(src), line,
		`candidates: { merge: (op) => op.proposed ? mergeRegister({ ...op, deleted: null }, "version", false) : (op.target ? { delete: true } : { drop: true }) }`, 1)
	if broken == string(src) {
		t.Fatal("votr.ts no longer has the line this test replaces")
	}
	h := hostFor(t, broken, 30*time.Second)
	failed := 0
	for seed := uint64(1); seed <= 10; seed++ {
		type diverged struct{}
		func() {
			defer func() {
				if r := recover(); r != nil {
					if _, ok := r.(diverged); !ok {
						panic(r)
					}
					failed++
				}
			}()
			runDelSim(func(string, ...any) { panic(diverged{}) }, h, "candidates", seed)
		}()
	}
	if failed == 0 {
		t.Fatal("a merge without tombstones converged in every history: the test cannot tell")
	}
	t.Logf("%d of 10 histories diverge without tombstones", failed)
}
