package script

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"testing"
	"time"
)

// The property test drives scripts/votr.ts through a model of votr: regions
// joined in a star (hub 0, spokes 1..n) by feeds that deliver whole source
// transactions in commit order, applied by a model sink (fast path when the
// target equals the change's before-image, else the script's merge; no write
// when the result equals the target). Every region publishes everything it
// commits, sink writes included, so echoes travel back to their origin (the
// harshest case: no replication-origin filtering). Local writes follow the
// clock rule of schema.stampFunction. Faults replay already applied
// transactions at random moments.
//
// Checked:
//   - after every step, in every region, for every candidate: ballots
//     counted = total = sum of the per-region contributions in whence;
//   - after the feeds drain (echoes must die out), every region holds the
//     same rows;
//   - every transaction ever committed anywhere, delivered to a fresh region
//     in random orders with duplicates, gives that same final state;
//   - delivered in random causal orders (each log in order, nothing before
//     what its origin had seen, duplicates anywhere), the invariant also
//     holds after every transaction.
//
// The invariant needs causal delivery: a region's later totals row carries
// the contributions of all its earlier transactions, so delivering it before
// their ballots shows a total larger than the ballots counted. Feeds give
// that order; an arbitrary order only converges.

const (
	simSpokes     = 3
	simCandidates = 3
	simSteps      = 200
)

// simSeeds are the fixed seeds; each runs a different random history.
var simSeeds = func() []uint64 {
	s := make([]uint64, 12)
	for i := range s {
		s[i] = uint64(1000 + 7*i)
	}
	return s
}()

type change struct {
	table, key    string
	before, after Row // nil before: insert; nil after: delete
}

// txn is one committed transaction in a region's log (its WAL, as published).
type txn struct {
	origin, seq int
	deps        []int // per region: how many of its log entries the origin had seen (causally) before this one
	changes     []change
}

// store is one region's database.
type store struct {
	rows    map[string]map[string]Row // table → key → row
	ballots map[string]int            // candidate → ballots
}

func newStore(cands []string) *store {
	s := &store{rows: map[string]map[string]Row{"candidates": {}, "ballots": {}, "totals": {}}, ballots: map[string]int{}}
	for _, c := range cands {
		// The seed: identical everywhere, no region's clock.
		s.rows["candidates"][c] = Row{"candidate": c, "name": "name of " + c, "mood": "hopeful", "version": int64(1), "whence": map[string]any{}, "src": int64(0)}
		s.rows["totals"][c] = Row{"candidate": c, "total": int64(0), "whence": map[string]any{}, "src": int64(0)}
	}
	return s
}

func (s *store) get(table, key string) Row { return s.rows[table][key] }

func (s *store) put(table, key string, r Row) {
	if table == "ballots" && s.rows[table][key] == nil {
		s.ballots[r["candidate"].(string)]++
	}
	s.rows[table][key] = dbForm(r)
}

func (s *store) del(table, key string) {
	if r := s.rows[table][key]; r != nil && table == "ballots" {
		s.ballots[r["candidate"].(string)]--
	}
	delete(s.rows[table], key)
}

// dbForm stores a row as the database would give it back: jsonb decoded
// with float64 numbers, so merges see the types a sink hands them.
func dbForm(r Row) Row {
	out := Row{}
	for k, v := range r {
		if k == "whence" {
			b, err := json.Marshal(v)
			if err != nil {
				panic(err)
			}
			var back any
			if err := json.Unmarshal(b, &back); err != nil {
				panic(err)
			}
			v = back
		}
		out[k] = v
	}
	return out
}

// invariant returns a description of every violation of
// ballots counted = total = sum of contributions.
func (s *store) invariant(cands []string) []string {
	var bad []string
	for _, c := range cands {
		t := s.get("totals", c)
		total := t["total"].(int64)
		var sum int64
		for _, e := range t["whence"].(map[string]any) {
			sum += int64(e.(map[string]any)["n"].(float64))
		}
		if n := int64(s.ballots[c]); n != total || sum != total {
			bad = append(bad, fmt.Sprintf("%s: %d ballots, total %d, contributions %d", c, n, total, sum))
		}
	}
	return bad
}

// dump renders every row, every column, in a canonical order.
func (s *store) dump() string {
	var lines []string
	for table, rows := range s.rows {
		for key, r := range rows {
			cols := make([]string, 0, len(r))
			for k, v := range r {
				b, _ := json.Marshal(v)
				cols = append(cols, k+"="+string(b))
			}
			sort.Strings(cols)
			lines = append(lines, table+" "+key+" "+strings.Join(cols, " "))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

type sim struct {
	fatalf func(format string, args ...any) // how a broken property is reported
	h      *Host
	rng    *rand.Rand
	cands  []string
	stores []*store
	logs   [][]*txn
	know   [][]int
	cursor map[[2]int]int // feed {src, dst} → next log position
	ballot int
	stats  struct{ local, delivered, replays, merges, fast, writes int }
}

func newSim(fatalf func(string, ...any), h *Host, seed uint64) *sim {
	s := &sim{fatalf: fatalf, h: h, rng: rand.New(rand.NewPCG(seed, seed*31+7)), cursor: map[[2]int]int{}}
	for i := 0; i < simCandidates; i++ {
		s.cands = append(s.cands, fmt.Sprintf("cand-%d", i))
	}
	for r := 0; r <= simSpokes; r++ {
		s.stores = append(s.stores, newStore(s.cands))
		s.logs = append(s.logs, nil)
		s.know = append(s.know, make([]int, simSpokes+1))
	}
	return s
}

// commit appends a transaction to region r's log.
func (s *sim) commit(r int, changes []change) {
	if len(changes) == 0 {
		return
	}
	deps := append([]int(nil), s.know[r]...)
	s.logs[r] = append(s.logs[r], &txn{origin: r, seq: len(s.logs[r]), deps: deps, changes: changes})
	s.know[r][r] = len(s.logs[r])
}

// vote is a worker transaction at spoke r: for one or two candidates, N
// ballots and the total raised by N, stamped as the clock trigger would.
func (s *sim) vote(r int) {
	st := s.stores[r]
	me := fmt.Sprint(r)
	var changes []change
	for _, i := range s.rng.Perm(len(s.cands))[:1+s.rng.IntN(2)] {
		c := s.cands[i]
		n := 1 + s.rng.IntN(3)
		for j := 0; j < n; j++ {
			s.ballot++
			key := fmt.Sprintf("%s/b%d", c, s.ballot)
			b := Row{"candidate": c, "ballot": fmt.Sprintf("b%d", s.ballot), "whence": map[string]any{me: 1.0}, "src": int64(r)}
			st.put("ballots", key, b)
			changes = append(changes, change{table: "ballots", key: key, after: st.get("ballots", key)})
		}
		old := st.get("totals", c)
		w := cloneMap(old["whence"].(map[string]any))
		mine, _ := w[me].(map[string]any)
		cnt, sum := 0.0, 0.0
		if mine != nil {
			cnt, sum = mine["c"].(float64), mine["n"].(float64)
		}
		w[me] = map[string]any{"c": cnt + 1, "n": sum + float64(n)}
		st.put("totals", c, Row{"candidate": c, "total": old["total"].(int64) + int64(n), "whence": w, "src": int64(r)})
		changes = append(changes, change{table: "totals", key: c, before: old, after: st.get("totals", c)})
	}
	s.commit(r, changes)
	s.stats.local++
}

// bump is a candidate update at spoke r: version + 1, a new mood.
func (s *sim) bump(r int) {
	st := s.stores[r]
	c := s.cands[s.rng.IntN(len(s.cands))]
	old := st.get("candidates", c)
	w := cloneMap(old["whence"].(map[string]any))
	me := fmt.Sprint(r)
	n, _ := w[me].(float64)
	w[me] = n + 1
	moods := []string{"smug", "anxious", "serene", "gloomy", "elated"}
	nr := Row{"candidate": c, "name": old["name"], "mood": moods[s.rng.IntN(len(moods))], "version": old["version"].(int64) + 1, "whence": w, "src": int64(r)}
	st.put("candidates", c, nr)
	s.commit(r, []change{{table: "candidates", key: c, before: old, after: st.get("candidates", c)}})
	s.stats.local++
}

func cloneMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// apply is the model sink: it applies one source transaction at store st
// and returns the writes it made, as st's own log would publish them.
func (s *sim) apply(st *store, src, dst int, t *txn) []change {
	var writes []change
	for _, ch := range t.changes {
		target := st.get(ch.table, ch.key)
		var next Row
		del := false
		if (ch.before == nil && target == nil) || (ch.before != nil && target != nil && RowsEqual(ch.before, target)) {
			s.stats.fast++
			next, del = ch.after, ch.after == nil
		} else {
			s.stats.merges++
			res, err := s.h.Merge(ch.table, Op{Before: ch.before, Proposed: ch.after, Target: target,
				Meta: Meta{Source: src, Target: dst, Table: ch.table, LSN: fmt.Sprintf("%d/%X", t.origin, t.seq)}})
			if err != nil {
				s.fatalf("merge %s %s: %v", ch.table, ch.key, err)
			}
			switch res.Action {
			case Apply:
				next = res.Row
			case Delete:
				del = true
			case Drop:
				next = target
			default:
				s.fatalf("merge %s %s dead-lettered: %s", ch.table, ch.key, res.Reason)
			}
		}
		switch {
		case del && target != nil:
			st.del(ch.table, ch.key)
			writes = append(writes, change{table: ch.table, key: ch.key, before: target})
		case !del && next != nil && !RowsEqual(next, target):
			st.put(ch.table, ch.key, next)
			writes = append(writes, change{table: ch.table, key: ch.key, before: target, after: st.get(ch.table, ch.key)})
		}
	}
	s.stats.writes += len(writes)
	return writes
}

// deliver applies t at region dst and publishes what it wrote.
func (s *sim) deliver(dst int, t *txn) {
	writes := s.apply(s.stores[dst], t.origin, dst, t)
	for i, d := range t.deps {
		s.know[dst][i] = max(s.know[dst][i], d)
	}
	s.know[dst][t.origin] = max(s.know[dst][t.origin], t.seq+1)
	s.commit(dst, writes)
	s.stats.delivered++
}

// feeds are the star's feeds: every spoke to the hub and back.
func feeds() [][2]int {
	var f [][2]int
	for r := 1; r <= simSpokes; r++ {
		f = append(f, [2]int{r, 0}, [2]int{0, r})
	}
	return f
}

// advance delivers the next transaction of feed f; false if it has none.
func (s *sim) advance(f [2]int) bool {
	pos := s.cursor[f]
	if pos >= len(s.logs[f[0]]) {
		return false
	}
	s.cursor[f] = pos + 1
	s.deliver(f[1], s.logs[f[0]][pos])
	return true
}

func (s *sim) checkInvariant(when string) {
	for r, st := range s.stores {
		if bad := st.invariant(s.cands); len(bad) > 0 {
			s.fatalf("%s: region %d breaks the invariant: %s", when, r, strings.Join(bad, "; "))
		}
	}
}

func (s *sim) run() {
	fs := feeds()
	for step := 0; step < simSteps; step++ {
		spoke := 1 + s.rng.IntN(simSpokes)
		switch p := s.rng.IntN(100); {
		case p < 30:
			s.vote(spoke)
		case p < 35:
			s.bump(spoke)
		case p < 90:
			s.advance(fs[s.rng.IntN(len(fs))])
		default:
			// Replay an already applied transaction of a feed, as a sink
			// that lost its checkpoint would.
			f := fs[s.rng.IntN(len(fs))]
			if pos := s.cursor[f]; pos > 0 {
				s.deliver(f[1], s.logs[f[0]][s.rng.IntN(pos)])
				s.stats.replays++
			}
		}
		s.checkInvariant(fmt.Sprintf("step %d", step))
	}
	// Drain: the workers stop, the feeds run until nothing is left. Echoes
	// must die out; a merge that keeps writing would loop here.
	for round := 0; ; round++ {
		if round > 1000 {
			s.fatalf("feeds never drain: echoes keep producing writes")
		}
		moved := false
		for _, f := range fs {
			for s.advance(f) {
				moved = true
				s.checkInvariant("drain")
			}
		}
		if !moved {
			break
		}
	}
}

// allTxns is every transaction committed anywhere.
func (s *sim) allTxns() []*txn {
	var all []*txn
	for _, l := range s.logs {
		all = append(all, l...)
	}
	return all
}

// replayShuffled delivers every transaction, with duplicates, in a random
// order to a fresh region and returns its final state.
func (s *sim) replayShuffled(rng *rand.Rand) *store {
	var seq []*txn
	for _, t := range s.allTxns() {
		for n := 1 + rng.IntN(3); n > 0; n-- {
			seq = append(seq, t)
		}
	}
	rng.Shuffle(len(seq), func(i, j int) { seq[i], seq[j] = seq[j], seq[i] })
	st := newStore(s.cands)
	for _, t := range seq {
		s.apply(st, t.origin, 99, t)
	}
	return st
}

// replayCausal delivers every transaction to a fresh region in a random
// order that respects causality (each log in order, and nothing before what
// its origin had seen), with random duplicates of already delivered ones,
// checking the invariant after each.
func (s *sim) replayCausal(rng *rand.Rand) *store {
	st := newStore(s.cands)
	know := make([]int, len(s.logs))
	next := make([]int, len(s.logs))
	var done []*txn
	for {
		var ready []*txn
		for r, l := range s.logs {
			if next[r] >= len(l) {
				continue
			}
			t := l[next[r]]
			ok := true
			for i, d := range t.deps {
				if know[i] < d {
					ok = false
					break
				}
			}
			if ok {
				ready = append(ready, t)
			}
		}
		if len(ready) == 0 {
			for r, l := range s.logs {
				if next[r] < len(l) {
					s.fatalf("causal replay stuck at log %d entry %d (deps %v, know %v)", r, next[r], l[next[r]].deps, know)
				}
			}
			return st
		}
		t := ready[rng.IntN(len(ready))]
		if len(done) > 0 && rng.IntN(4) == 0 {
			t = done[rng.IntN(len(done))] // a duplicate
		} else {
			next[t.origin]++
			for i, d := range t.deps {
				know[i] = max(know[i], d)
			}
			know[t.origin] = max(know[t.origin], t.seq+1)
			done = append(done, t)
		}
		s.apply(st, t.origin, 99, t)
		if bad := st.invariant(s.cands); len(bad) > 0 {
			s.fatalf("causal replay after %d/%d of log %d: %s", t.origin, t.seq, t.origin, strings.Join(bad, "; "))
		}
	}
}

// check runs one random history and every property on it.
func (s *sim) check(seed uint64) {
	s.run()
	want := s.stores[0].dump()
	for r, st := range s.stores[1:] {
		if got := st.dump(); got != want {
			s.fatalf("region %d does not match the hub after draining:\n%s", r+1, diffLines(want, got))
		}
	}
	if len(s.stores[0].rows["ballots"]) == 0 {
		s.fatalf("the history produced no ballots: the test proves nothing")
	}
	rng := rand.New(rand.NewPCG(seed, 99))
	if got := s.replayShuffled(rng).dump(); got != want {
		s.fatalf("shuffled replay differs from the converged state:\n%s", diffLines(want, got))
	}
	if got := s.replayCausal(rng).dump(); got != want {
		s.fatalf("causal replay differs from the converged state:\n%s", diffLines(want, got))
	}
}

func TestMergePropertiesVotr(t *testing.T) {
	h := votrHost(t)
	var sum struct{ local, delivered, replays, merges, fast, writes int }
	for _, seed := range simSeeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			s := newSim(t.Fatalf, h, seed)
			s.check(seed)
			sum.local += s.stats.local
			sum.delivered += s.stats.delivered
			sum.replays += s.stats.replays
			sum.merges += s.stats.merges
			sum.fast += s.stats.fast
			sum.writes += s.stats.writes
		})
	}
	t.Logf("%d histories: %d local txns, %d deliveries (%d replays), %d fast-path rows, %d merges, %d writes",
		len(simSeeds), sum.local, sum.delivered, sum.replays, sum.fast, sum.merges, sum.writes)
	if sum.merges == 0 || sum.replays == 0 {
		t.Fatal("no merges or replays happened: the test proves nothing")
	}
}

// TestMergePropertiesCatchBrokenMerges shows the property test can fail:
// merges that look plausible but are not joins are caught.
func TestMergePropertiesCatchBrokenMerges(t *testing.T) {
	const totalsLine = "totals: { merge: (op) => withTombstones(op, totalsKind, mergeTotals) }"
	const candidatesLine = `candidates: { merge: (op) => withTombstones(op, register("version"), (o) => mergeRegister(o, "version", false)) }`
	cases := []struct{ name, line, merge, want string }{
		// The original's approach: add the delta. Replays and echoes count
		// it again.
		{"delta", totalsLine, `(op: any) => {
			if (!op.target) return { apply: op.proposed };
			const delta = op.proposed.total - (op.before ? op.before.total : 0);
			return { apply: { ...op.target, total: op.target.total + delta } };
		}`, "breaks the invariant"},
		// Last writer wins: concurrent increments are lost.
		{"overwrite", totalsLine, `(op: any) => ({ apply: op.proposed })`, "breaks the invariant"},
		// Right clock rule, but the total is not derived from it.
		{"keep total", totalsLine, `(op: any) => {
			if (!op.target) return { apply: op.proposed };
			const w: any = { ...op.target.whence };
			for (const r of Object.keys(op.proposed.whence)) {
				if (!w[r] || w[r].c < op.proposed.whence[r].c) w[r] = op.proposed.whence[r];
			}
			return { apply: { ...op.target, whence: w } };
		}`, "breaks the invariant"},
		// The target always wins: echoes die out, but regions keep their
		// own concurrent candidate updates.
		{"target wins", candidatesLine, `(op: any) => ({ apply: op.target || op.proposed })`, "does not match the hub"},
	}
	src, err := os.ReadFile(votrScript)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			name, _, _ := strings.Cut(c.line, ":")
			broken := strings.Replace(string(src), c.line, name+": { merge: "+c.merge+" }", 1)
			if broken == string(src) {
				t.Fatal("votr.ts no longer has the line this test replaces")
			}
			h := hostFor(t, broken, 30*time.Second)
			var failure string
			for _, seed := range simSeeds[:4] {
				func() {
					defer func() {
						if r := recover(); r != nil && r != errCaught {
							panic(r)
						}
					}()
					newSim(func(format string, args ...any) {
						failure = fmt.Sprintf(format, args...)
						panic(errCaught)
					}, h, seed).check(seed)
				}()
				if failure != "" {
					break
				}
			}
			if !strings.Contains(failure, c.want) {
				t.Fatalf("broken merge %q: failure %q, want one containing %q", c.name, failure, c.want)
			}
		})
	}
}

var errCaught = errors.New("property broken")

// diffLines shows the lines only in want (-) or only in got (+).
func diffLines(want, got string) string {
	w := map[string]bool{}
	for _, l := range strings.Split(want, "\n") {
		w[l] = true
	}
	g := map[string]bool{}
	var out []string
	for _, l := range strings.Split(got, "\n") {
		g[l] = true
		if !w[l] {
			out = append(out, "+ "+l)
		}
	}
	for _, l := range strings.Split(want, "\n") {
		if !g[l] {
			out = append(out, "- "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}
