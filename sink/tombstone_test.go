package sink

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/votr-dev/votr/internal/pgtest"
	"github.com/votr-dev/votr/schema"
)

// twoWritersTwoListeners makes regions a (1) and b (2), with feed a → b,
// and c1 (0) and c2 (3), each with feeds from a and from b.
func twoWritersTwoListeners(t *testing.T) (a, b, c1, c2 region) {
	t.Helper()
	rs := regionsOnOneServer(t, []int{1, 2, 0, 3}, [2]int{1, 0}, [2]int{1, 3}, [2]int{2, 0}, [2]int{2, 3}, [2]int{1, 2})
	return rs[0], rs[1], rs[2], rs[3]
}

// catchUp runs the feed cfg until it has applied its source's current WAL,
// then stops it.
func catchUp(t *testing.T, cfg Config) Status {
	t.Helper()
	r := start(t, cfg)
	waitCaughtUp(t, r, cfg.SourceDSN, time.Minute)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	return r.s.Status()
}

// candidatesDump renders a region's candidates rows canonically.
func candidatesDump(t *testing.T, dsn string) string {
	t.Helper()
	conn := connect(t, dsn)
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(context.Background(),
		`SELECT COALESCE(string_agg(c::text, E'\n' ORDER BY candidate), '') FROM candidates c`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// A delete and a late replay of the insert it deleted reach a region in
// either order (region 2 deleted a row it had from region 1; the target
// hears from both): the row stays deleted in both targets. An update made
// in region 1 that region 2's delete had not seen wins in both orders
// (observed-remove). Before tombstones, the delete-first order brought the
// deleted row back.
func TestDeleteAndLateInsertConverge(t *testing.T) {
	// a writes, b gets a's rows and changes them; c1 and c2 hear both
	// (each test picks the order).
	a, b, c1, c2 := twoWritersTwoListeners(t)
	prog := votrScript(t)
	opts := options(200, 10000, 1)

	const gone = "'00000000-0000-0000-0000-0000000000d1'" // deleted, then its insert replayed late
	const kept = "'00000000-0000-0000-0000-0000000000d2'" // deleted in b, concurrently updated in a
	pgtest.Exec(t, a.dsn,
		`INSERT INTO candidates (candidate, name, mood) VALUES (`+gone+`, 'Gone', 'brief'), (`+kept+`, 'Kept', 'stubborn')`)
	catchUp(t, feedConfig(t, a, b, prog, opts))
	// Concurrent: a updates kept, b deletes both rows it has.
	pgtest.Exec(t, a.dsn, `UPDATE candidates SET mood = 'updated', version = version + 1 WHERE candidate = `+kept)
	pgtest.Exec(t, b.dsn, `DELETE FROM candidates WHERE candidate IN (`+gone+`, `+kept+`)`)

	for _, order := range []struct {
		target region
		first  region
		second region
	}{{c1, b, a}, {c2, a, b}} {
		catchUp(t, feedConfig(t, order.first, order.target, prog, opts))
		catchUp(t, feedConfig(t, order.second, order.target, prog, opts))
		if n := queryInt(t, order.target.dsn, `SELECT count(*) FROM candidates WHERE candidate = `+gone); n != 0 {
			t.Errorf("region %d (heard %d first): the deleted row came back", order.target.id, order.first.id)
		}
		if m := queryInt(t, order.target.dsn, `SELECT count(*) FROM candidates WHERE candidate = `+kept+` AND mood = 'updated'`); m != 1 {
			t.Errorf("region %d (heard %d first): the update the delete had not seen was lost", order.target.id, order.first.id)
		}
		if n := queryInt(t, order.target.dsn, `SELECT count(*) FROM votr.tombstones WHERE tbl = 'public.candidates'`); n != 2 {
			t.Errorf("region %d: %d tombstones, want 2 (one per deleted key)", order.target.id, n)
		}
	}
	if x, y := candidatesDump(t, c1.dsn), candidatesDump(t, c2.dsn); x != y {
		t.Fatalf("the two orders end differently:\n%s\n---\n%s", x, y)
	}
}

// With the built-in versionColumn rule (no merge function) too, a delete
// and a late insert converge in either order, and a conflicting update
// that moved the primary key leaves no row at the old key.
func TestBuiltinRuleDeletesAndKeyMoves(t *testing.T) {
	// a writes, b gets a's rows and changes them; c1 and c2 hear both
	// (each test picks the order).
	a, b, c1, c2 := twoWritersTwoListeners(t)
	prog := compileScript(t, `export const tables = { candidates: { versionColumn: "version" } };`)
	opts := options(200, 10000, 1)
	const gone = "'00000000-0000-0000-0000-0000000000e1'"
	pgtest.Exec(t, a.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES (`+gone+`, 'Gone', 'brief')`)
	catchUp(t, feedConfig(t, a, b, prog, opts))
	pgtest.Exec(t, b.dsn, `DELETE FROM candidates WHERE candidate = `+gone)
	for _, order := range [][3]region{{c1, b, a}, {c2, a, b}} {
		catchUp(t, feedConfig(t, order[1], order[0], prog, opts))
		catchUp(t, feedConfig(t, order[2], order[0], prog, opts))
		if n := queryInt(t, order[0].dsn, `SELECT count(*) FROM candidates WHERE candidate = `+gone); n != 0 {
			t.Errorf("region %d (heard %d first): the deleted row came back", order[0].id, order[1].id)
		}
	}

	// Key move: the target's row differs from the update's before-image
	// (a conflict), and the update changes the key.
	const first = "'00000000-0000-0000-0000-0000000000e2'"
	const moved = "'00000000-0000-0000-0000-0000000000e3'"
	pgtest.Exec(t, a.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES (`+first+`, 'Mover', 'restless')`)
	catchUp(t, feedConfig(t, a, c1, prog, opts))
	pgtest.Exec(t, c1.dsn, `UPDATE candidates SET mood = 'local edit' WHERE candidate = `+first)
	pgtest.Exec(t, a.dsn, `UPDATE candidates SET candidate = `+moved+`, version = version + 5 WHERE candidate = `+first)
	st := catchUp(t, feedConfig(t, a, c1, prog, opts))
	if st.Conflicts == 0 {
		t.Fatalf("status %+v: the key move did not conflict; the test does not exercise the merge path", st)
	}
	if n := queryInt(t, c1.dsn, `SELECT count(*) FROM candidates WHERE candidate = `+first); n != 0 {
		t.Errorf("the row at the old key is still there after a conflicting key move")
	}
	if n := queryInt(t, c1.dsn, `SELECT count(*) FROM candidates WHERE candidate = `+moved); n != 1 {
		t.Errorf("the row at the new key is missing after a conflicting key move")
	}
}

// Without REPLICA IDENTITY FULL, an update that leaves a TOASTed value
// unchanged does not send it: the target keeps its own value (as
// PostgreSQL's apply does) instead of the feed stopping, also when the
// update changes the key.
func TestToastedValueDefaultIdentity(t *testing.T) {
	srv := pgtest.Start(t)
	src := newRegion(t, srv, 1)
	dst := newRegion(t, srv, 0)
	for _, r := range []region{src, dst} {
		pgtest.Exec(t, r.dsn,
			`CREATE TABLE docs (id INT PRIMARY KEY, body TEXT NOT NULL, note TEXT NOT NULL)`,
			`ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL`)
	}
	pgtest.Exec(t, src.dsn, `ALTER PUBLICATION votr ADD TABLE docs`)
	createSlot(t, src, dst.id)
	big := `(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)`
	pgtest.Exec(t, src.dsn,
		`INSERT INTO docs VALUES (1, `+big+`, 'first'), (2, `+big+`, 'first')`)
	pgtest.Exec(t, src.dsn, `UPDATE docs SET note = 'second' WHERE id = 1`)
	pgtest.Exec(t, src.dsn, "BEGIN", `UPDATE docs SET note = 'third' WHERE id = 2`, `UPDATE docs SET note = 'fourth' WHERE id = 2`, "COMMIT")
	// A key change: the old tuple is the key alone, whose other columns
	// (NULL) are not the unchanged value.
	pgtest.Exec(t, src.dsn, `UPDATE docs SET id = 3 WHERE id = 1`)
	st := catchUp(t, feedConfig(t, src, dst, votrScript(t), options(200, 10000, 1)))
	q := `SELECT string_agg(id || ':' || md5(body) || ':' || note, ',' ORDER BY id) FROM docs`
	var got, want string
	for _, x := range []struct {
		dsn string
		out *string
	}{{dst.dsn, &got}, {src.dsn, &want}} {
		conn := connect(t, x.dsn)
		if err := conn.QueryRow(context.Background(), q).Scan(x.out); err != nil {
			t.Fatal(err)
		}
		conn.Close(context.Background())
	}
	if got != want {
		t.Fatalf("target docs %s, want %s (status %+v)", got, want, st)
	}
}

// TRUNCATE empties the table in the region it reaches, rows that region
// wrote itself included; tombstones are neither made nor removed.
func TestTruncateReplicates(t *testing.T) {
	src, dst := feedOnOneServer(t)
	prog := votrScript(t)
	const x = "'00000000-0000-0000-0000-0000000000f1'"
	pgtest.Exec(t, dst.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES (`+x+`, 'Local', 'mine')`)
	pgtest.Exec(t, dst.dsn, `INSERT INTO votr.tombstones (tbl, key, image) VALUES ('public.candidates', '["k"]', '{}')`)
	pgtest.Exec(t, src.dsn, `TRUNCATE ballots, totals, candidates`)
	catchUp(t, feedConfig(t, src, dst, prog, options(200, 10000, 1)))
	for _, tbl := range []string{"candidates", "ballots", "totals"} {
		if n := queryInt(t, dst.dsn, `SELECT count(*) FROM `+tbl); n != 0 {
			t.Errorf("%s has %d rows after a replicated TRUNCATE", tbl, n)
		}
	}
	if n := queryInt(t, dst.dsn, `SELECT count(*) FROM votr.tombstones`); n != 1 {
		t.Errorf("%d tombstones after TRUNCATE, want the 1 there before", n)
	}
}

// CollectTombstones removes a tombstone only once every feed into the
// region has applied a source commit past it plus the margin, and never
// while a dead letter of its table waits.
func TestCollectTombstones(t *testing.T) {
	srv := pgtest.Start(t)
	r := newRegion(t, srv, 0)
	ctx := context.Background()
	conn := connect(t, r.dsn)
	defer conn.Close(ctx)
	pgtest.Exec(t, r.dsn,
		`INSERT INTO votr.tombstones (tbl, key, image, deleted_at) VALUES
			('public.candidates', '["old"]', '{}', now() - interval '2 hours'),
			('public.candidates', '["new"]', '{}', now())`,
		`INSERT INTO votr.checkpoints (feed, source_commit) VALUES ('1:0', now() - interval '1 hour'), ('2:0', NULL)`)
	collect := func() int64 {
		n, err := CollectTombstones(ctx, conn.PgConn(), 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := collect(); n != 0 {
		t.Fatalf("collected %d tombstones while feed 2:0 has applied nothing", n)
	}
	pgtest.Exec(t, r.dsn, `UPDATE votr.checkpoints SET source_commit = now() - interval '1 hour' WHERE feed = '2:0'`,
		`INSERT INTO votr.dead_letters (feed, source_lsn, tbl, op, reason) VALUES ('1:0', '0/1', 'candidates', 'update', 'test')`)
	if n := collect(); n != 0 {
		t.Fatalf("collected %d tombstones while a dead letter of the table waits", n)
	}
	pgtest.Exec(t, r.dsn, `UPDATE votr.dead_letters SET replayed_at = now()`)
	if n := collect(); n != 1 {
		t.Fatalf("collected %d tombstones, want 1 (the one older than every feed's checkpoint minus the margin)", n)
	}
	if n := queryInt(t, r.dsn, `SELECT count(*) FROM votr.tombstones WHERE key = '["new"]'`); n != 1 {
		t.Fatalf("the recent tombstone was collected")
	}
}

// tombstoneWhence is the whence of key's tombstone in table tbl of a
// region ("" when there is none).
func tombstoneWhence(t *testing.T, dsn, tbl, key string) string {
	t.Helper()
	conn := connect(t, dsn)
	defer conn.Close(context.Background())
	var w *string
	err := conn.QueryRow(context.Background(),
		`SELECT (SELECT (image ->> 'whence')::jsonb::text FROM votr.tombstones WHERE tbl = $1 AND key = jsonb_build_array($2::text))`, tbl, key).Scan(&w)
	if err != nil {
		t.Fatal(err)
	}
	if w == nil {
		return ""
	}
	return *w
}

// A sink collects its region's tombstones between groups, and only those
// every inbound feed has passed: while one feed has applied nothing, or
// only source commits older than the tombstone, the tombstone stays; once
// both feeds have applied a later commit it goes.
func TestSinkCollectsTombstonesPastEveryFeed(t *testing.T) {
	rs := regionsOnOneServer(t, []int{1, 2, 0}, [2]int{1, 0}, [2]int{2, 0})
	a, b, c := rs[0], rs[1], rs[2]
	prog := votrScript(t)
	opts := options(200, 10000, 1)
	opts.TombstoneEvery, opts.TombstoneMargin = time.Millisecond, 0 // one server: no skew

	const key = "00000000-0000-0000-0000-0000000000f1"
	pgtest.Exec(t, a.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES ('`+key+`', 'Brief', 'x')`,
		`DELETE FROM candidates WHERE candidate = '`+key+`'`)
	// Register feed b→c (applied nothing yet) before a's feed runs.
	conn := connect(t, c.dsn)
	if err := CheckpointsIn(conn).Add(context.Background(), schema.FeedName(b.id, c.id)); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())
	tombs := func() int64 {
		return queryInt(t, c.dsn, `SELECT count(*) FROM votr.tombstones WHERE key = jsonb_build_array($1::text)`, key)
	}

	st := catchUp(t, feedConfig(t, a, c, prog, opts))
	if st.TombstoneRuns == 0 {
		t.Fatalf("status %+v: the sink never collected tombstones", st)
	}
	if n := tombs(); n != 1 {
		t.Fatalf("%d tombstones of the deleted key while feed 2:0 has applied nothing, want 1", n)
	}
	// b commits after the delete reached c; a's feed is still at the delete.
	pgtest.Exec(t, b.dsn, `UPDATE candidates SET mood = 'b' WHERE candidate = (SELECT candidate FROM candidates ORDER BY candidate LIMIT 1)`)
	if st = catchUp(t, feedConfig(t, b, c, prog, opts)); st.TombstoneRuns == 0 {
		t.Fatalf("status %+v: feed 2:0 never collected tombstones", st)
	}
	if n := tombs(); n != 1 {
		t.Fatalf("tombstone collected while feed 1:0 has applied nothing committed after it")
	}
	pgtest.Exec(t, a.dsn, `UPDATE candidates SET mood = 'a' WHERE candidate = (SELECT candidate FROM candidates ORDER BY candidate DESC LIMIT 1)`)
	st = catchUp(t, feedConfig(t, a, c, prog, opts))
	if n := tombs(); n != 0 {
		t.Fatalf("tombstone kept after every feed applied a later commit (status %+v)", st)
	}
	if st.TombstonesCollected != 1 {
		t.Fatalf("status counts %d tombstones collected, want 1", st.TombstonesCollected)
	}
}

// A row re-inserted under a key its region deleted (after updating it, so
// the tombstone's clock has that region's entry) reaches every region, in
// either order of arrival, and equals the re-inserting region's row. Before
// stamp continued the tombstone's clock, the re-insert was {"2": 1}, which
// the tombstone covers: other regions dropped it.
func TestReinsertAfterDeleteReachesEveryRegion(t *testing.T) {
	// a writes, b gets a's rows and changes them; c1 and c2 hear both
	// (each test picks the order).
	a, b, c1, c2 := twoWritersTwoListeners(t)
	prog := votrScript(t)
	opts := options(200, 10000, 1)
	const key = "'00000000-0000-0000-0000-0000000000f2'"
	pgtest.Exec(t, a.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES (`+key+`, 'First', 'x')`)
	catchUp(t, feedConfig(t, a, b, prog, opts))
	pgtest.Exec(t, b.dsn, `UPDATE candidates SET mood = 'edited', version = version + 1 WHERE candidate = `+key,
		`DELETE FROM candidates WHERE candidate = `+key,
		`INSERT INTO candidates (candidate, name, mood) VALUES (`+key+`, 'Again', 'fresh')`)
	want := candidatesDump(t, b.dsn)
	if n := queryInt(t, b.dsn, `SELECT count(*) FROM candidates WHERE candidate = `+key+` AND version > 2 AND whence = '{"1": 1, "2": 2}'`); n != 1 {
		t.Errorf("the re-insert does not continue the tombstone's clock and version:\n%s", want)
	}
	for _, order := range [][3]region{{c1, a, b}, {c2, b, a}} {
		catchUp(t, feedConfig(t, order[1], order[0], prog, opts))
		catchUp(t, feedConfig(t, order[2], order[0], prog, opts))
		if got := candidatesDump(t, order[0].dsn); got != want {
			t.Errorf("region %d (heard %d first) differs from the re-inserting region:\n%s\n---\n%s", order[0].id, order[1].id, got, want)
		}
	}
}

// Local deletes of a key that already has a tombstone join the two: the
// tombstone's clock keeps the entries of the earlier delete that the
// deleted row lacked. Before, the trigger replaced the tombstone, and a
// late write the earlier delete had removed came back in this region only.
func TestRepeatedLocalDeletesJoinTombstones(t *testing.T) {
	srv := pgtest.Start(t)
	b := newRegion(t, srv, 2)
	const key = "00000000-0000-0000-0000-0000000000f3"
	// As sinks would leave it: a row with b's concurrent write, and the
	// tombstone of a delete (elsewhere) of writes from regions 1 and 3.
	pgtest.Exec(t, b.dsn, `SET votr.sink = on`,
		`INSERT INTO candidates (candidate, name, mood, version, whence, src) VALUES ('`+key+`', 'C', 'x', 2, '{"1": 1, "2": 1}', 2)`,
		`INSERT INTO votr.tombstones (tbl, key, image) VALUES ('public.candidates', '["`+key+`"]',
			'{"candidate": "`+key+`", "name": "C", "mood": "y", "version": "2", "whence": "{\"1\": 1, \"3\": 1}", "src": "3"}')`)
	pgtest.Exec(t, b.dsn, `DELETE FROM candidates WHERE candidate = '`+key+`'`)
	if w := tombstoneWhence(t, b.dsn, "public.candidates", key); w != `{"1": 1, "2": 1, "3": 1}` {
		t.Fatalf("tombstone whence after the second delete is %s, want the join {1:1, 2:1, 3:1}", w)
	}
	// Delete, re-insert, delete again: the newest delete's clock.
	pgtest.Exec(t, b.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES ('`+key+`', 'D', 'z')`,
		`DELETE FROM candidates WHERE candidate = '`+key+`'`)
	if w := tombstoneWhence(t, b.dsn, "public.candidates", key); w != `{"1": 1, "2": 2, "3": 1}` {
		t.Fatalf("tombstone whence after delete, re-insert, delete is %s, want {1:1, 2:2, 3:1}", w)
	}
}

// An update that moves a row's primary key leaves a tombstone at the old
// key: in its own region (votr_tombstone_move) and in the region that
// applies it without a conflict. Before, the target's compare-and-set
// moved the row and the old key had none.
func TestKeyMoveLeavesTombstone(t *testing.T) {
	a, c := feedOnOneServer(t)
	prog := votrScript(t)
	opts := options(200, 10000, 1)
	const from, to = "00000000-0000-0000-0000-0000000000f4", "00000000-0000-0000-0000-0000000000f5"
	pgtest.Exec(t, a.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES ('`+from+`', 'Mover', 'x')`)
	catchUp(t, feedConfig(t, a, c, prog, opts))
	pgtest.Exec(t, a.dsn, `UPDATE candidates SET candidate = '`+to+`', version = version + 1 WHERE candidate = '`+from+`'`)
	catchUp(t, feedConfig(t, a, c, prog, opts))
	for _, r := range []region{a, c} {
		if w := tombstoneWhence(t, r.dsn, "public.candidates", from); w == "" {
			t.Errorf("region %d: no tombstone at the old key", r.id)
		}
		if n := queryInt(t, r.dsn, `SELECT count(*) FROM candidates WHERE candidate IN ('`+from+`', '`+to+`')`); n != 1 {
			t.Errorf("region %d: %d rows at the old and new keys, want 1", r.id, n)
		}
	}
	if x, y := candidatesDump(t, a.dsn), candidatesDump(t, c.dsn); x != y {
		t.Fatalf("regions differ after the key move:\n%s\n---\n%s", x, y)
	}
}

// Two feeds delivering deletes of the same keys at once to one region
// both write its tombstones (compare-and-set, merged again when the other
// was first): neither fails, nothing is parked, the rows are gone and every
// key has one tombstone.
func TestConcurrentFeedsDeleteSameKeys(t *testing.T) {
	rs := regionsOnOneServer(t, []int{1, 2, 0}, [2]int{1, 2}, [2]int{1, 0}, [2]int{2, 0})
	a, b, c := rs[0], rs[1], rs[2]
	prog := votrScript(t)
	opts := options(20, 10000, 1)
	const n = 300
	pgtest.Exec(t, a.dsn, fmt.Sprintf(`INSERT INTO candidates (candidate, name, mood)
		SELECT ('00000000-0000-0000-0001-' || lpad(to_hex(i), 12, '0'))::uuid, 'n' || i, 'm' FROM generate_series(1, %d) i`, n))
	catchUp(t, feedConfig(t, a, b, prog, opts))
	catchUp(t, feedConfig(t, b, c, prog, opts)) // c has the rows, from b
	// One transaction per delete, so the two feeds' groups interleave.
	var del []string
	for i := 1; i <= n; i++ {
		del = append(del, fmt.Sprintf(`DELETE FROM candidates WHERE candidate = '00000000-0000-0000-0001-%012x'`, i))
	}
	pgtest.Exec(t, a.dsn, del...)
	pgtest.Exec(t, b.dsn, del...)
	ra := start(t, feedConfig(t, a, c, prog, opts))
	rb := start(t, feedConfig(t, b, c, prog, opts))
	waitCaughtUp(t, ra, a.dsn, 2*time.Minute)
	waitCaughtUp(t, rb, b.dsn, 2*time.Minute)
	sa, sb := ra.s.Status(), rb.s.Status()
	if err := ra.stop(t); err != nil {
		t.Fatalf("feed 1:0: %v", err)
	}
	if err := rb.stop(t); err != nil {
		t.Fatalf("feed 2:0: %v", err)
	}
	if sa.DeadLettered+sb.DeadLettered != 0 || sa.LastError != "" || sb.LastError != "" {
		t.Fatalf("statuses %+v / %+v: changes parked or errors", sa, sb)
	}
	if m := queryInt(t, c.dsn, `SELECT count(*) FROM candidates WHERE candidate::text LIKE '00000000-0000-0000-0001-%'`); m != 0 {
		t.Fatalf("%d deleted rows left", m)
	}
	if m := queryInt(t, c.dsn, `SELECT count(*) FROM votr.tombstones WHERE tbl = 'public.candidates'`); m != n {
		t.Fatalf("%d tombstones, want %d", m, n)
	}
}

// A ballot inserted and deleted before the sink applied either (both
// changes fold into one entry of a group) still leaves its tombstone at the
// target, which never held the row.
func TestFoldedInsertDeleteLeavesTombstone(t *testing.T) {
	a, c := feedOnOneServer(t)
	prog := votrScript(t)
	opts := options(200, 10000, 1)
	const ballot = "00000000-0000-0000-0000-0000000000f6"
	cand := pgtest.Query(t, a.dsn, `SELECT candidate::text FROM candidates ORDER BY candidate LIMIT 1`)[0]
	pgtest.Exec(t, a.dsn, `INSERT INTO ballots (candidate, ballot) VALUES ('`+cand+`', '`+ballot+`')`)
	pgtest.Exec(t, a.dsn, `DELETE FROM ballots WHERE ballot = '`+ballot+`'`)
	catchUp(t, feedConfig(t, a, c, prog, opts))
	for _, r := range []region{a, c} {
		if n := queryInt(t, r.dsn, `SELECT count(*) FROM votr.tombstones WHERE tbl = 'public.ballots' AND key ->> 1 = $1`, ballot); n != 1 {
			t.Errorf("region %d: %d tombstones for the ballot inserted and deleted in one group, want 1", r.id, n)
		}
		if n := queryInt(t, r.dsn, `SELECT count(*) FROM ballots WHERE ballot = '`+ballot+`'`); n != 0 {
			t.Errorf("region %d holds the deleted ballot", r.id)
		}
	}
}

// TestCanonicalText covers the two rules on text forms: canonicalText
// (pgoutput's text is the target's ::text, so a tombstone key is matched
// without a cast) and textDecides (equal texts mean equal values, so the
// sink compares a row with a change's image itself).
func TestCanonicalText(t *testing.T) {
	tests := []struct {
		name               string
		target             uint32
		source             relColumn
		canonical, decides bool
	}{
		{"uuid to uuid", oidUUID, relColumn{typ: oidUUID, typmod: noTypmod}, true, true},
		{"int4 to int4", oidInt4, relColumn{typ: oidInt4, typmod: noTypmod}, true, true},
		{"int8 to int8", oidInt8, relColumn{typ: oidInt8, typmod: noTypmod}, true, true},
		{"text to text", oidText, relColumn{typ: oidText, typmod: noTypmod}, true, true},
		// jsonb's output is a function of its value (json's is its input,
		// which is all it compares by), but not what the tombstone key
		// holds.
		{"jsonb to jsonb", oidJSONB, relColumn{typ: oidJSONB, typmod: noTypmod}, false, true},
		{"json to json", oidJSON, relColumn{typ: oidJSON, typmod: noTypmod}, false, true},
		{"json into jsonb", oidJSONB, relColumn{typ: oidJSON, typmod: noTypmod}, false, false},
		// bool's output is t/f, its ::text true/false.
		{"bool to bool", oidBool, relColumn{typ: oidBool, typmod: noTypmod}, false, false},
		// Another type on the source: its text need not be the target's
		// form (text 'ABC…' into uuid reads back lower case).
		{"text into uuid", oidUUID, relColumn{typ: oidText, typmod: noTypmod}, false, false},
		{"int4 into int8", oidInt8, relColumn{typ: oidInt4, typmod: noTypmod}, false, false},
		// Output that settings change (DateStyle, extra_float_digits).
		{"timestamptz", 1184, relColumn{typ: 1184, typmod: noTypmod}, false, false},
		{"float8", oidFloat8, relColumn{typ: oidFloat8, typmod: noTypmod}, false, false},
		{"numeric", oidNumeric, relColumn{typ: oidNumeric, typmod: noTypmod}, false, false},
		{"a type modifier", oidText, relColumn{typ: oidText, typmod: 24}, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := targetColumn{typ: tc.target}
			if got := canonicalText(c, tc.source); got != tc.canonical {
				t.Errorf("canonicalText = %v, want %v", got, tc.canonical)
			}
			if got := textDecides(c, tc.source); got != tc.decides {
				t.Errorf("textDecides = %v, want %v", got, tc.decides)
			}
		})
	}
}

// TestReadOp: an item whose merge result missed its insert is read at its
// new image; a delete has none and is read at its old key.
func TestReadOp(t *testing.T) {
	seg := &segment{}
	tests := []struct {
		name  string
		e     entry
		atNew bool
		want  byte
	}{
		{"update", entry{op: opUpdate, oldSeg: seg, old: 0, newSeg: seg, new: 1}, false, opUpdate},
		{"update at its new image", entry{op: opUpdate, oldSeg: seg, old: 0, newSeg: seg, new: 1}, true, opInsert},
		{"insert at its new image", entry{op: opInsert, old: -1, newSeg: seg, new: 0}, true, opInsert},
		{"delete", entry{op: opDelete, oldSeg: seg, old: 0, new: -1}, false, opDelete},
		{"delete whose merge inserted", entry{op: opDelete, oldSeg: seg, old: 0, new: -1}, true, opDelete},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			it := item{p: &pending{ents: []entry{tc.e}}, atNew: tc.atNew}
			if got := it.readOp(); got != tc.want {
				t.Errorf("readOp = %c, want %c", got, tc.want)
			}
		})
	}
}

// An update and then a delete of one row, folded into one group, delete
// the row the source last had (the update's new image), not the one before
// the update: a target that changed the row meanwhile merges the delete
// with what the source deleted, as the source merges the target's change
// with its tombstone, and both regions end alike, rows and tombstones.
// Before, the folded delete carried the update's before-image: the target
// kept its change as later than the delete, the source joined it with
// its tombstone, and the regions differed for good.
func TestUpdateThenDeleteInOneGroupConverges(t *testing.T) {
	rs := regionsOnOneServer(t, []int{1, 2}, [2]int{1, 2}, [2]int{2, 1})
	s, d := rs[0], rs[1]
	prog, opts := votrScript(t), options(200, 10000, 1)
	const key = "00000000-0000-0000-0000-0000000000c7"
	pgtest.Exec(t, s.dsn, `INSERT INTO candidates (candidate, name, mood) VALUES ('`+key+`', 'Short-lived', 'new')`)
	catchUp(t, feedConfig(t, s, d, prog, opts))
	// Concurrent: d changes the row; s changes it and deletes it in one
	// transaction (one group at d).
	pgtest.Exec(t, d.dsn, `UPDATE candidates SET mood = 'changed at 2', version = version + 1 WHERE candidate = '`+key+`'`)
	pgtest.Exec(t, s.dsn, `BEGIN`+`; UPDATE candidates SET mood = 'changed at 1', version = version + 1 WHERE candidate = '`+key+`'`+
		`; DELETE FROM candidates WHERE candidate = '`+key+`'; COMMIT`)
	catchUp(t, feedConfig(t, s, d, prog, opts))
	catchUp(t, feedConfig(t, d, s, prog, opts))
	for _, dump := range []func(*testing.T, string) string{candidatesDump, tombstonesDump} {
		if x, y := dump(t, s.dsn), dump(t, d.dsn); x != y {
			t.Errorf("regions differ:\n1: %s\n2: %s", x, y)
		}
	}
}

// tombstonesDump lists a region's tombstones (key and image; the image's
// whence, a JSON text that the trigger and the sinks space differently, as
// its value).
func tombstonesDump(t *testing.T, dsn string) string {
	t.Helper()
	return strings.Join(pgtest.Query(t, dsn, `SELECT tbl || ' ' || key::text || ' ' ||
		(image - 'whence' || jsonb_build_object('whence', (image ->> 'whence')::jsonb))::text
		FROM votr.tombstones ORDER BY tbl, key`), "\n")
}
