package faults_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// The nemesis test's checker reads the regions with its own SQL (none of
// votr's report or check code) and compares them.

// deadLetter is a row of a region's votr.dead_letters.
type deadLetter struct {
	id                    int64
	feed, tbl, op, reason string
	lsn                   string // the source transaction's commit position
	mood                  string // the proposed row's mood ("" if none)
	replayed              bool
}

// seenWrite is a row of nemesis.seen: one write of the cursed candidate.
type seenWrite struct {
	id      int64
	mood    string
	version int
	local   bool
}

// regionSnapshot is one region as read in one snapshot.
type regionSnapshot struct {
	id          int
	ballots     map[string]string // "candidate/ballot" → "src|whence"
	own         map[string]bool   // the ballots this region wrote (src = id)
	duplicates  int64             // rows beyond the first with one ballot id
	totals      []string          // every totals row, in key order
	candidates  []string          // every candidates row, in key order
	violations  []string          // candidates whose ballots ≠ total
	deadLetters []deadLetter
	seen        []seenWrite
}

// snapshotRegion reads region id in one REPEATABLE READ transaction.
func snapshotRegion(t *testing.T, id int, dsn string) *regionSnapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("region %d: connect: %v", id, err)
	}
	defer conn.Close(context.Background())
	s := &regionSnapshot{id: id, ballots: map[string]string{}, own: map[string]bool{}}
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT candidate::text, ballot::text, src, whence::text FROM ballots`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var c, b, w string
			var src int
			if err := rows.Scan(&c, &b, &src, &w); err != nil {
				return err
			}
			k := c + "/" + b
			s.ballots[k] = fmt.Sprintf("%d|%s", src, w)
			if src == id {
				s.own[k] = true
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT count(*) - count(DISTINCT ballot) FROM ballots`).Scan(&s.duplicates); err != nil {
			return err
		}
		if s.totals, err = strings1(ctx, tx, `SELECT t::text FROM totals t ORDER BY candidate`); err != nil {
			return err
		}
		if s.candidates, err = strings1(ctx, tx, `SELECT c::text FROM candidates c ORDER BY candidate`); err != nil {
			return err
		}
		if s.violations, err = strings1(ctx, tx, `SELECT t.candidate::text || ': total ' || t.total || ', ballots ' || coalesce(b.n, 0)
			FROM totals t FULL JOIN (SELECT candidate, count(*) n FROM ballots GROUP BY candidate) b USING (candidate)
			WHERE t.total IS DISTINCT FROM coalesce(b.n, 0)`); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT id, feed, tbl, op, reason, source_lsn::text, coalesce(proposed->>'mood', ''), replayed_at IS NOT NULL
			FROM votr.dead_letters ORDER BY id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var d deadLetter
			if err := rows.Scan(&d.id, &d.feed, &d.tbl, &d.op, &d.reason, &d.lsn, &d.mood, &d.replayed); err != nil {
				return err
			}
			s.deadLetters = append(s.deadLetters, d)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		var instrumented bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass('nemesis.seen') IS NOT NULL`).Scan(&instrumented); err != nil || !instrumented {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT id, mood, version, local FROM nemesis.seen ORDER BY id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var w seenWrite
			if err := rows.Scan(&w.id, &w.mood, &w.version, &w.local); err != nil {
				return err
			}
			s.seen = append(s.seen, w)
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatalf("region %d: read: %v", id, err)
	}
	return s
}

func strings1(ctx context.Context, tx pgx.Tx, sql string) ([]string, error) {
	rows, err := tx.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// checkFailures is how a check reports: errorf fails the test (t.Errorf)
// and passed says whether errorf was never called, so that a failed check
// can show what it saw.
func checkFailures(t *testing.T) (errorf func(format string, args ...any), passed func() bool) {
	ok := true
	errorf = func(format string, args ...any) {
		t.Helper()
		ok = false
		t.Errorf(format, args...)
	}
	return errorf, func() bool { return ok }
}

// checkDeadLetters asserts that the dead letters are exactly the changes
// whose merge threw: each is a "throw-" change of the cursed candidate
// parked with the script's error, none is parked twice, and each region's
// last throwing write (made when nothing else ran, so it conflicts) reached
// the next region on its way exactly once: applied there (recorded by the
// region's trigger as a sink write) or parked, not both, not neither.
// Earlier throwing writes may have been folded into a later change of the
// same row within one target transaction, so for them the log only counts
// what happened.
func checkDeadLetters(t *testing.T, snaps map[int]*regionSnapshot) bool {
	t.Helper()
	errorf, passed := checkFailures(t)
	parked := map[int]map[string]int{} // region → mood → dead letters
	once := map[string]bool{}          // region, feed, source position, mood
	total := 0
	for id, s := range snaps {
		parked[id] = map[string]int{}
		for _, d := range s.deadLetters {
			total++
			if d.replayed {
				errorf("region %d: dead letter %d (feed %s) is already replayed before any replay", id, d.id, d.feed)
			}
			if d.tbl != "candidates" || !strings.HasPrefix(d.mood, "throw-") || !strings.Contains(d.reason, "nemesis: merge throws for "+d.mood) {
				errorf("region %d: dead letter %d is no throwing merge: feed %s, table %s, %s, proposed mood %q, reason %q",
					id, d.id, d.feed, d.tbl, d.op, d.mood, d.reason)
				continue
			}
			parked[id][d.mood]++
			// One write can reach a region in several source transactions
			// (a merge elsewhere may write the row again); one source
			// transaction's change is parked once.
			k := fmt.Sprintf("%d %s %s %s", id, d.feed, d.lsn, d.mood)
			if once[k] {
				errorf("region %d: the change %q of feed %s at %s is parked more than once", id, d.mood, d.feed, d.lsn)
			}
			once[k] = true
		}
	}
	applied := func(id int, mood string) bool {
		for _, w := range snaps[id].seen {
			if !w.local && w.mood == mood {
				return true
			}
		}
		return false
	}
	counts := map[string]int{}
	for origin := 0; origin <= 3; origin++ {
		s := snaps[origin]
		targets := []int{0}
		if origin == 0 {
			targets = []int{1, 2, 3}
		}
		var last string
		for _, w := range s.seen {
			if w.local {
				last = w.mood
			}
		}
		for _, w := range s.seen {
			if !w.local || !strings.HasPrefix(w.mood, "throw-") {
				continue
			}
			for _, to := range targets {
				a, p := applied(to, w.mood), parked[to][w.mood]
				switch {
				case a && p > 0:
					counts["applied and parked"]++
				case a:
					counts["applied"]++
				case p > 0:
					counts["parked"]++
				default:
					counts["folded into a later change"]++
				}
				if w.mood != last {
					continue
				}
				if a == (p > 0) {
					errorf("region %d's last write %q at region %d: applied %v, parked %d times; want exactly one of them", origin, w.mood, to, a, p)
				}
			}
		}
		if want := "throw-" + itoa(origin) + "-final"; last != want {
			t.Logf("region %d's last write of the cursed candidate is %q, not %q (a worker updated it during the drain): its strict check is skipped", origin, last, want)
		}
	}
	if counts["applied and parked"] > 0 {
		errorf("%d throwing writes were both applied and parked at the next region", counts["applied and parked"])
	}
	sinkWrites := 0
	for _, s := range snaps {
		for _, w := range s.seen {
			if !w.local {
				sinkWrites++
			}
		}
	}
	t.Logf("dead letters: %d, all throwing merges; throwing writes at the next region: %v; sink writes of the cursed candidate recorded: %d",
		total, counts, sinkWrites)
	return passed()
}

// checkConverged asserts, for the final regions: every ballot committed
// anywhere (by a region's workers or clients, the removed spoke's included,
// and every insert a client saw commit) is in every region exactly once,
// minus those a client deleted; every region holds the same rows in every
// table; count(ballots) = total for every candidate; nothing is left parked.
func checkConverged(t *testing.T, snaps map[int]*regionSnapshot, final []int, l *ledger, deletes bool) bool {
	t.Helper()
	errorf, passed := checkFailures(t)
	l.mu.Lock()
	defer l.mu.Unlock()
	// committed: written at its origin (src = the region holding it), or
	// certainly committed by a client.
	committed := map[string]string{}
	for id, s := range snaps {
		for k := range s.own {
			committed[k] = fmt.Sprintf("written by region %d", id)
		}
	}
	for k, certain := range l.inserted {
		if certain {
			if _, seen := committed[k]; !seen {
				committed[k] = "committed by a client, found at no origin"
			}
		}
	}
	union := map[string]bool{}
	for _, id := range final {
		for k := range snaps[id].ballots {
			union[k] = true
		}
	}
	describe := func(k string) string {
		var in []string
		for _, id := range final {
			if _, ok := snaps[id].ballots[k]; ok {
				in = append(in, itoa(id))
			}
		}
		d := fmt.Sprintf("%s (in regions [%s]", k, strings.Join(in, " "))
		if c, ok := committed[k]; ok {
			d += "; " + c
		}
		if certain, ok := l.inserted[k]; ok {
			d += fmt.Sprintf("; client insert, certain %v", certain)
		}
		if certain, ok := l.deleted[k]; ok {
			d += fmt.Sprintf("; client delete, certain %v", certain)
		}
		return d + ")"
	}
	var uneven, lost, resurrected []string
	for k := range union {
		for _, id := range final {
			if _, ok := snaps[id].ballots[k]; !ok {
				uneven = append(uneven, describe(k))
				break
			}
		}
	}
	for k := range committed {
		if _, del := l.deleted[k]; del && deletes {
			continue
		}
		for _, id := range final {
			if _, ok := snaps[id].ballots[k]; !ok {
				lost = append(lost, describe(k))
				break
			}
		}
	}
	for k, certain := range l.deleted {
		if certain && union[k] {
			resurrected = append(resurrected, describe(k))
		}
	}
	report := func(what string, list []string) {
		t.Helper()
		if len(list) == 0 {
			return
		}
		sort.Strings(list)
		if len(list) > 10 {
			list = append(list[:10], fmt.Sprintf("… %d more", len(list)-10))
		}
		errorf("%s:\n  %s", what, strings.Join(list, "\n  "))
	}
	report("ballots not in every region", uneven)
	report("committed ballots missing from a region", lost)
	report("ballots a client deleted, present again", resurrected)

	ref := snaps[final[0]]
	for _, id := range final {
		s := snaps[id]
		if s.duplicates != 0 {
			errorf("region %d: %d ballot ids more than once", id, s.duplicates)
		}
		if len(s.violations) > 0 {
			errorf("region %d: count(ballots) ≠ total: %v", id, s.violations)
		}
		differ := 0
		for k, v := range s.ballots {
			if w, ok := ref.ballots[k]; ok && w != v {
				differ++
			}
		}
		if differ > 0 {
			errorf("region %d: %d ballots differ from region %d's in src or whence", id, differ, ref.id)
		}
		if d := firstDiff(s.totals, ref.totals); d != "" {
			errorf("region %d: totals differ from region %d's: %s", id, ref.id, d)
		}
		if d := firstDiff(s.candidates, ref.candidates); d != "" {
			errorf("region %d: candidates differ from region %d's: %s", id, ref.id, d)
		}
		for _, dl := range s.deadLetters {
			if !dl.replayed {
				errorf("region %d: dead letter %d (feed %s, %s, mood %q) still parked after the replay", id, dl.id, dl.feed, dl.tbl, dl.mood)
			}
		}
	}
	if len(committed) == 0 {
		errorf("no ballot was committed anywhere: the run proved nothing")
	}
	return passed()
}

// firstDiff describes the first difference of two row lists ("" if none).
func firstDiff(a, b []string) string {
	for i := range max(len(a), len(b)) {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			return fmt.Sprintf("row %d: %q vs %q (%d vs %d rows)", i, x, y, len(a), len(b))
		}
	}
	return ""
}

// summarize is one line about the final regions.
func summarize(snaps map[int]*regionSnapshot, final []int) string {
	var parts []string
	for _, id := range final {
		s := snaps[id]
		parts = append(parts, fmt.Sprintf("region %d: %d ballots (%d its own), %d dead letters", id, len(s.ballots), len(s.own), len(s.deadLetters)))
	}
	return strings.Join(parts, "; ")
}
